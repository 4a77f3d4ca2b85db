"""The whole experiment file: its top-level keys (:data:`SECTIONS`) and :class:`ExperimentConfig`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from functools import partial
from typing import Any

from .. import space as sp
from ._problems import Problems
from .checkpoint import CheckpointConfig
from .components import ComponentConfig
from .data import BUNDLED_DATASETS, DataConfig
from .loggers import MLflowLogger, WandbLogger, dump_loggers, parse_loggers
from .params import parse_space
from .resources import ResourcesConfig
from .rules import RULES
from .scheduler import SchedulerConfig
from .search import SearchConfig
from .stop import dump_targets, parse_targets
from .train import METRICS, TASKS, TrainConfig, direction, reported_name

__all__ = ["ExperimentConfig", "Section", "SECTIONS"]


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: what to train, on which data, over which space, with which search."""

    name: str
    model: ComponentConfig
    data: DataConfig
    task: str = "classification"
    seed: int = 0
    storage: str = "runs"
    optimizer: ComponentConfig = ComponentConfig("adam")
    loss: ComponentConfig | None = None
    lr_scheduler: ComponentConfig | None = None
    train: TrainConfig = TrainConfig()
    space: Mapping[str, Any] = field(default_factory=dict)
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: ResourcesConfig = ResourcesConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    stop: Mapping[str, float] = field(default_factory=dict)
    stop_all_at: Mapping[str, float] = field(default_factory=dict)
    max_failures: int = 2
    tensorboard: bool = True
    loggers: tuple[MLflowLogger | WandbLogger, ...] = ()
    import_paths: tuple[str, ...] = ()

    @property
    def run_dir(self) -> str:
        """Where this experiment's results go: ``STORAGE/NAME``."""
        return os.path.join(self.storage, self.name)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every metric a trial reports each epoch."""
        return ("train_loss", "val_loss", *(f"val_{reported_name(m)}" for m in self.train.metrics))

    def with_overrides(self, **overrides: Any) -> ExperimentConfig:
        """A copy with CLI-style overrides applied and the result validated again."""
        from .load import load_config  # load imports this module

        return load_config(self.to_dict(), **overrides)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], problems: Problems) -> ExperimentConfig:
        """Read every section, then check the rules between them; what is wrong goes to ``problems``.

        The result is complete only when ``problems`` stayed empty.
        """
        problems.unknown("experiment", raw, SECTIONS)
        # A key without a default (name, model, data) is read even when absent, to report it
        # missing, and kept even when None: no rule reads the name or the model.
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        values = {key: section.parse(raw.get(key), problems)
                  for key, section in SECTIONS.items() if key in raw or key in required}
        values = {key: value for key, value in values.items() if value is not None or key in required}
        config = cls(**_follow_other_sections(values))
        for rule in RULES:
            problems.extend(rule(config))
        return config

    def to_dict(self) -> dict[str, Any]:
        """The experiment as plain data in the file's layout; unset optional sections left out."""
        out: dict[str, Any] = {}
        for key, section in SECTIONS.items():
            value = getattr(self, key)
            written = None if value is None else section.dump(value)
            if written is not None:
                out[key] = written
        return out


def _follow_other_sections(values: dict[str, Any]) -> dict[str, Any]:
    """Fill in the defaults that follow another section: the task follows a bundled dataset,
    ``train.metrics`` the task (its first metric), and ``search.mode`` the search metric, or each of
    several (None for a metric of the user's own function: the rules ask for it)."""
    dataset = values["data"].dataset
    task = values.get("task") or BUNDLED_DATASETS.get(dataset if isinstance(dataset, str) else "", "classification")
    train = values.get("train", TrainConfig(metrics=None))
    if train.metrics is None:
        train = replace(train, metrics=METRICS[task][:1])
    search = values.get("search", SearchConfig())
    if search.mode is None and isinstance(search.metric, str):
        search = replace(search, mode=direction(search.metric, train.metrics))
    elif search.mode is None and isinstance(search.metric, tuple):
        search = replace(search, mode=tuple(direction(m, train.metrics) for m in search.metric))
    return {**values, "task": task, "train": train, "search": search}


# -- the top-level keys that are not sections of their own ---------------------------------------


def _name(value: Any, problems: Problems) -> str | None:
    if not isinstance(value, str) or not value.strip() or "/" in value or value in (".", ".."):
        problems.add(f"name: must be a non-empty name without '/', got {value!r}")
        return None
    return value


def _storage(value: Any, problems: Problems) -> str | None:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        problems.add(f"storage: must be a directory path, got {value!r}")
        return None
    return str(value)


def _task(value: Any, problems: Problems) -> str | None:
    if value is not None and value not in TASKS:
        problems.add(f"task: must be one of {', '.join(TASKS)}, got {value!r}")
        return None
    return value  # None: follows the data (see _follow_other_sections)


def _import_paths(value: Any, problems: Problems) -> tuple[str, ...] | None:
    value = value or ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        problems.add(f"import_paths: must be a list of directories, got {value!r}")
        return None
    return tuple(str(p) for p in value)


def _as_written(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Section:
    """One top-level key of the experiment file: how it is read, and written back (None: left out)."""

    parse: Callable[[Any, Problems], Any]
    dump: Callable[[Any], Any] = _as_written


def _component(where: str, **how: Any) -> Section:
    return Section(partial(ComponentConfig.from_dict, where=where, **how), ComponentConfig.to_dict)


# Every top-level key, in the order the file is checked and written. A new section is a field on
# ExperimentConfig and an entry here.
SECTIONS: dict[str, Section] = {
    "name": Section(_name),
    "seed": Section(lambda value, problems: problems.typed("seed", value, int, minimum=0)),
    "storage": Section(_storage),
    "task": Section(_task),
    "data": Section(DataConfig.from_dict, DataConfig.to_dict),
    "model": _component("model", required=True, builtins=False),
    "optimizer": _component("optimizer", required=True),
    "loss": _component("loss"),
    "lr_scheduler": _component("lr_scheduler"),
    "train": Section(TrainConfig.from_dict, TrainConfig.to_dict),
    "space": Section(parse_space, sp.space_to_dict),
    "search": Section(SearchConfig.from_dict, SearchConfig.to_dict),
    "scheduler": Section(SchedulerConfig.from_dict, SchedulerConfig.to_dict),
    "resources": Section(ResourcesConfig.from_dict, ResourcesConfig.to_dict),
    "checkpoint": Section(CheckpointConfig.from_dict, CheckpointConfig.to_dict),
    "stop": Section(parse_targets("stop"), dump_targets),
    "stop_all_at": Section(parse_targets("stop_all_at"), dump_targets),
    "max_failures": Section(lambda value, problems: problems.typed("max_failures", value, int, minimum=0)),
    "tensorboard": Section(lambda value, problems: problems.boolean("tensorboard", value)),
    "loggers": Section(parse_loggers, dump_loggers),
    "import_paths": Section(_import_paths, lambda paths: list(paths) or None),
}
