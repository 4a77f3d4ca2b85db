"""Load a dataset once, split it once with the experiment's seed, batch it cheaply.

Sources (one per experiment):

* a bundled dataset that ships with scikit-learn (``digits``, ``breast_cancer``, ``iris``,
  ``wine``, ``diabetes``) — nothing is downloaded;
* a factory ``package.module:function`` (or a callable) returning ``(X, y)`` arrays, or a dict
  ``{"train": (X, y), "val": (X, y), "test": (X, y)}`` with splits of its own;
* a Parquet file or directory read with pyarrow (``features`` columns, ``label`` column).

The driver loads and splits once; the resulting :class:`Splits` goes to Ray's object store once
and every trial reads it as zero-copy views.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import PreflightError

__all__ = ["Splits", "load_splits", "load_arrays", "as_tensors", "iterate_batches"]


@dataclass
class Splits:
    """Train/validation (and optional test) arrays, ready for training.

    Features are float32 ``(n, ...)``; classification labels are int64 class indices
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
    columns = table.column_names
    if label not in columns:
        raise PreflightError(f"data.label: column {label!r} is not in {path!r} (columns: {', '.join(columns)})")
    names = list(features) if features else [c for c in columns if c != label]
    missing = [c for c in names if c not in columns]
    if missing:
        raise PreflightError(f"data.features: columns {missing} are not in {path!r} (columns: {', '.join(columns)})")
    X = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in names])
    y = table.column(label).to_numpy(zero_copy_only=False)
    return X, y


def load_arrays(data_cfg: Any, *, import_paths: tuple[str, ...] = ()) -> Any:
    """What the source returns: ``(X, y)`` or a dict of splits."""
    if data_cfg.dataset is not None:
        return _bundled(data_cfg.dataset)
    if data_cfg.parquet is not None:
        return _parquet(data_cfg.parquet, data_cfg.features, data_cfg.label)
    from .components import resolve

    factory = resolve(data_cfg.factory, what="data.factory", import_paths=import_paths)
    try:
        return factory(**dict(data_cfg.factory_args))
    except Exception as exc:
        raise PreflightError(f"data.factory {data_cfg.factory!r} failed: {type(exc).__name__}: {exc}") from exc


def _pair(value: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise PreflightError(f"data: {where} must be a pair (X, y), got {type(value).__name__}")
    X, y = _to_numpy(value[0], "X"), _to_numpy(value[1], "y")
    if len(X) != len(y):
        raise PreflightError(f"data: {where} has {len(X)} rows of features but {len(y)} labels; they must match")
    if len(X) == 0:
        raise PreflightError(f"data: {where} is empty")
    return X, y


def load_splits(data_cfg: Any, task: str, seed: int, *, import_paths: tuple[str, ...] = ()) -> Splits:
    """Load the source once and split it once (stratified for classification) with ``seed``."""
    from sklearn.model_selection import train_test_split

    raw = load_arrays(data_cfg, import_paths=import_paths)
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
        return None if X is None else np.ascontiguousarray(X, dtype=np.float32)

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


def iterate_batches(X, y, batch_size: int, *, shuffle: bool, generator=None) -> Iterator[tuple]:
    """Mini-batches of tensors ``X``/``y``; a seeded permutation when ``shuffle``.

    Indexing whole tensors is several times faster than a ``DataLoader`` over a
    ``TensorDataset`` for small in-memory data (no per-row collation).
    """
    import torch

    n = len(X)
    if shuffle:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield X[idx], y[idx]
    else:
        for start in range(0, n, batch_size):
            yield X[start:start + batch_size], y[start:start + batch_size]
