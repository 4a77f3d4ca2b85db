"""Write a Parquet table for examples/parquet_stream.yaml (and the streaming benchmark).

    python -m examples.tables                       # data/stream-table/ with 200,000 rows
    python -m examples.tables --rows 2000000 --out data/big

Rows of ``features`` float32 columns drawn around one of ``classes`` centers; the ``label``
column is the class. Files of ``row_group_size`` rows per row group: the row group is the unit
the streamed reader splits and shuffles.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def write_table(out: str | Path, rows: int = 200_000, features: int = 16, classes: int = 4,
                row_group_size: int = 10_000, rows_per_file: int = 100_000, seed: int = 0) -> int:
    """Write ``rows`` rows to ``out`` (a directory of Parquet files); returns the in-memory size in bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 0.3, size=(classes, features)).astype(np.float32)
    size = 0
    for part, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        y = rng.integers(0, classes, size=n)
        X = centers[y] + rng.normal(size=(n, features)).astype(np.float32)
        table = pa.table({**{f"x{j}": X[:, j] for j in range(features)}, "label": y.astype(np.int64)})
        pq.write_table(table, out / f"part-{part:04d}.parquet", row_group_size=row_group_size)
        size += table.nbytes
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/stream-table")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--row-group-size", type=int, default=10_000)
    args = parser.parse_args()
    size = write_table(args.out, rows=args.rows, row_group_size=args.row_group_size)
    print(f"wrote {args.rows} rows to {args.out} ({size / 2**20:.1f} MiB in memory)")


if __name__ == "__main__":
    main()
