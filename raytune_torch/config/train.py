"""The ``train:`` section: the training loop, its metrics and early stopping."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._problems import Problems, field_names, given

__all__ = ["TrainConfig", "EarlyStoppingConfig", "TASKS", "METRICS", "HIGHER_IS_BETTER"]

TASKS = ("classification", "regression")
# The metrics each task can report; the first is the one a trial reports when none are named.
METRICS = {
    "classification": ("accuracy", "f1", "roc_auc"),
    "regression": ("mse", "mae", "r2"),
}
HIGHER_IS_BETTER = {"accuracy", "f1", "roc_auc", "r2"}


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

    ``metrics`` names metrics of the experiment's task (:data:`METRICS`); read from a file without
    ``metrics``, it is None until the experiment fills in its task's first metric. ``step`` (one
    batch) or ``loop`` (the whole loop) replace the built-in training, as ``pkg.mod:function``.
    """

    max_epochs: int = 10
    batch_size: int = 64
    metrics: tuple[str, ...] | None = ()
    early_stopping: EarlyStoppingConfig | None = None
    step: str | Callable | None = None
    loop: str | Callable | None = None

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems) -> TrainConfig:
        """Read the ``train:`` value; what is wrong goes to ``problems``."""
        train = problems.mapping("train", raw)
        problems.unknown("train", train, field_names(cls))
        max_epochs = problems.typed("train.max_epochs", train.get("max_epochs", cls.max_epochs), int, minimum=1)
        batch_size = problems.typed("train.batch_size", train.get("batch_size", cls.batch_size), int, minimum=1)
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
        if train.get("step") is not None and train.get("loop") is not None:
            problems.add("train: set `step` (your per-batch step) or `loop` (your whole loop), not both")
        return cls(
            metrics=None if metrics is None else tuple(metrics),
            **given(max_epochs=max_epochs, batch_size=batch_size, step=train.get("step"), loop=train.get("loop"),
                    early_stopping=early),
        )

    def to_dict(self) -> dict[str, Any]:
        """The section as the file writes it: unset parts left out."""
        out: dict[str, Any] = {"max_epochs": self.max_epochs, "batch_size": self.batch_size}
        if self.metrics is not None:
            out["metrics"] = list(self.metrics)
        if self.early_stopping is not None:
            out["early_stopping"] = self.early_stopping.to_dict()
        for key in ("step", "loop"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out
