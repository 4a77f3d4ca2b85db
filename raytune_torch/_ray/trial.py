"""The trial side: the Tune trainable that runs a trial function in a Ray worker, the reporter
it talks to, and the data every trial reads from the object store."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import ray
from ray import tune

from . import internals

#: ``trial_fn(params, data, reporter)``: one whole trial (see trainable.run_trial)
TrialFunction = Callable[[dict[str, Any], Any, "RayReporter"], Any]


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


def _trial(params: dict[str, Any], trial_fn: TrialFunction | None = None, shared: SharedData | None = None,
           run_dir: str | None = None) -> None:
    """The function Tune runs for every trial of this library (see :func:`trainable`)."""
    trial_fn(params, shared.get(), RayReporter(run_dir))


internals.OWN_TRAINABLES.add(_trial.__name__)


def trainable(trial_fn: TrialFunction, shared: SharedData, run_dir: str, *, cpu: float, gpu: float) -> Any:
    """The Tune trainable: ``trial_fn(params, data, reporter)`` in a worker with ``{cpu, gpu}``.

    The data was put in the object store once (:func:`share`); trials get it by reference, not
    pickled into each trial. ``run_dir`` is the run's directory or URI (trial folders are
    ``trial_<id>`` in it).
    """
    wrapped = tune.with_parameters(_trial, trial_fn=trial_fn, shared=shared, run_dir=run_dir)
    return tune.with_resources(wrapped, {"cpu": cpu, "gpu": gpu})


def _trial_index(trial_id: str) -> int:
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class RayReporter:
    """The trainable's :class:`~raytune_torch.trainable.Reporter` on Ray Tune."""

    def __init__(self, run_dir: str | None = None) -> None:
        ctx = tune.get_context()
        self.trial_id = ctx.get_trial_id() or "trial"
        self.trial_index = _trial_index(self.trial_id)
        self.run_dir = run_dir
        self.replay_after: int | None = None  # set when resuming from a newer checkpoint than Ray's
        self.node_id = ray.get_runtime_context().get_node_id()  # which node ran each epoch (results)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report({**metrics, "node_id": self.node_id}, checkpoint=checkpoint)

    @contextlib.contextmanager
    def checkpoint_dir(self):
        """A local directory holding :meth:`choose_checkpoint`'s checkpoint, or None."""
        chosen = self.choose_checkpoint()
        if chosen is None:
            yield None
            return
        with chosen.as_directory() as directory:
            yield directory

    def choose_checkpoint(self) -> Any:
        """Ray's checkpoint for this trial, or a newer complete one of its own on storage.

        After the driver is killed, Ray's saved experiment state can lag behind the checkpoints
        already persisted (it may hand back checkpoint 1 while 3 is on disk, or none at all);
        resuming from the newest complete one is what makes resume exact. The epochs in between
        are reported again (``replay_after``). Another trial's checkpoint (PBT exploit) is used
        as given.
        """
        given = tune.get_checkpoint()
        folder = self._own_folder(given)
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
        return chosen

    def _own_folder(self, given: Any) -> tuple[Any, str] | None:
        """(filesystem, path) of this trial's folder on storage, or None when ``given`` is another
        trial's checkpoint (PBT) or the run directory is unknown."""
        mine = f"trial_{self.trial_id}"
        if given is not None:
            parent = given.path.rstrip("/").rsplit("/", 1)[0]
            return (given.filesystem, parent) if parent.rsplit("/", 1)[-1] == mine else None
        if self.run_dir is None:
            return None
        from ..storage import filesystem

        fs, root = filesystem(self.run_dir)
        return fs, f"{root.rstrip('/')}/{mine}"


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
