"""Building, fitting and restoring the Tuner."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ray import tune
from ray.tune.logger import JsonLoggerCallback

from .callbacks import HistoryCallback, trial_dirname
from .local import _workers_ready
from ..config.stop import target_modes
from .loggers import logger_callbacks
from .search import SearchPlan, build_scheduler, build_search, param_space, tune_objective
from .stop import RunRules, take_record
from .trial import SharedData, TrialFunction, trainable

# Tune's console and logger settings for this library's runs (documented Tune variables, set only
# while a run is fitted): one status line instead of Ray's pages of tables, none of Ray's CSV and
# TensorBoard loggers (HistoryCallback writes what results and TensorBoard need), no warning about
# experiment-state syncs that take longer than Tune's threshold on slow storage.
_TUNE_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


@contextlib.contextmanager
def _tune_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in _TUNE_ENV}
    for key, value in _TUNE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _trainable(config: Any, trial_fn: TrialFunction, shared: SharedData, run_dir: str) -> Any:
    from ..storage import ray_storage

    res = config.resources
    if res.workers > 1:
        from .group import group_trainable

        return group_trainable(trial_fn, shared, ray_storage(run_dir), workers=res.workers, cpu=res.cpu, gpu=res.gpu)
    return trainable(trial_fn, shared, ray_storage(run_dir), cpu=res.cpu, gpu=res.gpu)


def _group_settings(config: Any, plan: SearchPlan) -> tuple[int | None, list]:
    """For trials of several workers: how many run at once (the groups the cluster holds, at most
    ``search.max_concurrent``; each trial's own Tune actor holds no CPU, so Tune cannot count them)
    and the callback that frees a stopped trial's workers. (None, []) for one-worker trials."""
    res = config.resources
    if res.workers <= 1:
        return None, []
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from .cluster import group_capacity
    from .group import GroupCleanup

    limit = max(1, min([x for x in (config.search.max_concurrent, group_capacity(res.cpu, res.gpu, res.workers)) if x] or [1]))
    if isinstance(plan.search_alg, BasicVariantGenerator):  # grid and random limit themselves
        plan.search_alg.max_concurrent = limit
    return limit, [GroupCleanup()]


def _release_groups(callbacks: list) -> None:
    """After the run, whatever ended it: free the workers of every trial of several the run had."""
    for callback in callbacks:
        callback.release_all()


def run_tuner(config: Any, shared: SharedData, trial_fn: TrialFunction, *, run_dir_parent: str, callbacks: list,
              metric_names: tuple[str, ...] | None = None, plan: SearchPlan | None = None,
              staging: tuple[str, str] | None = None) -> Any:
    """Build and fit the Tuner; returns Ray's ResultGrid (:func:`run_stop` then says whether a
    rule of the run's own ended it).

    ``trial_fn(params, data, reporter)`` runs one trial (the experiment's, or TorchSearchCV's
    k folds). ``metric_names``: what trials report (default: the experiment's), for
    history.jsonl and TensorBoard. ``staging``: see :class:`HistoryCallback` (URI run
    directories)."""
    from ..storage import join, ray_storage

    plan = plan or build_search(config)
    take_record()  # nothing left over from an earlier run in this process
    rules = RunRules(config.search.time_budget_s, target_modes(config, config.stop_all_at))
    run_dir = join(run_dir_parent, config.name)
    metric, mode = tune_objective(config)
    group_limit, group_callbacks = _group_settings(config, plan)
    limit = None if config.search.algorithm in ("grid", "random") else (group_limit or config.search.max_concurrent)
    tune_config = tune.TuneConfig(
        metric=metric,
        mode=mode,
        search_alg=plan.search_alg,
        scheduler=build_scheduler(config),
        num_samples=plan.num_samples,
        # The variant generator limits concurrency itself; Ray wraps model-based searchers.
        max_concurrent_trials=limit,
        # A trial of several workers is a Train run that starts afresh (Tune's reuse would have to
        # wait for the old run's workers to go, and gives up after 2 s)
        reuse_actors=config.resources.workers <= 1,
        trial_dirname_creator=trial_dirname,
    )
    run_config = tune.RunConfig(
        name=config.name,
        storage_path=ray_storage(run_dir_parent),
        checkpoint_config=tune.CheckpointConfig(
            # Ray keeps every checkpoint; HistoryCallback applies the disk budget as results arrive
            # (and results.write_results at the end).
            num_to_keep=None,
            checkpoint_score_attribute=config.search.primary_metric,
            checkpoint_score_order=config.search.primary_mode,
        ),
        failure_config=tune.FailureConfig(max_failures=config.max_failures),
        stop=rules if rules.active else None,
        verbose=0,
        log_to_file=True,
        # The history callback comes first, so no row can be lost; Ray's JSON logger stays for
        # Ray's own tools; then the run's own stop rules, and the trackers of `loggers:` (MLflow, W&B).
        callbacks=[HistoryCallback(config, metric_names, staging), JsonLoggerCallback(),
                   *([rules] if rules.active else []),
                   *logger_callbacks(config, staging[0] if staging else run_dir), *group_callbacks, *callbacks],
    )
    with _tune_env():
        tuner = tune.Tuner(_trainable(config, trial_fn, shared, run_dir),
                           param_space=param_space(config.space, config.search.algorithm),
                           tune_config=tune_config, run_config=run_config)
        _workers_ready.wait()
        try:
            return tuner.fit()
        finally:
            _release_groups(group_callbacks)


def run_stop() -> dict[str, Any] | None:
    """What the run's own rule (``search.time_budget_s``, ``stop_all_at``) recorded when it ended
    the run just fitted (the rule, when, the trials it stopped), or None."""
    return take_record()


def can_restore(run_dir: str) -> bool:
    from ..storage import ray_storage

    return tune.Tuner.can_restore(ray_storage(run_dir))


def restore_tuner(run_dir: str, config: Any, shared: SharedData, trial_fn: TrialFunction) -> Any:
    """Continue an interrupted experiment: finished trials stay finished, unfinished and errored
    ones continue from their newest checkpoints. Returns Ray's ResultGrid."""
    from ..storage import ray_storage

    with _tune_env():
        tuner = tune.Tuner.restore(ray_storage(run_dir), trainable=_trainable(config, trial_fn, shared, run_dir),
                                   resume_unfinished=True, resume_errored=True, restart_errored=False)
        _workers_ready.wait()
        # trials of several workers: the run's GroupCleanup comes back with Tune's saved state
        return tuner.fit()
