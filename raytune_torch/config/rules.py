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
from .train import check_metrics, reported_name

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
    "grace_period_within_training",
    "hyperband_without_concurrency_limit",
    "pbt_can_mutate",
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
    """The search optimizes a metric that trials report."""
    valid = check_metrics(config.task, config.train.metrics or ())[1]
    reported = ["train_loss", "val_loss", *(f"val_{reported_name(m)}" for m in valid)]
    metric = config.search.metric
    if metric in reported:
        return []
    return [f"search.metric: {metric!r} is not reported{Problems.suggest(str(metric), reported)}; trials report "
            f"{', '.join(reported)} (add the metric to train.metrics)"]


def mode_is_known(config: ExperimentConfig) -> list[str]:
    """A search metric from the user's own function comes with ``search.mode`` (left None when not written)."""
    if config.search.mode is not None:
        return []
    return [f"search.mode: the search metric {config.search.metric!r} comes from a function of yours in "
            f"train.metrics, so whether higher is better is yours to say; set search.mode: max or min"]


def searcher_takes_space(config: ExperimentConfig) -> list[str]:
    """The searcher can search this space (grid needs enumerable ranges; see :func:`space.check_searcher`)."""
    if config.search.algorithm not in sp.SEARCHERS:
        return []  # already reported by the search section
    return sp.check_searcher(config.space, config.search.algorithm)


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


RULES: tuple[Callable[[ExperimentConfig], list[str]], ...] = (
    task_fits_dataset,
    loss_fits_task,
    metrics_fit_task,
    metric_is_reported,
    mode_is_known,
    searcher_takes_space,
    grace_period_within_training,
    hyperband_without_concurrency_limit,
    pbt_can_mutate,
)
