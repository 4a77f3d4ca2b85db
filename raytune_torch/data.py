"""Load a dataset once, split it once with the experiment's seed, batch it cheaply.

Sources (one per experiment):

* a bundled dataset that ships with scikit-learn (``digits``, ``breast_cancer``, ``iris``,
  ``wine``, ``diabetes``) — nothing is downloaded;
* a factory ``package.module:function`` (or a callable) returning ``(X, y)`` arrays, or a dict
  ``{"train": (X, y), "val": (X, y), "test": (X, y)}`` with splits of its own;
* a factory returning a ``torch.utils.data.Dataset`` (map-style or iterable) or a dict of them
  (:mod:`raytune_torch.datasets`);
* a Parquet file or directory read with pyarrow (``features`` columns, ``label`` column): read
  whole, or streamed in record batches when it is large (:mod:`raytune_torch.parquet_stream`).

Arrays: the driver loads and splits once; the resulting :class:`Splits` goes to Ray's object
store once and every trial reads it as zero-copy views. Datasets and streamed Parquet: the driver
shares a small description (factory or path, split indices or row groups) and each trial reads
the data itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import PreflightError

__all__ = ["Splits", "load_data", "load_splits", "split_arrays", "load_arrays", "as_tensors", "iterate_batches",
           "ACCEPTED_FACTORY_RESULTS"]

#: what ``data.factory`` may return, as error messages list it
ACCEPTED_FACTORY_RESULTS = (
    "(X, y) arrays, a torch.utils.data.Dataset (map-style or iterable), or a dict "
    "{'train': ..., 'val': ..., 'test': ...} of (X, y) pairs or of Datasets ('test' optional)")


@dataclass
class Splits:
    """Train/validation (and optional test) arrays, ready for training.

    Features are float32 ``(n, ...)`` (integer features, such as token ids, stay integers: int64);
    classification labels are int64 class indices
    ``0..n_outputs-1`` (``classes`` maps them back); regression targets are float32 ``(n, k)``.
    """

    task: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    classes: list | None = None
    feature_mean: np.ndarray | None = None
    feature_std: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(np.prod(self.X_train.shape[1:])) if self.X_train.ndim > 1 else 1

    @property
    def has_test(self) -> bool:
        return self.X_test is not None

    @property
    def n_outputs(self) -> int:
        if self.task == "classification":
            return len(self.classes or [])
        return int(self.y_train.shape[1]) if self.y_train.ndim > 1 else 1

    def describe(self) -> str:
        test = f", test {len(self.X_test)}" if self.X_test is not None else ""
        outputs = f"{self.n_outputs} classes" if self.task == "classification" else f"{self.n_outputs} target(s)"
        return (f"{len(self.X_train)} train, {len(self.X_val)} val{test} rows; "
                f"{self.n_features} features; {outputs}")


def _to_numpy(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    elif hasattr(value, "to_numpy"):  # pandas / pyarrow
        value = value.to_numpy()
    array = np.asarray(value)
    if array.dtype == object and what == "X":
        raise PreflightError("data: the features are not numeric (dtype object); convert them to numbers first")
    return array


def _bundled(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    loader = getattr(datasets, f"load_{name}")
    bunch = loader()
    return bunch.data, bunch.target


def _parquet(path: str, features: tuple[str, ...] | None, label: str) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    if not Path(path).exists():
        raise PreflightError(f"data.parquet: {path!r} does not exist; give a Parquet file or a directory of them")
    table = pq.read_table(path)
    from .parquet_stream import feature_columns

    names = feature_columns(path, table.column_names, features, label)
    X = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in names])
    y = table.column(label).to_numpy(zero_copy_only=False)
    return X, y


def load_arrays(data_cfg: Any, *, import_paths: tuple[str, ...] = ()) -> Any:
    """What the source returns: ``(X, y)`` or a dict of splits."""
    if data_cfg.dataset is not None:
        return _bundled(data_cfg.dataset)
    if data_cfg.parquet is not None:
        train = _parquet(data_cfg.parquet, data_cfg.features, data_cfg.label)
        if data_cfg.val_parquet is None:
            return train
        return {"train": train, "val": _parquet(data_cfg.val_parquet, data_cfg.features, data_cfg.label)}
    from .components import resolve

    factory = resolve(data_cfg.factory, what="data.factory", import_paths=import_paths)
    try:
        raw = factory(**dict(data_cfg.factory_args))
    except Exception as exc:
        raise PreflightError(f"data.factory {data_cfg.factory!r} failed: {type(exc).__name__}: {exc}") from exc
    _check_factory_result(raw, data_cfg.factory)
    return raw


def _check_factory_result(raw: Any, factory: Any) -> None:
    """A factory's result is one of :data:`ACCEPTED_FACTORY_RESULTS` (the shape is checked later)."""
    from .datasets import is_dataset

    def array_like(value: Any) -> bool:
        return hasattr(value, "__len__") and not isinstance(value, (str, bytes, Mapping))

    def pair(value: Any) -> bool:
        return isinstance(value, (tuple, list)) and len(value) == 2 and all(array_like(v) for v in value)

    if pair(raw) or is_dataset(raw):
        return
    if isinstance(raw, Mapping) and raw and all(v is None or pair(v) or is_dataset(v) for v in raw.values()):
        return
    from .components import describe

    got = type(raw).__name__
    if isinstance(raw, Mapping):
        got = "dict of " + ", ".join(sorted({type(v).__name__ for v in raw.values()})) if raw else "empty dict"
    elif isinstance(raw, (tuple, list)):
        got = f"{got} of {len(raw)} item(s)"
    raise PreflightError(f"data.factory {describe(factory)!r} returned {got}; it must return {ACCEPTED_FACTORY_RESULTS}")


def _pair(value: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise PreflightError(f"data: {where} must be a pair (X, y), got {type(value).__name__}")
    X, y = _to_numpy(value[0], "X"), _to_numpy(value[1], "y")
    if len(X) != len(y):
        raise PreflightError(f"data: {where} has {len(X)} rows of features but {len(y)} labels; they must match")
    if len(X) == 0:
        raise PreflightError(f"data: {where} is empty")
    return X, y


def load_data(data_cfg: Any, task: str, seed: int, *, import_paths: tuple[str, ...] = ()) -> Any:
    """Load the source once and split it once with ``seed``: what the trials are given.

    Returns :class:`Splits` (arrays: bundled, a factory's arrays, Parquet read whole), a
    :class:`~raytune_torch.datasets.DatasetSource` (a factory's torch Datasets) or a
    :class:`~raytune_torch.parquet_stream.ParquetStream` (Parquet streamed).
    """
    if data_cfg.parquet is not None:
        from .parquet_stream import load_stream, wants_stream

        if wants_stream(data_cfg):
            return load_stream(data_cfg, task, seed)
    raw = load_arrays(data_cfg, import_paths=import_paths)
    from .datasets import holds_datasets, load_dataset_source

    if holds_datasets(raw):
        return load_dataset_source(raw, data_cfg, task, seed, import_paths=import_paths)
    if data_cfg.loader != type(data_cfg.loader)():
        raise PreflightError("data.loader: the factory returned arrays, which are batched in memory without a "
                             "DataLoader; remove data.loader (it applies to a factory that returns Datasets)")
    return split_arrays(raw, data_cfg, task, seed)


def load_splits(data_cfg: Any, task: str, seed: int, *, import_paths: tuple[str, ...] = ()) -> Splits:
    """Load an array source once and split it once (stratified for classification) with ``seed``."""
    return split_arrays(load_arrays(data_cfg, import_paths=import_paths), data_cfg, task, seed)


def split_arrays(raw: Any, data_cfg: Any, task: str, seed: int) -> Splits:
    """Split what an array source returned: ``(X, y)`` by the fractions, a dict as given."""
    from sklearn.model_selection import train_test_split

    if isinstance(raw, Mapping):
        unknown = set(raw) - {"train", "val", "test"}
        if unknown or "train" not in raw or "val" not in raw:
            raise PreflightError(f"data: a dict of splits needs keys 'train' and 'val' (and optionally 'test'), got {sorted(raw)}")
        X_tr, y_tr = _pair(raw["train"], "the 'train' split")
        X_va, y_va = _pair(raw["val"], "the 'val' split")
        X_te, y_te = _pair(raw["test"], "the 'test' split") if raw.get("test") is not None else (None, None)
    else:
        X, y = _pair(raw, "the data")
        strat = y if task == "classification" else None
        X_te = y_te = None
        try:
            if data_cfg.test_fraction > 0:
                X, X_te, y, y_te = train_test_split(
                    X, y, test_size=data_cfg.test_fraction, random_state=seed,
                    stratify=strat)
                strat = y if task == "classification" else None
            # val_fraction is a fraction of the whole data, like test_fraction.
            val_size = data_cfg.val_fraction / (1.0 - data_cfg.test_fraction)
            X_tr, X_va, y_tr, y_va = train_test_split(
                X, y, test_size=val_size, random_state=seed + 1, stratify=strat)
        except ValueError as exc:
            raise PreflightError(f"data: cannot split the data: {exc}") from None
    return _finish(task, X_tr, y_tr, X_va, y_va, X_te, y_te, standardize=data_cfg.standardize)


def _finish(task, X_tr, y_tr, X_va, y_va, X_te, y_te, *, standardize: bool) -> Splits:
    def features(X):
        if X is None:
            return None
        keep_int = X.dtype.kind in "iu" and not standardize  # token ids, counts: stay integers
        return np.ascontiguousarray(X, dtype=np.int64 if keep_int else np.float32)

    X_tr, X_va, X_te = features(X_tr), features(X_va), features(X_te)
    for name, X in (("val", X_va), ("test", X_te)):
        if X is not None and X.shape[1:] != X_tr.shape[1:]:
            raise PreflightError(f"data: the {name} split has feature shape {X.shape[1:]}, train has {X_tr.shape[1:]}")
    mean = std = None
    if standardize:
        mean = X_tr.mean(axis=0)
        std = X_tr.std(axis=0)
        std[std == 0] = 1.0
        X_tr, X_va = (X_tr - mean) / std, (X_va - mean) / std
        X_te = None if X_te is None else (X_te - mean) / std
    classes = None
    if task == "classification":
        classes_arr = np.unique(y_tr)
        index = {c: i for i, c in enumerate(classes_arr.tolist())}

        def encode(y, name):
            if y is None:
                return None
            if y.ndim != 1:
                y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
            if y.ndim != 1:
                raise PreflightError(f"data: classification labels must be one label per row, got shape {y.shape}")
            unseen = sorted({v for v in y.tolist() if v not in index})
            if unseen:
                raise PreflightError(f"data: the {name} split has labels {unseen[:5]} that the train split lacks")
            return np.fromiter((index[v] for v in y.tolist()), dtype=np.int64, count=len(y))

        y_tr, y_va, y_te = encode(y_tr, "train"), encode(y_va, "val"), encode(y_te, "test")
        classes = classes_arr.tolist()
    else:
        def target(y):
            if y is None:
                return None
            y = np.asarray(y, dtype=np.float32)
            return np.ascontiguousarray(y.reshape(-1, 1) if y.ndim == 1 else y)

        y_tr, y_va, y_te = target(y_tr), target(y_va), target(y_te)
    return Splits(task=task, X_train=X_tr, y_train=y_tr, X_val=X_va, y_val=y_va, X_test=X_te,
                  y_test=y_te, classes=classes, feature_mean=mean, feature_std=std)


def as_tensors(*arrays: np.ndarray | None):
    """Zero-copy torch views of (possibly read-only, object-store backed) numpy arrays."""
    import torch

    out = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for a in arrays:
            out.append(None if a is None else torch.from_numpy(a))
    return out


def iterate_batches(X, y, batch_size: int, *, shuffle: bool, generator=None, group=None, share=None) -> Iterator[tuple]:
    """Mini-batches of tensors ``X``/``y``; a seeded permutation when ``shuffle``.

    Indexing whole tensors is several times faster than a ``DataLoader`` over a
    ``TensorDataset`` for small in-memory data (no per-row collation).

    With a ``group`` (:class:`~raytune_torch.distributed.Group`), this rank's rows of each global
    batch (every Nth, see :mod:`raytune_torch.distributed`); ``share`` is set batch by batch.
    """
    import torch

    from .distributed import shard_rows

    n = len(X)
    if not shuffle and group is None:
        for start in range(0, n, batch_size):
            yield X[start:start + batch_size], y[start:start + batch_size]  # views, no copy
        return
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if order.device != X.device:
        order = order.to(X.device)  # X cached on a GPU: index it there
    for start in range(0, n, batch_size):
        idx = shard_rows(order[start:start + batch_size], group, share)
        if idx is not None:
            yield X[idx], y[idx]

