"""The ``search:`` section: the searcher, how many trials, and the metric to optimize."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .. import space as sp
from ._problems import Problems, field_names, given

__all__ = ["SearchConfig"]


@dataclass(frozen=True)
class SearchConfig:
    """The searcher (:data:`raytune_torch.space.SEARCHERS`), ``num_samples`` (>= 1) trials, and the
    reported ``metric`` to ``mode`` (min or max). A ``mode`` not written is None here and follows
    the metric once the experiment knows its metrics (:func:`raytune_torch.config.train.direction`).
    ``time_budget_s`` (> 0) bounds the whole run's wall time: then running trials are stopped
    (keeping what they reported) and no new one starts. ``points_to_evaluate`` are configurations
    run first (checked against the space by the rules); ``warm_start`` is an earlier run whose
    trials and scores a learning searcher starts from (:mod:`raytune_torch.warm`)."""

    algorithm: str = "random"
    num_samples: int = 1
    metric: str = "val_loss"
    mode: str | None = None
    max_concurrent: int | None = None
    time_budget_s: float | None = None
    points_to_evaluate: tuple[Mapping[str, Any], ...] = ()
    warm_start: str | None = None

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems) -> SearchConfig:
        """Read the ``search:`` value; whether the metric is reported is checked with ``train`` (rules)."""
        search = problems.mapping("search", raw)
        problems.unknown("search", search, field_names(cls))
        algorithm = search.get("algorithm", cls.algorithm)
        problems.one_of("search.algorithm", algorithm, sp.SEARCHERS, noun="searcher")
        num_samples = problems.typed("search.num_samples", search.get("num_samples", cls.num_samples), int, minimum=1)
        metric = search.get("metric", cls.metric)
        mode = search.get("mode")
        if mode is not None and mode not in ("min", "max"):
            problems.add(f"search.mode: must be 'min' or 'max', got {mode!r}")
            mode = None
        max_concurrent = search.get("max_concurrent")
        if max_concurrent is not None:
            max_concurrent = problems.typed("search.max_concurrent", max_concurrent, int, minimum=1)
        budget = search.get("time_budget_s")
        if budget is not None:
            budget = problems.typed("search.time_budget_s", budget, float, minimum=0.0, exclusive_min=True)
        points = search.get("points_to_evaluate")
        if points is not None and (not isinstance(points, (list, tuple)) or not points
                                   or not all(isinstance(p, Mapping) and p for p in points)):
            problems.add(f"search.points_to_evaluate: must be a list of configurations, e.g. "
                         f"[{{optimizer__lr: 0.01}}], got {points!r}")
            points = None
        warm = search.get("warm_start")
        if warm is not None and (not isinstance(warm, str) or not warm):
            problems.add(f"search.warm_start: must be a run directory or URI (STORAGE/NAME of a finished run), "
                         f"got {warm!r}")
            warm = None
        # algorithm and metric are kept as written: the rules after parsing report on them again
        return cls(algorithm=algorithm, metric=metric,
                   **given(num_samples=num_samples, mode=mode, max_concurrent=max_concurrent,
                           time_budget_s=budget, warm_start=warm,
                           points_to_evaluate=None if points is None else tuple(dict(p) for p in points)))

    def to_dict(self) -> dict[str, Any]:
        """The section as the file writes it, ``mode`` included; unset options left out."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if self.points_to_evaluate:
            out["points_to_evaluate"] = [dict(p) for p in self.points_to_evaluate]
        else:
            out.pop("points_to_evaluate")
        return out
