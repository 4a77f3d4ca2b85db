"""What every arm trains: the data, the grids, the models and the plain reference epoch.

Everything here is importable from the repository root as ``benchmarks.workloads`` (raytune_torch
reads the data through ``data.factory: benchmarks.workloads:digits_splits``; joblib and Ray workers
import the models by reference).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

SEED = 0
VAL_FRACTION = 0.2
BATCH_SIZE = 64


@dataclass(frozen=True)
class Workload:
    """A model on the digits split and a grid over learning rate x one size parameter."""

    name: str
    model: str                      # import path, as raytune_torch's experiment names it
    size_param: str                 # the model's constructor argument the grid varies
    lrs: tuple[float, ...]
    sizes: tuple[int, ...]
    epochs: int
    batch_size: int = BATCH_SIZE
    model_args: dict[str, Any] = field(default_factory=dict)

    def grid(self) -> list[dict[str, Any]]:
        """Every configuration as ``{"lr": ..., size_param: ...}``, lr-major order."""
        return [{"lr": lr, self.size_param: size} for lr, size in itertools.product(self.lrs, self.sizes)]

    @property
    def grid_size(self) -> int:
        return len(self.lrs) * len(self.sizes)

    def key(self, lr: float, size: Any) -> str:
        """The canonical name of a configuration (floats from any arm's tables map to the same key)."""
        return f"lr={float(lr):.6g},{self.size_param}={int(size)}"

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "grid": {"lr": list(self.lrs), self.size_param: list(self.sizes)},
                "grid_size": self.grid_size, "epochs": self.epochs, "batch_size": self.batch_size,
                "optimizer": "adam", "loss": "cross_entropy", "model_args": dict(self.model_args)}


def get_workload(name: str, quick: bool = False) -> Workload:
    if quick:
        if name != "mlp":
            raise ValueError("--quick runs the mlp workload only")
        return Workload("mlp", "examples.models:MLP", "hidden", (1e-3, 1e-2), (32, 64), epochs=2)
    if name == "mlp":
        return Workload("mlp", "examples.models:MLP", "hidden", (1e-3, 3e-3, 1e-2, 3e-2), (32, 64, 128, 256),
                        epochs=16)
    if name == "cnn":
        return Workload("cnn", "examples.models:DigitsCNN", "channels", (3e-4, 1e-3, 3e-3, 1e-2), (10, 20, 30, 40),
                        epochs=16)
    raise ValueError(f"unknown workload {name!r} (mlp, cnn)")


# ------------------------------------------------------------------------------------------------
# Data


@functools.lru_cache(maxsize=None)
def _digits_cached(seed: int, val_fraction: float):
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=val_fraction, random_state=seed, stratify=y)
    mean = X_tr.mean(axis=0)
    std = X_tr.std(axis=0)
    std[std == 0] = 1.0

    def prep(a):
        out = np.ascontiguousarray(((a - mean) / std).astype(np.float32))
        out.setflags(write=False)
        return out

    def labels(a):
        out = np.ascontiguousarray(a.astype(np.int64))
        out.setflags(write=False)
        return out

    return prep(X_tr), labels(y_tr), prep(X_va), labels(y_va)


def digits_splits(seed: int = SEED, val_fraction: float = VAL_FRACTION) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's bundled digits: one stratified train/validation split (``seed``), features
    standardized with the train split's mean and std, float32 features, int64 labels.

    The data factory of the raytune_torch arms; the other arms call it directly, so every arm
    trains and validates on exactly the same rows.
    """
    X_tr, y_tr, X_va, y_va = _digits_cached(seed, val_fraction)
    return {"train": (X_tr, y_tr), "val": (X_va, y_va)}


def big_blobs(rows: int = 290_000, features: int = 256, classes: int = 4, val_fraction: float = 0.05,
              seed: int = SEED) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Gaussian blobs generated straight into float32 (no float64 temporaries), already split.

    ``rows`` x ``features`` x 4 bytes: the defaults make about 297 MB of features. Returned as a
    dict of splits so raytune_torch does not copy them again to split them.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, size=(classes, features)).astype(np.float32)
    n_val = max(classes, int(rows * val_fraction))
    out = {}
    for name, n in (("train", rows - n_val), ("val", n_val)):
        y = rng.integers(0, classes, size=n)
        X = rng.standard_normal(size=(n, features), dtype=np.float32)
        for start in range(0, n, 65536):  # add the centers in place, a slice at a time
            X[start:start + 65536] += centers[y[start:start + 65536]]
        out[name] = (X, y.astype(np.int64))
    return out


def dataset_bytes(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> int:
    return int(sum(X.nbytes + y.nbytes for X, y in splits.values()))


# ------------------------------------------------------------------------------------------------
# Models and the plain reference epoch


def model_class(workload: Workload):
    import importlib

    module, _, name = workload.model.partition(":")
    return getattr(importlib.import_module(module), name)


def model_kwargs(workload: Workload, size: int, n_features: int = 64, n_classes: int = 10) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"out_features": n_classes, workload.size_param: int(size), **workload.model_args}
    if workload.name == "mlp":
        kwargs["in_features"] = n_features
    return kwargs


def build_model(workload: Workload, size: int):
    return model_class(workload)(**model_kwargs(workload, size))


def tensors():
    """The digits split as torch tensors (zero-copy views)."""
    import warnings

    import torch

    d = digits_splits()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return tuple(torch.from_numpy(a) for a in (*d["train"], *d["val"]))


def train_epoch(model, optimizer, X, y, batch_size: int, generator) -> float:
    """One epoch of plain PyTorch: shuffled mini-batches by indexing the tensors (no DataLoader)."""
    import torch
    import torch.nn.functional as F

    model.train()
    order = torch.randperm(len(X), generator=generator)
    total = 0.0
    for start in range(0, len(X), batch_size):
        idx = order[start:start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(X[idx]), y[idx])
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
    return total / len(X)


def val_accuracy(model, X, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float((model(X).argmax(dim=1) == y).float().mean())


def plain_epoch(model, optimizer, data, batch_size: int, generator) -> float:
    """The reference epoch: train one epoch, then validation accuracy. Returns the accuracy."""
    X_tr, y_tr, X_va, y_va = data
    train_epoch(model, optimizer, X_tr, y_tr, batch_size, generator)
    return val_accuracy(model, X_va, y_va)


def _warmed_up(workload: Workload, cfg: dict[str, Any], seed: int, data: tuple, gen: Any) -> tuple[Any, Any]:
    """A fresh model for ``cfg`` (torch seeded with ``seed``) and its Adam, after one warm-up
    reference epoch."""
    import torch

    torch.manual_seed(seed)
    model = build_model(workload, cfg[workload.size_param])
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    plain_epoch(model, opt, data, workload.batch_size, gen)
    return model, opt


def calibrate(workload: Workload, repeats: int = 3) -> dict[str, float]:
    """Single-thread seconds per reference epoch for every grid configuration.

    One torch thread; one global warm-up epoch, then per configuration a fresh model, one warm-up
    epoch and ``repeats`` timed epochs; the median of the timed epochs is the configuration's cost.
    """
    import numpy as np
    import torch

    torch.set_num_threads(1)
    data = tensors()
    gen = torch.Generator().manual_seed(SEED)
    _warmed_up(workload, workload.grid()[0], SEED, data, gen)
    out: dict[str, float] = {}
    for i, cfg in enumerate(workload.grid()):
        model, opt = _warmed_up(workload, cfg, SEED + i, data, gen)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            plain_epoch(model, opt, data, workload.batch_size, gen)
            times.append(time.perf_counter() - t)
        out[workload.key(cfg["lr"], cfg[workload.size_param])] = float(np.median(times))
    return out


def _largest(workload: Workload) -> dict[str, Any]:
    return max(workload.grid(), key=lambda cfg: (cfg[workload.size_param], cfg["lr"]))


def time_epochs(workload: Workload, seconds: float, barrier: Any = None) -> list[float]:
    """Seconds per reference epoch of the grid's largest configuration, one torch thread, for
    about ``seconds`` (at least three epochs) after a warm-up epoch; with ``barrier``, the timed
    epochs start when every process sharing it is ready."""
    import torch

    torch.set_num_threads(1)
    data = tensors()
    gen = torch.Generator().manual_seed(SEED)
    model, opt = _warmed_up(workload, _largest(workload), SEED, data, gen)
    if barrier is not None:
        barrier.wait()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        plain_epoch(model, opt, data, workload.batch_size, gen)
        times.append(time.perf_counter() - t)
    return times


def _time_epochs_in_child(workload: Workload, seconds: float, barrier: Any, out: Any) -> None:
    out.put(time_epochs(workload, seconds, barrier))


def _epochs_in_processes(workload: Workload, processes: int, seconds: float) -> list[float]:
    """The median epoch of each of ``processes`` fresh processes timing epochs together."""
    import multiprocessing as mp
    import statistics

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_time_epochs_in_child, args=(workload, seconds, barrier, out))
             for _ in range(processes)]
    for proc in procs:
        proc.start()
    try:
        return [statistics.median(out.get(timeout=300)) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()


def contention(workload: Workload, processes: int, seconds: float = 3.0) -> dict[str, Any]:
    """What running ``processes`` reference epochs at once costs each of them on this machine.

    The grid's largest configuration, timed in one fresh process alone, then in ``processes``
    fresh processes whose timed epochs start together. ``slowdown`` = the mean of their median
    epochs / the median epoch alone: shared caches and memory bandwidth (or shared physical
    cores) make concurrent epochs slower, and no parallel arm's ``parallel_efficiency`` can
    exceed ``1 / slowdown``.
    """
    import statistics

    solo = _epochs_in_processes(workload, 1, seconds)[0]
    together = _epochs_in_processes(workload, processes, seconds)
    cfg = _largest(workload)
    slowdown = statistics.mean(together) / solo
    return {"configuration": workload.key(cfg["lr"], cfg[workload.size_param]), "processes": processes,
            "solo_s_per_epoch": solo, "concurrent_s_per_epoch": together, "slowdown": slowdown,
            "parallel_efficiency_ceiling": 1.0 / slowdown}


class Collect:
    """A Reporter (raytune_torch.trainable) that keeps a trial's metrics: no Ray, no checkpoint to
    resume from, none kept."""

    trial_id, trial_index, replay_after = "bench", 0, None

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.rows.append(dict(metrics))

    @contextlib.contextmanager
    def checkpoint_dir(self):
        yield None
