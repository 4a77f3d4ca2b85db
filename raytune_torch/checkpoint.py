"""Full training state: save atomically, load strictly and safely.

A checkpoint is a directory with ``state.pt`` (``torch.save`` of plain containers and tensors:
model, optimizer, LR scheduler, grad scaler, early-stopping state, epoch, every RNG state, trial
parameters) and ``state.json`` (format, epoch, size and SHA-256 of ``state.pt``), written last.
A directory whose ``state.json`` is missing or whose hash does not match is refused, so a
half-written checkpoint is never picked up. Loading uses ``torch.load(weights_only=True)`` with a
``map_location``: no arbitrary objects are unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .exceptions import CheckpointError

__all__ = ["FORMAT", "STATE_KEYS", "save_state", "load_state", "capture_rng", "restore_rng", "read_meta",
           "prune", "is_complete"]

FORMAT = "raytune_torch/1"
STATE_FILE = "state.pt"
META_FILE = "state.json"
PRUNED_FILE = "PRUNED"
STATE_KEYS = frozenset({
    "format", "epoch", "model", "optimizer", "lr_scheduler", "scaler", "early_stopping", "rng",
    "params", "trial_seed", "history", "stop",
})
# Keys added since FORMAT's first checkpoints: a checkpoint without them still loads.
ADDED_KEYS = frozenset({"stop"})


def capture_rng(shuffle: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG state a trial depends on, as plain containers and tensors."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "shuffle": shuffle.get_state() if shuffle is not None else None,
    }
    return state


def restore_rng(state: dict[str, Any], shuffle: torch.Generator | None = None) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if shuffle is not None and state.get("shuffle") is not None:
        shuffle.set_state(state["shuffle"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _HashingWriter:
    """A write-only stream for ``torch.save`` that hashes and counts what passes through.

    ``torch.save`` writes a zip record at a time (about 120 writes for a small MLP's state); they
    are gathered into blocks of up to 1 MiB, each hashed and written once, which keeps memory
    bounded for large models and costs a third less than hashing and writing every record."""

    BLOCK = 1 << 20

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        self.size = 0
        self.buffer = bytearray()

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.buffer += data
        self.size += n
        if len(self.buffer) >= self.BLOCK:
            self._drain()
        return n

    def _drain(self) -> None:
        if self.buffer:
            self.digest.update(self.buffer)
            self.fh.write(self.buffer)
            self.buffer = bytearray()

    def flush(self) -> None:
        self._drain()
        self.fh.flush()


def save_state(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` into ``directory`` atomically; returns the directory."""
    missing = STATE_KEYS - set(state)
    extra = set(state) - STATE_KEYS
    if missing or extra:
        raise CheckpointError(f"internal: checkpoint state keys differ (missing {sorted(missing)}, unexpected {sorted(extra)})")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (STATE_FILE + ".tmp")
    with open(tmp, "wb") as fh:
        out = _HashingWriter(fh)  # hashed as it is written: no second pass over the file
        torch.save(state, out)
        out.flush()
    os.replace(tmp, directory / STATE_FILE)
    meta = {"format": FORMAT, "epoch": int(state["epoch"]), "bytes": out.size, "sha256": out.digest.hexdigest()}
    tmp_meta = directory / (META_FILE + ".tmp")
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, directory / META_FILE)
    return directory


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint directory, checked against ``state.pt``."""
    directory = Path(directory)
    meta_path, state_path = directory / META_FILE, directory / STATE_FILE
    if (directory / PRUNED_FILE).is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} was pruned by the disk budget (checkpoint.keep); "
                              f"use a kept one (the best or the latest of its trial)")
    if not state_path.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} has no {STATE_FILE}; it is not a raytune_torch checkpoint or was not finished")
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} has no {META_FILE}; it was not finished writing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {str(meta_path)!r} is corrupted: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(meta_path)!r} has format {meta.get('format')!r}, expected {FORMAT!r}")
    size = state_path.stat().st_size
    if size != meta.get("bytes") or _sha256(state_path) != meta.get("sha256"):
        raise CheckpointError(
            f"checkpoint file {str(state_path)!r} is truncated or corrupted ({size} bytes, "
            f"{meta.get('bytes')} expected, or the SHA-256 differs)"
        )
    return meta


def prune(directory: str | os.PathLike, fs: Any = None) -> None:
    """Free a checkpoint's space but leave its directory (a marker and ``state.json``).

    Used during a run: Ray's saved experiment state may still name this checkpoint, and Ray
    refuses to restore a trial from a directory that is gone; the trial itself then resumes
    from its newest complete checkpoint instead. The directories go when the run ends.
    ``fs``: the pyarrow filesystem ``directory`` is on (default: the local one).
    """
    if fs is not None:
        base = str(directory).rstrip("/")
        with fs.open_output_stream(f"{base}/{PRUNED_FILE}") as out:
            out.write(b"pruned by the disk budget\n")
        try:
            fs.delete_file(f"{base}/{STATE_FILE}")
        except (FileNotFoundError, OSError):
            pass
        return
    directory = Path(directory)
    (directory / PRUNED_FILE).write_text("pruned by the disk budget\n")
    (directory / STATE_FILE).unlink(missing_ok=True)


def is_complete(directory: str | os.PathLike, fs: Any = None) -> bool:
    if fs is not None:
        import pyarrow.fs as pafs

        base = str(directory).rstrip("/")
        return (fs.get_file_info(f"{base}/{STATE_FILE}").type == pafs.FileType.File
                and fs.get_file_info(f"{base}/{PRUNED_FILE}").type == pafs.FileType.NotFound)
    directory = Path(directory)
    return (directory / STATE_FILE).is_file() and not (directory / PRUNED_FILE).exists()


def load_state(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_state`; verifies it and its keys."""
    read_meta(directory)
    path = Path(directory) / STATE_FILE
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, unpickling refused, ...
        raise CheckpointError(f"checkpoint file {str(path)!r} cannot be read: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint file {str(path)!r} does not hold a state dict")
    missing, extra = STATE_KEYS - ADDED_KEYS - set(state), set(state) - STATE_KEYS
    if missing or extra:
        raise CheckpointError(
            f"checkpoint file {str(path)!r}: missing keys {sorted(missing)}, unexpected keys {sorted(extra)}"
        )
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], where: str) -> None:
    """``model.load_state_dict(strict=True)`` with an error that names the checkpoint."""
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {where!r} does not fit the model: {exc}") from None
