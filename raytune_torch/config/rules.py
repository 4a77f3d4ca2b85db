"""Rules that span sections, run once every section has been read: ``rule(config) -> problems``.

They see a config built from what could be read (a bad value replaced by its default), so each
rule reports only on values that are there to check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import space as sp
from ._problems import Problems
from .data import BUNDLED_DATASETS
from .scheduler import check_grace_period
from .stop import check_targets
from .train import MEASURED, check_metrics, reported_name

if TYPE_CHECKING:
    from .experiment import ExperimentConfig

__all__ = [
    "RULES",
    "task_fits_dataset",
    "loss_fits_task",
    "metrics_fit_task",
    "metric_is_reported",
    "mode_is_known",
    "searcher_takes_space",
    "objectives_fit_search",
    "sampler_fits_search",
    "searcher_is_installed",
    "bohb_runs_with_hyperband",
    "grace_period_within_training",
    "hyperband_without_concurrency_limit",
    "pbt_can_mutate",
    "stop_targets_are_reported",
    "points_fit_the_searcher",
]

# Built-in losses that belong to the other task.
_OTHER_TASK_LOSSES = {"classification": ("mse", "l1", "huber", "smooth_l1"), "regression": ("cross_entropy", "nll")}


def task_fits_dataset(config: ExperimentConfig) -> list[str]:
    """A bundled dataset is for one task."""
    dataset = config.data.dataset
    if isinstance(dataset, str) and dataset in BUNDLED_DATASETS and BUNDLED_DATASETS[dataset] != config.task:
        return [f"task: the bundled dataset {dataset!r} is for {BUNDLED_DATASETS[dataset]}, not {config.task}"]
    return []


def loss_fits_task(config: ExperimentConfig) -> list[str]:
    """A built-in loss of the other task (mse for classification, cross_entropy for regression)."""
    loss, task = config.loss, config.task
    if loss is None or not isinstance(loss.name, str) or loss.name.lower() not in _OTHER_TASK_LOSSES.get(task, ()):
        return []
    fit, other = ("cross_entropy", "regression") if task == "classification" else ("mse", "classification")
    return [f"loss: {loss.name!r} is a {other} loss but the task is {task}; use e.g. `loss: {fit}` (or set `task:`)"]


def metrics_fit_task(config: ExperimentConfig) -> list[str]:
    """Each of ``train.metrics`` is a metric of the task (built in or a scikit-learn scorer) or an
    import path, and no two are reported under the same name."""
    return check_metrics(config.task, config.train.metrics or ())[0]


def metric_is_reported(config: ExperimentConfig) -> list[str]:
    """The search optimizes metrics that trials report (each of several objectives)."""
    valid = check_metrics(config.task, config.train.metrics or ())[1]
    reported = ["train_loss", "val_loss", *(f"val_{reported_name(m)}" for m in valid)]
    measured = list(MEASURED)
    problems = []
    for metric in config.search.metrics:
        if metric in reported or metric in measured:
            continue
        problems.append(f"search.metric: {metric!r} is not reported{Problems.suggest(str(metric), reported + measured)}; "
                        f"trials report {', '.join(reported)} and {', '.join(measured)} (add the metric to "
                        f"train.metrics)")
    return problems


def mode_is_known(config: ExperimentConfig) -> list[str]:
    """A search metric from the user's own function comes with ``search.mode`` (left None when not written)."""
    search = config.search
    unknown = [m for m, mode in zip(search.metrics, search.modes) if mode is None]
    if not unknown:
        return []
    if not search.multi_objective:
        return [f"search.mode: the search metric {search.metric!r} comes from a function of yours in "
                f"train.metrics, so whether higher is better is yours to say; set search.mode: max or min"]
    return [f"search.mode: the search metrics {unknown} come from functions of yours in train.metrics, so whether "
            f"higher is better is yours to say; set search.mode to a list of one mode per metric, e.g. "
            f"[{', '.join('max' for _ in search.metrics)}]"]


def searcher_takes_space(config: ExperimentConfig) -> list[str]:
    """The searcher can search this space (grid needs enumerable ranges; see :func:`space.check_searcher`);
    a searcher object or import path gets no grid parameters (only Ray's variant generator enumerates)."""
    search = config.search
    if search.named:
        return sp.check_searcher(config.space, search.algorithm)
    if not isinstance(search.algorithm, str) or ":" in search.algorithm:
        grids = sorted(k for k, v in sp.searched(config.space).items() if isinstance(v, sp.Grid))
        if grids:
            return [f"space: a searcher of your own cannot be given grid parameters {grids} (only search: grid and "
                    f"random enumerate them); write them as `type: choice`"]
    return []  # an unknown name: already reported by the search section


def _searcher_name(config: ExperimentConfig) -> str:
    algorithm = config.search.algorithm
    return algorithm if isinstance(algorithm, str) else f"a {type(algorithm).__name__} object"


def objectives_fit_search(config: ExperimentConfig) -> list[str]:
    """Several objectives run on Optuna's multi-objective samplers, under the FIFO scheduler (the
    others stop or pause trials by one metric), with a sampler that takes several objectives."""
    search = config.search
    if not search.multi_objective:
        return []
    objectives = list(search.metrics)
    problems = []
    if search.algorithm != "optuna":
        problems.append(f"search.metric: {len(objectives)} objectives {objectives} run on search: optuna (its "
                        f"multi-objective samplers), not {_searcher_name(config)}; set search.algorithm: optuna, "
                        f"or optimize one metric")
    if config.scheduler.name != "fifo":
        problems.append(f"scheduler: {config.scheduler.name} stops or pauses trials by one metric, but the search has "
                        f"{len(objectives)} objectives {objectives}; use scheduler: fifo (the default), or optimize "
                        f"one metric")
    if search.sampler == "cmaes":
        problems.append(f"search.sampler: cmaes optimizes one objective, not {len(objectives)} {objectives}; use "
                        f"tpe (the default), nsga2, gp, qmc or random")
    return problems


# The packages a searcher or an Optuna sampler needs beyond the searcher's own: (modules, extra).
_SAMPLER_NEEDS = {"cmaes": (("cmaes",), "cmaes"), "gp": (("scipy",), "optuna"), "qmc": (("scipy",), "optuna")}
_SEARCHER_NEEDS = {"optuna": (("optuna",), "optuna"), "hyperopt": (("hyperopt",), "hyperopt"),
                   "bohb": (("hpbandster", "ConfigSpace"), "bohb")}


def _missing(modules: tuple[str, ...]) -> list[str]:
    import importlib.util

    return [m for m in modules if importlib.util.find_spec(m) is None]


def sampler_fits_search(config: ExperimentConfig) -> list[str]:
    """``search.sampler`` is Optuna's, needs a space it can sample, and its package is installed."""
    search = config.search
    sampler = search.sampler
    if sampler is None:
        return []
    if search.algorithm != "optuna":
        return [f"search.sampler: {sampler!r} is an Optuna sampler, but the searcher is {_searcher_name(config)}; "
                f"remove search.sampler, or set search.algorithm: optuna"]
    searched = sp.searched(config.space)
    problems = []
    if searched and all(isinstance(v, sp.Grid) for v in searched.values()):
        problems.append(f"search.sampler: an all-grid space runs as Optuna's GridSampler, not {sampler}; remove "
                        f"search.sampler, or write the grids as `type: choice` for the sampler to choose")
    elif sampler == "cmaes" and searched and all(isinstance(v, sp.Choice) for v in searched.values()):
        problems.append(f"search.sampler: cmaes models float and int ranges, and every searched parameter here is a "
                        f"choice ({sorted(searched)}), which it would draw at random; use tpe, or search ranges")
    if sampler in _SAMPLER_NEEDS:
        modules, extra = _SAMPLER_NEEDS[sampler]
        missing = _missing(modules)
        if missing:
            problems.append(f"search.sampler: {sampler} needs {', '.join(missing)}, which is not installed; "
                            f"pip install 'raytune-torch[{extra}]'")
    return problems


def searcher_is_installed(config: ExperimentConfig) -> list[str]:
    """The named searcher's packages import."""
    algorithm = config.search.algorithm
    if not isinstance(algorithm, str) or algorithm not in _SEARCHER_NEEDS:
        return []
    modules, extra = _SEARCHER_NEEDS[algorithm]
    missing = _missing(modules)
    if not missing:
        return []
    return [f"search.algorithm: {algorithm} needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed; pip install 'raytune-torch[{extra}]'"]


def bohb_runs_with_hyperband(config: ExperimentConfig) -> list[str]:
    """BOHB samples with its own HyperBand scheduler (Ray's HyperBandForBOHB), and only with it."""
    if config.search.algorithm != "bohb" or config.scheduler.name == "hyperband":
        return []
    return [f"scheduler: search: bohb runs with its own HyperBand scheduler, not {config.scheduler.name}; set "
            f"scheduler: hyperband (its reduction_factor applies)"]


def grace_period_within_training(config: ExperimentConfig) -> list[str]:
    """A scheduler's grace period is at most ``train.max_epochs``."""
    return check_grace_period(config.scheduler, config.train.max_epochs)


def hyperband_without_concurrency_limit(config: ExperimentConfig) -> list[str]:
    """Hyperband and ``search.max_concurrent`` do not go together."""
    if config.scheduler.name != "hyperband" or config.search.max_concurrent is None:
        return []
    return ["search.max_concurrent: hyperband assigns trials to its brackets as they are created, and a "
            "concurrency limit starves the brackets (no trial is ever halved); remove max_concurrent "
            "(per-trial resources already bound how many run at once) or use scheduler: asha"]


def pbt_can_mutate(config: ExperimentConfig) -> list[str]:
    """PBT starts from random (or grid) points, mutates what is searched, and restores checkpoints."""
    if config.scheduler.name != "pbt":
        return []
    problems = []
    if config.search.algorithm not in ("random", "grid"):
        problems.append(f"scheduler: pbt starts its population from search: random (or grid), "
                        f"not {config.search.algorithm!r}")
    searched = sp.searched(config.space)
    structural = sorted(k for k in searched if k.startswith("module__"))
    if structural:
        problems.append(
            f"space: pbt copies weights between trials, so the model's shape must not change; make "
            f"{structural} constants (pbt mutates optimizer, loss and batch-size parameters)")
    if not searched:
        problems.append("space: pbt needs at least one searched parameter to mutate")
    conditional = sorted(sp.conditions(config.space))
    if conditional:
        problems.append(
            f"space: pbt mutates every searched parameter of a trial, so it would set the conditional "
            f"parameters {conditional} where they are inactive (and switch what they depend on under a running "
            f"trial); remove their `when`, or use scheduler: asha")
    interval, every = config.scheduler.options.get("perturbation_interval", 1), config.checkpoint.every
    if interval % every:
        problems.append(
            f"checkpoint.every: pbt perturbs every {interval} epoch(s) and needs a checkpoint then; make "
            f"checkpoint.every a divisor of scheduler.perturbation_interval")
    return problems


def stop_targets_are_reported(config: ExperimentConfig) -> list[str]:
    """``stop`` and ``stop_all_at`` name metrics that trials report, in a known direction."""
    return check_targets(config)


def points_fit_the_searcher(config: ExperimentConfig) -> list[str]:
    """``points_to_evaluate`` lie in the space, and the searcher can take them and ``warm_start``."""
    from ..warm import LEARNING_SEARCHERS, check_points

    search, problems = config.search, []
    if search.points_to_evaluate:
        if search.algorithm == "grid":
            problems.append("search.points_to_evaluate: the grid searcher runs every point of the grid already; add "
                            "the values to the grid, or use search: random or optuna")
        else:
            problems.extend(check_points(config.space, search.points_to_evaluate))
        if search.algorithm in ("optuna", "hyperopt"):
            searched = set(sp.searched(config.space))
            partial = [i for i, p in enumerate(search.points_to_evaluate) if set(p) != searched]
            if partial:
                problems.append(f"search.points_to_evaluate: {search.algorithm} needs every searched parameter in each "
                                f"point ({', '.join(sorted(searched))}); point(s) {partial} leave some out (search: "
                                f"random fills them in)")
    conditional = sorted(sp.conditions(config.space))
    if conditional and search.algorithm == "optuna" and (search.points_to_evaluate or search.warm_start):
        problems.append(f"search: points_to_evaluate and warm_start are not available with conditional parameters "
                        f"({conditional} have `when`) under search: optuna; remove them, or use search: random "
                        f"with points_to_evaluate")
    elif search.warm_start is not None and search.multi_objective:
        problems.append("search.warm_start: starts a searcher from earlier scores of one metric; with several "
                        "objectives, give the earlier Pareto front's configurations as search.points_to_evaluate")
    elif search.warm_start is not None and search.algorithm not in LEARNING_SEARCHERS:
        problems.append(f"search.warm_start: {search.algorithm!r} does not learn from earlier scores (Ray's searcher for "
                        f"it takes no evaluated points); use search: optuna, or give the best earlier configurations "
                        f"as search.points_to_evaluate")
    return problems


RULES: tuple[Callable[[ExperimentConfig], list[str]], ...] = (
    task_fits_dataset,
    loss_fits_task,
    metrics_fit_task,
    metric_is_reported,
    mode_is_known,
    searcher_takes_space,
    objectives_fit_search,
    sampler_fits_search,
    searcher_is_installed,
    bohb_runs_with_hyperband,
    grace_period_within_training,
    hyperband_without_concurrency_limit,
    pbt_can_mutate,
    stop_targets_are_reported,
    points_fit_the_searcher,
)
