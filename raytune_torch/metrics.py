"""Validation metrics by name: the built-in ones, scikit-learn's scorers, and functions of your own.

``train.metrics`` lists any of:

* a built-in metric of the task (:data:`raytune_torch.config.METRICS`): accuracy, f1 (macro),
  roc_auc (binary, or one-vs-rest macro) for classification; mse, mae, r2 (averaged over targets)
  for regression;
* a scikit-learn scorer name (``sklearn.metrics.get_scorer_names()``): ``balanced_accuracy``,
  ``neg_log_loss``, ``top_k_accuracy``, ``neg_mean_absolute_error``, ... computed as the scorer
  computes it for a fitted estimator: from the predicted labels, the probabilities (softmax of
  the logits) or the scores, whichever it asks for, with its sign (``neg_*`` are negated, so
  higher is better);
* ``pkg.mod:fn`` (or the function itself): ``fn(y_true, outputs) -> float``, given NumPy arrays of
  the labels (or targets) and of the raw model outputs (logits for classification).

Each is reported as ``val_<name>``: an import path under the function's name. This module
imports scikit-learn only when a scorer is asked for. The names are checked by the experiment
file's ``train`` section (:mod:`raytune_torch.config.train`).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .components import describe, resolve
from .config.train import METRICS, is_own, reported_name
from .exceptions import MetricError

__all__ = ["Metric", "resolve_metrics", "compute"]


@dataclass(frozen=True)
class Metric:
    """One metric as a trial computes it: ``fn(y_true, outputs) -> float``, reported as ``val_<name>``.

    ``kind``: ``"builtin"``, ``"scorer"`` (scikit-learn's) or ``"own"`` (the user's function).
    """

    name: str
    spec: Any  # as written in train.metrics
    kind: str
    fn: Callable[[np.ndarray, np.ndarray], Any]


def resolve_metrics(task: str, specs: Iterable[Any], *, import_paths: tuple[str, ...] = ()) -> tuple[Metric, ...]:
    """A :class:`Metric` for each entry of ``train.metrics`` (imports the user's functions)."""
    metrics = []
    for spec in specs:
        if is_own(spec):
            kind, fn = "own", resolve(spec, what="train.metrics", import_paths=import_paths)
        elif spec in METRICS.get(task, ()):
            kind, fn = "builtin", functools.partial(_builtin, spec)
        else:
            kind, fn = "scorer", functools.partial(_scorer, task, spec)
        metrics.append(Metric(reported_name(spec), spec, kind, fn))
    return tuple(metrics)


def compute(metrics: Sequence[Metric], y: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Each metric's value by reported name (without ``val_``).

    Scorers and the user's functions get NaN without being called when an output is not finite
    (the trial is diverging). Raises :class:`MetricError` naming the metric when one raises or
    returns anything but a real number.
    """
    finite = bool(np.isfinite(outputs).all())
    out: dict[str, float] = {}
    for metric in metrics:
        if not finite and metric.kind != "builtin":
            out[metric.name] = float("nan")
            continue
        where = f"train.metrics: {describe(metric.spec)}"
        try:
            value = metric.fn(y, outputs)
        except Exception as exc:
            raise MetricError(f"{where} raised {type(exc).__name__}: {exc} (given y_true of shape {y.shape} and "
                              f"outputs of shape {outputs.shape})") from exc
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise MetricError(f"{where} returned {value!r} ({type(value).__name__}), not a number; "
                              f"return a float")
        out[metric.name] = float(value)
    return out


# -- the built-in metrics ------------------------------------------------------------------------


def _labels(logits: np.ndarray) -> np.ndarray:
    if logits.ndim == 2 and logits.shape[1] > 1:
        return logits.argmax(axis=1)
    return (logits.reshape(-1) > 0).astype(np.int64)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _builtin(name: str, y: np.ndarray, o: np.ndarray) -> float:
    if name == "accuracy":
        return float((_labels(o) == y).mean())
    if name == "f1":
        from sklearn.metrics import f1_score

        return float(f1_score(y, _labels(o), average="macro", zero_division=0))
    if name == "roc_auc":
        return _roc_auc(o, y)
    err = o.reshape(len(o), -1) - y.reshape(len(y), -1)
    if name == "mse":
        return float((err ** 2).mean())
    if name == "mae":
        return float(np.abs(err).mean())
    yy = y.reshape(len(y), -1)  # r2
    ss_res = (err ** 2).sum(axis=0)
    ss_tot = ((yy - yy.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1 - ss_res / ss_tot, 0.0)
    return float(r2.mean())


def _roc_auc(logits: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if not np.isfinite(logits).all() or len(np.unique(y)) < 2:
        return float("nan")
    if logits.ndim == 1 or logits.shape[1] == 1:
        return float(roc_auc_score(y, logits.reshape(-1)))
    if logits.shape[1] == 2:
        return float(roc_auc_score(y, logits[:, 1] - logits[:, 0]))
    proba = _softmax(logits)
    present = np.unique(y)
    if len(present) < logits.shape[1]:
        proba = proba[:, present]
        proba = proba / proba.sum(axis=1, keepdims=True)
        y = np.searchsorted(present, y)
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


# -- scikit-learn's scorers ----------------------------------------------------------------------


def _scorer(task: str, name: str, y: np.ndarray, outputs: np.ndarray) -> float:
    """The scorer ``name`` applied to a stand-in estimator that answers with ``outputs``, so that
    scikit-learn itself picks labels, probabilities or scores (and the positive class) and the sign."""
    from sklearn.metrics import get_scorer

    return float(get_scorer(name)(_answering(task, outputs), outputs, y))


def _answering(task: str, outputs: np.ndarray) -> Any:
    """A fitted-looking estimator whose answers are the model's ``outputs`` (logits for a classifier)."""
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

    if task == "regression":
        class Answers(RegressorMixin, BaseEstimator):
            def predict(self, X: Any) -> np.ndarray:
                return outputs
        return Answers()

    single = outputs.ndim == 1 or outputs.shape[1] == 1
    scores = outputs.reshape(-1) if single else outputs
    if single:  # one logit for the positive class
        p = 1 / (1 + np.exp(-scores))
        proba = np.column_stack([1 - p, p])
    else:
        proba = _softmax(outputs)

    class Answers(ClassifierMixin, BaseEstimator):
        classes_ = np.arange(proba.shape[1])

        def predict(self, X: Any) -> np.ndarray:
            return _labels(outputs)

        def predict_proba(self, X: Any) -> np.ndarray:
            return proba

        def decision_function(self, X: Any) -> np.ndarray:
            return scores[:, 1] - scores[:, 0] if scores.ndim == 2 and scores.shape[1] == 2 else scores

    return Answers()
