"""A trial's reporter for tests that run trials without Ray (the ``Reporter`` protocol of
raytune_torch.trainable)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

TIMING = {"epoch_time_s", "samples_per_s"}


class Crash(RuntimeError):
    """Raised by the fake reporter to simulate a worker dying after a report."""


class FakeReporter:
    """Collects metrics, keeps a copy of every checkpoint (under ``root``; none without one), and
    can hand one back to resume from or crash after an epoch."""

    def __init__(self, root: Path | None = None, *, resume_from: Path | None = None, crash_after: int | None = None,
                 trial_index: int = 0) -> None:
        self.trial_id = f"fake_{trial_index:05d}"
        self.trial_index = trial_index
        self.root = None if root is None else Path(root)
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
        self.resume_from = resume_from
        self.crash_after = crash_after
        self.metrics: list[dict] = []
        self.given: list[str | None] = []
        self.checkpoints: dict[int, Path] = {}
        self.replay_after = None

    def report(self, metrics, checkpoint_dir):
        self.metrics.append(dict(metrics))
        self.given.append(checkpoint_dir)
        if checkpoint_dir is not None and self.root is not None:
            dest = self.root / f"epoch_{metrics['epoch']}"
            shutil.copytree(checkpoint_dir, dest)
            self.checkpoints[metrics["epoch"]] = dest
        if self.crash_after is not None and metrics["epoch"] >= self.crash_after:
            raise Crash(f"simulated crash after epoch {metrics['epoch']}")

    @contextlib.contextmanager
    def checkpoint_dir(self):
        yield None if self.resume_from is None else str(self.resume_from)

    def column(self, key):
        return [m[key] for m in self.metrics]

    def stable(self):
        """Every metric except the timings."""
        return [{k: v for k, v in m.items() if k not in TIMING} for m in self.metrics]
