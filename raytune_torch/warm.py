"""What a searcher can know before it starts: ``search.points_to_evaluate`` (configurations to run
first) and earlier trials with their scores (``search.warm_start``, or the run that
``resume --num-samples`` extends).

Points are checked against the experiment's search space here, before Ray starts: every name
must be a searched parameter and every value inside its range or among its values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import space as sp
from .config._problems import Problems
from .exceptions import ConfigError, ResultsError

__all__ = ["Known", "check_points", "known_trials", "LEARNING_SEARCHERS"]

#: the searchers that learn from earlier trials' scores (Ray's OptunaSearch takes evaluated points)
LEARNING_SEARCHERS = ("optuna",)


@dataclass(frozen=True)
class Known:
    """An earlier trial: its searched parameters and its best value of the search metric."""

    trial_id: str
    params: dict[str, Any]
    value: float


def _outside(param: sp.Param, value: Any) -> str | None:
    """Why ``value`` is not in ``param``'s domain, or None."""
    if isinstance(param, (sp.Choice, sp.Grid)):
        return None if value in param.values else f"not one of {list(param.values)}"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(param, sp.Int) and not (number and float(value).is_integer()):
        return "not an integer"
    if not number or not math.isfinite(value):
        return "not a number"
    if not param.low <= value <= param.high:
        return f"outside [{param.low}, {param.high}]"
    return None


def check_points(space: Mapping[str, Any], points: Any, where: str = "search.points_to_evaluate") -> list[str]:
    """Problems of ``points`` (a list of mappings of searched parameters) against ``space``.

    A point may leave parameters out (the searcher fills them in)."""
    if not isinstance(points, Sequence) or isinstance(points, (str, bytes)) or not points:
        return [f"{where}: must be a list of configurations, e.g. [{{optimizer__lr: 0.01}}], got {points!r}"]
    searched = sp.searched(space)
    problems = []
    for index, point in enumerate(points):
        if not isinstance(point, Mapping) or not point:
            problems.append(f"{where}[{index}]: must map searched parameters to values, got {point!r}")
            continue
        for name, value in point.items():
            if name not in searched:
                constant = f" (it is the constant {space[name]!r})" if name in space else ""
                problems.append(f"{where}[{index}].{name}: not a searched parameter of the space{constant}"
                                f"{Problems.suggest(str(name), searched)}; searched: {', '.join(searched) or 'none'}")
                continue
            why = _outside(searched[name], value)
            if why is not None:
                problems.append(f"{where}[{index}].{name}: {value!r} is {why}, the space's domain for it")
    return problems


def known_trials(run_dir: str, space: Mapping[str, Any], metric: str, mode: str, *,
                 where: str = "search.warm_start") -> list[Known]:
    """The finished trials of the run in ``run_dir`` with a finite ``metric``: each one's searched
    parameters and best value over its epochs (``mode``).

    Raises:
        ConfigError: ``run_dir`` is not a finished run, it never reported ``metric``, or its trials'
            parameters do not fit ``space`` (other names, or values outside the domains).
    """
    from .results import TuneResult

    try:
        result = TuneResult(run_dir)
    except ResultsError as exc:
        raise ConfigError([f"{where}: {exc}"]) from None
    table = result.table
    searched = sp.searched(space)
    given = {c.removeprefix("config/") for c in table.columns if c.startswith("config/")}
    missing, extra = sorted(set(searched) - given), sorted(given - set(space))
    if missing or extra:
        raise ConfigError([f"{where}: the run in {run_dir!r} searched other parameters: this space has "
                           f"{', '.join(missing) or 'no others'} that it lacks, and it has {', '.join(extra) or 'none'} "
                           f"that this space lacks; warm-start from a run over the same parameters"])
    if metric not in table.columns:
        raise ConfigError([f"{where}: the run in {run_dir!r} never reported {metric!r} (search.metric); it reported "
                           f"{', '.join(c for c in table.columns if c.startswith(('val_', 'train_')))}"])
    known, outside = [], []
    for trial_id, rows in table.groupby("trial_id", sort=False):
        values = [v for v in rows[metric].tolist() if isinstance(v, (int, float)) and math.isfinite(v)]
        if not values:
            continue  # errored, diverged or never reported: nothing to learn from
        params = {name: _plain(rows[f"config/{name}"].iloc[0]) for name in searched}
        problems = check_points(space, [params], where=f"trial {trial_id}")
        if problems:
            outside.extend(problems)
            continue
        known.append(Known(str(trial_id), params, max(values) if mode == "max" else min(values)))
    if outside:
        raise ConfigError([f"{where}: {len(outside)} value(s) of the run in {run_dir!r} lie outside this space "
                           f"(widen the space to include them, or start without warm_start)", *outside[:5]])
    return known


def _plain(value: Any) -> Any:
    """A table cell as a plain Python value (NumPy scalars from pandas)."""
    return value.item() if hasattr(value, "item") else value
