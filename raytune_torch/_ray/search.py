"""Ray's parameter space, searchers and schedulers for the experiment's one search space."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray import tune

from .. import space as sp
from ..exceptions import ConfigError
from .internals import picklable_sampler


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
        note = f"{grid} grid point(s) x {search.num_samples} sample(s)" if grid > 1 else None
        if sp.conditions(space):
            drawn = sampled_points(space, max(search.num_samples - len(points or []), 0), seed)
            points = [*(points or []), *drawn]
            alg = BasicVariantGenerator(points_to_evaluate=points, random_state=seed,
                                        max_concurrent=search.max_concurrent or 0)
            return SearchPlan(alg, len(points), len(points), note)
        alg = BasicVariantGenerator(points_to_evaluate=points, random_state=seed,
                                    max_concurrent=search.max_concurrent or 0)
        return SearchPlan(alg, search.num_samples, grid * search.num_samples, note)
    if algorithm == "optuna":
        return optuna_plan(config, known=known, seed=seed, points=points)
    if algorithm == "hyperopt":
        try:
            from ray.tune.search.hyperopt import HyperOptSearch
            import hyperopt  # noqa: F401
        except ImportError:
            raise ConfigError(["search: hyperopt is not installed; pip install 'raytune-torch[hyperopt]'"]) from None
        return SearchPlan(HyperOptSearch(points_to_evaluate=points, random_state_seed=seed), search.num_samples,
                          search.num_samples)
    if algorithm == "bohb":
        return SearchPlan(bohb_searcher(config), search.num_samples, search.num_samples,
                          "bohb samples with its HyperBand scheduler (HyperBandForBOHB), which pauses and resumes trials")
    if not isinstance(algorithm, str) or ":" in algorithm:
        searcher = own_searcher(algorithm)
        return SearchPlan(searcher, search.num_samples, search.num_samples,
                          f"searcher of your own: {type(searcher).__name__}")
    raise ConfigError([f"search.algorithm: unknown searcher {algorithm!r}"])


def tune_objective(config: Any) -> tuple[str | None, str | None]:
    """The ``metric`` and ``mode`` Tune's TuneConfig gets: the search's one metric, or None for
    several objectives (TuneConfig takes one metric; OptunaSearch is given the lists itself)."""
    search = config.search
    if search.multi_objective:
        return None, None
    return search.primary_metric, search.primary_mode


def optuna_sampler(config: Any, seed: int | None = None) -> tuple[Any, str | None]:
    """Optuna's sampler named by ``search.sampler`` (tpe when unset), seeded with ``seed`` (default:
    the experiment's seed), and a note on what it cannot model in this space (None when nothing)."""
    import optuna

    name = config.search.sampler or "tpe"
    seed = config.seed if seed is None else seed
    searched = sp.searched(config.space)
    choices = sorted(k for k, v in searched.items() if isinstance(v, sp.Choice))
    ranges = sorted(k for k, v in searched.items() if isinstance(v, (sp.Float, sp.Int)))
    samplers = optuna.samplers
    note = None
    if name == "tpe":
        sampler = samplers.TPESampler(seed=seed)
    elif name == "nsga2":
        sampler = samplers.NSGAIISampler(seed=seed)
        picklable_sampler(sampler)  # Optuna's genetic samplers hold a lock Tune cannot pickle
        size = 50  # Optuna's default population_size
        if config.search.num_samples <= size:
            note = (f"nsga2 breeds generations of {size} trials: the first {size} are drawn at random, so "
                    f"{config.search.num_samples} trial(s) are a random search")
    elif name == "cmaes":
        sampler = samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        drawn = choices + (ranges if len(ranges) < 2 else [])
        if drawn:
            note = (f"cmaes models two or more float/int ranges together; it draws {drawn} at random")
    elif name == "gp":
        sampler = samplers.GPSampler(seed=seed)
    elif name == "qmc":
        with warnings.catch_warnings():  # "experimental" since Optuna 3.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
        if choices:
            note = f"qmc covers the float/int ranges with a low-discrepancy sequence; it draws {choices} at random"
    elif name == "random":
        sampler = samplers.RandomSampler(seed=seed)
    else:
        raise ConfigError([f"search.sampler: unknown sampler {name!r}"])
    return sampler, note


def optuna_searcher(config: Any, sampler: Any, *, points: list[dict] | None = None,
                    known: Sequence[Any] = ()) -> Any:
    """Ray's OptunaSearch with ``sampler``: the space comes from Tune's param_space; several
    objectives are given here as lists (one Optuna study with one direction each), one metric
    through TuneConfig (:func:`tune_objective`). ``points`` are enqueued first; ``known`` earlier
    trials are in the study before the first suggestion (:func:`_known_study`)."""
    from ray.tune.search.optuna import OptunaSearch

    search = config.search
    study = _known_study(known, config.space, search.primary_mode) if known else {}
    if sp.conditions(config.space):  # suggests a parameter only while it is active
        several = search.multi_objective
        return OptunaSearch(space=DefineByRun(config.space),
                            metric=list(search.metrics) if several else search.primary_metric,
                            mode=list(search.modes) if several else search.primary_mode,
                            sampler=sampler, points_to_evaluate=points, **study)
    if search.multi_objective:
        return OptunaSearch(sampler=sampler, metric=list(search.metrics), mode=list(search.modes),
                            points_to_evaluate=points, **study)
    return OptunaSearch(sampler=sampler, points_to_evaluate=points, **study)


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
    trials as completed ones (Optuna's public ``add_trial``), so the sampler starts from them."""
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


def optuna_plan(config: Any, *, known: Sequence[Any] = (), seed: int | None = None,
                points: list[dict] | None = None) -> SearchPlan:
    """search: optuna: an all-grid space as Optuna's GridSampler (each point once); otherwise
    ``search.sampler`` over ``num_samples`` trials, after ``points`` and from ``known`` trials."""
    try:
        import optuna
        from ray.tune.search.optuna import OptunaSearch  # noqa: F401
    except ImportError:
        raise ConfigError(["search: optuna is not installed; pip install 'raytune-torch[optuna]'"]) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search, space = config.search, config.space
    objectives = (f"{len(search.metrics)} objectives {list(search.metrics)} ({', '.join(m for m in search.modes)}); "
                  f"best.json holds the Pareto front") if search.multi_objective else None
    searched = sp.searched(space)
    if searched and all(isinstance(v, sp.Grid) for v in searched.values()):
        grid = {k: list(v.values) for k, v in searched.items()}
        n = len(sp.grid_points(space, "optuna"))
        sampler = optuna.samplers.GridSampler(grid, seed=config.seed)
        note = "; ".join(filter(None, [f"an all-grid space runs as Optuna's GridSampler: {n} trials", objectives]))
        return SearchPlan(optuna_searcher(config, sampler), n, n, note)
    sampler, note = optuna_sampler(config, seed)
    name = search.sampler or "tpe"
    warm = f"Optuna starts from {len(known)} earlier trial(s)" if known else None
    note = "; ".join(filter(None, [f"Optuna's {name} sampler" if search.sampler or objectives else None,
                                   objectives, note, warm])) or None
    return SearchPlan(optuna_searcher(config, sampler, points=points, known=known), search.num_samples,
                      search.num_samples, note)


def bohb_searcher(config: Any) -> Any:
    """Ray's TuneBOHB (hpbandster's BOHB config generator), seeded with the experiment's seed; it
    runs with :func:`build_scheduler`'s HyperBandForBOHB."""
    try:
        import ConfigSpace
        import hpbandster  # noqa: F401
        from ray.tune.search.bohb import TuneBOHB
    except ImportError:
        raise ConfigError(["search: bohb needs hpbandster and ConfigSpace; pip install 'raytune-torch[bohb]'"]) from None
    try:  # older Rays' TuneBOHB passes ConfigSpace arguments that ConfigSpace 1.0 removed
        TuneBOHB.convert_search_space(param_space(config.space, "bohb"))
    except TypeError as exc:
        import ray

        raise ConfigError([f"search: bohb: Ray {ray.__version__}'s TuneBOHB cannot build this space with ConfigSpace "
                           f"{ConfigSpace.__version__} ({exc}); pip install 'ConfigSpace<1' for this Ray, or use "
                           f"Ray 2.60"]) from None
    return TuneBOHB(seed=config.seed)


def own_searcher(algorithm: Any) -> Any:
    """A ``ray.tune.search.Searcher`` object as it is, or one built (without arguments) from the
    import path ``package.module:Class``."""
    from ray.tune.search import Searcher

    from .. import components as comp
    from ..exceptions import PreflightError

    shown = repr(algorithm) if isinstance(algorithm, str) else f"{type(algorithm).__name__} object"
    if isinstance(algorithm, str):
        try:
            algorithm = comp.resolve(algorithm, what="search.algorithm")
        except PreflightError as exc:
            raise ConfigError([str(exc)]) from None
        if isinstance(algorithm, type) and issubclass(algorithm, Searcher):
            try:
                algorithm = algorithm()
            except Exception as exc:
                raise ConfigError([f"search.algorithm: {algorithm.__name__}() failed: {type(exc).__name__}: {exc}; "
                                   f"a searcher named by its import path is built without arguments (from Python, "
                                   f"pass a Searcher object)"]) from None
    if not isinstance(algorithm, Searcher):
        raise ConfigError([f"search.algorithm: {shown} is not a ray.tune.search.Searcher; give a searcher "
                           f"name ({', '.join(sp.SEARCHERS)}), a Searcher object or the import path of its class"])
    return algorithm


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
        from .internals import SETTLED_HYPERBAND

        # Ray's HyperBand can wait forever after a trial fails in a bracket; see SettledHyperBand
        hyperband = SETTLED_HYPERBAND.scheduler_class(bohb=config.search.algorithm == "bohb")
        return hyperband(time_attr="epoch", max_t=max_t, reduction_factor=opts["reduction_factor"])
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
