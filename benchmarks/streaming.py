#!/usr/bin/env python
"""Peak memory of a tuning run over a streamed Parquet table, against the table's in-memory size.

    python benchmarks/streaming.py                 # a 0.05 GB table (about a minute)
    python benchmarks/streaming.py --gb 2          # the issue's figure (a quiet machine, several minutes)

Writes a table of ``--gb`` GB in memory (16 float32 feature columns and an int64 label, row
groups of 65,536 rows; examples/tables.py), then runs four trials of a tiny MLP over it, streamed
(``data.stream: true``, ``val_fraction`` 0.05 by default: evaluation keeps the validation split's
outputs for its metrics, memory that grows with that split), all four at once (``cpu: 0.5`` each),
for one epoch; and the same run over a table of 1/50 the size for 25 epochs (the baseline: Ray,
the driver and four trials' working memory, over as long a run). This
process stays light: each run is a child process, and a thread samples the PSS of the whole
process tree (Ray's processes included; benchmarks/run.py's TreeMonitor). Printed: the table's
in-memory size, both peaks, and the peak above the baseline as a fraction of the table's size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import MB, TreeMonitor  # noqa: E402

BYTES_PER_ROW = 16 * 4 + 8
ROW_GROUP = 65_536


def experiment(table: str, storage: str, name: str, val_fraction: float, epochs: int) -> dict:
    return {
        "name": name, "seed": 0, "storage": storage,
        "data": {"parquet": table, "label": "label", "stream": True, "shuffle_buffer": ROW_GROUP,
                 "val_fraction": val_fraction},
        "model": {"name": "examples.models:MLP", "args": {"hidden": 8}},
        "train": {"max_epochs": epochs, "batch_size": 1024, "metrics": ["accuracy"]},
        "space": {"optimizer__lr": {"type": "grid", "values": [0.001, 0.003, 0.01, 0.03]}},
        "search": {"algorithm": "grid", "metric": "val_accuracy"},
        "resources": {"cpu": 0.5},
        "checkpoint": {"every": 1, "keep": 1},
        "tensorboard": False,
    }


def child(args: argparse.Namespace) -> int:
    import os

    os.chdir(ROOT)  # examples.models imports from the repository root, in Ray workers too
    import raytune_torch as rt

    started = time.monotonic()
    result = rt.run(experiment(args.table, args.storage, args.name, args.val_fraction, args.epochs), quiet=True)
    print(json.dumps({"wall_s": time.monotonic() - started, "trials": int(result.table["trial_id"].nunique())}))
    return 0


def write(out: Path, gb: float) -> int:
    """Write the table in a child process (its arrays never count in the measured tree)."""
    rows = max(int(gb * 2**30 / BYTES_PER_ROW), 4 * ROW_GROUP)
    code = ("import sys; from examples.tables import write_table; "
            f"print(write_table({str(out)!r}, rows={rows}, row_group_size={ROW_GROUP}, rows_per_file={16 * ROW_GROUP}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return int(done.stdout.strip().splitlines()[-1])


def measure(table: Path, storage: Path, name: str, val_fraction: float, epochs: int, timeout: float) -> dict:
    monitor = TreeMonitor(0.2).start()
    done = subprocess.run([sys.executable, __file__, "--child", "--table", str(table), "--storage", str(storage),
                           "--name", name, "--val-fraction", str(val_fraction), "--epochs", str(epochs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    measured = monitor.stop()
    monitor.end_leftovers()
    if done.returncode != 0:
        raise SystemExit(f"the {name} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    trials = [pss for title, pss in measured["peak_pss_while_trials_by_process_mb"]
              if title.startswith("ray::ImplicitFunc")]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "peak_pss_mb": measured["peak_pss_mb"],
            "trial_process_pss_mb": trials,
            "peak_pss_while_trials_mb": measured["peak_pss_while_trials_mb"],
            "max_trial_processes": measured["max_trial_processes"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=0.05, help="the table's in-memory size, GB (2**30 bytes)")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="the validation split (its outputs are kept for the metrics: O(rows) per trial)")
    parser.add_argument("--workdir", help="where the tables and runs go (default: a temporary directory)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rtt-stream-bench-"))
    try:
        figures = {}
        # The baseline's table is 1/50 the size, read for 25 epochs: the four trials run as long, and
        # so at once, as on the table itself.
        for case, gb, epochs in (("baseline", args.gb / 50, 25), ("table", args.gb, 1)):
            size = write(workdir / case, gb)
            measured = measure(workdir / case, workdir / "runs", case, args.val_fraction, epochs, args.timeout)
            figures[case] = {"table_mb": size / MB, **measured}
            print(f"{case}: table {size / MB:.0f} MiB in memory; {measured['trials']} trials in "
                  f"{measured['wall_s']:.1f} s; peak PSS of the process tree {measured['peak_pss_mb']:.0f} MiB "
                  f"({measured['max_trial_processes']} trial processes at once at most; at the peak, trial "
                  f"processes {', '.join(f'{t:.0f}' for t in measured['trial_process_pss_mb'])} MiB)", flush=True)
            shutil.rmtree(workdir / case, ignore_errors=True)
        table, base = figures["table"], figures["baseline"]
        above = table["peak_pss_mb"] - base["peak_pss_mb"]
        figures["peak_above_baseline_mb"] = above
        figures["fraction_of_table"] = above / table["table_mb"]
        print(f"peak above the baseline: {above:.0f} MiB = {above / table['table_mb']:.2f}x the table's "
              f"{table['table_mb']:.0f} MiB in memory (goal <= 0.25x)")
        if args.out:
            Path(args.out).write_text(json.dumps(figures, indent=2))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
