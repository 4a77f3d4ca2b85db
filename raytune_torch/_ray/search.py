"""Ray's parameter space, searchers and schedulers for the experiment's one search space."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ray import tune

from .. import space as sp
from ..exceptions import ConfigError


def _domain(param: sp.Param) -> Any:
    if isinstance(param, sp.Float):
        if param.step is not None:
            return tune.qloguniform(param.low, param.high, param.step) if param.log else \
                tune.quniform(param.low, param.high, param.step)
        return tune.loguniform(param.low, param.high) if param.log else tune.uniform(param.low, param.high)
    if isinstance(param, sp.Int):
        if param.step is not None:
            return tune.qlograndint(param.low, param.high, param.step) if param.log else \
                tune.qrandint(param.low, param.high, param.step)
        # randint/lograndint exclude the upper bound; ours is inclusive.
        return tune.lograndint(param.low, param.high + 1) if param.log else tune.randint(param.low, param.high + 1)
    if isinstance(param, sp.Choice):
        return tune.choice(list(param.values))
    if isinstance(param, sp.Grid):
        return tune.grid_search(list(param.values))
    raise TypeError(f"not a search-space parameter: {param!r}")


def param_space(space: Mapping[str, Any], algorithm: str) -> dict[str, Any]:
    """Ray's param_space for ``space`` under ``algorithm`` (constants pass through).

    With conditional parameters, a grid's or random search's points carry every value (see
    :func:`build_search`) and a conditional parameter is None where a point leaves it out; under
    Optuna the define-by-run function suggests every searched parameter, so only constants remain.
    """
    conditional = sp.conditions(space)
    out: dict[str, Any] = {}
    for name, value in space.items():
        if not isinstance(value, (sp.Float, sp.Int, sp.Choice, sp.Grid)):
            out[name] = value
        elif conditional and algorithm == "optuna":
            continue
        elif name in conditional and algorithm in ("grid", "random"):
            out[name] = None
        elif conditional and algorithm == "random" and isinstance(value, sp.Grid):
            out[name] = tune.choice(list(value.values))  # enumerated by the points, not by Ray
        elif algorithm == "grid":
            # Enumerated through points_to_evaluate (see build_search); a sampled domain over the
            # same values keeps Ray's variant generator consistent.
            out[name] = tune.choice(sp.grid_values(value, "grid"))
        elif algorithm == "optuna" and isinstance(value, sp.Grid):
            out[name] = tune.choice(list(value.values))
        else:
            out[name] = _domain(value)
    return out


@dataclass
class SearchPlan:
    """A search algorithm, Tune's ``num_samples`` for it, the trials it will run, and a note."""

    search_alg: Any
    num_samples: int
    total: int
    note: str | None = None


def build_search(config: Any, model_size: Callable[[dict[str, Any]], int | None] | None = None) -> SearchPlan:
    """The search algorithm for the experiment's searcher and space.

    ``model_size(point)`` (a grid point's parameter count, when the data's shape is known) lets a
    grid under the FIFO scheduler run its largest models first (:func:`_largest_first`).
    """
    search = config.search
    space = config.space
    algorithm = search.algorithm
    if algorithm == "grid":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        points = sp.grid_points(space, "grid") or [{}]
        # Shuffle (seeded): Ray's ASHA judges a trial against those seen so far; an ordered grid
        # (e.g. ascending learning rate) defeats it.
        random.Random(config.seed).shuffle(points)
        points = points * search.num_samples
        if model_size is not None and config.scheduler.name == "fifo":
            points = _largest_first(points, model_size)
        alg = BasicVariantGenerator(points_to_evaluate=points, random_state=config.seed,
                                    max_concurrent=search.max_concurrent or 0)
        return SearchPlan(alg, len(points), len(points))
    if algorithm == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        grid = max(1, len(sp.grid_points(space, "random")))
        note = f"{grid} grid point(s) x {search.num_samples} sample(s)" if grid > 1 else None
        if sp.conditions(space):
            points = sampled_points(space, search.num_samples, config.seed)
            alg = BasicVariantGenerator(points_to_evaluate=points, random_state=config.seed,
                                        max_concurrent=search.max_concurrent or 0)
            return SearchPlan(alg, len(points), len(points), note)
        alg = BasicVariantGenerator(random_state=config.seed, max_concurrent=search.max_concurrent or 0)
        return SearchPlan(alg, search.num_samples, grid * search.num_samples, note)
    if algorithm == "optuna":
        try:
            import optuna
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise ConfigError(["search: optuna is not installed; pip install 'raytune-torch[optuna]'"]) from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        searched = sp.searched(space)
        if searched and all(isinstance(v, sp.Grid) for v in searched.values()):
            grid = {k: list(v.values) for k, v in searched.items()}
            n = len(sp.grid_points(space, "optuna"))
            sampler = optuna.samplers.GridSampler(grid, seed=config.seed)
            return SearchPlan(OptunaSearch(sampler=sampler, seed=config.seed), n, n,
                              f"an all-grid space runs as Optuna's GridSampler: {n} trials")
        sampler = optuna.samplers.TPESampler(seed=config.seed)
        if sp.conditions(space):
            alg = OptunaSearch(space=DefineByRun(space), metric=search.metric, mode=search.mode, sampler=sampler)
            return SearchPlan(alg, search.num_samples, search.num_samples)
        return SearchPlan(OptunaSearch(sampler=sampler), search.num_samples, search.num_samples)
    if algorithm == "hyperopt":
        try:
            from ray.tune.search.hyperopt import HyperOptSearch
            import hyperopt  # noqa: F401
        except ImportError:
            raise ConfigError(["search: hyperopt is not installed; pip install 'raytune-torch[hyperopt]'"]) from None
        return SearchPlan(HyperOptSearch(random_state_seed=config.seed), search.num_samples, search.num_samples)
    raise ConfigError([f"search.algorithm: unknown searcher {algorithm!r}"])


def sampled_points(space: Mapping[str, Any], num_samples: int, seed: int | None) -> list[dict[str, Any]]:
    """Random search over a conditional space, drawn here: for each of ``num_samples`` rounds, each
    grid point (inactive grid parameters dropped) with every other parameter drawn from its Ray
    domain, then the inactive parameters removed (:func:`raytune_torch.space.active_params`).

    Ray's variant generator cannot leave a drawn parameter out of a trial's config, so the points
    are given to it whole; one generator seeded with ``seed`` draws them all.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    grid = sp.grid_points(space, "random") or [{}]
    sampled = {k: _domain(v) for k, v in sp.searched(space).items() if not isinstance(v, sp.Grid)}
    points = []
    for _ in range(num_samples):
        for point in grid:
            drawn = {k: domain.sample(random_state=rng) for k, domain in sampled.items()}
            full = {**point, **{k: v.item() if hasattr(v, "item") else v for k, v in drawn.items()}}
            points.append(sp.active_params(space, {k: full[k] for k in space if k in full}))
    return points


class DefineByRun:
    """Optuna's define-by-run ``space`` for a conditional space: suggests the searched parameters
    in :func:`raytune_torch.space.ordered` order, each only while it is active, so the sampler
    models a parameter only on the trials that used it.

    A class rather than a closure: OptunaSearch pickles its space with the experiment state.
    Optuna samples a log range without its ``step`` (as Ray's own conversion does).
    """

    def __init__(self, space: Mapping[str, Any]) -> None:
        self.space = dict(space)

    def __call__(self, trial: Any) -> None:
        chosen: dict[str, Any] = {}
        for name in sp.ordered(self.space):
            param = self.space[name]
            if isinstance(param, (sp.Float, sp.Int, sp.Choice, sp.Grid)) and sp.is_active(self.space, name, chosen):
                chosen[name] = _suggest(trial, name, param)
        return None  # Ray takes the suggested values; constants come from the param_space


def _suggest(trial: Any, name: str, param: sp.Param) -> Any:
    """One Optuna suggestion; the name goes first and by position (Ray 2.41's captor reads args[0])."""
    if isinstance(param, sp.Float):
        step = None if param.log else param.step
        return trial.suggest_float(name, param.low, param.high, step=step, log=param.log)
    if isinstance(param, sp.Int):
        step = 1 if param.log or param.step is None else param.step
        return trial.suggest_int(name, param.low, param.high, step=step, log=param.log)
    return trial.suggest_categorical(name, list(param.values))


def _largest_first(points: list[dict[str, Any]], model_size: Callable[[dict[str, Any]], int | None]) -> list[dict[str, Any]]:
    """The grid's points, largest model first (a stable sort: equal sizes keep their order).

    Every trial of a FIFO grid runs to the end, so the grid's wall time is the longest queue of
    trials on one slot; starting the longest trials first (Graham's LPT rule) leaves short ones
    to fill the slots at the end, instead of one slot training the largest model alone while the
    others idle. Parameter count stands in for a trial's cost (one model is built per distinct set
    of ``module__`` parameters); when a model cannot be sized, or all are the same size, the
    order is left as it is.
    """
    sizes: dict[str, int | None] = {}
    keys = []
    for point in points:
        key = repr(sorted((k, repr(v)) for k, v in point.items() if k.startswith("module__")))
        if key not in sizes:
            sizes[key] = model_size(point)
        keys.append(key)
    if any(size is None for size in sizes.values()) or len(set(sizes.values())) < 2:
        return points
    order = sorted(range(len(points)), key=lambda i: -sizes[keys[i]])
    return [points[i] for i in order]


def build_scheduler(config: Any) -> Any:
    name = config.scheduler.name
    opts = dict(config.scheduler.options)
    max_t = config.train.max_epochs
    from ray.tune import schedulers as s

    # Time is the trial's own epoch count (one epoch = one report), which survives restores
    # from a checkpoint newer than Ray's saved state.
    if name == "fifo":
        return s.FIFOScheduler()
    if name == "asha":
        return s.ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=opts["grace_period"],
                               reduction_factor=opts["reduction_factor"], brackets=opts["brackets"])
    if name == "hyperband":
        return s.HyperBandScheduler(time_attr="epoch", max_t=max_t, reduction_factor=opts["reduction_factor"])
    if name == "median":
        return s.MedianStoppingRule(time_attr="epoch", grace_period=opts["grace_period"],
                                    min_samples_required=opts["min_samples_required"])
    if name == "pbt":
        mutations = {}
        for key, param in sp.searched(config.space).items():
            mutations[key] = list(param.values) if isinstance(param, (sp.Grid, sp.Choice)) else _domain(param)
        return s.PopulationBasedTraining(
            time_attr="epoch", perturbation_interval=opts["perturbation_interval"],
            hyperparam_mutations=mutations, quantile_fraction=opts["quantile_fraction"],
            resample_probability=opts["resample_probability"], synch=False)
    raise ConfigError([f"scheduler.name: unknown scheduler {name!r}"])
