"""``stop:`` and ``stop_all_at:``: targets that end a trial, or the whole run, once a reported
metric reaches them (``train.time_limit_s`` and ``search.time_budget_s`` bound time)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._problems import Problems
from .train import MEASURED, direction

if TYPE_CHECKING:
    from .experiment import ExperimentConfig

__all__ = ["parse_targets", "dump_targets", "target_modes", "reached", "check_targets"]

_WHAT = {"stop": "a trial stops once it reports", "stop_all_at": "the whole run ends once any trial reports"}


def parse_targets(key: str):
    """The section reader for ``key`` (``stop`` or ``stop_all_at``): a mapping metric -> number."""

    def parse(raw: Any, problems: Problems) -> Mapping[str, float] | None:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping) or not raw:
            problems.add(f"{key}: must map reported metrics to target values, e.g. {{val_accuracy: 0.95}} "
                         f"({_WHAT[key]} it), got {raw!r}")
            return None
        out = {}
        for metric, value in raw.items():
            number = problems.typed(f"{key}.{metric}", value, float)
            if number is not None and not math.isfinite(number):
                problems.add(f"{key}.{metric}: must be a finite number, got {value!r}")
            elif number is not None:
                out[str(metric)] = float(number)
        return out

    return parse


def dump_targets(targets: Mapping[str, float]) -> dict[str, float] | None:
    return dict(targets) or None


def target_modes(config: ExperimentConfig, targets: Mapping[str, float]) -> dict[str, tuple[float, str]]:
    """Each target with the direction that reaches it: ``max`` (reached at or above the value) for
    a higher-is-better metric, ``min`` (at or below) for a loss or error; a metric of the user's
    own function follows ``search.mode`` when it is the search metric."""
    search, out = config.search, {}
    for metric, value in targets.items():
        mode = direction(metric, config.train.metrics or ())
        if mode is None and metric in search.metrics:
            mode = search.modes[search.metrics.index(metric)]
        out[metric] = (value, mode or "min")
    return out


def reached(value: Any, target: float, mode: str) -> bool:
    """Whether a reported ``value`` reaches ``target`` in direction ``mode`` (NaN never does)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return False
    return value >= target if mode == "max" else value <= target


def check_targets(config: ExperimentConfig) -> list[str]:
    """Every target names a metric that trials report, in a direction that is known."""
    problems = []
    reported = [*config.metric_names, *MEASURED]
    for key in ("stop", "stop_all_at"):
        for metric in getattr(config, key):
            if metric not in reported:
                problems.append(f"{key}.{metric}: trials never report {metric!r}, so the target could never be "
                                f"reached{Problems.suggest(metric, reported)}; trials report {', '.join(reported)} "
                                f"(add the metric to train.metrics)")
            elif direction(metric, config.train.metrics or ()) is None and metric not in config.search.metrics:
                problems.append(f"{key}.{metric}: {metric!r} comes from a function of yours, so whether it is reached "
                                f"from above or below is unknown; make it search.metric (with search.mode) or stop "
                                f"on a built-in metric")
    return problems
