"""``run(config) -> TuneResult``: validate, load data once, preflight, tune on Ray, write results."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from . import space as sp
from . import storage as st
from .config import ExperimentConfig, config_to_dict, load_config
from .data import Splits, load_data
from .trackers import check_trackers

__all__ = ["run", "resume", "prepare"]


def _echo(text: str, quiet: bool) -> None:
    if not quiet:
        print(text, flush=True)


def prepare(source: Any, **overrides: Any) -> tuple[ExperimentConfig, Splits]:
    """Validate the experiment, load and split its data, and run the preflight batch.

    Everything here happens before Ray starts, so bad input fails in seconds.
    """
    config = _config(source, **overrides)
    return config, _load_and_check(config)


def _config(source: Any, **overrides: Any) -> ExperimentConfig:
    config = load_config(source, **overrides)
    for path in config.import_paths:
        if path not in sys.path:
            sys.path.append(path)
    return config


def _load_and_check(config: ExperimentConfig) -> Splits | Any:
    """The data the trials are given (arrays, or a Dataset source or streamed table that each trial
    reads itself), checked by the preflight batch."""
    data = load_data(config.data, config.task, config.seed, import_paths=config.import_paths)
    from .trainable import preflight

    preflight(config, data, sp.representative_point(config.space))
    return data


def _start(config: ExperimentConfig, address: str | None, token_file: str | None,
           num_gpus: int | None) -> tuple[Splits, bool]:
    """Load the data, run the preflight batch and start (or join) Ray; returns the data and
    whether this call started Ray (then the caller stops it).

    The experiment file was validated before this (a bad file never starts Ray). A private local
    instance starts while the data loads and the preflight batch runs in a thread: starting Ray is
    mostly waiting for its processes, and its workers import torch meanwhile. A data or preflight
    error stops that instance again before it is raised. A cluster is joined after the checks.
    """
    from concurrent.futures import ThreadPoolExecutor

    from . import _ray

    if address or _ray.is_running():
        data = _load_and_check(config)
        return data, (_ray.connect(address, token_file) if address else False)
    with ThreadPoolExecutor(1, thread_name_prefix="raytune-torch-prepare") as pool:
        loading = pool.submit(_load_and_check, config)
        # in the main thread (Ray's signal handlers); Ray Train (several workers per trial) needs the State API
        owned = _ray.start_local(num_gpus=num_gpus, state_api=config.resources.workers > 1)
        try:
            data = loading.result()
        except BaseException:
            if owned:
                _ray.shutdown()
            raise
    return data, owned


def _token_env(address: str | None, token_file: str | None) -> None:
    """For a cluster: the token reaches Ray through the environment, before Ray is imported."""
    if address:
        from .auth import client_env

        client_env(token_file)


def _serializable(raw: Any) -> Any:
    from .components import describe
    from .config.search import is_searcher_object

    if isinstance(raw, dict):
        return {k: _serializable(v) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return [_serializable(v) for v in raw]
    if callable(raw):
        return describe(raw)
    if is_searcher_object(raw):  # written as its class's import path (built again on resume)
        return describe(type(raw))
    return raw


def run(source: str | os.PathLike | dict | ExperimentConfig, *, address: str | None = None,
        quiet: bool = False, callbacks: list | None = None, num_gpus: int | None = None,
        token_file: str | None = None, searcher: Any = None, **overrides: Any):
    """Tune the experiment and return its :class:`~raytune_torch.results.TuneResult`.

    Args:
        source: an experiment file, a dict of the same shape, or an :class:`ExperimentConfig`.
        address: join this Ray cluster ("auto", "host:port") instead of starting a private local
            instance (the default; it listens on 127.0.0.1 only). A Ray instance already started
            in this process is used as it is.
        token_file: the cluster's auth token file (default: ``RAY_AUTH_TOKEN``,
            ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``); see :mod:`raytune_torch.auth`.
        quiet: print nothing but errors.
        callbacks: extra ``ray.tune.Callback`` objects (they run in the driver).
        searcher: a ``ray.tune.search.Searcher`` object to use as it is, instead of
            ``search.algorithm`` (the same as ``search: {algorithm: <the object>}`` in a dict). Built
            without a space of its own: it is given the experiment's space and metric. The checks
            of a named searcher (grid semantics, ``search.sampler``, the seed) do not apply to it;
            grid parameters and several objectives are refused.
        num_gpus: GPUs the private local instance advertises (default: the CUDA devices found);
            more than the machine has makes logical GPUs, which schedule trials but have no CUDA.
        overrides: ``search``, ``scheduler``, ``num_samples``, ``max_epochs``, ``storage``, ``name``,
            ``seed``, ``cpus_per_trial``, ``gpus_per_trial``, ``max_concurrent``, ``metric``, ``mode``.

    Raises:
        ConfigError: the experiment is invalid (every problem listed); nothing was started.
        PreflightError: one batch in the driver failed (the cause is named); nothing was started.
        ResourceError: no node can run one trial.
        ClusterError: the cluster at ``address`` does not answer or refuses the token.
    """
    _token_env(address, token_file)
    from . import _ray

    started = time.monotonic()
    if searcher is not None:
        overrides["search"] = searcher
    config = _config(source, **overrides)
    known = _known(config.search.warm_start, config) if config.search.warm_start else []
    plan = _ray.build_search(config, known=known)  # fails early when a searcher is not installed
    check_trackers(config)  # and when a tracker's package is missing or its store is refused
    with _on_ray(config, address, token_file, num_gpus) as (shared, data):
        run_dir = _run_on_ray(config, shared, data, plan, quiet, callbacks)
    return _finished(run_dir, started, quiet)


def _known(run_dir: str, config: ExperimentConfig, where: str = "search.warm_start") -> list:
    """The earlier run's trials and scores, checked against the experiment's space and metric."""
    from .warm import known_trials

    return known_trials(run_dir, config.space, config.search.primary_metric, config.search.primary_mode, where=where)


def _run_on_ray(config: ExperimentConfig, shared: Any, data: Splits, plan: Any, quiet: bool,
                callbacks: list | None) -> str:
    from . import _ray
    from .trainable import model_size

    if config.search.algorithm == "grid":  # now that the data's shape is known: largest models first
        plan = _ray.build_search(config, lambda point: model_size(config, point, data))
    storage = st.absolute(config.storage)
    run_dir = st.join(storage, config.name)
    _echo(f"raytune-torch: {config.name}: {plan.total} trial(s), search={config.search.algorithm}, "
          f"scheduler={config.scheduler.name}, metric={config.search.objectives_text}, "
          f"{config.train.max_epochs} epoch(s) max; data: {data.describe()}", quiet)
    if plan.note:
        _echo(f"raytune-torch: {plan.note}", quiet)
    fresh = not st.exists(run_dir)
    try:
        _check_cluster(config, run_dir, quiet)
    except BaseException:
        if fresh:  # a refused run leaves nothing behind
            _remove(run_dir)
        raise
    local_dir = _local_dir(run_dir, fresh=True)
    saved = _serializable(config_to_dict(config))
    saved["storage"] = storage
    Path(local_dir, "experiment.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))

    def tune() -> Any:
        console = [] if quiet else [_ray.ConsoleCallback(config.search.primary_metric, plan.total,
                                                            max_epochs=config.train.max_epochs)]
        return _ray.run_tuner(config, shared, _trial_function(config), run_dir_parent=storage,
                              callbacks=[*console, *(callbacks or [])], plan=plan,
                              staging=_staging(run_dir, local_dir))

    _tune_on_ray(config, data, run_dir, tune, local_dir=local_dir)
    return run_dir


def _trial_function(config: ExperimentConfig) -> Any:
    """What each trial runs: ``fn(params, data, reporter)``."""
    import functools

    from .trainable import experiment_trial

    return functools.partial(experiment_trial, config)


def _remove(run_dir: str) -> None:
    with contextlib.suppress(Exception):
        fs, root = st.filesystem(run_dir)
        fs.delete_dir(root)


def _local_dir(run_dir: str, fresh: bool) -> str:
    """Where the driver writes the run's files: the run directory itself, or for a URI its local
    staging copy (emptied for a new run, downloaded for a resumed one)."""
    if not st.is_uri(run_dir):
        os.makedirs(run_dir, exist_ok=True)
        return run_dir
    local = st.staging_dir(run_dir)
    if fresh:
        shutil.rmtree(local, ignore_errors=True)
        os.makedirs(local, exist_ok=True)
        return local
    return st.download(run_dir, local)


def _staging(run_dir: str, local_dir: str) -> tuple[str, str] | None:
    return (local_dir, run_dir) if st.is_uri(run_dir) else None


@contextlib.contextmanager
def _on_ray(config: ExperimentConfig, address: str | None, token_file: str | None, num_gpus: int | None):
    """Load the data and start (or join) Ray (:func:`_start`), then put the data in the object
    store; yields ``(shared, data)``: the handle trials read it through and the driver's zero-copy
    view of that stored copy. Stops Ray at the end when it was started here.

    The arrays the data factory returned are dropped once stored (nothing here keeps them), so
    the driver holds no second copy of the dataset while the trials run.
    """
    from . import _ray

    data, owned = _start(config, address, token_file, num_gpus)
    try:
        shared, data = _ray.share(data)  # rebinding `data` drops the last reference to the arrays
        yield shared, data
    finally:
        if owned:
            _ray.shutdown()


def _check_cluster(config: ExperimentConfig, run_dir: str, quiet: bool) -> None:
    """Before anything is written: one trial fits a node, and every node sees the storage."""
    from . import _ray

    res = config.resources
    cluster = _ray.check_resources(res.cpu, res.gpu, res.workers)
    shape = f"{{cpu: {res.cpu:g}, gpu: {res.gpu:g}}}"
    each = shape if res.workers == 1 else (f"{res.workers} workers x {shape} (DistributedDataParallel), "
                                           f"{cluster['groups']} trial(s) at once at most")
    _echo(f"raytune-torch: Ray with {cluster['cpus']:g} CPU(s), {cluster['gpus']:g} GPU(s) on "
          f"{cluster['nodes']} node(s); each trial {each}", quiet)
    if st.is_uri(run_dir) or cluster["nodes"] > 1:
        probed = _ray.check_storage(run_dir)
        _echo(f"raytune-torch: storage {st.display(run_dir)} written and read from {probed} node(s)", quiet)


def _tune_on_ray(config: ExperimentConfig, data: Splits, run_dir: str, tune: Any, local_dir: str | None = None) -> None:
    """Tune, then write the results."""
    from .results import write_results

    local_dir = local_dir or run_dir
    from . import _ray

    grid = tune()
    write_results(run_dir, config, data, grid, local_dir=local_dir, run_stop=_ray.run_stop())
    if st.is_uri(run_dir):  # the rest was uploaded as it changed (HistoryCallback)
        st.Mirror(local_dir, run_dir).sync(("results.parquet", "best.json"))


def _finished(run_dir: str, started: float, quiet: bool):
    from .results import TuneResult

    result = TuneResult(run_dir)
    _echo(result.summary(elapsed=time.monotonic() - started), quiet)
    return result


def resume(run_dir: str | os.PathLike, *, address: str | None = None, quiet: bool = False,
           token_file: str | None = None, num_samples: int | None = None):
    """Continue an interrupted run: finished trials are not run again, unfinished (and errored)
    trials continue from their newest complete checkpoint; then the results are written.

    With ``num_samples``, add that many trials to a *finished* run instead, in the same run
    directory (see :func:`extend`).

    Raises:
        ResultsError: ``run_dir`` is missing, is not a raytune_torch run, or already finished.
    """
    if num_samples is not None:
        return extend(run_dir, num_samples, address=address, quiet=quiet, token_file=token_file)
    _token_env(address, token_file)
    from . import _ray
    from .exceptions import ResultsError

    started = time.monotonic()
    run_dir = st.absolute(run_dir)
    shown = st.display(run_dir)
    if not st.exists(run_dir):
        raise ResultsError(f"run directory {shown!r} does not exist; give STORAGE/NAME of an interrupted run")
    local_dir = _local_dir(run_dir, fresh=False)
    saved = os.path.join(local_dir, "experiment.yaml")
    if not os.path.isfile(saved) or not _ray.can_restore(run_dir):
        raise ResultsError(f"{shown!r} is not a raytune_torch run (no experiment.yaml and Ray experiment state); "
                           f"nothing to resume")
    if os.path.isfile(os.path.join(local_dir, "best.json")):
        raise ResultsError(f"the run in {shown!r} already finished; see `raytune-torch results {shown}` "
                           f"(to add trials to it: `raytune-torch resume {shown} --num-samples N`; to tune "
                           f"again, run the experiment under a new --name)")
    config = _config(saved)
    check_trackers(config)
    with _on_ray(config, address, token_file, None) as (shared, data):
        _echo(f"raytune-torch: resuming {config.name} from {shown}", quiet)
        _check_cluster(config, run_dir, quiet)
        _tune_on_ray(config, data, run_dir,
                     lambda: _ray.restore_tuner(run_dir, config, shared, _trial_function(config)), local_dir=local_dir)
    return _finished(run_dir, started, quiet)


def extend(run_dir: str | os.PathLike, num_samples: int, *, address: str | None = None, quiet: bool = False,
           token_file: str | None = None):
    """Add ``num_samples`` trials to the finished run in ``run_dir``, in the same directory.

    The searcher keeps what it learned: Optuna starts from every earlier trial and its score;
    random search draws new configurations (its seed moves on by the number of earlier trials).
    ``points_to_evaluate`` are not run again. Results and TensorBoard continue: ``results.parquet``
    and ``best.json`` cover every trial, earlier and new. A scheduler (ASHA, ...) judges the new
    trials among themselves. If the extension is interrupted, ``resume`` finishes it.

    Raises:
        ResultsError: not a finished run.
        ConfigError: a grid run (every point already ran), or ``num_samples`` below 1.
    """
    from dataclasses import replace

    from . import _ray
    from .exceptions import ConfigError, ResultsError
    from .results import TuneResult, set_aside_results

    _token_env(address, token_file)
    started = time.monotonic()
    run_dir = st.absolute(run_dir)
    shown = st.display(run_dir)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError([f"--num-samples: must be an integer >= 1 (the trials to add), got {num_samples!r}"])
    if not st.exists(st.join(run_dir, "experiment.yaml")):
        raise ResultsError(f"{shown!r} is not a raytune_torch run (no experiment.yaml); give STORAGE/NAME of a "
                           f"finished run")
    local_dir = _local_dir(run_dir, fresh=False)  # for a URI run, its files downloaded once
    config = _config(os.path.join(local_dir, "experiment.yaml"))
    if config.search.algorithm == "grid":
        raise ConfigError([f"search.algorithm: the grid run in {shown!r} already ran every point of its grid, so "
                           f"there is nothing to add; to search further, run the experiment with search: random or "
                           f"optuna under a new --name (search.warm_start can start from this run)"])
    try:
        earlier = TuneResult(run_dir)
    except ResultsError as exc:
        raise ResultsError(f"{exc}; --num-samples adds trials to a finished run (an interrupted one is "
                           f"finished with `raytune-torch resume {shown}` first)") from None
    n_earlier = int(earlier.table["trial_id"].nunique())
    learns = (config.search.algorithm == "optuna" and not config.search.multi_objective
              and not sp.conditions(config.space))
    known = _known(run_dir, config, where="resume --num-samples") if learns else []
    config = replace(config, search=replace(config.search, num_samples=num_samples, points_to_evaluate=()))
    if not st.is_uri(run_dir):  # the run may have moved since: its directory decides where it is
        config = replace(config, storage=os.path.dirname(run_dir.rstrip("/")), name=os.path.basename(run_dir.rstrip("/")))
    plan = _ray.build_search(config, known=known, seed=config.seed + n_earlier)
    check_trackers(config)
    with _on_ray(config, address, token_file, None) as (shared, data):
        _echo(f"raytune-torch: adding {num_samples} trial(s) to {config.name} ({n_earlier} earlier) in {shown}", quiet)
        if plan.note:
            _echo(f"raytune-torch: {plan.note}", quiet)
        _check_cluster(config, run_dir, quiet)
        set_aside_results(local_dir)

        def tune() -> Any:
            console = [] if quiet else [_ray.ConsoleCallback(config.search.primary_metric, plan.total,
                                                                max_epochs=config.train.max_epochs)]
            return _ray.run_tuner(config, shared, _trial_function(config), run_dir_parent=st.absolute(config.storage),
                                  callbacks=console, plan=plan, staging=_staging(run_dir, local_dir))

        _tune_on_ray(config, data, run_dir, tune, local_dir=local_dir)
    return _finished(run_dir, started, quiet)
