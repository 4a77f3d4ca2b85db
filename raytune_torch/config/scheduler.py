"""The ``scheduler:`` section: which trial scheduler, and its options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._problems import Problems

__all__ = ["SchedulerConfig", "SCHEDULERS", "parse_scheduler", "check_grace_period"]

_RF = (float, 3.0, 1.0, None, True)  # reduction factor: > 1
SCHEDULERS = {
    # name: {option: (type, default, minimum, maximum, minimum is exclusive)}
    "fifo": {},
    "asha": {"grace_period": (int, 1, 1, None, False), "reduction_factor": _RF, "brackets": (int, 1, 1, None, False)},
    "hyperband": {"reduction_factor": _RF},
    "median": {"grace_period": (int, 1, 1, None, False), "min_samples_required": (int, 3, 1, None, False)},
    "pbt": {"perturbation_interval": (int, 2, 1, None, False), "quantile_fraction": (float, 0.25, 0.0, 0.5, True),
            "resample_probability": (float, 0.25, 0.0, 1.0, False)},
}


@dataclass(frozen=True)
class SchedulerConfig:
    """A trial scheduler from :data:`SCHEDULERS` and every one of its options (defaults filled in).

    In the file: a name (``scheduler: asha``) or a mapping (``{name: asha, grace_period: 2}``).
    """

    name: str = "fifo"
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems) -> SchedulerConfig:
        """Read the ``scheduler:`` value; options the scheduler does not take are problems."""
        if raw is None:
            return cls()
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, Mapping):
            problems.add(f"scheduler: must be a name or a mapping with `name`, got {raw!r}")
            return cls()
        name = raw.get("name", cls.name)
        if not problems.one_of("scheduler.name", name, SCHEDULERS, noun="scheduler"):
            return cls()
        spec = SCHEDULERS[name]
        options = {k: v for k, v in raw.items() if k != "name"}
        problems.unknown(f"scheduler ({name})", options, spec)
        parsed = {}
        for key, (kind, default, minimum, maximum, exclusive) in spec.items():
            got = problems.typed(f"scheduler.{key}", options.get(key, default), kind, minimum=minimum,
                                 maximum=maximum, exclusive_min=exclusive)
            parsed[key] = got if got is not None else default
        return cls(name=name, options=parsed)

    def to_dict(self) -> dict[str, Any]:
        """The section as the file writes it: ``{name, **options}``."""
        return {"name": self.name, **dict(self.options)}


def check_grace_period(scheduler: SchedulerConfig, max_epochs: int) -> list[str]:
    """A grace period longer than the training leaves the scheduler nothing to stop."""
    grace = scheduler.options.get("grace_period")
    if grace is not None and grace > max_epochs:
        return [f"scheduler.grace_period: {grace} is more than train.max_epochs ({max_epochs}); "
                "lower it or train longer"]
    return []


def parse_scheduler(raw: Any, problems: Problems, *, max_epochs: int) -> SchedulerConfig:
    """Read a ``scheduler:`` value (a name, a mapping or None) as the experiment file does, for
    trials of ``max_epochs`` epochs; what is wrong goes to ``problems``."""
    scheduler = SchedulerConfig.from_dict(raw, problems)
    problems.extend(check_grace_period(scheduler, max_epochs))
    return scheduler
