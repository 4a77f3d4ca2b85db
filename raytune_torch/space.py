"""The one search-space definition shared by every searcher and scheduler.

A search space maps a trial parameter name (``optimizer__lr``, ``module__hidden``, ``batch_size``)
to one of:

* :class:`Float` / :class:`Int` — a range, both ends inclusive, linear or ``log``, with an
  optional ``step`` (values ``low, low + step, ...`` up to ``high``);
* :class:`Choice` — a categorical value the searcher *samples* (random) or *models* (Optuna TPE,
  HyperOpt);
* :class:`Grid` — values that are *enumerated*: every value runs;
* any other value — a constant passed to every trial unchanged.

In YAML the same space is plain data::

    space:
      optimizer__lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
      module__hidden: {type: int, low: 16, high: 128, step: 16}
      batch_size: {type: choice, values: [32, 64, 128]}
      module__dropout: {type: grid, values: [0.0, 0.2]}
      module__activation: relu            # a constant

What grid values mean for each searcher (checked by :func:`check_searcher` before Ray starts):

* ``grid``: every :class:`Grid` and :class:`Choice` is enumerated, and so is every range that has a
  ``step`` (an :class:`Int` range without a step enumerates every integer); a float range without a
  step cannot be enumerated and is refused. ``num_samples`` repeats the whole grid.
* ``random``: :class:`Grid` values are crossed with ``num_samples`` random draws of everything else
  (``num_samples`` trials per grid point, Ray's variant-generator semantics).
* ``optuna``: a space whose every searched parameter is a :class:`Grid` runs as Optuna's
  ``GridSampler`` (each point once); a space that mixes grids with other parameters is refused,
  because a model-based sampler proposes values rather than enumerating them — write the grid as
  ``type: choice`` to let TPE choose, or use ``search: grid``.
* ``hyperopt``: grids are refused the same way (write them as ``type: choice``).
* ``bohb``: grids are refused the same way, and so are ranges with a ``step`` (its ConfigSpace
  drops the quantization): write the values as ``type: choice``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "Float",
    "Int",
    "Choice",
    "Grid",
    "Param",
    "SEARCHERS",
    "parse_space",
    "check_searcher",
    "grid_values",
    "grid_points",
    "representative_point",
    "space_to_dict",
]

SEARCHERS = ("grid", "random", "optuna", "hyperopt", "bohb")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_range(kind: str, low: Any, high: Any, log: Any, step: Any, *, integer: bool) -> None:
    want = "an integer" if integer else "a number"
    for label, value in (("low", low), ("high", high)):
        ok = isinstance(value, int) and not isinstance(value, bool) if integer else _is_number(value)
        if not ok:
            raise ValueError(f"`{label}` must be {want}, but got {value!r}.")
        if _is_number(value) and not math.isfinite(value):
            raise ValueError(f"`{label}` must be finite, but got {value!r}.")
    if not isinstance(log, bool):
        raise ValueError(f"`log` must be true or false, but got {log!r}.")
    if low > high:
        raise ValueError(f"`low <= high` must hold, but got (low={low!r}, high={high!r}); swap them.")
    if log and low <= 0:
        raise ValueError(
            f"a log range needs `low > 0`, but got (low={low!r}); raise `low` or set `log: false`."
        )
    if step is not None:
        ok = isinstance(step, int) and not isinstance(step, bool) if integer else _is_number(step)
        if not ok or step <= 0:
            raise ValueError(f"`step` must be {want} > 0, but got {step!r}.")
        if step > high - low and high != low:
            raise ValueError(
                f"`step` ({step!r}) is larger than the range {low!r}..{high!r}; use a smaller step."
            )


@dataclass(frozen=True)
class Float:
    """A float range ``low <= x <= high``, sampled uniformly or log-uniformly (``log=True``)."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        _check_range("float", self.low, self.high, self.log, self.step, integer=False)


@dataclass(frozen=True)
class Int:
    """An integer range ``low <= x <= high`` (both inclusive), linear or ``log``."""

    low: int
    high: int
    log: bool = False
    step: int | None = None

    def __post_init__(self) -> None:
        _check_range("int", self.low, self.high, self.log, self.step, integer=True)


def _check_values(values: Any) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"`values` must be a list, but got {values!r}.")
    if len(values) == 0:
        raise ValueError("`values` is empty; list at least one value.")
    return tuple(values)


@dataclass(frozen=True)
class Choice:
    """A categorical parameter: the searcher samples (or models) one of ``values``."""

    values: tuple = field()

    def __init__(self, values: Any) -> None:
        object.__setattr__(self, "values", _check_values(values))


@dataclass(frozen=True)
class Grid:
    """Values that are enumerated: one trial (per sample) for each value."""

    values: tuple = field()

    def __init__(self, values: Any) -> None:
        object.__setattr__(self, "values", _check_values(values))


Param = Union[Float, Int, Choice, Grid]
_PARAM_TYPES = (Float, Int, Choice, Grid)
_KEYS = {
    "float": ({"type", "low", "high"}, {"log", "step"}),
    "int": ({"type", "low", "high"}, {"log", "step"}),
    "choice": ({"type", "values"}, set()),
    "grid": ({"type", "values"}, set()),
}
_MAKERS = {"float": Float, "int": Int, "choice": Choice, "grid": Grid}


def _parse_one(name: str, raw: Any) -> Any:
    """Turn one YAML entry into a Param (or return a constant). Raises ValueError."""
    if isinstance(raw, _PARAM_TYPES):
        return raw
    if not isinstance(raw, Mapping):
        return raw  # a constant: number, string, list, None
    looks_like_param = "type" in raw or {"low", "high", "values"} & set(raw)
    if not looks_like_param:
        return dict(raw)  # a constant mapping
    kind = raw.get("type")
    if kind not in _KEYS:
        raise ValueError(
            f"`type` must be one of {sorted(_KEYS)}, but got {kind!r}"
            + ("" if kind is not None else "; add e.g. `type: float`")
            + "."
        )
    required, optional = _KEYS[kind]
    missing = sorted(required - set(raw))
    unknown = sorted(set(raw) - required - optional)
    if missing:
        raise ValueError(f"a `{kind}` parameter needs {', '.join(f'`{k}`' for k in missing)}.")
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise ValueError(f"unknown key(s) {unknown} for a `{kind}` parameter; allowed: {allowed}.")
    args = {k: v for k, v in raw.items() if k != "type"}
    if kind == "float":
        # YAML reads `1e-4` (no dot) as a string; accept numeric strings for floats.
        for key in ("low", "high", "step"):
            if isinstance(args.get(key), str):
                try:
                    args[key] = float(args[key])
                except ValueError:
                    pass
    return _MAKERS[kind](**args)


def parse_space(raw: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Parse a search space written as data. Returns ``(space, problems)``; never raises."""
    if raw is None:
        return {}, []
    if not isinstance(raw, Mapping):
        return {}, [f"space: must be a mapping of parameter name to definition, got {raw!r}"]
    space: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in raw.items():
        if not isinstance(name, str) or not name:
            problems.append(f"space: parameter names must be non-empty strings, got {name!r}")
            continue
        try:
            space[name] = _parse_one(name, value)
        except (ValueError, TypeError) as exc:
            problems.append(f"space.{name}: {exc}")
    return space, problems


def searched(space: Mapping[str, Any]) -> dict[str, Param]:
    """The parameters that vary (everything but constants)."""
    return {k: v for k, v in space.items() if isinstance(v, _PARAM_TYPES)}


def _range_values(param: Float | Int) -> list | None:
    if isinstance(param, Int):
        step = param.step or 1
        return list(range(param.low, param.high + 1, step)) if not param.log or param.step else None
    if param.step is None:
        return None
    count = int(math.floor((param.high - param.low) / param.step + 1e-9)) + 1
    return [round(param.low + i * param.step, 12) for i in range(count)]


def grid_values(param: Param, searcher: str) -> list | None:
    """The values a parameter is enumerated over under ``searcher``, or None if it is sampled."""
    if isinstance(param, Grid):
        return list(param.values)
    if searcher != "grid":
        return None
    if isinstance(param, Choice):
        return list(param.values)
    return _range_values(param)


def check_searcher(space: Mapping[str, Any], searcher: str) -> list[str]:
    """Problems that stop ``space`` from running under ``searcher`` (empty when it can run)."""
    if searcher not in SEARCHERS:
        return [f"search.algorithm: must be one of {list(SEARCHERS)}, got {searcher!r}"]
    params = searched(space)
    problems = []
    grids = sorted(k for k, v in params.items() if isinstance(v, Grid))
    if searcher == "grid":
        for name, param in params.items():
            if grid_values(param, "grid") is None:
                kind = "float" if isinstance(param, Float) else "log int"
                problems.append(
                    f"space.{name}: a {kind} range without `step` cannot be enumerated by "
                    f"search: grid; add a `step`, list the values with `type: grid`, "
                    f"or use search: random/optuna"
                )
    elif searcher == "optuna" and grids and len(grids) != len(params):
        others = sorted(set(params) - set(grids))
        problems.append(
            f"space: search: optuna cannot mix grid parameters {grids} with sampled ones {others}; "
            f"a model-based sampler proposes values instead of enumerating them. Write the grids as "
            f"`type: choice` to let TPE choose, make every parameter a grid (runs Optuna's "
            f"GridSampler), or use search: grid"
        )
    elif searcher in ("hyperopt", "bohb") and grids:
        problems.append(
            f"space: search: {searcher} cannot enumerate grid parameters {grids}; write them as "
            f"`type: choice` to let it choose, or use search: grid"
        )
    if searcher == "bohb":
        stepped = sorted(k for k, v in params.items() if isinstance(v, (Float, Int)) and v.step is not None)
        if stepped:
            problems.append(
                f"space: search: bohb ignores the `step` of {stepped} (its ConfigSpace has no quantized "
                f"ranges); remove the step, or list the values as `type: choice`"
            )
    return problems


def grid_points(space: Mapping[str, Any], searcher: str = "grid") -> list[dict[str, Any]]:
    """Every point of the enumerated part of ``space`` (product of grid values), in order."""
    enumerated = {}
    for name, param in searched(space).items():
        values = grid_values(param, searcher)
        if values is not None:
            enumerated[name] = values
    names = list(enumerated)
    return [dict(zip(names, combo)) for combo in itertools.product(*enumerated.values())]


def representative_point(space: Mapping[str, Any]) -> dict[str, Any]:
    """One valid point of ``space`` (first value, or the low end), used for the preflight check."""
    point = {}
    for name, value in space.items():
        if isinstance(value, (Choice, Grid)):
            point[name] = value.values[0]
        elif isinstance(value, (Float, Int)):
            point[name] = value.low
        else:
            point[name] = value
    return point


def space_to_dict(space: Mapping[str, Any]) -> dict[str, Any]:
    """The YAML/JSON form of ``space`` (inverse of :func:`parse_space`)."""
    out: dict[str, Any] = {}
    for name, value in space.items():
        if isinstance(value, (Float, Int)):
            entry: dict[str, Any] = {
                "type": "float" if isinstance(value, Float) else "int",
                "low": value.low,
                "high": value.high,
            }
            if value.log:
                entry["log"] = True
            if value.step is not None:
                entry["step"] = value.step
            out[name] = entry
        elif isinstance(value, (Choice, Grid)):
            out[name] = {"type": "choice" if isinstance(value, Choice) else "grid",
                         "values": list(value.values)}
        else:
            out[name] = value
    return out
