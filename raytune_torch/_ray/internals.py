"""Every use of Ray's private internals (and the one of Optuna's), in one guarded module.

Each use is a :class:`Tweak`: it names the Ray versions it was verified on and the private
attributes it touches, and before it applies it checks both. When either differs it logs one line
and Ray's stock behaviour stays (slower, still correct). Tweaks are applied only for the private
local instance this library starts (:func:`~raytune_torch._ray.local.start_local`) or, for
``loopback``, a cluster joined on 127.0.0.1; replaced methods act only for this library's own
trainables; nothing happens at import time, and :func:`undo_all` (called by ``shutdown``) restores
every attribute, so a later ``connect`` in the same process meets stock Ray.

``RAYTUNE_TORCH_RAY_INTERNALS=off`` turns off every tweak that only buys speed (``loopback``, a
security setting, stays); a comma-separated list of names keeps only those. docs/design.md lists
each use, why it exists, and what it measured.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import ray

from .version import parse

log = logging.getLogger("raytune_torch")

ENV = "RAYTUNE_TORCH_RAY_INTERNALS"

#: the names of this library's trial functions (see trial.py): replaced methods act only for them
OWN_TRAINABLES: set[str] = set()


_MISSING = object()


def _resolve(module: str, path: str) -> Any:
    """``module``'s attribute at dotted ``path``, or ``_MISSING`` when any part is missing."""
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:
        return _MISSING
    for part in path.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


class Tweak:
    """One use of a private Ray attribute; subclasses set the class attributes and
    :meth:`_apply`/:meth:`_undo`."""

    name = ""
    #: the Ray versions (major, minor), inclusive, this was verified on
    verified: tuple[tuple[int, int], tuple[int, int]] = ((2, 60), (2, 60))
    #: (module, dotted attribute) pairs that must exist
    touches: tuple[tuple[str, str], ...] = ()
    #: buys speed only (``RAYTUNE_TORCH_RAY_INTERNALS`` can turn it off)
    optional = True

    def __init__(self) -> None:
        self.applied = False
        self._saved: list[tuple[Any, str, Any]] = []
        self._saved_env: list[tuple[str, str | None]] = []
        self._refused = False

    def problem(self) -> str | None:
        low, high = self.verified
        if not low <= parse(ray.__version__) <= high:
            return (f"verified on Ray {low[0]}.{low[1]}-{high[0]}.{high[1]}, this is Ray {ray.__version__}")
        missing = [f"{m}.{p}" for m, p in self.touches if _resolve(m, p) is _MISSING]
        if missing:
            return f"Ray {ray.__version__} has no {', '.join(missing)}"
        return None

    def wanted(self) -> bool:
        chosen = os.environ.get(ENV, "on").strip().lower()
        if not self.optional or chosen in ("", "on", "all"):
            return True
        if chosen in ("off", "none", "0"):
            return False
        return self.name in {c.strip() for c in chosen.split(",")}

    def apply(self) -> bool:
        """Apply unless already applied, unwanted or unverified (one log line); True if in effect."""
        if self.applied:
            return True
        if not self.wanted():
            return False
        problem = self.problem()
        if problem is not None:
            if not self._refused:
                log.info("raytune-torch: %s left to Ray's stock behaviour (%s)", self.name, problem)
                self._refused = True
            return False
        self._apply()
        self.applied = True
        return True

    def undo(self) -> None:
        for owner, attr, value in reversed(self._saved):
            setattr(owner, attr, value)
        self._saved.clear()
        for key, value in reversed(self._saved_env):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        self._undo()
        self.applied = False

    def _set(self, owner: Any, attr: str, value: Any) -> None:
        self._saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    def _setenv(self, key: str, value: str, *, keep_existing: bool = False) -> None:
        """Set an environment variable (restored by :meth:`undo`); with ``keep_existing`` a
        value the user set stays."""
        self._saved_env.append((key, os.environ.get(key)))
        if not (keep_existing and key in os.environ):
            os.environ[key] = value

    def _apply(self) -> None:
        raise NotImplementedError

    def _undo(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# Security: a private instance (and a driver joining a cluster on 127.0.0.1) stays on loopback.


class Loopback(Tweak):
    """Ray binds GCS, raylets and workers to the machine's network address by default, and its
    documented ways to choose the address (``_node_ip_address``, ``--node-ip-address``) are
    rewritten to that address. Ray's own switch for a laptop is ``ENABLE_RAY_CLUSTER``, read when
    nodes start in this process; its variable reaches the processes they start."""

    name = "loopback"
    optional = False
    verified = ((2, 41), (2, 60))
    touches = (("ray._private.ray_constants", "ENABLE_RAY_CLUSTER"),
               ("ray._private.ray_constants", "ENABLE_RAY_CLUSTERS_ENV_VAR"))
    _VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

    def _apply(self) -> None:
        from ray._private import ray_constants

        self._setenv(self._VAR, "0")
        self._set(ray_constants, "ENABLE_RAY_CLUSTER", False)


class QuietDefaultTokenAuth(Tweak):
    """Ray turns token authentication on for a new local instance and logs how to turn it off,
    on every run; for the private instance that is this library's secure default, not news. Only
    that one message is dropped while the instance starts (its logger is found by name)."""

    name = "quiet_token_auth"
    optional = False
    verified = ((2, 60), (2, 60))
    touches = (("ray._private.authentication.authentication_token_setup", "logger"),)
    _PREFIX = "Token authentication is enabled for this Ray cluster."

    def _apply(self) -> None:
        prefix = self._PREFIX

        class _Drop(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                return not record.getMessage().startswith(prefix)

        self._logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
        self._filter = _Drop()
        self._logger.addFilter(self._filter)

    def _undo(self) -> None:
        self._logger.removeFilter(self._filter)


# ------------------------------------------------------------------------------------------------
# Start-up of the private local instance


class NoIdleDaemons(Tweak):
    """No API server, autoscaler monitor or log monitor on the private instance: nothing uses
    them there (no dashboard, one node, ``log_to_driver=False``), ``ray.init`` waits for the API
    server before it starts the raylet, and each imports Ray while the workers import torch.
    ``ray.init`` has no switch for them; ``RayParams`` has. Applied while ``ray.init`` runs.

    ``api_server = True`` keeps the API server (Ray Train's placement-group cleaner asks its State
    API about the Train controller: trials of several workers)."""

    name = "no_idle_daemons"
    verified = ((2, 41), (2, 60))
    touches = (("ray._private.parameter", "RayParams"), ("ray._private.node", "Node.start_api_server"))
    api_server = False

    def _apply(self) -> None:
        from ray._private import node, parameter

        base = parameter.RayParams

        class _LocalParams(base):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.no_monitor = True
                self.include_log_monitor = False

        self._set(parameter, "RayParams", _LocalParams)
        if not self.api_server:
            self._set(node.Node, "start_api_server", lambda self, **kwargs: None)


class PreloadedWorkers(Tweak):
    """Trials run in workers that started with the private instance and imported torch and the
    trial code meanwhile (``raytune_torch._preload``), instead of each trial actor waiting for a
    new process to start and import them.

    Two parts, applied together: Ray's ``_system_config`` keys that start one worker per CPU with
    the raylet, preload the modules and keep idle workers alive for a minute (Tune's placement
    groups reserve every CPU a moment before its trial actors ask for workers; an unknown key
    stops the raylet, hence the version check); and Tune's actor class cache, which gives every
    trial actor a runtime environment of a few variables, and Ray hands an actor only a worker
    started with the same environment. On the private instance those variables are the
    instance's own (set before it starts) and this library's trainables are registered without
    one."""

    name = "preloaded_workers"
    verified = ((2, 41), (2, 60))
    touches = (("ray.tune.execution.class_cache", "_ActorClassCache.get"),
               ("ray.tune.execution.class_cache", "DEFAULT_ENV_VARS"))

    def system_config(self) -> dict[str, Any]:
        """``ray.init``'s ``_system_config`` for the private instance ({} when not applied)."""
        if not self.applied:
            return {}
        return {
            "preload_python_modules": ["raytune_torch._preload"],
            "idle_worker_killing_time_threshold_ms": 60_000,
            "enable_worker_prestart": True,
            # The raylet retries its connection to the object store every 100 ms (Ray: 1 s).
            "raylet_client_connect_timeout_milliseconds": 100,
            "raylet_client_num_connect_attempts": 100,
            "enable_metrics_collection": False,
        }

    def _apply(self) -> None:
        from ray.tune.execution import class_cache

        stock = class_cache._ActorClassCache.get
        for key, value in class_cache.DEFAULT_ENV_VARS.items():
            self._setenv(key, value, keep_existing=True)

        def get(cache: Any, trainable_cls: Any) -> Any:
            if getattr(trainable_cls, "_name", None) not in OWN_TRAINABLES:
                return stock(cache, trainable_cls)
            if trainable_cls not in cache._cache:
                cache._cache[trainable_cls] = ray.remote(trainable_cls)
            return cache._cache[trainable_cls]

        self._set(class_cache._ActorClassCache, "get", get)


# ------------------------------------------------------------------------------------------------
# Per checkpointed epoch


class CheckpointFromResult(Tweak):
    """A checkpoint reported with a result is registered by the driver from that result, instead
    of Tune asking the trial actor's ``save`` for the same checkpoint again (a round trip the
    trial waits for before its next epoch). Saves Tune asks for itself (pause, PBT) keep it."""

    name = "checkpoint_from_result"
    verified = ((2, 41), (2, 60))
    touches = (("ray.tune.execution.tune_controller", "TuneController._checkpoint_trial_if_needed"),
               ("ray.tune.execution.tune_controller", "TuneController._process_trial_save"),
               ("ray.train._internal.session", "_TrainingResult"))

    def _apply(self) -> None:
        from pathlib import PurePosixPath

        from ray import tune
        from ray.train._internal.session import _TrainingResult
        from ray.tune.execution import tune_controller

        stock = tune_controller.TuneController._checkpoint_trial_if_needed

        def checkpoint_if_needed(controller: Any, trial: Any, force: bool = False) -> None:
            name = (trial.last_result or {}).get("checkpoint_dir_name")
            if not (force and name and trial.trainable_name in OWN_TRAINABLES and trial.storage is not None
                    and trial.temporary_state.ray_actor and not trial.is_saving):
                stock(controller, trial, force=force)
                return
            path = PurePosixPath(trial.storage.trial_fs_path, name).as_posix()
            checkpoint = tune.Checkpoint(path, filesystem=trial.storage.storage_filesystem)
            controller._process_trial_save(trial, _TrainingResult(checkpoint=checkpoint,
                                                                  metrics=dict(trial.last_result)))
            controller._callbacks.on_trial_save(iteration=controller._iteration, trials=controller._trials,
                                                trial=trial)

        self._set(tune_controller.TuneController, "_checkpoint_trial_if_needed", checkpoint_if_needed)


# ------------------------------------------------------------------------------------------------
# Correctness: HyperBand goes on after a trial of a bracket fails or ends on its own


class SettledHyperBand(Tweak):
    """Ray's HyperBand judges a bracket when a trial of it reports, and when one leaves it (an
    error, a trial that ends on its own), but in two cases a departure leaves the bracket unjudged
    and the run waits forever (every other trial of the bracket paused, nothing left to report):

    - the departure finishes the bracket (the others wait, paused, at the last milestone): stock
      ``on_trial_remove`` processes only brackets that are not finished, and stops nothing;
    - the bracket was halved once before: ``is_being_processed`` stays set for good after the first
      halving (it guards against nested processing), and the paused trials are never halved again.

    This is no patch: :meth:`scheduler_class` gives subclasses of Ray's schedulers (in
    ``hyperband.py``; they override public methods only) whose ``on_trial_remove`` judges the
    bracket in those cases (stop the paused trials of a finished bracket; halve one whose live
    trials all reached the milestone), never while Ray judges it. On an unverified Ray, Ray's
    stock scheduler runs (one log line).
    """

    name = "settled_hyperband"
    verified = ((2, 41), (2, 60))
    touches = (("ray.tune.schedulers.hyperband", "HyperBandScheduler._process_bracket"),
               ("ray.tune.schedulers.hyperband", "HyperBandScheduler.on_trial_remove"),
               ("ray.tune.schedulers.hyperband", "_Bracket.finished"),
               ("ray.tune.schedulers.hyperband", "_Bracket.cur_iter_done"),
               ("ray.tune.schedulers.hyperband", "_Bracket.cleanup_full"),
               ("ray.tune.schedulers.hyperband", "_Bracket.current_trials"))
    optional = False

    def scheduler_class(self, bohb: bool) -> type:
        """The settled HyperBand (for BOHB with ``bohb``), or Ray's stock one on an unverified Ray."""
        from ray.tune import schedulers

        problem = self.problem()
        if problem is None:
            from . import hyperband

            return hyperband.SettledHyperBandForBOHB if bohb else hyperband.SettledHyperBandScheduler
        if not self._refused:
            log.info("raytune-torch: %s left to Ray's stock behaviour (%s)", self.name, problem)
            self._refused = True
        return schedulers.HyperBandForBOHB if bohb else schedulers.HyperBandScheduler

    @staticmethod
    @contextlib.contextmanager
    def judging(scheduler: Any) -> Iterator[None]:
        """Marks the time ``scheduler`` may judge a bracket (in ``on_trial_result``, or here): it
        stops trials from inside, and each stop comes back through ``on_trial_remove``."""
        scheduler._rtt_judging = getattr(scheduler, "_rtt_judging", 0) + 1
        try:
            yield
        finally:
            scheduler._rtt_judging -= 1

    def on_trial_remove(self, scheduler: Any, stock_remove: Any, tune_controller: Any, trial: Any) -> None:
        """Ray's ``on_trial_remove`` (``stock_remove``), then the judgement it leaves out."""
        bracket = scheduler._trial_info[trial][0]
        stock_remove(tune_controller, trial)
        if getattr(scheduler, "_rtt_judging", 0):
            return
        with self.judging(scheduler):
            if bracket.finished():
                bracket.cleanup_full(tune_controller)  # stop the trials paused at the last milestone
            elif bracket.is_being_processed and bracket.current_trials() and bracket.cur_iter_done():
                scheduler._process_bracket(tune_controller, bracket)  # halve the bracket again

    def _apply(self) -> None:  # nothing to patch: see scheduler_class
        pass


# ------------------------------------------------------------------------------------------------
# Optuna: a sampler Tune can pickle

#: Optuna versions on which NSGA-II's ``_thread_lock`` was verified (inclusive, exclusive)
OPTUNA_LOCK_VERIFIED = ((4, 0), (6, 0))


class _PicklableLock:
    """A ``threading.Lock`` that survives pickling (as a new, unlocked lock): Tune pickles the
    searcher, and with it the sampler, when the Tuner is built and at each experiment checkpoint."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._lock.__exit__(*exc)

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        import threading

        self._lock = threading.Lock()


def picklable_sampler(sampler: Any) -> bool:
    """Give one Optuna sampler object (NSGA-II's and the other genetic samplers) a lock that
    pickles, in place of its private ``_thread_lock``, which Tune cannot pickle with the searcher
    (for correctness: without it such a sampler cannot run under Tune). Only that object changes,
    so there is nothing to undo. Returns False, with one log line, where the attribute is missing
    or Optuna's version is outside :data:`OPTUNA_LOCK_VERIFIED` (the sampler is left as it is)."""
    import optuna

    version = parse(optuna.__version__)
    low, high = OPTUNA_LOCK_VERIFIED
    lock = getattr(sampler, "_thread_lock", _MISSING)
    if lock is _MISSING:
        return False
    if not low <= version < high:
        log.info("raytune_torch: Optuna %s is outside the versions its sampler lock was checked on; left as it is",
                 optuna.__version__)
        return False
    sampler._thread_lock = _PicklableLock()
    return True


# ------------------------------------------------------------------------------------------------
# Cluster connection: fail fast and clearly


def probe_gcs(address: str, metadata: list[tuple[str, str]]) -> tuple[Any, str | None]:
    """One call to the GCS at ``address`` with the auth ``metadata`` and a 5-second deadline,
    through Ray's generated gRPC stubs: ``(problem, cluster's Ray version)``. ``problem`` is None
    when it answered, the ``grpc.StatusCode`` when it did not, or ``...`` when these stubs are
    missing (no probe: Ray's own retry loop then reports)."""
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2 as pb
        from ray.core.generated import gcs_service_pb2_grpc as rpc

        kv_stub, request = rpc.InternalKVGcsServiceStub, pb.InternalKVGetRequest
    except (ImportError, AttributeError):
        return ..., None
    import json

    channel = grpc.insecure_channel(address)
    try:
        reply = kv_stub(channel).InternalKVGet(request(key=b"CLUSTER_METADATA", namespace=b"cluster"),
                                               timeout=5, metadata=metadata)
        try:
            return None, json.loads(reply.value).get("ray_version")
        except (ValueError, AttributeError):
            return None, None
    except grpc.RpcError as exc:
        return exc.code(), None
    finally:
        channel.close()


def reload_auth() -> bool:
    """Make this process read Ray's authentication settings and token again (as Ray's own tests
    do between clusters). Ray reads them once per process and keeps them: after a private local
    instance (its token in ``~/.ray/auth_token``), a cluster with another token refused this
    process until it was restarted. Returns False when Ray's reload is missing (nothing done)."""
    config = _resolve("ray._raylet", "Config.initialize")
    loader = _resolve("ray._raylet", "AuthenticationTokenLoader.instance")
    if config is _MISSING or loader is _MISSING:
        return False
    config("")
    instance = loader()
    if not hasattr(instance, "reset_cache"):
        return False
    instance.reset_cache()
    return True


def auto_address() -> str | None:
    """The GCS address ``ray.init(address="auto")`` would join (RAY_ADDRESS, else the head node
    started on this machine), or None when none is found or Ray's lookup is missing."""
    lookup = _resolve("ray._private.services", "get_ray_address_from_environment")
    if lookup is _MISSING:
        return os.environ.get("RAY_ADDRESS") or None
    try:
        found = lookup("auto", None)
    except ConnectionError:
        return None
    return None if not found or found == "auto" else found


# ------------------------------------------------------------------------------------------------

LOOPBACK = Loopback()
QUIET_TOKEN_AUTH = QuietDefaultTokenAuth()
NO_IDLE_DAEMONS = NoIdleDaemons()
PRELOADED_WORKERS = PreloadedWorkers()
CHECKPOINT_FROM_RESULT = CheckpointFromResult()
SETTLED_HYPERBAND = SettledHyperBand()  # a scheduler class, not a patch: not in ALL
ALL = (LOOPBACK, QUIET_TOKEN_AUTH, NO_IDLE_DAEMONS, PRELOADED_WORKERS, CHECKPOINT_FROM_RESULT)


@contextlib.contextmanager
def during(*tweaks: Tweak) -> Iterator[None]:
    """Apply ``tweaks`` for the duration of the block, then undo them."""
    try:
        for tweak in tweaks:
            tweak.apply()
        yield
    finally:
        for tweak in reversed(tweaks):
            if tweak.applied:
                tweak.undo()


def undo_all() -> None:
    """Restore every attribute a tweak replaced (at shutdown)."""
    for tweak in reversed(ALL):
        if tweak.applied:
            tweak.undo()


def in_effect() -> list[str]:
    return [t.name for t in ALL if t.applied]
