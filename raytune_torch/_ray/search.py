"""Ray's parameter space, searchers and schedulers for the experiment's one search space."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
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
    """Ray's param_space for ``space`` under ``algorithm`` (constants pass through)."""
    out: dict[str, Any] = {}
    for name, value in space.items():
        if not isinstance(value, (sp.Float, sp.Int, sp.Choice, sp.Grid)):
            out[name] = value
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


def build_search(config: Any, model_size: Callable[[dict[str, Any]], int | None] | None = None, *,
                 known: Sequence[Any] = (), seed: int | None = None) -> SearchPlan:
    """The search algorithm for the experiment's searcher and space.

    ``model_size(point)`` (a grid point's parameter count, when the data's shape is known) lets a
    grid under the FIFO scheduler run its largest models first (:func:`_largest_first`).
    ``known``: earlier trials (:class:`raytune_torch.warm.Known`) a learning searcher starts from;
    ``seed``: the searcher's seed (default: the experiment's; a run that adds trials to an earlier
    one draws from another).
    """
    search = config.search
    space = config.space
    algorithm = search.algorithm
    seed = config.seed if seed is None else seed
    points = [dict(p) for p in search.points_to_evaluate] or None
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
        alg = BasicVariantGenerator(points_to_evaluate=points, random_state=seed,
                                    max_concurrent=search.max_concurrent or 0)
        note = f"{grid} grid point(s) x {search.num_samples} sample(s)" if grid > 1 else None
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
        sampler = optuna.samplers.TPESampler(seed=seed)
        study = _known_study(known, space, search.mode) if known else {}
        note = f"Optuna starts from {len(known)} earlier trial(s)" if known else None
        return SearchPlan(OptunaSearch(sampler=sampler, points_to_evaluate=points, **study),
                          search.num_samples, search.num_samples, note)
    if algorithm == "hyperopt":
        try:
            from ray.tune.search.hyperopt import HyperOptSearch
            import hyperopt  # noqa: F401
        except ImportError:
            raise ConfigError(["search: hyperopt is not installed; pip install 'raytune-torch[hyperopt]'"]) from None
        return SearchPlan(HyperOptSearch(points_to_evaluate=points, random_state_seed=seed), search.num_samples,
                          search.num_samples)
    raise ConfigError([f"search.algorithm: unknown searcher {algorithm!r}"])


def _optuna_distribution(param: sp.Param) -> Any:
    """The Optuna distribution Ray's OptunaSearch makes of the parameter's Tune domain."""
    import optuna

    d = optuna.distributions
    if isinstance(param, sp.Float):
        return d.FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, sp.Int):
        return d.IntDistribution(param.low, param.high, log=param.log, step=param.step or 1)
    return d.CategoricalDistribution(list(param.values))


def _known_study(known: Sequence[Any], space: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """OptunaSearch's ``storage`` and ``study_name`` for a study that already holds ``known``
    trials as completed ones (Optuna's public ``add_trial``), so TPE starts from them."""
    import optuna

    storage = optuna.storages.InMemoryStorage()
    name = "raytune_torch"
    study = optuna.create_study(storage=storage, study_name=name,
                                direction="maximize" if mode == "max" else "minimize")
    searched = sp.searched(space)
    distributions = {k: _optuna_distribution(v) for k, v in searched.items()}
    for trial in known:
        study.add_trial(optuna.trial.create_trial(params=dict(trial.params), distributions=distributions,
                                                  value=float(trial.value)))
    return {"storage": storage, "study_name": name}


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
