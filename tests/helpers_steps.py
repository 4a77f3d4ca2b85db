"""Training steps used by the tests (importable by Ray workers as tests.helpers_steps:NAME)."""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.preprocessing import StandardScaler

from raytune_torch.loop import default_step

_calls = 0


def slow_step(ctx, xb, yb):
    """The default step, slowed down so that a test can interrupt a run mid-way."""
    time.sleep(0.02)
    return default_step(ctx, xb, yb)


def failing_step(ctx, xb, yb):
    """Fails every trial whose learning rate is 0.03 once it has trained a few batches."""
    global _calls
    _calls += 1
    if ctx.optimizer.param_groups[0]["lr"] == 0.03 and _calls > 15:
        raise RuntimeError("injected failure for lr=0.03")
    return default_step(ctx, xb, yb)


class RecordingScaler(BaseEstimator, TransformerMixin):
    """A StandardScaler that writes the row ids (column 0) it was fitted on to a folder."""

    def __init__(self, folder: str = "") -> None:
        self.folder = folder

    def fit(self, X, y=None):
        X = np.asarray(X)
        np.save(os.path.join(self.folder, f"{uuid.uuid4().hex}.npy"), X[:, 0])
        self.scaler_ = StandardScaler().fit(X[:, 1:])
        return self

    def transform(self, X):
        X = np.asarray(X)
        return self.scaler_.transform(X[:, 1:]).astype(np.float32)


def barrier_step(ctx, xb, yb):
    """Blocks each GPU-assigned trial at its first batch until RTT_BARRIER_N trials are running.

    Only in Ray's workers (Ray sets CUDA_VISIBLE_DEVICES for a trial given a GPU share), not in the
    driver's preflight batch. Each trial leaves a file with its pid and CUDA_VISIBLE_DEVICES.
    """
    folder = os.environ.get("RTT_BARRIER_DIR")
    if folder and "CUDA_VISIBLE_DEVICES" in os.environ and not getattr(barrier_step, "passed", False):
        with open(os.path.join(folder, f"{os.getpid()}-{uuid.uuid4().hex}"), "w") as fh:
            fh.write(os.environ["CUDA_VISIBLE_DEVICES"])
        want = int(os.environ.get("RTT_BARRIER_N", "4"))
        deadline = time.monotonic() + 90
        while len(os.listdir(folder)) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"barrier: only {len(os.listdir(folder))} of {want} trials ran at once")
            time.sleep(0.05)
        barrier_step.passed = True
    return default_step(ctx, xb, yb)


# Weak references to the feature arrays the last `watched_digits` call returned (driver side).
WATCHED: list = []


def watched_digits():
    """Digits already split into float32 features (used as they are, not copied), with weak
    references kept in WATCHED: a test can tell whether anything still holds the arrays."""
    import weakref

    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = np.ascontiguousarray(X, dtype=np.float32)
    X_tr, X_va = X[:1400].copy(), X[1400:].copy()
    WATCHED[:] = [weakref.ref(X_tr), weakref.ref(X_va)]
    return {"train": (X_tr, y[:1400]), "val": (X_va, y[1400:])}


def digits_datasets(iterable: bool = False):
    """Digits (scaled to 0..1) as torch Datasets, the split given: map-style TensorDatasets, or
    with ``iterable`` an IterableDataset that yields the training rows in order."""
    import torch
    from sklearn.datasets import load_digits
    from torch.utils.data import IterableDataset, TensorDataset

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    train, val = (X[:1400], y[:1400]), (X[1400:], y[1400:])
    if not iterable:
        return {"train": TensorDataset(*train), "val": TensorDataset(*val)}

    class Rows(IterableDataset):
        def __iter__(self):
            return zip(*train)

    return {"train": Rows(), "val": TensorDataset(*val)}
