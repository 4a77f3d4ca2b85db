"""The only module that imports Ray.

Ray's reporting and checkpoint APIs have changed several times; keeping every Ray call here keeps
the next change to one file. Uses only the ``ray.tune`` entry points (see RAY_NOTES: with Train V2,
``ray.train.report`` inside a Tune trainable fails the trial).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Quiet, single-status console output (read by Tune when a run starts).
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402

from ray.tune.logger import JsonLoggerCallback  # noqa: E402

from . import space as sp  # noqa: E402
from .exceptions import ClusterError, ConfigError, ResourceError  # noqa: E402

__all__ = [
    "start_local",
    "connect",
    "check_resources",
    "param_space",
    "build_search",
    "build_scheduler",
    "RayReporter",
    "ray_trainable",
    "ConsoleCallback",
]

log = logging.getLogger("raytune_torch")


# ------------------------------------------------------------------------------------------------
# Starting and connecting


def start_local(num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Start a private Ray instance bound to 127.0.0.1, unless this process already has one.

    Never attaches to another Ray cluster running on the machine (``address="local"``).
    Returns True when this call started Ray (the caller then shuts it down).

    The instance starts one worker per CPU at once; each imports torch and the trial code
    (:mod:`raytune_torch._preload`) while the driver sets up the Tuner, and the trials run in
    those workers (see :func:`_local_actor_class`).
    """
    global _LOCAL_INSTANCE
    if ray.is_initialized():
        return False
    # Ray binds the machine's network address by default; this keeps GCS, raylet and workers on
    # loopback. The constant is read when nodes start; the variable reaches child processes.
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    # What Tune would put in each trial actor's runtime environment, given to the whole instance
    # instead (workers inherit the raylet's environment, and the raylet this process's).
    for name, value in _TUNE_ACTOR_ENV.items():
        os.environ.setdefault(name, value)
    if num_gpus is None:
        num_gpus = _cuda_count()
    num_cpus = num_cpus or os.cpu_count() or 1
    _workers_ready.start(int(num_cpus))
    try:
        with _without_idle_daemons(), _quiet_default_token_auth():
            ray.init(
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=True,
                _system_config={
                    # Workers import torch and the trial code as they start, not in their first trial.
                    "preload_python_modules": ["raytune_torch._preload"],
                    # Ray kills a worker idle for more than a second while there are more idle workers
                    # than free CPUs, and Tune's placement groups reserve every CPU a moment before
                    # its trial actors ask for workers: workers that started (and imported torch)
                    # while the driver loaded the data were killed in that moment, and each trial
                    # actor waited about 3 s for a new process. Idle workers now live for a minute.
                    "idle_worker_killing_time_threshold_ms": 60_000,
                    # The raylet connects to the object store it has just started on another
                    # thread; when the store is not listening yet it retries a second later
                    # (Ray's default): in four ray.init calls out of six here, a second with
                    # the machine idle. Same 10 s budget, retried every 100 ms.
                    "raylet_client_connect_timeout_milliseconds": 100,
                    "raylet_client_num_connect_attempts": 100,
                    # No metrics exporter: nothing reads metrics without a dashboard, and the
                    # raylet registers about 0.15 s sooner without waiting for one.
                    "enable_metrics_collection": False,
                    # The raylet starts its one worker per CPU as soon as it is up, not when the
                    # first driver registers (Ray's default): the workers begin importing torch
                    # about 0.5 s sooner, and the first trial starts that much sooner (median of
                    # three A/B pairs each on the mlp grid: 4.10 s against 4.55 s after run()).
                    # The raylet then also starts workers ahead of queued leases, never beyond
                    # its free CPUs: a 16-trial grid or ASHA run still uses the two it began with.
                    "enable_worker_prestart": True,
                },
            )
    except BaseException:
        _workers_ready.stop()
        raise
    _LOCAL_INSTANCE = True
    return True


class _DropDefaultTokenAuthWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster.")


@contextlib.contextmanager
def _quiet_default_token_auth():
    """Ray 2.60 turns token authentication on for a new local instance when ``RAY_AUTH_MODE`` is
    unset (the token in ``~/.ray/auth_token``, made if missing) and logs a warning saying how to
    turn it off, on every run. For the private instance that is this library's secure default,
    not news: that one message is dropped while it starts. Everything else Ray logs, and Ray's
    behaviour (an explicit ``RAY_AUTH_MODE=disabled`` included), are unchanged."""
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    quiet = _DropDefaultTokenAuthWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class _WorkersReady:
    """Which of the local instance's workers have imported torch and the trial code.

    Ray starts one worker per CPU with the instance (``--num_prestart_python_workers``); each
    imports :mod:`raytune_torch._preload`, which ends by creating a file named after its PID in
    this directory (passed in ``RAYTUNE_TORCH_WORKERS_READY_DIR``). :meth:`wait` holds the Tuner
    until they are all there. Without it, the first trial starts on the first worker ready; when
    that trial ends before the second worker has imported torch (trials of a fraction of a
    second), Tune reuses the first worker's actor for the next trial and kills the actor being
    created on the second worker with its process; Ray starts a replacement, which loses the
    same race, and the whole run goes through one worker.
    """

    ENV = "RAYTUNE_TORCH_WORKERS_READY_DIR"

    def __init__(self) -> None:
        self.directory: str | None = None
        self.expected = 0

    def start(self, workers: int) -> None:
        import tempfile

        self.stop()
        self._remove_stale(tempfile.gettempdir())
        self.directory = tempfile.mkdtemp(prefix=f"raytune-torch-workers-{os.getpid()}-")
        self.expected = workers
        os.environ[self.ENV] = self.directory  # the raylet, and so its workers, inherit it

    @staticmethod
    def _remove_stale(parent: str) -> None:
        """Directories of drivers that were killed (their PID is in the name)."""
        import glob
        import shutil

        for path in glob.glob(os.path.join(parent, "raytune-torch-workers-*-*")):
            pid = os.path.basename(path).split("-")[3]
            if not pid.isdigit():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass  # alive (another user's)

    def ready(self) -> list[int]:
        try:
            return sorted(int(name) for name in os.listdir(self.directory or "") if name.isdigit())
        except OSError:
            return []

    def wait(self, timeout_s: float = 30.0) -> bool:
        """Until every worker started with the instance is ready, at most ``timeout_s`` (then the
        run goes on: trials start on the workers that are ready). True when all were."""
        if self.directory is None:
            return True
        deadline = time.monotonic() + timeout_s
        while len(self.ready()) < self.expected:
            if time.monotonic() > deadline:
                log.debug("raytune-torch: %d of %d workers ready after %.0f s", len(self.ready()), self.expected,
                          timeout_s)
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        import shutil

        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None
        os.environ.pop(self.ENV, None)


_workers_ready = _WorkersReady()


@contextlib.contextmanager
def _without_idle_daemons():
    """While a private local instance starts: none of the three Python daemons that would have
    nothing to do in it.

    * the API server (with ``include_dashboard=False`` it serves only usage statistics; no Jobs
      API or state API is used on this instance), which ``ray.init`` waits for until it has
      written its address: about 1.5 s before the raylet (and the workers) even start;
    * the autoscaler monitor (one node, nothing to scale);
    * the log monitor (it streams worker output to drivers, and ``log_to_driver`` is off; the
      workers' log files are written as before).

    Each imports Ray for about 0.5 CPU-s while the workers import torch, on the critical path on
    a small machine. Ray's ``ray.init`` has no switch for them: ``RayParams`` has (``no_monitor``,
    ``include_log_monitor``), so its class is replaced while ``ray.init`` builds the node, and the
    node's ``start_api_server`` does nothing meanwhile. Clusters and their ``ray start`` nodes keep
    all of them.
    """
    from ray._private import node as ray_node
    from ray._private import parameter

    params_cls, start_api_server = parameter.RayParams, ray_node.Node.start_api_server

    class _LocalParams(params_cls):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.no_monitor = True
            self.include_log_monitor = False

    parameter.RayParams = _LocalParams
    ray_node.Node.start_api_server = lambda self, **kwargs: None
    try:
        yield
    finally:
        parameter.RayParams = params_cls
        ray_node.Node.start_api_server = start_api_server


# Trial actors in the workers the local instance started. Tune gives every trial actor a runtime
# environment (``{"env_vars": {"PL_DISABLE_FORK": "1", ...}}``, ray.tune.execution.class_cache);
# Ray can hand an actor only a worker started with the same runtime environment, so none of the
# workers started (and preloaded) with the instance could take a trial: each trial actor waited
# for a new process to start and import Ray, Tune and torch (about 3 s before the first trial
# here). On the private local instance that environment is the instance's own (start_local), so
# the actor class is registered without one. Clusters keep Tune's behaviour.
from ray.tune.execution import class_cache as _class_cache  # noqa: E402

_LOCAL_INSTANCE = False
_TUNE_ACTOR_ENV = dict(_class_cache.DEFAULT_ENV_VARS)

_tune_actor_class = _class_cache._ActorClassCache.get


def _local_actor_class(self: Any, trainable_cls: Any) -> Any:
    if not _LOCAL_INSTANCE:
        return _tune_actor_class(self, trainable_cls)
    if trainable_cls not in self._cache:
        self._cache[trainable_cls] = ray.remote(trainable_cls)
    return self._cache[trainable_cls]


_class_cache._ActorClassCache.get = _local_actor_class


# A checkpoint reported with a result, registered without asking the trial for it again. When a
# function trainable reports a checkpoint, the worker has already persisted it to storage and put
# its folder name in the result (``checkpoint_dir_name``). Tune then calls the actor's ``save``,
# a second round trip whose only answer is that same checkpoint, and the trial waits for it before
# its next epoch: about 2 ms of every checkpointed epoch here. For this library's trainables the
# driver builds the checkpoint from the result and registers it the way Tune's save callback
# would. Saves Tune asks for itself (pausing a trial, PBT's exploit) keep the round trip.
from pathlib import PurePosixPath  # noqa: E402

from ray.train._internal.session import _TrainingResult  # noqa: E402
from ray.tune.execution import tune_controller as _tune_controller  # noqa: E402

_OWN_TRAINABLES = frozenset({"_train_function", "_cv_train_function"})
_tune_checkpoint_if_needed = _tune_controller.TuneController._checkpoint_trial_if_needed


def _checkpoint_from_result(self: Any, trial: Any, force: bool = False) -> None:
    name = (trial.last_result or {}).get("checkpoint_dir_name")
    if not (force and name and trial.trainable_name in _OWN_TRAINABLES and trial.storage is not None
            and trial.temporary_state.ray_actor and not trial.is_saving):
        _tune_checkpoint_if_needed(self, trial, force=force)
        return
    path = PurePosixPath(trial.storage.trial_fs_path, name).as_posix()
    checkpoint = tune.Checkpoint(path, filesystem=trial.storage.storage_filesystem)
    # What the actor's save() would return: the checkpoint and the result it came with.
    self._process_trial_save(trial, _TrainingResult(checkpoint=checkpoint, metrics=dict(trial.last_result)))
    self._callbacks.on_trial_save(iteration=self._iteration, trials=self._trials, trial=trial)


_tune_controller.TuneController._checkpoint_trial_if_needed = _checkpoint_from_result


# A checkpoint written straight into the folder Tune would copy it to. A function trainable's
# ``report(checkpoint=...)`` copies the checkpoint's files into the trial's next
# ``checkpoint_NNNNNN`` folder on storage, and the trial then deletes its temporary directory:
# about 1 ms of every checkpointed epoch (as much as the save itself for a small model). When the
# storage is this machine's filesystem (a local run, a shared mount), ``_checkpoint_place`` hands
# the trial that folder to write into, and Tune's copy of it onto itself is skipped here (Arrow's
# local filesystem leaves a file copied onto itself alone, but that is not a documented promise).
# Object storage keeps Tune's copy.
from ray.train._internal.storage import StorageContext as _StorageContext  # noqa: E402

_tune_persist_checkpoint = _StorageContext.persist_current_checkpoint
_TUNE_CHECKPOINT_INDEX = _StorageContext._update_checkpoint_index


def _on_local_disk(fs: Any) -> bool:
    return getattr(fs, "type_name", None) == "local"


def _persist_in_place(self: Any, checkpoint: Any) -> Any:
    if (_on_local_disk(checkpoint.filesystem) and _on_local_disk(self.storage_filesystem)
            and os.path.normpath(checkpoint.path) == os.path.normpath(self.checkpoint_fs_path)):
        self._check_validation_file()  # Tune's error for a node that cannot see the storage path
        return checkpoint.__class__(filesystem=self.storage_filesystem, path=self.checkpoint_fs_path)
    return _tune_persist_checkpoint(self, checkpoint)


_StorageContext.persist_current_checkpoint = _persist_in_place


def _checkpoint_place(storage: Any) -> str | None:
    """The empty folder on storage that a trial's next reported checkpoint goes to, when that
    storage is this machine's filesystem (None otherwise: the trial writes to a temporary
    directory that Tune copies). ``storage``: the trial's ``StorageContext``."""
    if (storage is None or not _on_local_disk(storage.storage_filesystem)
            or type(storage)._update_checkpoint_index is not _TUNE_CHECKPOINT_INDEX):
        return None
    place = os.path.join(storage.trial_fs_path,
                         storage._make_checkpoint_dir_name(storage.current_checkpoint_index + 1))
    # A folder already there was left by a driver killed before Tune saved its state (Tune's
    # checkpoint index lags the disk): a stale checkpoint the trial has already resumed from or
    # past, replaced now as Tune's copy would overwrite it.
    if os.path.lexists(place):
        import shutil

        shutil.rmtree(place)
    os.makedirs(place)
    return place


def connect(address: str, token_file: str | None = None) -> bool:
    """Join an existing Ray cluster at ``address`` ("auto", HOST:PORT of its GCS, or ray://).
    Returns True if joined now (the caller then disconnects).

    The cluster is asked first, with a 5-second limit, whether it is there and accepts this
    client's token (see :mod:`raytune_torch.auth`): Ray itself retries for 20 seconds and then
    reports a generic connection error.

    Raises:
        ClusterError: a dashboard URL was given, nothing answers, or the token is missing or wrong.
    """
    from .auth import client_env

    if ray.is_initialized():
        return False
    token = client_env(token_file)
    if address.startswith(("http://", "https://")):
        raise ClusterError(f"--address {address} is a dashboard (Jobs API) URL: `raytune-torch submit` uses it; "
                           f"`run --address` joins the cluster's GCS (HOST:6379, or 'auto' on the head node)")
    if not address.startswith("ray://"):
        gcs = _auto_address() if address == "auto" else address
        _probe_gcs(gcs, token)
        if gcs.split(":")[0] in ("127.0.0.1", "localhost"):
            # A cluster on loopback (cluster/local_cluster.py): this driver's node address must be
            # 127.0.0.1 too, or Ray looks for a raylet at the machine's address and hangs.
            from ray._private import ray_constants

            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
            ray_constants.ENABLE_RAY_CLUSTER = False
        address = gcs
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    return True


def _auto_address() -> str:
    from ray._private.services import get_ray_address_from_environment

    try:
        found = get_ray_address_from_environment("auto", None)
    except ConnectionError:
        found = None
    if not found or found == "auto":
        raise ClusterError("--address auto found no Ray cluster on this machine (no RAY_ADDRESS and no running "
                           "head node); start one (`ray start --head`) or give HOST:PORT")
    return found


def _probe_gcs(address: str, token: Any) -> None:
    """One GCS call with the token and a 5-second deadline: fail fast and clearly."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    from .auth import auth_headers, refused

    metadata = [(k.lower(), v) for k, v in auth_headers(token).items()]
    channel = grpc.insecure_channel(address)
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=5, metadata=metadata)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise refused(address, token) from None
        raise ClusterError(f"no Ray cluster answers at {address} ({exc.code().name}); is it running, and is this "
                           f"the GCS address of its head node (HOST:6379)?") from None
    finally:
        channel.close()


def is_running() -> bool:
    """Whether this process is connected to Ray (started here or joined)."""
    return ray.is_initialized()


def shutdown() -> None:
    """Disconnect; stop the processes of a private local instance started here."""
    global _LOCAL_INSTANCE
    ray.shutdown()
    _workers_ready.stop()
    _LOCAL_INSTANCE = False


# Device nodes of the drivers torch's CUDA (and ROCm) builds use on Linux: NVIDIA, WSL2, AMD.
_GPU_DEVICE_NODES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def _cuda_count() -> int:
    """The GPUs torch can use in this process. Without any GPU driver's device node (a Linux
    machine without GPUs) that is 0, known without importing torch: the import takes about 2 s,
    and the local instance starts while the data loader imports torch in its own thread."""
    if sys.platform.startswith("linux") and not any(os.path.exists(p) for p in _GPU_DEVICE_NODES):
        return 0
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - torch always importable here
        return 0


def check_resources(cpu: float, gpu: float) -> dict[str, Any]:
    """Fail before launch when no alive node can hold one trial. Returns what the cluster has."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    best = max(((n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in nodes),
               default=(0.0, 0.0))
    fits = [n for n in nodes if n["Resources"].get("CPU", 0.0) >= cpu and n["Resources"].get("GPU", 0.0) >= gpu]
    if not fits:
        cpus = max(n["Resources"].get("CPU", 0.0) for n in nodes) if nodes else 0
        gpus = max(n["Resources"].get("GPU", 0.0) for n in nodes) if nodes else 0
        fix = []
        if cpu > cpus:
            fix.append(f"lower resources.cpu (--cpus-per-trial) to at most {cpus:g}")
        if gpu > gpus:
            fix.append("set resources.gpu: 0 (--gpus-per-trial 0)" if gpus == 0 else
                       f"lower resources.gpu (--gpus-per-trial) to at most {gpus:g}")
        raise ResourceError(
            f"each trial asks for {{cpu: {cpu:g}, gpu: {gpu:g}}} but no node of the Ray cluster has that "
            f"much (largest: {best[0]:g} CPUs, {best[1]:g} GPUs over {len(nodes)} node(s)); "
            + "; ".join(fix or ["run on a cluster with larger nodes"])
        )
    total = ray.cluster_resources()
    return {"nodes": len(nodes), "cpus": total.get("CPU", 0.0), "gpus": total.get("GPU", 0.0)}


def _probe_node(location: str, token: str, node_id: str) -> str | None:
    """On one node: read the driver's probe, write this node's. Returns None or the problem."""
    from .storage import filesystem

    try:
        fs, root = filesystem(location)
        with fs.open_input_stream(f"{root}/.probe/driver") as fh:
            if fh.read().decode() != token:
                return "it sees another probe file than the driver wrote (a different directory of the same name)"
        with fs.open_output_stream(f"{root}/.probe/node-{node_id}") as out:
            out.write(token.encode())
    except FileNotFoundError:
        return "the driver's probe file is not there (the path is not shared with the driver's machine)"
    except Exception as exc:  # credentials, permissions, network: the node's own words
        return f"{type(exc).__name__}: {exc}"
    return None


def check_storage(run_dir: str, timeout_s: float = 60.0) -> int:
    """Write a probe to ``run_dir`` from the driver, then read it and write one back from every
    alive node (a zero-CPU task pinned to each node); the driver reads those back.

    Returns the number of nodes probed.

    Raises:
        ConfigError: some node cannot see or write the storage; the message names the nodes and,
            for a path, says to use a shared mount or an object-store URI.
    """
    import secrets

    import pyarrow.fs as pafs
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .storage import display, filesystem, is_uri, ray_storage

    fs, root = filesystem(run_dir)
    token = secrets.token_hex(8)
    try:
        fs.create_dir(f"{root}/.probe", recursive=True)
        with fs.open_output_stream(f"{root}/.probe/driver") as out:
            out.write(token.encode())
    except OSError as exc:
        raise ConfigError(f"storage {display(run_dir)!r} cannot be written from the driver: {exc}. Create the "
                          f"bucket or directory and check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                          f"AWS_ENDPOINT_URL for S3-compatible servers)") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_node)
    refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(ray_storage(run_dir), token, n["NodeID"]) for n in nodes}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    problems = []
    for node in nodes:
        node_id, ref = node["NodeID"], refs[node["NodeID"]]
        name = f"{node['NodeManagerAddress']} (node {node_id[:8]})"
        if ref not in ready:
            problems.append(f"{name}: no answer in {timeout_s:.0f}s")
            continue
        problem = ray.get(ref)
        if problem is None:
            info = fs.get_file_info(f"{root}/.probe/node-{node_id}")
            if info.type != pafs.FileType.File:
                problem = "it wrote its probe where the driver cannot read it (a directory of its own)"
        if problem:
            problems.append(f"{name}: {problem}")
    with contextlib.suppress(OSError):
        fs.delete_dir(f"{root}/.probe")
    if problems:
        fix = ("use a path every node mounts (NFS, EFS, a Kubernetes ReadWriteMany volume) or an object-store URI "
               "(storage: s3://bucket/runs, gs://bucket/runs)" if not is_uri(run_dir) else
               "give every node the storage credentials and endpoint (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
               "AWS_ENDPOINT_URL, or an instance profile)")
        raise ConfigError(f"storage {display(run_dir)!r} is not shared by every node of the cluster: "
                          + "; ".join(problems) + f". Trials on those nodes could not save checkpoints there: {fix}")
    return len(nodes)


# ------------------------------------------------------------------------------------------------
# Search space, searchers and schedulers


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
        alg = BasicVariantGenerator(random_state=config.seed, max_concurrent=search.max_concurrent or 0)
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
        sampler = optuna.samplers.TPESampler(seed=config.seed)
        return SearchPlan(OptunaSearch(sampler=sampler), search.num_samples, search.num_samples)
    if algorithm == "hyperopt":
        try:
            from ray.tune.search.hyperopt import HyperOptSearch
            import hyperopt  # noqa: F401
        except ImportError:
            raise ConfigError(["search: hyperopt is not installed; pip install 'raytune-torch[hyperopt]'"]) from None
        return SearchPlan(HyperOptSearch(random_state_seed=config.seed), search.num_samples, search.num_samples)
    raise ConfigError([f"search.algorithm: unknown searcher {algorithm!r}"])


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


# ------------------------------------------------------------------------------------------------
# Inside a trial


def _trial_index(trial_id: str) -> int:
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class RayReporter:
    """The trainable's :class:`~raytune_torch.trainable.Reporter` on Ray Tune."""

    def __init__(self) -> None:
        ctx = tune.get_context()
        self.trial_id = ctx.get_trial_id() or "trial"
        self.trial_index = _trial_index(self.trial_id)
        self.replay_after: int | None = None  # set when resuming from a newer checkpoint than Ray's
        self.node_id = ray.get_runtime_context().get_node_id()  # which node ran each epoch (results)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report({**metrics, "node_id": self.node_id}, checkpoint=checkpoint)

    def checkpoint_place(self) -> str | None:
        """See :func:`_checkpoint_place`."""
        from ray.train._internal.session import get_session

        return _checkpoint_place(getattr(get_session(), "storage", None))

    @contextlib.contextmanager
    def checkpoint_dir(self):
        """Ray's checkpoint for this trial, or a newer complete one of its own on storage.

        After the driver is killed, Ray's saved experiment state can lag behind the checkpoints
        already persisted (it may hand back checkpoint 1 while 3 is on disk, or none at all);
        resuming from the newest complete one is what makes resume exact. The epochs in between
        are reported again (``replay_after``). Another trial's checkpoint (PBT exploit) is used
        as given.
        """
        given = tune.get_checkpoint()
        folder = _own_trial_folder(self.trial_id, given)
        chosen = given
        if folder is not None:
            fs, path = folder
            epochs = _complete_checkpoints(fs, path)
            given_epoch = -1 if given is None else epochs.get(given.path.rstrip("/"), _meta_epoch(fs, given.path))
            if epochs:
                newest_path, newest_epoch = max(epochs.items(), key=lambda pe: pe[1])
                if newest_epoch > given_epoch:
                    chosen = tune.Checkpoint(newest_path, filesystem=fs)
                    self.replay_after = max(given_epoch, 0)
        if chosen is None:
            yield None
            return
        with chosen.as_directory() as directory:
            yield directory


def _own_trial_folder(trial_id: str, given: Any) -> tuple[Any, str] | None:
    """(filesystem, path) of this trial's storage folder, or None when ``given`` is another
    trial's checkpoint (PBT) or the folder is unknown."""
    if given is not None:
        parent = given.path.rstrip("/").rsplit("/", 1)[0]
        return (given.filesystem, parent) if parent.rsplit("/", 1)[-1] == f"trial_{trial_id}" else None
    from ray.train._internal.session import get_session

    storage = getattr(get_session(), "storage", None)
    if storage is None:
        return None
    path = storage.trial_fs_path.rstrip("/")
    return (storage.storage_filesystem, path) if path.rsplit("/", 1)[-1] == f"trial_{trial_id}" else None


def _meta_epoch(fs: Any, checkpoint_path: str) -> int:
    import json

    try:
        with fs.open_input_stream(f"{checkpoint_path.rstrip('/')}/state.json") as fh:
            return int(json.loads(fh.read()).get("epoch", -1))
    except (OSError, ValueError):
        return -1


def _complete_checkpoints(fs: Any, folder: str) -> dict[str, int]:
    """Path -> epoch of every complete checkpoint in a trial folder (``state.pt`` present and of
    the size its ``state.json`` records; pruned and half-written ones are left out)."""
    import json

    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(folder))
    except OSError:
        return {}
    out = {}
    for info in infos:
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/state.json") as fh:
                meta = json.loads(fh.read())
            state = fs.get_file_info(f"{info.path}/state.pt")
        except (OSError, ValueError):
            continue  # incomplete: no state.json yet, or unreadable
        if state.type == pafs.FileType.File and state.size == meta.get("bytes"):
            out[info.path.rstrip("/")] = int(meta.get("epoch", -1))
    return out


class SharedData:
    """Data in Ray's object store: one copy, read as zero-copy views by every trial on the node
    and by the driver (which then drops its own arrays)."""

    def __init__(self, data: Any) -> None:
        self.ref = ray.put(data)

    def get(self) -> Any:
        return ray.get(self.ref)


def share(data: Any) -> tuple[SharedData, Any]:
    """Put ``data`` in the object store; returns the handle and the driver's zero-copy view."""
    shared = SharedData(data)
    return shared, shared.get()


def _report_ahead(config: Any) -> None:
    """Let the trial train its next epoch while the driver handles the result it just reported,
    when no scheduler stops trials between epochs (FIFO).

    Tune's function trainable makes every report wait for the driver's next ``train()`` call: a
    round trip through the driver (its callbacks, the scheduler) of about 5 ms per epoch here,
    during which the trial's CPU is idle. Ray's training session has the asynchronous mode
    (``synchronous_result_reporting=False``: the trial goes on as soon as its result has been
    handed over, and never gets more than one epoch ahead); Tune turns it off for every trial.
    A scheduler that stops or pauses trials (ASHA, Hyperband, median stopping, PBT) would waste
    that epoch on every trial it stops, so those keep the synchronous mode.
    """
    from ray.train._internal.session import get_session

    get_session().synchronous_result_reporting = config.scheduler.name != "fifo"


def _train_function(params: dict[str, Any], config: Any = None, shared: Any = None) -> None:
    from .trainable import run_trial

    _report_ahead(config)
    res = config.resources
    run_trial(params, config, shared.get(), RayReporter(), cpus=res.cpu, gpu_share=res.gpu)


def _cv_train_function(params: dict[str, Any], config: Any = None, shared: Any = None) -> None:
    from .search_cv import run_cv_trial

    _report_ahead(config)
    run_cv_trial(params, shared.get(), RayReporter(), cpus=config.resources.cpu, gpu_share=config.resources.gpu)


def ray_trainable(config: Any, shared: SharedData, kind: str = "experiment") -> Any:
    """The Tune trainable. The data was put in the object store once (:func:`share`); trials
    get it by reference, not pickled into each trial.

    ``kind`` is "experiment" (one model per trial) or "cv" (TorchSearchCV: k folds per trial)."""
    function = _cv_train_function if kind == "cv" else _train_function
    trainable = tune.with_parameters(function, config=config, shared=shared)
    return tune.with_resources(trainable, {"cpu": config.resources.cpu, "gpu": config.resources.gpu})


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


HISTORY_FILE = "history.jsonl"


class HistoryCallback(tune.Callback):
    """Appends every result a trial reports to ``trial_<id>/history.jsonl`` as it arrives, and
    writes the TensorBoard files (see :mod:`raytune_torch.tensorboard`).

    One line per epoch, flushed at once, in the driver: a row is on disk before anything else
    (a scheduler decision, a failure, a driver crash) can lose it. ``results.parquet`` is built
    from these files (duplicates after a restart are dropped by epoch, keeping the last).
    """

    KEYS = ("epoch", "trial_id", "pid", "node_ip", "time_total_s")

    def __init__(self, config: Any, metric_names: tuple[str, ...] | None = None,
                 staging: tuple[str, str] | None = None) -> None:
        """``staging``: ``(local_dir, run_uri)`` when the run directory is a URI: the driver's
        files go to ``local_dir`` and are uploaded as they change; None for a path."""
        self.metric_names = tuple(metric_names or config.metric_names)
        self.staging = staging
        self._mirror = None
        # The disk budget during the run (Ray keeps every checkpoint: its own num_to_keep forces an
        # experiment-state snapshot per checkpoint, which dominated small trials). PBT copies
        # donors' checkpoints later, so it keeps all until the end (results prunes them then).
        self.prune = config.scheduler.name != "pbt"
        self.keep = config.checkpoint.keep
        self.metric, self.mode = config.search.metric, config.search.mode
        self._checkpoints: dict[str, list[tuple[float, str]]] = {}
        self._pruner = None  # the thread that prunes, made on first use in the driver
        self._logged: dict[str, set] = {}
        self.tensorboard = None
        if config.tensorboard:
            from .tensorboard import TensorBoardLogger

            self.tensorboard = TensorBoardLogger(config.space, self.metric_names, config.train.max_epochs)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_mirror"] = state["_pruner"] = None
        if self.tensorboard is not None:
            from .tensorboard import TensorBoardLogger

            tb = self.tensorboard
            state["tensorboard"] = TensorBoardLogger(tb.space, tb.metric_names, tb.max_epochs)
        return state

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        import json

        row = {k: result[k] for k in (*self.KEYS, *self.metric_names) if k in result}
        row.update({k: result[k] for k in result if k in _EXTRA_KEYS})
        directory = self._local_trial_dir(trial)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, HISTORY_FILE)
        logged = self._logged.get(path)
        if logged is None:  # first word from this trial in this driver: a resumed run has lines already
            logged = self._logged[path] = _history_epochs(path)
        if row.get("epoch") not in logged:  # a restarted trial reports its restored epochs again
            with open(path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            logged.add(row.get("epoch"))
        if self.tensorboard is not None and "epoch" in row:
            self.tensorboard.start_run(os.path.dirname(directory.rstrip("/")))
            self.tensorboard.log_epoch(directory, trial.config or {}, row)
        name = result.get("checkpoint_dir_name")
        if self.prune and name:
            self._budget(trial.trial_id, f"{trial.path.rstrip('/')}/{name}", result.get(self.metric),
                         trial.storage.storage_filesystem)
        mirror = self.mirror()
        if mirror is not None:
            mirror.maybe_sync()

    def _local_trial_dir(self, trial: Any) -> str:
        if self.staging is None:
            return trial.path
        return os.path.join(self.staging[0], trial_dirname(trial))

    def mirror(self) -> Any:
        """The uploader of the staged files (URI runs), made on first use in the driver."""
        if self.staging is None:
            return None
        if self._mirror is None:
            from .storage import Mirror

            self._mirror = Mirror(*self.staging)
        return self._mirror

    def _budget(self, trial_id: str, path: str, value: Any, fs: Any) -> None:
        """Keep the ``keep`` best checkpoints of the trial plus the latest; prune the others.

        Which ones to keep is decided here, as each result arrives; the files are deleted by a
        thread of the driver, in order. The trial waits for the driver's answer to every result
        before its next epoch, and a delete is about 0.5 ms on a local disk (a request or two
        on object storage). Results are written only after that thread is done
        (:meth:`on_experiment_end`)."""
        import math

        seen = self._checkpoints.setdefault(trial_id, [])
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        score = (value if self.mode == "max" else -value) if finite else -math.inf
        seen.append((score, path))
        best = sorted(seen, key=lambda sp_: sp_[0], reverse=True)[: self.keep]
        kept = {p for _, p in best} | {path}
        for _, old in list(seen):
            if old not in kept:
                self._prune_later(old, fs)
        self._checkpoints[trial_id] = [(sc, p) for sc, p in seen if p in kept]

    def _prune_later(self, path: str, fs: Any) -> None:
        if self._pruner is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pruner = ThreadPoolExecutor(1, thread_name_prefix="raytune-torch-prune")
        self._pruner.submit(_prune_or_warn, path, fs)

    def _wait_for_pruning(self) -> None:
        if self._pruner is not None:
            self._pruner.shutdown(wait=True)
            self._pruner = None

    def _end(self, trial: Any, failed: bool) -> None:
        if self.tensorboard is not None:
            self.tensorboard.end_trial(self._local_trial_dir(trial), trial.last_result or {}, failed)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, failed=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._wait_for_pruning()
        if self.tensorboard is not None:
            self.tensorboard.close()
        mirror = self.mirror()
        if mirror is not None:
            mirror.sync()


def _prune_or_warn(path: str, fs: Any) -> None:
    """A checkpoint that could not be pruned stays on disk (the budget is applied again when the
    results are written); the run goes on."""
    from .checkpoint import prune

    try:
        prune(path, fs)
    except Exception as exc:
        log.warning("raytune-torch: could not prune checkpoint %s during the run (%s: %s); it is pruned when "
                    "the results are written", path, type(exc).__name__, exc)


def _history_epochs(path: str) -> set:
    import json

    epochs = set()
    try:
        with open(path) as fh:
            for line in fh:
                try:
                    epochs.add(json.loads(line).get("epoch"))
                except (ValueError, AttributeError):
                    continue  # a line cut short by a crash
    except FileNotFoundError:
        pass
    return epochs


_EXTRA_KEYS = ("lr", "epoch_time_s", "samples_per_s", "trial_seed", "diverged", "early_stopped", "device", "node_id")


class ConsoleCallback(tune.Callback):
    """One line per finished trial instead of Ray's pages of logs."""

    def __init__(self, metric: str, total: int, stream: Any = None, max_epochs: int | None = None) -> None:
        self.metric = metric
        self.max_epochs = max_epochs
        self.total = total
        self.done = 0
        self.stream = stream
        self.start = time.monotonic()

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def _line(self, trial: Any, status: str) -> None:
        self.done += 1
        last = trial.last_result or {}
        value = last.get(self.metric)
        shown = f"{self.metric}={value:.4g}" if isinstance(value, (int, float)) else f"{self.metric}=-"
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted((trial.config or {}).items()))
        self._print(f"[{self.done}/{self.total} {time.monotonic() - self.start:6.1f}s] {trial.trial_id} "
                    f"{status} after {last.get('epoch', 0)} epoch(s): {shown}  ({params})")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        status = "diverged" if last.get("diverged") else "early-stopped" if last.get("early_stopped") else \
            "pruned" if self.max_epochs and last.get("epoch", 0) < self.max_epochs else "done"
        self._line(trial, status)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "ERROR")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_tuner(config: Any, shared: SharedData, *, run_dir_parent: str, callbacks: list, kind: str = "experiment",
              metric_names: tuple[str, ...] | None = None, plan: SearchPlan | None = None,
              staging: tuple[str, str] | None = None) -> Any:
    """Build and fit the Tuner; returns Ray's ResultGrid. ``metric_names``: what trials report
    (default: the experiment's), for history.jsonl and TensorBoard. ``staging``: see
    :class:`HistoryCallback` (URI run directories)."""
    from .storage import ray_storage

    plan = plan or build_search(config)
    scheduler = build_scheduler(config)
    tune_config = tune.TuneConfig(
        metric=config.search.metric,
        mode=config.search.mode,
        search_alg=plan.search_alg,
        scheduler=scheduler,
        num_samples=plan.num_samples,
        # The variant generator limits concurrency itself; Ray wraps model-based searchers.
        max_concurrent_trials=None if config.search.algorithm in ("grid", "random") else config.search.max_concurrent,
        reuse_actors=True,
        trial_dirname_creator=trial_dirname,
    )
    run_config = tune.RunConfig(
        name=config.name,
        storage_path=ray_storage(run_dir_parent),
        checkpoint_config=tune.CheckpointConfig(
            # Ray keeps every checkpoint; HistoryCallback applies the disk budget as results arrive
            # (and results.write_results at the end).
            num_to_keep=None,
            checkpoint_score_attribute=config.search.metric,
            checkpoint_score_order=config.search.mode,
        ),
        failure_config=tune.FailureConfig(max_failures=config.max_failures),
        verbose=0,
        log_to_file=True,
        # Ray's CSV and TensorBoard loggers are off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS); its JSON
        # logger stays for Ray's own tools. The history callback writes what results need and
        # comes first, so no row can be lost.
        callbacks=[HistoryCallback(config, metric_names, staging), JsonLoggerCallback(), *callbacks],
    )
    tuner = tune.Tuner(ray_trainable(config, shared, kind), param_space=param_space(config.space, config.search.algorithm),
                       tune_config=tune_config, run_config=run_config)
    _workers_ready.wait()
    return tuner.fit()


def can_restore(run_dir: str) -> bool:
    from .storage import ray_storage

    return tune.Tuner.can_restore(ray_storage(run_dir))


def restore_tuner(run_dir: str, config: Any, shared: SharedData) -> Any:
    """Continue an interrupted experiment: finished trials stay finished, unfinished and errored
    ones continue from their newest checkpoints. Returns Ray's ResultGrid."""
    from .storage import ray_storage

    tuner = tune.Tuner.restore(ray_storage(run_dir), trainable=ray_trainable(config, shared), resume_unfinished=True,
                               resume_errored=True, restart_errored=False)
    _workers_ready.wait()
    return tuner.fit()
