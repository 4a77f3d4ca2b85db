"""The ``resources:`` section: what one trial is given."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ._problems import Problems, field_names, given

__all__ = ["ResourcesConfig"]


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-trial resources: ``workers`` processes training one model together (DistributedDataParallel
    when more than one), each with ``cpu`` CPUs (threads for torch) and a GPU share, 0 <= gpu <= 1
    (a fraction packs several workers onto one GPU)."""

    cpu: float = 1.0
    gpu: float = 0.0
    cpu_fallback: bool = False  # a trial given a GPU share where CUDA is unusable runs on the CPU
    workers: int = 1

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems) -> ResourcesConfig:
        """Read the ``resources:`` value; what is wrong goes to ``problems``."""
        res = problems.mapping("resources", raw)
        problems.unknown("resources", res, field_names(cls))
        cpu_fallback = problems.boolean("resources.cpu_fallback", res.get("cpu_fallback", cls.cpu_fallback))
        cpu = problems.typed("resources.cpu", res.get("cpu", cls.cpu), float, minimum=0.0, exclusive_min=True)
        gpu = problems.typed("resources.gpu", res.get("gpu", cls.gpu), float, minimum=0.0)
        workers = res.get("workers", cls.workers)
        if isinstance(workers, float) and workers.is_integer():
            workers = int(workers)  # 2.0 from a YAML file or a CLI flag is 2
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            problems.add(f"resources.workers: must be a whole number >= 1 (the processes that train one trial's "
                         f"model together), got {workers!r}")
            workers = None
        if gpu is not None and gpu > 1:
            wanted = int(gpu) if float(gpu).is_integer() else math.ceil(gpu)
            problems.add(f"resources.gpu: {gpu:g} asks for more than one GPU per worker, but a worker trains on "
                         f"one device, so the others would sit idle; to train one model on {wanted} GPUs set "
                         f"resources.workers: {wanted} with gpu: 1 (DistributedDataParallel, one GPU per worker)")
            gpu = None
        return cls(**given(cpu=cpu, gpu=gpu, cpu_fallback=cpu_fallback, workers=workers))

    def to_dict(self) -> dict[str, Any]:
        """The section as the file writes it."""
        return asdict(self)
