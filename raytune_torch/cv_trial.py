"""One TorchSearchCV trial: k folds of one candidate, trained one epoch at a time in a Ray worker.

Ray-free (it talks to a reporter), so :mod:`raytune_torch.search_cv` hands :func:`run_cv_trial`
to ``_ray`` as the trial function. No leakage: a ``Pipeline``'s transformers are fitted on the
training part of each fold only, and early stopping splits the fold's training part, never its
validation part.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CVSpec", "run_cv_trial"]

# ------------------------------------------------------------------------------------------------
# What every trial receives through the object store


@dataclass
class CVSpec:
    X: Any
    y: Any
    splits: list[tuple[np.ndarray, np.ndarray]]
    estimator: Any
    scorers: dict[str, Any]
    max_epochs: int
    error_score: Any
    return_train_score: bool
    candidates: list[dict] | None = None  # set when trials carry a candidate index
    classes: np.ndarray | None = None
    random_state: int = 0
    fit_params: dict = field(default_factory=dict)


def _index(data: Any, idx: np.ndarray) -> Any:
    from sklearn.utils import _safe_indexing

    return _safe_indexing(data, idx)


@dataclass
class _Fold:
    estimator: Any  # the whole (pipeline) estimator scored on the fold
    final: Any  # its last step, trained with partial_fit
    X_fit: Any
    y_fit: Any
    X_test: Any
    y_test: Any
    X_train: Any
    y_train: Any
    X_inner: Any = None
    y_inner: Any = None
    best: float = -math.inf
    bad_epochs: int = 0
    stopped: bool = False
    fit_time: float = 0.0
    score_time: float = 0.0


def _make_fold(spec: CVSpec, params: dict, train: np.ndarray, test: np.ndarray) -> _Fold:
    from sklearn.base import clone, is_classifier
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline

    estimator = clone(spec.estimator).set_params(**params)
    X_tr, y_tr = _index(spec.X, train), _index(spec.y, train)
    X_te, y_te = _index(spec.X, test), _index(spec.y, test)
    if isinstance(estimator, Pipeline):
        head, final = estimator[:-1], estimator.steps[-1][1]
        X_fit = head.fit_transform(X_tr, y_tr)  # fitted on the fold's training part only
    else:
        final, X_fit = estimator, X_tr
    fold = _Fold(estimator, final, X_fit, y_tr, X_te, y_te, X_tr, y_tr)
    if getattr(final, "early_stopping", False):
        # Early stopping watches an inner split of the training part, never the fold's test part.
        strat = y_tr if is_classifier(final) else None
        fold.X_fit, fold.X_inner, fold.y_fit, fold.y_inner = train_test_split(
            X_fit, y_tr, test_size=getattr(final, "validation_fraction", 0.1),
            random_state=spec.random_state, stratify=strat)
    return fold


def _train_one_epoch(fold: _Fold, spec: CVSpec) -> None:
    from sklearn.base import is_classifier

    start = time.perf_counter()
    if is_classifier(fold.final):
        fold.final.partial_fit(fold.X_fit, fold.y_fit, classes=spec.classes)
    else:
        fold.final.partial_fit(fold.X_fit, fold.y_fit)
    fold.fit_time += time.perf_counter() - start
    if fold.X_inner is not None:
        score = fold.final.score(fold.X_inner, fold.y_inner)
        if score > fold.best:
            fold.best, fold.bad_epochs = score, 0
        else:
            fold.bad_epochs += 1
        if fold.bad_epochs >= getattr(fold.final, "n_iter_no_change", 3):
            fold.stopped = True


def _scores(fold: _Fold, spec: CVSpec, X: Any, y: Any) -> dict[str, float]:
    out = {}
    for name, scorer in spec.scorers.items():
        try:
            out[name] = float(scorer(fold.estimator, X, y))
        except Exception:
            if spec.error_score == "raise":
                raise
            out[name] = float(spec.error_score)
    return out


def _epoch_metrics(folds: list[_Fold], spec: CVSpec, epoch: int) -> dict[str, Any]:
    metrics: dict[str, Any] = {"epoch": epoch}
    per_split: dict[str, list[float]] = {}
    for k, fold in enumerate(folds):
        start = time.perf_counter()
        test = _scores(fold, spec, fold.X_test, fold.y_test)
        fold.score_time = time.perf_counter() - start
        for name, value in test.items():
            metrics[f"split{k}_test_{name}"] = value
            per_split.setdefault(f"test_{name}", []).append(value)
        if spec.return_train_score:
            for name, value in _scores(fold, spec, fold.X_train, fold.y_train).items():
                metrics[f"split{k}_train_{name}"] = value
                per_split.setdefault(f"train_{name}", []).append(value)
    for key, values in per_split.items():
        metrics[f"mean_{key}"] = float(np.mean(values))
        metrics[f"std_{key}"] = float(np.std(values))
    for key in ("fit_time", "score_time"):
        values = [getattr(f, key) for f in folds]
        metrics[f"mean_{key}"], metrics[f"std_{key}"] = float(np.mean(values)), float(np.std(values))
    return metrics


def _failed_metrics(spec: CVSpec, epoch: int, error: BaseException) -> dict[str, Any]:
    metrics: dict[str, Any] = {"epoch": epoch, "fit_failed": 1, "fit_error": f"{type(error).__name__}: {error}"}
    kinds = ["test", "train"] if spec.return_train_score else ["test"]
    for kind in kinds:
        for name in spec.scorers:
            for k in range(len(spec.splits)):
                metrics[f"split{k}_{kind}_{name}"] = float(spec.error_score)
            metrics[f"mean_{kind}_{name}"] = float(spec.error_score)
            metrics[f"std_{kind}_{name}"] = float(spec.error_score) if math.isnan(float(spec.error_score)) else 0.0
    for key in ("fit_time", "score_time"):
        metrics[f"mean_{key}"], metrics[f"std_{key}"] = 0.0, 0.0
    return metrics


def _device_param(estimator: Any) -> str | None:
    """The name of the final estimator's ``device`` parameter (``net__device`` in a Pipeline)."""
    steps = getattr(estimator, "steps", None)
    final, prefix = (steps[-1][1], f"{steps[-1][0]}__") if steps else (estimator, "")
    return f"{prefix}device" if "device" in final.get_params(deep=False) else None


def run_cv_trial(params: dict[str, Any], spec: CVSpec, reporter: Any, *, cpus: float = 1.0,
                 gpu_share: float = 0.0) -> None:
    """Train every fold of one candidate, one epoch at a time; report fold-mean scores per epoch."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    candidate = spec.candidates[params["__candidate__"]] if spec.candidates is not None else dict(params)
    device = _device_param(spec.estimator)
    if gpu_share > 0 and torch.cuda.is_available() and device and device not in candidate:
        candidate = {**candidate, device: "cuda"}  # the trial's GPU share applies to its folds
    epoch = 0
    try:
        folds = [_make_fold(spec, candidate, train, test) for train, test in spec.splits]
        for epoch in range(1, spec.max_epochs + 1):
            for fold in folds:
                if not fold.stopped:
                    _train_one_epoch(fold, spec)
            reporter.report(_epoch_metrics(folds, spec, epoch), None)
            if all(f.stopped for f in folds):
                break
    except Exception as exc:
        if spec.error_score == "raise":
            raise
        reporter.report(_failed_metrics(spec, max(epoch, 1), exc), None)
