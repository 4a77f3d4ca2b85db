"""Parquet bigger than memory: read as a stream of record batches through ``pyarrow.dataset``.

A table is streamed when ``data.stream: true``, or with ``data.stream: auto`` (the default) when
its in-memory size, estimated from the Parquet metadata (the row groups' uncompressed sizes), is
above :data:`STREAM_ABOVE_BYTES`. Otherwise it is read whole (``data.py``).

The unit of the split and of the shuffle is the row group (a fragment of the dataset). The driver
reads only metadata and the label column, and splits the row groups with the experiment's seed:
val (and test) row groups are drawn until they hold ``val_fraction`` (``test_fraction``) of the
rows; or ``data.val_parquet`` names a separate validation table. Each epoch a trial visits its
training row groups in an order drawn from its own generator (saved in its checkpoints, so resume
is exact), reads each in record batches of :data:`READ_ROWS` rows, and shuffles rows within a
buffer of ``data.shuffle_buffer`` rows: when the buffer is full it is permuted and the first half
goes out as batches. Memory per trial: the buffer plus one record batch (and what pyarrow decodes
of one row group's column chunks), whatever the table's size. Validation streams in order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .exceptions import PreflightError

__all__ = ["ParquetStream", "load_stream", "wants_stream", "estimated_size", "STREAM_ABOVE_BYTES", "READ_ROWS"]

#: with ``data.stream: auto``, a table above this in-memory size (bytes) is streamed
STREAM_ABOVE_BYTES = 1 << 30
#: rows per record batch read from a row group
READ_ROWS = 8192

#: (file, row group, rows) of one fragment of the table
Piece = tuple[str, int, int]


def _files(path: str) -> list[str]:
    import pyarrow.dataset as ds

    if not Path(path).exists():
        raise PreflightError(f"data.parquet: {path!r} does not exist; give a Parquet file or a directory of them")
    # Absolute: the trials read the files from working directories of their own.
    return sorted(ds.dataset(str(Path(path).resolve()), format="parquet").files)


def _pieces(files: Sequence[str]) -> tuple[list[Piece], int]:
    """Every row group of ``files`` and the table's estimated in-memory size in bytes: rows times
    the width of each fixed-width column, and the uncompressed size of the others' column chunks."""
    import pyarrow.parquet as pq

    pieces, size = [], 0
    for f in files:
        parquet = pq.ParquetFile(f)
        meta = parquet.metadata
        widths = []
        for column in parquet.schema_arrow:
            try:
                widths.append(column.type.bit_width // 8)
            except ValueError:  # variable width: strings, lists
                widths.append(None)
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            if group.num_rows:
                pieces.append((f, i, group.num_rows))
            if len(widths) == group.num_columns:
                size += sum(group.num_rows * w if w else group.column(j).total_uncompressed_size
                            for j, w in enumerate(widths))
            else:  # nested columns: the writer's own estimate
                size += group.total_byte_size
    return pieces, size


def estimated_size(path: str) -> int:
    """The table's in-memory size estimated from its metadata (uncompressed row groups), bytes."""
    return _pieces(_files(path))[1]


def wants_stream(data_cfg: Any) -> bool:
    """Whether the Parquet source is streamed: ``data.stream`` true, or auto and the table is large."""
    if data_cfg.stream == "auto":
        return estimated_size(data_cfg.parquet) > STREAM_ABOVE_BYTES
    return bool(data_cfg.stream)


def _columns(path: str, features: Sequence[str] | None, label: str) -> tuple[list[str], Any]:
    import pyarrow.dataset as ds

    schema = ds.dataset(path, format="parquet").schema
    return feature_columns(path, schema.names, features, label), schema


def feature_columns(path: str, columns: Sequence[str], features: Sequence[str] | None, label: str) -> list[str]:
    """The feature columns of a Parquet table with ``columns``: ``features``, or every column but
    ``label``. Raises PreflightError naming a missing label or feature column."""
    if label not in columns:
        raise PreflightError(f"data.label: column {label!r} is not in {path!r} (columns: {', '.join(columns)})")
    names = list(features) if features else [c for c in columns if c != label]
    missing = [c for c in names if c not in columns]
    if missing:
        raise PreflightError(f"data.features: columns {missing} are not in {path!r} (columns: {', '.join(columns)})")
    return names


@dataclass
class ParquetStream:
    """What the trials are given for a streamed Parquet table: its row groups, split, not its rows."""

    task: str
    features: list[str]
    label: str
    pieces: dict[str, list[Piece]]
    feature_dtype: str  # "int64" when every feature column is an integer, else "float32"
    classes: list | None
    n_outputs: int
    shuffle_buffer: int
    size_bytes: int
    read_rows: int = READ_ROWS
    eval_batch_size: int = 1024
    filesystem: Any = None  # pyarrow's, for the files' paths (None: local)
    feature_mean: None = None
    feature_std: None = None
    #: the most rows held at once (buffer plus the record batch just read) in this process
    peak_rows: int = field(default=0, compare=False)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def has_test(self) -> bool:
        return bool(self.pieces.get("test"))

    @property
    def n_train(self) -> int:
        return sum(rows for _, _, rows in self.pieces["train"])

    def open(self) -> ParquetStream:
        return self

    def in_process(self) -> ParquetStream:
        return self

    def rows(self, split: str) -> int:
        return sum(rows for _, _, rows in self.pieces.get(split, ()))

    def describe(self) -> str:
        test = f", test {self.rows('test')}" if self.has_test else ""
        outputs = f"{self.n_outputs} classes" if self.task == "classification" else f"{self.n_outputs} target(s)"
        return (f"{self.rows('train')} train, {self.rows('val')} val{test} rows streamed from "
                f"{sum(len(p) for p in self.pieces.values())} row groups ({self.size_bytes / 2**20:.0f} MiB in "
                f"memory); {self.n_features} features; {outputs}")

    # -- reading ------------------------------------------------------------------------------------
    def _record_batches(self, piece: Piece) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        import pyarrow.dataset as ds

        from pyarrow import fs

        path, group, _ = piece
        fragment = ds.ParquetFileFormat().make_fragment(path, self.filesystem or fs.LocalFileSystem(),
                                                        row_groups=[group])
        for batch in fragment.to_batches(columns=[*self.features, self.label], batch_size=self.read_rows,
                                         batch_readahead=0, fragment_readahead=0, use_threads=False):
            yield self._arrays(batch)

    def _arrays(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        X = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False) for c in self.features])
        X = X.astype(self.feature_dtype, copy=False)
        y = batch.column(self.label).to_numpy(zero_copy_only=False)
        if self.task == "classification":
            y = np.searchsorted(np.asarray(self.classes), y).astype(np.int64)
        else:
            y = y.astype(np.float32).reshape(len(y), -1)
        return X, y

    def batches(self, split: str, batch_size: int, device: torch.device | None = None, *,
                generator: torch.Generator | None = None, group: Any = None,
                share: Any = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over ``split``: the training split shuffled by row group and in the buffer
        (with ``generator``), the others in order. With a ``group`` (several workers per trial),
        every rank reads the same batches and keeps its rows of each (``share`` follows them)."""
        pieces = self.pieces[split]
        if split != "train" or generator is None:
            out = _rebatch((a for p in pieces for a in self._record_batches(p)), batch_size)
        else:
            out = self._shuffled(pieces, batch_size, generator)
        if group is None:
            return out
        from .distributed import shard

        return shard(out, group, share)

    def _shuffled(self, pieces: list[Piece], batch_size: int,
                  generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(pieces), generator=generator).tolist()
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        held = 0
        for i in order:
            for X, y in self._record_batches(pieces[i]):
                xs.append(X)
                ys.append(y)
                held += len(X)
                self.peak_rows = max(self.peak_rows, held)
                if held >= self.shuffle_buffer:
                    X_all, y_all = np.concatenate(xs), np.concatenate(ys)
                    perm = torch.randperm(held, generator=generator).numpy()
                    out = max(batch_size, (held - self.shuffle_buffer // 2) // batch_size * batch_size)
                    yield from _slices(X_all[perm[:out]], y_all[perm[:out]], batch_size)
                    rest = perm[out:]
                    xs, ys, held = [X_all[rest]], [y_all[rest]], len(rest)
        if held:
            X_all, y_all = np.concatenate(xs), np.concatenate(ys)
            perm = torch.randperm(held, generator=generator).numpy()
            yield from _slices(X_all[perm], y_all[perm], batch_size)

    def preflight_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first training batch, in row-group order."""
        path, group, _ = self.pieces["train"][0]
        try:
            for batch in self.batches("train", batch_size):
                return batch
        except Exception as exc:
            raise PreflightError(f"data: reading row group {group} of {path!r} as features {self.features} and label "
                                 f"{self.label!r} failed: {type(exc).__name__}: {exc}") from exc
        raise PreflightError("data: the training row groups hold no rows")


def _slices(X: np.ndarray, y: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(X), batch_size):
        yield torch.from_numpy(X[start:start + batch_size]), torch.from_numpy(y[start:start + batch_size])


def _rebatch(arrays: Iterator[tuple[np.ndarray, np.ndarray]],
             batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Record batches as batches of ``batch_size`` rows (the last one smaller)."""
    xs, ys, held = [], [], 0
    for X, y in arrays:
        xs.append(X)
        ys.append(y)
        held += len(X)
        if held >= batch_size:
            X_all, y_all = np.concatenate(xs), np.concatenate(ys)
            out = held // batch_size * batch_size
            yield from _slices(X_all[:out], y_all[:out], batch_size)
            xs, ys, held = [X_all[out:]], [y_all[out:]], held - out
    if held:
        yield from _slices(np.concatenate(xs), np.concatenate(ys), batch_size)


def _split_pieces(pieces: list[Piece], data_cfg: Any, seed: int, *, val_given: bool) -> dict[str, list[Piece]]:
    """Row groups for train/val(/test): drawn in a seeded order until each held-out split holds its
    fraction of the rows (at least one row group each)."""
    total = sum(rows for _, _, rows in pieces)
    wanted = [] if val_given else [("val", data_cfg.val_fraction)]
    if data_cfg.test_fraction > 0:
        wanted.append(("test", data_cfg.test_fraction))
    if len(pieces) < len(wanted) + 1:
        raise PreflightError(
            f"data.parquet: the table has {len(pieces)} row group(s), too few to split into "
            f"{' and '.join(['train', *(w for w, _ in wanted)])} by row group; write it with smaller row groups "
            f"(pyarrow.parquet.write_table(table, path, row_group_size=...)) or give data.val_parquet")
    order = np.random.default_rng(seed).permutation(len(pieces)).tolist()
    out: dict[str, list[Piece]] = {}
    for n, (split, fraction) in enumerate(wanted):
        reserve = len(wanted) - n  # a row group for each split still to fill, and for train
        taken, rows = [], 0
        while len(order) > reserve and (not taken or rows < fraction * total):
            i = order.pop(0)
            taken.append(pieces[i])
            rows += pieces[i][2]
        out[split] = sorted(taken)
    out["train"] = sorted(pieces[i] for i in order)
    return out


def _classes(files: Sequence[str], label: str) -> list:
    """The sorted distinct labels, read from the label column alone, record batch by record batch."""
    import pyarrow.dataset as ds

    seen: set = set()
    for batch in ds.dataset(list(files), format="parquet").to_batches(columns=[label], batch_size=1 << 16,
                                                                       batch_readahead=0, fragment_readahead=0):
        seen.update(np.unique(batch.column(0).to_numpy(zero_copy_only=False)).tolist())
    return sorted(seen)


def load_stream(data_cfg: Any, task: str, seed: int) -> ParquetStream:
    """Describe the table for streaming: columns, row groups split with ``seed``, classes."""
    if data_cfg.standardize:
        raise PreflightError("data.standardize: not available for a streamed table (it would need a pass over "
                             "every row); standardize the columns when writing the table, or in the model")
    files = _files(data_cfg.parquet)
    features, schema = _columns(data_cfg.parquet, data_cfg.features, data_cfg.label)
    pieces, size = _pieces(files)
    split = _split_pieces(pieces, data_cfg, seed, val_given=data_cfg.val_parquet is not None)
    if data_cfg.val_parquet is not None:
        val_files = _files(data_cfg.val_parquet)
        _columns(data_cfg.val_parquet, features, data_cfg.label)
        split["val"], val_size = _pieces(val_files)
        size += val_size
        files = [*files, *val_files]
    import pyarrow as pa

    integer = all(pa.types.is_integer(schema.field(c).type) for c in features)
    classes, n_outputs = None, 1
    if task == "classification":
        classes = _classes(files, data_cfg.label)
        n_outputs = len(classes)
    import pyarrow.dataset as ds

    return ParquetStream(task=task, features=features, label=data_cfg.label, pieces=split,
                         feature_dtype="int64" if integer else "float32", classes=classes, n_outputs=n_outputs,
                         shuffle_buffer=data_cfg.shuffle_buffer, size_bytes=size,
                         filesystem=ds.dataset(files[0], format="parquet").filesystem)
