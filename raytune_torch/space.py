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

Conditional parameters: any parameter may carry ``when``, naming other ``choice`` or ``grid``
parameters and the value (or list of values) each must hold for it to be *active*; several keys
must all hold, and a parameter whose parent is inactive is inactive too (chains are allowed,
cycles are not)::

    space:
      optimizer: {type: choice, values: [adam, sgd, rmsprop]}
      optimizer__momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer: [sgd, rmsprop]}}
      optimizer__nesterov: {type: choice, values: [false, true], when: {optimizer: sgd}}

In Python: ``Float(0.5, 0.99, when={"optimizer": "sgd"})``. An inactive parameter is left out of
the trial's parameters (:func:`active_params`) before anything is built, so it never reaches the
model or the optimizer; the results show it as missing. Per searcher:

* ``grid``: the product is enumerated, inactive parameters are dropped from each point and the
  repeats that leaves are removed (adam, and sgd x 3 momentum values: 4 points, not 6);
* ``random``: every parameter is drawn, then the inactive ones are removed; a conditional
  ``grid`` parameter may depend only on other grid parameters (grids are enumerated first);
* ``optuna``: define-by-run: a parameter is suggested only while it is active, so TPE models it
  only on the trials where it was used; an all-grid space (Optuna's GridSampler) is refused;
* ``hyperopt`` (and any searcher not in :data:`CONDITIONAL_SEARCHERS`): refused.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from ._names import suggest

__all__ = [
    "Float",
    "Int",
    "Choice",
    "Grid",
    "Param",
    "SEARCHERS",
    "CONDITIONAL_SEARCHERS",
    "parse_space",
    "check_searcher",
    "grid_values",
    "grid_points",
    "representative_point",
    "space_to_dict",
    "conditions",
    "check_conditions",
    "active_params",
    "is_active",
    "ordered",
]

SEARCHERS = ("grid", "random", "optuna", "hyperopt", "bohb")
#: the searchers that leave an inactive conditional parameter out (any other is refused with `when`)
CONDITIONAL_SEARCHERS = ("grid", "random", "optuna")


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


def _check_when(when: Any) -> dict[str, tuple] | None:
    """``when`` as ``{parameter: (allowed value, ...)}``: a single value becomes a one-tuple.

    Whether the named parameters exist and hold those values is checked with the whole space
    (:func:`check_conditions`)."""
    if when is None:
        return None
    if not isinstance(when, Mapping) or not when:
        raise ValueError(f"`when` must map another parameter to its value (or a list of values), "
                         f"e.g. {{'optimizer': 'sgd'}}, but got {when!r}.")
    out: dict[str, tuple] = {}
    for name, value in when.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"`when` keys must be parameter names, but got {name!r}.")
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"`when` lists no value for {name!r}; list at least one of its values.")
            out[name] = tuple(value)
        else:
            out[name] = (value,)
    return out


@dataclass(frozen=True)
class Float:
    """A float range ``low <= x <= high``, sampled uniformly or log-uniformly (``log=True``)."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: dict[str, tuple] | None = field(default=None, kw_only=True, hash=False)

    def __post_init__(self) -> None:
        _check_range("float", self.low, self.high, self.log, self.step, integer=False)
        object.__setattr__(self, "when", _check_when(self.when))


@dataclass(frozen=True)
class Int:
    """An integer range ``low <= x <= high`` (both inclusive), linear or ``log``."""

    low: int
    high: int
    log: bool = False
    step: int | None = None
    when: dict[str, tuple] | None = field(default=None, kw_only=True, hash=False)

    def __post_init__(self) -> None:
        _check_range("int", self.low, self.high, self.log, self.step, integer=True)
        object.__setattr__(self, "when", _check_when(self.when))


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
    when: dict[str, tuple] | None = field(default=None, hash=False)

    def __init__(self, values: Any, *, when: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "values", _check_values(values))
        object.__setattr__(self, "when", _check_when(when))


@dataclass(frozen=True)
class Grid:
    """Values that are enumerated: one trial (per sample) for each value."""

    values: tuple = field()
    when: dict[str, tuple] | None = field(default=None, hash=False)

    def __init__(self, values: Any, *, when: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "values", _check_values(values))
        object.__setattr__(self, "when", _check_when(when))


Param = Union[Float, Int, Choice, Grid]
_PARAM_TYPES = (Float, Int, Choice, Grid)
_KEYS = {
    "float": ({"type", "low", "high"}, {"log", "step", "when"}),
    "int": ({"type", "low", "high"}, {"log", "step", "when"}),
    "choice": ({"type", "values"}, {"when"}),
    "grid": ({"type", "values"}, {"when"}),
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
    broken = set()
    for name, value in raw.items():
        if not isinstance(name, str) or not name:
            problems.append(f"space: parameter names must be non-empty strings, got {name!r}")
            continue
        try:
            space[name] = _parse_one(name, value)
        except (ValueError, TypeError) as exc:
            problems.append(f"space.{name}: {exc}")
            broken.add(name)
    problems.extend(check_conditions(space, broken))
    return space, problems


def searched(space: Mapping[str, Any]) -> dict[str, Param]:
    """The parameters that vary (everything but constants)."""
    return {k: v for k, v in space.items() if isinstance(v, _PARAM_TYPES)}


def conditions(space: Mapping[str, Any]) -> dict[str, dict[str, tuple]]:
    """The conditional parameters of ``space``: name -> its ``when`` (allowed values as tuples)."""
    return {k: v.when for k, v in searched(space).items() if v.when}


def _holds(value: Any, allowed: tuple) -> bool:
    """Whether ``value`` is one of ``allowed`` (``True`` is not ``1`` here)."""
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)


def _describe(value: Any) -> str:
    if isinstance(value, (Float, Int)):
        kind = "float" if isinstance(value, Float) else "int"
        return f"a log {kind} range" if value.log else f"{'a' if kind == 'float' else 'an'} {kind} range"
    return f"a constant ({value!r})"


def check_conditions(space: Mapping[str, Any], unparsed: Any = ()) -> list[str]:
    """Problems with the ``when`` of each parameter of ``space`` (empty when every condition can hold).

    A condition names another parameter of the space, a ``choice`` or ``grid`` one, and values
    from its ``values``; conditions form no cycle (``a`` when ``b``, ``b`` when ``a``). Chains are
    allowed: ``c`` when ``b``, ``b`` when ``a``. Names in ``unparsed`` (parameters whose definition
    was already reported) are not reported again.
    """
    problems = []
    for name, when in conditions(space).items():
        where = f"space.{name}.when"
        for other, allowed in when.items():
            if other == name:
                problems.append(f"{where}: {name!r} cannot depend on its own value; name another parameter")
            elif other in unparsed:
                continue
            elif other not in space:
                hint = suggest(other, [k for k in space if k != name])
                problems.append(f"{where}: {other!r} is not a parameter of the space"
                                + (f"; did you mean {hint!r}?" if hint else f"; it has {sorted(space)}"))
            elif not isinstance(space[other], (Choice, Grid)):
                problems.append(f"{where}: {other!r} is {_describe(space[other])}; a condition needs a `choice` "
                                f"or `grid` parameter, so list {other}'s values with `type: choice`")
            else:
                values = list(space[other].values)
                for value in allowed:
                    if not _holds(value, tuple(values)):
                        problems.append(f"{where}: {value!r} is not one of {other}'s values {values}; "
                                        f"name one of them")
    for cycle in _cycles(space):
        problems.append(f"space.{cycle[0]}.when: the conditions form a cycle {' -> '.join(cycle)}, so none of "
                        f"them can be active first; remove one of these `when`s")
    return problems


def _cycles(space: Mapping[str, Any]) -> list[list[str]]:
    """Each cycle of conditions once, as ``[a, b, ..., a]`` starting at its first name in the space."""
    graph = {k: [o for o in w if o != k and o in space] for k, w in conditions(space).items()}
    found: list[list[str]] = []
    seen: set[frozenset] = set()

    def walk(name: str, path: list[str]) -> None:
        for other in graph.get(name, ()):
            if other in path:
                cycle = path[path.index(other):]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    start = min(cycle, key=list(space).index)
                    i = cycle.index(start)
                    found.append([*cycle[i:], *cycle[:i], start])
            else:
                walk(other, [*path, other])

    for name in graph:
        walk(name, [name])
    return found


def ordered(space: Mapping[str, Any]) -> list[str]:
    """The names of ``space`` in its order, except that a parameter comes after the parameters its
    ``when`` names (the order a define-by-run searcher suggests them in)."""
    done: list[str] = []

    def visit(name: str, path: frozenset) -> None:
        if name in done or name in path:
            return  # a cycle is reported by check_conditions
        param = space[name]
        for other in (param.when or {}) if isinstance(param, _PARAM_TYPES) else {}:
            if other in space:
                visit(other, path | {name})
        done.append(name)

    for name in space:
        visit(name, frozenset())
    return done


def active_params(space: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` without the parameters that are inactive under them.

    A parameter with a ``when`` is active when every parameter it names is itself active and
    holds one of the listed values; an inactive one is left out (it never reaches a model or an
    optimizer, and the results show it as missing). Names outside ``space`` pass through.
    """
    if not conditions(space):
        return dict(params)
    active: dict[str, Any] = {}
    for name in ordered(space):
        if name in params and is_active(space, name, active):
            active[name] = params[name]
    return {k: v for k, v in params.items() if k not in space or k in active}


def is_active(space: Mapping[str, Any], name: str, chosen: Mapping[str, Any]) -> bool:
    """Whether ``name`` is active given ``chosen``, the active values of the parameters before it
    in :func:`ordered` order (a parameter missing from ``chosen`` is inactive)."""
    param = space.get(name)
    when = param.when if isinstance(param, _PARAM_TYPES) else None
    return not when or all(other in chosen and _holds(chosen[other], allowed) for other, allowed in when.items())


def _distinct(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``points`` without repeats, in order (a repeat is left when a conditional parameter drops out)."""
    seen, out = set(), []
    for point in points:
        key = repr(sorted(point.items()))
        if key not in seen:
            seen.add(key)
            out.append(point)
    return out


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
    return problems + _conditions_under(space, searcher)


def _conditions_under(space: Mapping[str, Any], searcher: str) -> list[str]:
    """Conditional parameters that ``searcher`` cannot leave out when they are inactive."""
    conditional = conditions(space)
    if not conditional:
        return []
    names = sorted(conditional)
    params = searched(space)
    if searcher not in CONDITIONAL_SEARCHERS:
        return [f"space: search: {searcher} cannot leave out inactive parameters ({names} have `when`); use "
                f"search: optuna (it suggests a parameter only while it is active), random or grid, or remove "
                f"`when`"]
    if searcher == "optuna" and all(isinstance(v, Grid) for v in params.values()):
        return [f"space: search: optuna runs an all-grid space as Optuna's GridSampler, which sets every "
                f"parameter in every trial, so it cannot leave out the conditional parameters {names}; use "
                f"search: grid (it drops inactive parameters and the repeated points they leave), or write "
                f"the parameters as `type: choice`"]
    problems = []
    if searcher == "random":
        for name, when in conditional.items():
            if not isinstance(params[name], Grid):
                continue
            sampled = [o for o in when if o in params and not isinstance(params[o], Grid)]
            if sampled:
                problems.append(
                    f"space.{name}.when: under search: random a grid parameter is enumerated before anything "
                    f"is sampled, so its condition can name only grid parameters, not {sampled}; make {name} "
                    f"`type: choice`, make {sampled[0]} `type: grid`, or use search: grid")
    return problems


def grid_points(space: Mapping[str, Any], searcher: str = "grid") -> list[dict[str, Any]]:
    """Every point of the enumerated part of ``space`` (product of grid values), in order.

    A conditional parameter is left out of the points where it is inactive, and the repeats that
    leaves are dropped: ``optimizer`` in (adam, sgd) and three ``optimizer__momentum`` values
    when sgd make 4 points, not 6."""
    enumerated = {}
    for name, param in searched(space).items():
        values = grid_values(param, searcher)
        if values is not None:
            enumerated[name] = values
    names = list(enumerated)
    points = [dict(zip(names, combo)) for combo in itertools.product(*enumerated.values())]
    if not conditions(space):
        return points
    return _distinct([active_params(space, point) for point in points])


def representative_point(space: Mapping[str, Any]) -> dict[str, Any]:
    """One valid point of ``space`` (first value, or the low end; inactive parameters left out),
    used for the preflight check."""
    point = {}
    for name, value in space.items():
        if isinstance(value, (Choice, Grid)):
            point[name] = value.values[0]
        elif isinstance(value, (Float, Int)):
            point[name] = value.low
        else:
            point[name] = value
    return active_params(space, point)


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
            continue
        if value.when:
            # one value is written bare, unless it is itself a list (a bare list lists values)
            out[name]["when"] = {k: v[0] if len(v) == 1 and not isinstance(v[0], (list, tuple)) else list(v)
                                 for k, v in value.when.items()}
    return out
