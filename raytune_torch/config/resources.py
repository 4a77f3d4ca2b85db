"""The ``resources:`` section: what one trial is given."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ._problems import Problems, field_names, given

__all__ = ["ResourcesConfig"]


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-trial resources: CPUs (threads for torch) and a GPU share, 0 <= gpu <= 1 (a trial trains on
    one device; a fraction packs several trials onto one GPU)."""

    cpu: float = 1.0
    gpu: float = 0.0
    cpu_fallback: bool = False  # a trial given a GPU share where CUDA is unusable runs on the CPU

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems) -> ResourcesConfig:
        """Read the ``resources:`` value; what is wrong goes to ``problems``."""
        res = problems.mapping("resources", raw)
        problems.unknown("resources", res, field_names(cls))
        cpu_fallback = problems.boolean("resources.cpu_fallback", res.get("cpu_fallback", cls.cpu_fallback))
        cpu = problems.typed("resources.cpu", res.get("cpu", cls.cpu), float, minimum=0.0, exclusive_min=True)
        gpu = problems.typed("resources.gpu", res.get("gpu", cls.gpu), float, minimum=0.0)
        if gpu is not None and gpu > 1:
            problems.add(f"resources.gpu: {gpu:g} asks for more than one GPU per trial, but a trial trains on "
                         f"one device, so the others would sit idle; use gpu <= 1 (a fraction such as 0.25 "
                         f"packs several trials onto one GPU) until trials can train across several workers")
            gpu = None
        return cls(**given(cpu=cpu, gpu=gpu, cpu_fallback=cpu_fallback))

    def to_dict(self) -> dict[str, Any]:
        """The section as the file writes it."""
        return asdict(self)
