"""The ``checkpoint:`` section: how often trials save, and how many saves they keep."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ._problems import Problems, field_names, given

__all__ = ["CheckpointConfig"]


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoint every ``every`` (>= 1) epochs (and at the end). Per trial, keep the ``keep`` (>= 1)
    best checkpoints by the experiment's metric plus the latest; a trial stopped early keeps its best only."""

    every: int = 1
    keep: int = 1

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems) -> CheckpointConfig:
        """Read the ``checkpoint:`` value; what is wrong goes to ``problems``."""
        ckpt = problems.mapping("checkpoint", raw)
        problems.unknown("checkpoint", ckpt, field_names(cls))
        return cls(**given(
            every=problems.typed("checkpoint.every", ckpt.get("every", cls.every), int, minimum=1),
            keep=problems.typed("checkpoint.keep", ckpt.get("keep", cls.keep), int, minimum=1),
        ))

    def to_dict(self) -> dict[str, Any]:
        """The section as the file writes it."""
        return asdict(self)
