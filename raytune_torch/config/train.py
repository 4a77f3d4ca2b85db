"""The ``train:`` section: the training loop, its precision, its metrics and early stopping."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._problems import Problems, field_names, given

__all__ = ["TrainConfig", "EarlyStoppingConfig", "TASKS", "METRICS", "HIGHER_IS_BETTER", "PRECISIONS", "MEASURED",
           "is_own", "reported_name", "scorer_tasks", "check_metrics", "direction"]

TASKS = ("classification", "regression")
# The built-in metrics of each task; the first is the one a trial reports when none are named.
# train.metrics also takes scikit-learn scorer names and `pkg.mod:fn` (raytune_torch.metrics).
METRICS = {
    "classification": ("accuracy", "f1", "roc_auc"),
    "regression": ("mse", "mae", "r2"),
}
HIGHER_IS_BETTER = {"accuracy", "f1", "roc_auc", "r2"}
# What every trial measures each epoch besides its metrics, and which way is better: a search may
# optimize these too (model size and speed as objectives beside accuracy).
MEASURED = {"n_params": "min", "epoch_time_s": "min", "samples_per_s": "max"}
# train.precision: float32 throughout, or autocast to bfloat16 / float16 (with a gradient scaler).
PRECISIONS = ("32", "bf16", "fp16")


def is_own(spec: Any) -> bool:
    """Whether a ``train.metrics`` entry is a function of the user's (an import path or a callable)."""
    return callable(spec) or (isinstance(spec, str) and ":" in spec)


def reported_name(spec: Any) -> str:
    """The name a metric is reported under, without ``val_``: a function's own name for an import path."""
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__)
    if is_own(spec):
        return spec.rpartition(":")[2].rpartition(".")[2]
    return str(spec)


@functools.cache
def scorer_tasks() -> Mapping[str, str]:
    """Every scikit-learn scorer name and the task it fits: regression for the metrics of
    ``sklearn.metrics._regression``, classification for the rest (they read labels or probabilities).
    Imports scikit-learn on the first call."""
    from sklearn.metrics import get_scorer, get_scorer_names

    tasks = {}
    for name in get_scorer_names():
        module = getattr(getattr(get_scorer(name), "_score_func", None), "__module__", "") or ""
        tasks[name] = "regression" if module.endswith("._regression") else "classification"
    return tasks


def _metric_problem(task: str, spec: Any) -> str | None:
    """What is wrong with one entry of ``train.metrics`` for ``task``, or None."""
    if callable(spec) or spec in METRICS.get(task, ()):
        return None
    if not isinstance(spec, str):
        return f"train.metrics: {spec!r} is not a metric name, an import path or a function"
    if is_own(spec):
        module, _, attr = spec.partition(":")
        if module and attr:
            return None
        return f"train.metrics: {spec!r} is not an import path; write `package.module:function`"
    scorers = scorer_tasks()
    if scorers.get(spec) == task:
        return None
    if spec in scorers:
        return f"train.metrics: {spec!r} is a scikit-learn scorer for {scorers[spec]}, but the task is {task}"
    known = METRICS.get(task, ())
    hint = Problems.suggest(spec, [*known, *(name for name, fits in scorers.items() if fits == task)])
    return (f"train.metrics: {spec!r} is not a {task} metric{hint} (choose from {', '.join(known)}, a scikit-learn "
            f"scorer name, or `package.module:function`)")


def check_metrics(task: str, specs: Iterable[Any]) -> tuple[list[str], list[Any]]:
    """The problems of ``train.metrics`` for ``task``, and the entries without one (each reported
    name once; none reported as ``val_loss``)."""
    problems, valid, seen = [], [], {}
    for spec in specs:
        problem, name = _metric_problem(task, spec), reported_name(spec)
        if problem is None and name == "loss":
            problem = f"train.metrics: {spec!r} would be reported as val_loss, the validation loss; rename the function"
        if problem is None and name in seen:
            problem = (f"train.metrics: {seen[name]!r} and {spec!r} would both be reported as val_{name}; "
                       f"keep one (or rename your function)")
        if problem is not None:
            problems.append(problem)
            continue
        seen[name] = spec
        valid.append(spec)
    return problems, valid


def direction(metric: str, specs: Sequence[Any]) -> str | None:
    """``"max"`` or ``"min"`` for a reported metric (every scikit-learn scorer is higher-is-better);
    None for one of the user's functions, whose direction only the user knows. A metric that is
    not reported is ``"min"`` (and reported as a problem by the rules)."""
    if metric in ("train_loss", "val_loss"):
        return "min"
    if metric in MEASURED:
        return MEASURED[metric]
    name = metric.removeprefix("val_")
    if any(is_own(spec) and reported_name(spec) == name for spec in specs):
        return None
    if name in HIGHER_IS_BETTER or (name in specs and name in scorer_tasks()):
        return "max"
    return "min"


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stop a trial once ``patience`` (>= 1) epochs in a row fail to improve the experiment's metric
    by more than ``min_delta`` (>= 0)."""

    patience: int
    min_delta: float = 0.0

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems) -> EarlyStoppingConfig | None:
        """Read ``train.early_stopping``; None when it cannot be read."""
        if not isinstance(raw, Mapping):
            problems.add(f"train.early_stopping: must be a mapping like {{patience: 3}}, got {raw!r}")
            return None
        problems.unknown("train.early_stopping", raw, field_names(cls))
        patience = problems.typed("train.early_stopping.patience", raw.get("patience"), int, minimum=1)
        min_delta = problems.typed("train.early_stopping.min_delta", raw.get("min_delta", cls.min_delta), float,
                                   minimum=0.0)
        if patience is None:
            return None
        return cls(**given(patience=patience, min_delta=min_delta))

    def to_dict(self) -> dict[str, Any]:
        """The section as the file writes it."""
        return {"patience": self.patience, "min_delta": self.min_delta}


@dataclass(frozen=True)
class TrainConfig:
    """The training loop. One epoch is one Tune iteration.

    ``metrics`` names metrics of the experiment's task (:data:`METRICS`, scikit-learn scorer names,
    ``pkg.mod:fn``; see :mod:`raytune_torch.metrics`); read from a file without ``metrics``, it is
    None until the experiment fills in its task's first metric. ``precision`` is one of
    :data:`PRECISIONS`. ``step`` (one batch) or ``loop`` (the whole loop) replace the built-in
    training, as ``pkg.mod:function``. ``time_limit_s`` (> 0) stops a trial once its epochs have
    taken that many seconds in all (summed across resumes), after the epoch that crosses it.
    """

    max_epochs: int = 10
    batch_size: int = 64
    precision: str = "32"
    metrics: tuple[Any, ...] | None = ()
    early_stopping: EarlyStoppingConfig | None = None
    step: str | Callable | None = None
    loop: str | Callable | None = None
    time_limit_s: float | None = None

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems) -> TrainConfig:
        """Read the ``train:`` value; what is wrong goes to ``problems``."""
        train = problems.mapping("train", raw)
        problems.unknown("train", train, field_names(cls))
        max_epochs = problems.typed("train.max_epochs", train.get("max_epochs", cls.max_epochs), int, minimum=1)
        batch_size = problems.typed("train.batch_size", train.get("batch_size", cls.batch_size), int, minimum=1)
        precision = train.get("precision", cls.precision)
        if isinstance(precision, int) and not isinstance(precision, bool):
            precision = str(precision)  # YAML reads `precision: 32` as a number
        if not problems.one_of("train.precision", precision, PRECISIONS, noun="precision"):
            precision = None
        metrics = train.get("metrics")
        if isinstance(metrics, str):
            metrics = [metrics]
        if metrics is not None and not isinstance(metrics, (list, tuple)):
            problems.add(f"train.metrics: must be a list of metric names, got {metrics!r}")
            metrics = []
        early = train.get("early_stopping")
        if early is not None:
            early = EarlyStoppingConfig.from_dict(early, problems)
        for key in ("step", "loop"):
            if train.get(key) is not None:
                problems.import_path(f"train.{key}", train[key], what="function")
        time_limit = train.get("time_limit_s")
        if time_limit is not None:
            time_limit = problems.typed("train.time_limit_s", time_limit, float, minimum=0.0, exclusive_min=True)
        if train.get("step") is not None and train.get("loop") is not None:
            problems.add("train: set `step` (your per-batch step) or `loop` (your whole loop), not both")
        return cls(
            metrics=None if metrics is None else tuple(metrics),
            **given(max_epochs=max_epochs, batch_size=batch_size, precision=precision, step=train.get("step"),
                    loop=train.get("loop"), early_stopping=early, time_limit_s=time_limit),
        )

    def to_dict(self) -> dict[str, Any]:
        """The section as the file writes it: unset parts left out."""
        out: dict[str, Any] = {"max_epochs": self.max_epochs, "batch_size": self.batch_size}
        if self.precision != "32":
            out["precision"] = self.precision
        if self.metrics is not None:
            out["metrics"] = list(self.metrics)
        if self.early_stopping is not None:
            out["early_stopping"] = self.early_stopping.to_dict()
        for key in ("step", "loop", "time_limit_s"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out
