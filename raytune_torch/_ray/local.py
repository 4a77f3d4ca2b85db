"""The private local Ray instance: started for the user on 127.0.0.1, stopped by its handle."""

from __future__ import annotations

import logging
import os
import sys
import time

import ray

from . import internals

log = logging.getLogger("raytune_torch")

# Device nodes of the drivers torch's CUDA (and ROCm) builds use on Linux: NVIDIA, WSL2, AMD.
_GPU_DEVICE_NODES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def start_local(num_cpus: int | None = None, num_gpus: int | None = None, *, state_api: bool = False) -> bool:
    """Start a private Ray instance bound to 127.0.0.1, unless this process already has one.

    Never attaches to another Ray cluster running on the machine (``address="local"``).
    Returns True when this call started Ray (the caller then calls :func:`shutdown`).

    Where Ray's version allows (:mod:`.internals`), the instance starts one worker per CPU at
    once, each importing torch and the trial code while the driver sets up the Tuner, and the
    trials run in those workers.

    ``state_api``: run Ray's API server (on 127.0.0.1, as a stock ``ray.init`` does), which the
    instance otherwise goes without. Trials of several workers need it: Ray Train's placement-group
    cleaner asks it whether the Train controller is alive; without it each query waits 40 s, every
    Train run ends 12 s late and the cleaner of a stopped trial never exits.
    """
    if ray.is_initialized():
        return False
    internals.LOOPBACK.apply()
    if num_gpus is None:
        num_gpus = _cuda_count()
    num_cpus = num_cpus or os.cpu_count() or 1
    internals.PRELOADED_WORKERS.apply()  # before the instance starts: its workers inherit the variables
    system_config = internals.PRELOADED_WORKERS.system_config()
    if system_config:
        _workers_ready.start(int(num_cpus))
    try:
        internals.NO_IDLE_DAEMONS.api_server = state_api
        with internals.during(internals.NO_IDLE_DAEMONS, internals.QUIET_TOKEN_AUTH):
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING, configure_logging=True,
                     **({"_system_config": system_config} if system_config else {}))
    except BaseException:
        shutdown()
        raise
    internals.CHECKPOINT_FROM_RESULT.apply()
    return True


def is_running() -> bool:
    """Whether this process is connected to Ray (started here or joined)."""
    return ray.is_initialized()


def shutdown() -> None:
    """Disconnect (stopping the processes of a private instance started here) and restore
    everything :mod:`.internals` changed."""
    ray.shutdown()
    _workers_ready.stop()
    internals.undo_all()


class _WorkersReady:
    """Which of the local instance's workers have imported torch and the trial code.

    Each worker imports :mod:`raytune_torch._preload`, which ends by creating a file named after
    its PID in this directory (passed in ``RAYTUNE_TORCH_WORKERS_READY_DIR``). :meth:`wait` holds
    the Tuner until they are all there. Without it, the first trial starts on the first worker
    ready; when that trial ends before the second worker has imported torch, Tune reuses the
    first worker's actor for the next trial and kills the actor being created on the second
    worker with its process, and the whole run goes through one worker.
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


def _cuda_count() -> int:
    """The GPUs torch can use in this process. Without any GPU driver's device node (a Linux
    machine without GPUs) that is 0, known without importing torch (the data loader imports it
    in its own thread while the instance starts)."""
    if sys.platform.startswith("linux") and not any(os.path.exists(p) for p in _GPU_DEVICE_NODES):
        return 0
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - torch always importable here
        return 0
