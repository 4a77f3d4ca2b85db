"""The ``search:`` section: the searcher, how many trials, and the metric (or metrics) to optimize."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import space as sp
from ._problems import Problems, field_names, given

__all__ = ["SearchConfig", "SAMPLERS", "MODES", "is_searcher_object"]

MODES = ("min", "max")
# search.sampler for search: optuna: Optuna's samplers by name (the default is tpe).
SAMPLERS = ("tpe", "nsga2", "cmaes", "gp", "qmc", "random")


def is_searcher_object(value: Any) -> bool:
    """Whether ``value`` is a searcher object (a ``ray.tune.search.Searcher``, checked by its
    methods so that this package never imports Ray), not a name or an import path."""
    return not isinstance(value, (str, type)) and all(
        callable(getattr(value, m, None)) for m in ("suggest", "on_trial_complete", "set_search_properties"))


@dataclass(frozen=True)
class SearchConfig:
    """The searcher, ``num_samples`` (>= 1) trials, and what they optimize.

    ``algorithm`` is a name of :data:`raytune_torch.space.SEARCHERS`, an import path
    ``package.module:Class`` of a ``ray.tune.search.Searcher`` (built without arguments), or (from
    Python) a Searcher object, used as it is.

    ``metric`` is one reported metric and ``mode`` min or max, or, for several objectives (search:
    optuna only), a tuple of metrics and a tuple of as many modes. A ``mode`` not written is None
    here and follows each metric once the experiment knows its metrics
    (:func:`raytune_torch.config.train.direction`). ``sampler`` is one of :data:`SAMPLERS`, for
    search: optuna only (None: tpe).

    ``time_budget_s`` (> 0) bounds the whole run's wall time: then running trials are stopped
    (keeping what they reported) and no new one starts. ``points_to_evaluate`` are configurations
    run first (checked against the space by the rules); ``warm_start`` is an earlier run whose
    trials and scores a learning searcher starts from (:mod:`raytune_torch.warm`).
    """

    algorithm: Any = "random"
    num_samples: int = 1
    metric: str | tuple[str, ...] = "val_loss"
    mode: str | tuple[str | None, ...] | None = None
    max_concurrent: int | None = None
    sampler: str | None = None
    time_budget_s: float | None = None
    points_to_evaluate: tuple[Mapping[str, Any], ...] = ()
    warm_start: str | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        """The objectives, one or more."""
        return self.metric if isinstance(self.metric, tuple) else (self.metric,)

    @property
    def modes(self) -> tuple[str | None, ...]:
        """One mode per objective (None where not known yet)."""
        if isinstance(self.mode, tuple):
            return self.mode
        return (self.mode,) * len(self.metrics)

    @property
    def multi_objective(self) -> bool:
        """Whether the search optimizes several metrics at once (a Pareto front)."""
        return len(self.metrics) > 1

    @property
    def primary_metric(self) -> str:
        """The metric that ranks a trial's checkpoints, early stopping watches and the console
        shows: the metric, or the first of several objectives."""
        return self.metrics[0]

    @property
    def primary_mode(self) -> str | None:
        """``mode`` of :attr:`primary_metric`."""
        return self.modes[0]

    @property
    def objectives_text(self) -> str:
        """The metrics and their modes for people: ``val_accuracy (max), n_params (min)``."""
        return ", ".join(f"{m} ({mode})" for m, mode in zip(self.metrics, self.modes))

    @property
    def named(self) -> bool:
        """Whether ``algorithm`` is one of the built-in searchers (not an object or an import path)."""
        return isinstance(self.algorithm, str) and self.algorithm in sp.SEARCHERS

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems) -> SearchConfig:
        """Read the ``search:`` value; whether the metrics are reported is checked with ``train`` (rules)."""
        search = problems.mapping("search", raw)
        problems.unknown("search", search, field_names(cls))
        algorithm = _algorithm(search.get("algorithm", cls.algorithm), problems)
        num_samples = problems.typed("search.num_samples", search.get("num_samples", cls.num_samples), int, minimum=1)
        metric = _metric(search.get("metric", cls.metric), problems)
        mode = _mode(search.get("mode"), metric, problems)
        max_concurrent = search.get("max_concurrent")
        if max_concurrent is not None:
            max_concurrent = problems.typed("search.max_concurrent", max_concurrent, int, minimum=1)
        sampler = search.get("sampler")
        if sampler is not None and not problems.one_of("search.sampler", sampler, SAMPLERS, noun="sampler"):
            sampler = None
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
        # metric is kept as written: the rules after parsing report on it again
        return cls(algorithm=algorithm, metric=metric,
                   **given(num_samples=num_samples, mode=mode, max_concurrent=max_concurrent, sampler=sampler,
                           time_budget_s=budget, warm_start=warm,
                           points_to_evaluate=None if points is None else tuple(dict(p) for p in points)))

    def to_dict(self) -> dict[str, Any]:
        """The section as the file writes it, ``mode`` included; a list for several objectives;
        options left unset are left out. A searcher object is kept as it is."""
        out: dict[str, Any] = {"algorithm": self.algorithm, "num_samples": self.num_samples,
                               "metric": list(self.metric) if isinstance(self.metric, tuple) else self.metric,
                               "mode": list(self.mode) if isinstance(self.mode, tuple) else self.mode,
                               "max_concurrent": self.max_concurrent, "sampler": self.sampler,
                               "time_budget_s": self.time_budget_s, "warm_start": self.warm_start,
                               "points_to_evaluate": [dict(p) for p in self.points_to_evaluate] or None}
        return {k: v for k, v in out.items() if v is not None}


def _algorithm(value: Any, problems: Problems) -> Any:
    """A searcher's name, an import path of a Searcher class, or a Searcher object; else the default."""
    if is_searcher_object(value):
        return value
    if isinstance(value, str) and ":" in value:
        module, _, name = value.partition(":")
        if module and name:
            return value
        problems.add(f"search.algorithm: {value!r} is not an import path; write `package.module:SearcherClass`")
        return SearchConfig.algorithm
    if not isinstance(value, str):
        problems.add(f"search.algorithm: must be a searcher name ({', '.join(sp.SEARCHERS)}), an import path "
                     f"`package.module:SearcherClass` or a ray.tune.search.Searcher object, got {value!r}")
        return SearchConfig.algorithm
    problems.one_of("search.algorithm", value, sp.SEARCHERS, noun="searcher")
    return value  # kept as written: the rules after parsing report on it again


def _metric(value: Any, problems: Problems) -> str | tuple[str, ...]:
    """One metric name, or a list of two or more different names (several objectives)."""
    if isinstance(value, (list, tuple)):
        names = tuple(value)
        if not names or not all(isinstance(n, str) and n for n in names):
            problems.add(f"search.metric: must be a metric name or a list of metric names, got {value!r}")
            return SearchConfig.metric
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            problems.add(f"search.metric: {twice} listed twice in {list(names)}; list each objective once")
            return tuple(dict.fromkeys(names)) if len(set(names)) > 1 else names[0]
        return names if len(names) > 1 else names[0]
    if not isinstance(value, str) or not value:
        problems.add(f"search.metric: must be a metric name or a list of metric names, got {value!r}")
        return SearchConfig.metric
    return value


def _mode(value: Any, metric: str | tuple[str, ...], problems: Problems) -> str | tuple[str | None, ...] | None:
    """min or max for one metric; a list of as many for several (None: each follows its metric)."""
    if value is None:
        return None
    several = isinstance(metric, tuple)
    if isinstance(value, (list, tuple)):
        modes = tuple(value)
        bad = [m for m in modes if m not in MODES]
        if bad:
            problems.add(f"search.mode: each mode must be 'min' or 'max', got {list(modes)!r}")
            return None
        if not several and len(modes) == 1:
            return modes[0]
        count = len(metric) if several else 1
        if len(modes) != count:
            problems.add(f"search.mode: {len(modes)} mode(s) {list(modes)} for {count} metric(s) "
                         f"{list(metric) if several else [metric]}; give one mode per metric, in the same order")
            return None
        return modes
    if value not in MODES:
        problems.add(f"search.mode: must be 'min' or 'max', got {value!r}")
        return None
    if several:
        problems.add(f"search.mode: {value!r} is one mode for {len(metric)} metrics {list(metric)}; give a list "
                     f"of one mode per metric, e.g. mode: [{', '.join([value] * len(metric))}]")
        return None
    return value
