"""Trials of several workers (``resources.workers`` > 1): each trial is a Tune function that runs
the trial in a Ray Train ``TorchTrainer`` (DistributedDataParallel over gloo, or nccl on whole GPUs)
and relays what its workers report to Tune, the way Ray's guide "Hyperparameter Tuning with Ray
Tune" (Train V2) nests Train in Tune.

What differs from the guide, and why (verified on Ray 2.60; docs/notes/multi-worker-trials.md):

* The relay is our own ``UserCallback`` feeding a queue that the Tune function reads, not
  ``ray.tune.integration.ray_train.TuneReportCallback``: that callback gives Tune no checkpoint,
  and this library's checkpoints (trial folders, exact resume, the disk budget, ``load_model``,
  PBT) are Tune's. Rank 0's checkpoint, persisted by Train, is reported to Tune, which copies it
  into the trial's folder; Train keeps one copy of its own under ``RUN_DIR/.train`` until the trial ends.
* The Tune trial itself (the Train driver) holds no CPU (one byte of memory: Tune needs a
  non-empty request); its workers hold ``workers`` x {cpu, gpu} in a placement group of Train's.
  So the run must limit how many trials run at once to the groups the cluster holds
  (``max_groups``), or every trial's Train run would wait for workers forever.
* When Tune stops a trial (ASHA, PBT's pause, the run's end) it ends the trial's actor at once;
  Train's workers die with it, but their placement group belongs to the job and stays. Ray's own
  cleaner (a detached actor per Train run) removes it once the State API says the controller is
  dead, a second or more later, and not at all where it cannot reach the State API (the private
  instance runs Ray's API server for such runs: ``start_local(state_api=True)``). Each trial
  therefore also registers its placement group with a small named actor of the job, and the
  run's :class:`GroupCleanup` callback has it removed as soon as the trial is no longer running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from typing import Any

import ray
import ray.train
from ray import tune

from ..distributed import Group
from . import internals
from .trial import RayReporter, SharedData, TrialFunction

log = logging.getLogger("raytune_torch")

#: what the Tune trial (the Train driver) itself asks for: no CPU; Tune refuses an empty request
DRIVER_RESOURCES = {"cpu": 0, "memory": 1}
#: how often Train's controller polls the workers for reports (Ray's default: 2 s)
POLL_INTERVAL_S = 0.25
#: the namespace of each run's placement-group registry (a named actor the trials find by name)
NAMESPACE = "raytune_torch"


def registry_name() -> str:
    """The name of this Ray job's placement-group registry: the driver and its trials' actors
    belong to one job (a resumed run's new driver is a new job)."""
    return f"groups-{ray.get_runtime_context().get_job_id()}"


def support_error() -> str | None:
    """Why this Ray cannot run trials of several workers, or None. Needs Ray Train V2 (on by default
    in Ray 2.60) with user callbacks; verified on Ray 2.60, refused on Ray 2.41."""
    import ray.train
    from ray.train.torch import TorchTrainer

    if not hasattr(ray.train, "UserCallback") or ".v2." not in TorchTrainer.__module__:
        return (f"resources.workers > 1 runs each trial in a Ray Train TorchTrainer (Train V2, with user callbacks), "
                f"which this Ray {ray.__version__} does not have"
                + (" enabled (RAY_TRAIN_V2_ENABLED is off)" if hasattr(ray.train, "UserCallback") else "")
                + "; use Ray 2.60 (the release this was verified on), or resources.workers: 1")
    return None


def group_trainable(trial_fn: TrialFunction, shared: SharedData, run_dir: str, *, workers: int, cpu: float,
                    gpu: float) -> Any:
    """The Tune trainable of a trial of ``workers`` workers with ``{cpu, gpu}`` each; the run needs a
    :class:`GroupCleanup` callback."""
    wrapped = tune.with_parameters(_group_trial, trial_fn=trial_fn, shared=shared, run_dir=run_dir,
                                   workers=workers, cpu=cpu, gpu=gpu)
    return tune.with_resources(wrapped, DRIVER_RESOURCES)


def _register(trial_id: str, pg: Any) -> None:
    """Hand the trial's placement group to the registry (it removes it when the trial stops)."""
    try:
        registry = ray.get_actor(registry_name(), namespace=NAMESPACE)
    except ValueError:
        log.warning("trial %s: no placement-group registry for this run; if Tune stops the trial, its workers' "
                    "resources are held until the run ends", trial_id)
        return
    registry.add.remote(trial_id, pg)


def _group_trial(params: dict[str, Any], trial_fn: TrialFunction | None = None, shared: SharedData | None = None,
                 run_dir: str | None = None, workers: int = 2, cpu: float = 1.0, gpu: float = 0.0) -> None:
    """The Tune function of a trial of several workers: one Train run, its reports relayed."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    # Train's controller collects the workers' reports when it polls them, every 2 s by default: a
    # trial of short epochs would wait there. Its documented setting passes from this process to the
    # controller (Ray Train's ENV_VARS_TO_PROPAGATE); a value set by the user stays.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(POLL_INTERVAL_S))
    reporter = RayReporter(run_dir)
    checkpoint = reporter.choose_checkpoint()
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    name = f"train-{reporter.trial_id}-{uuid.uuid4().hex[:6]}"
    storage = f"{run_dir.rstrip('/')}/.train" if run_dir else None
    resources = {"CPU": cpu, **({"GPU": gpu} if gpu > 0 else {})}
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"params": params, "trial_fn": trial_fn, "shared": shared, "trial_id": reporter.trial_id,
                           "trial_index": reporter.trial_index, "checkpoint": checkpoint,
                           "replay_after": reporter.replay_after, "queue": queue},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpu > 0,
                                               resources_per_worker=resources),
        # nccl needs a whole GPU per rank; ranks sharing a GPU (gpu < 1) talk over gloo
        torch_config=TorchConfig(backend="nccl" if gpu >= 1 else "gloo"),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, callbacks=[_Relay(queue)],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            # Tune restarts a failed trial from its own checkpoint (max_failures); Train does not retry
            failure_config=ray.train.FailureConfig(max_failures=0)),
    )
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the trial's thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, daemon=True, name=f"train-fit-{reporter.trial_id}")
    thread.start()
    pg = None
    try:
        while True:
            try:
                item = queue.get(timeout=0.2)
            except Empty:
                if not thread.is_alive():
                    break
                continue
            if "placement_group" in item:
                pg = item["placement_group"]
                _register(reporter.trial_id, pg)
                continue
            metrics = dict(item["metrics"][0])  # every rank reports the same, already reduced
            metrics["worker_nodes"] = len({m.get("node_id") for m in item["metrics"]})
            saved = item["checkpoint"]
            tune.report(metrics, checkpoint=tune.Checkpoint(saved.path, filesystem=saved.filesystem)
                        if saved is not None else None)
    except BaseException:
        # Tune stops the trial (tune.report raises SystemExit), or the relay failed: the workers go
        # now, not when the job ends (the run's GroupCleanup does the same if this does not run).
        if pg is not None:
            with contextlib.suppress(Exception):
                ray.util.remove_placement_group(pg)
        raise
    finally:
        with contextlib.suppress(Exception):
            queue.shutdown(force=True)
    thread.join()
    _remove_train_dir(storage, name)
    if "error" in outcome:
        raise _worker_error(outcome["error"])


internals.OWN_TRAINABLES.add(_group_trial.__name__)


def _worker_error(exc: BaseException) -> BaseException:
    """The first worker's own exception when Train wraps it (a ``TrainingFailedError`` whose
    message is a summary of every rank's), so the trial's error names the real cause."""
    inner = getattr(exc, "worker_failures", None)
    if isinstance(inner, dict) and inner:
        first = inner[min(inner)]
        return first if isinstance(first, BaseException) else exc
    return exc


def _remove_train_dir(storage: str | None, name: str) -> None:
    if storage is None:
        return
    from ..storage import filesystem

    with contextlib.suppress(Exception):
        fs, root = filesystem(storage)
        fs.delete_dir(f"{root.rstrip('/')}/{name}")


class _Relay(ray.train.UserCallback if hasattr(ray.train, "UserCallback") else object):  # type: ignore[misc]
    """On the Train controller: hand each report (every rank's metrics, the persisted checkpoint)
    to the trial's Tune function. The queue holds one item, so Train cannot run ahead of Tune's
    decision to stop the trial."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.queue.put({"metrics": metrics, "checkpoint": checkpoint})


class _WorkerReporter:
    """A Train worker's :class:`~raytune_torch.trainable.Reporter`: every rank reports each epoch
    (Train waits for all), rank 0 with the checkpoint."""

    def __init__(self, config: dict[str, Any], group: Group) -> None:
        self.trial_id = config["trial_id"]
        self.trial_index = config["trial_index"]
        self.replay_after = config["replay_after"]
        self.group = group
        self._checkpoint = config["checkpoint"]
        self.node_id = ray.get_runtime_context().get_node_id()

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report({**metrics, "node_id": self.node_id}, checkpoint=checkpoint)

    @contextlib.contextmanager
    def checkpoint_dir(self):
        if self._checkpoint is None:
            yield None
            return
        with self._checkpoint.as_directory() as directory:
            yield directory


def _worker(config: dict[str, Any]) -> None:
    """One rank of a trial (``train_loop_per_worker``): the trial, as one worker runs it."""
    import ray.train

    context = ray.train.get_context()
    group = Group(context.get_world_rank(), context.get_world_size())
    if group.leader:
        config["queue"].put({"placement_group": ray.util.get_current_placement_group()})
    config["trial_fn"](config["params"], config["shared"].get(), _WorkerReporter(config, group))


@ray.remote(num_cpus=0)
class _Groups:
    """The placement groups of a run's running trials, removed when the trials stop."""

    def __init__(self) -> None:
        self.groups: dict[str, Any] = {}

    def add(self, trial_id: str, pg: Any) -> None:
        self._remove(self.groups.pop(trial_id, None))  # a restarted trial's earlier group
        self.groups[trial_id] = pg

    def release(self, trial_ids: list[str] | None = None) -> int:
        ids = list(self.groups) if trial_ids is None else trial_ids
        removed = 0
        for trial_id in ids:
            removed += self._remove(self.groups.pop(trial_id, None))
        return removed

    @staticmethod
    def _remove(pg: Any) -> int:
        if pg is None:
            return 0
        try:
            ray.util.remove_placement_group(pg)
        except Exception:  # already removed (Train removes it when a run ends)
            return 0
        return 1


class GroupCleanup(tune.Callback):
    """In the driver: when a trial of several workers stops running (finished, stopped by the
    scheduler or the run's rules, paused by PBT, failed), its workers' placement group is removed;
    at the run's end, those of every trial of the run.

    The registry is a named actor of this Ray job that the trials find by name, made when the run
    starts or resumes (the callback is pickled with Tune's experiment state, without it)."""

    def __init__(self) -> None:
        self.registry: Any = None
        self._running: set[str] = set()
        self._seen: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"registry": None, "_running": set(), "_seen": set()}

    def setup(self, **info: Any) -> None:
        self.registry = _Groups.options(name=registry_name(), namespace=NAMESPACE, get_if_exists=True).remote()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        gone = []
        for trial in trials:
            if trial.status == "RUNNING":
                self._running.add(trial.trial_id)
                self._seen.add(trial.trial_id)
            elif trial.trial_id in self._running:
                self._running.discard(trial.trial_id)
                gone.append(trial.trial_id)
        if gone and self.registry is not None:
            self.registry.release.remote(gone)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._seen.update(t.trial_id for t in trials)
        self.release_all()

    def release_all(self) -> int:
        """Remove the placement groups of every trial of this run still registered (after the run,
        whatever ended it); returns how many there were."""
        if self.registry is None or not self._seen:
            return 0
        try:
            return ray.get(self.registry.release.remote(sorted(self._seen)), timeout=30)
        except Exception:  # the instance is going down with the run
            return 0
