"""Loading an experiment from a file or a dict, with CLI-style overrides, and writing it back."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..exceptions import ConfigError
from ._problems import Problems
from .experiment import ExperimentConfig
from .scheduler import SCHEDULERS
from .search import is_searcher_object

__all__ = ["load_config", "config_to_dict", "OVERRIDES"]

# CLI/keyword override name -> path in the experiment file.
OVERRIDES = {
    "name": ("name",),
    "seed": ("seed",),
    "storage": ("storage",),
    "search": ("search", "algorithm"),
    "num_samples": ("search", "num_samples"),
    "max_concurrent": ("search", "max_concurrent"),
    "time_budget_s": ("search", "time_budget_s"),
    "metric": ("search", "metric"),
    "mode": ("search", "mode"),
    "sampler": ("search", "sampler"),
    "scheduler": ("scheduler", "name"),
    "max_failures": ("max_failures",),
    "max_epochs": ("train", "max_epochs"),
    "time_limit_s": ("train", "time_limit_s"),
    "cpus_per_trial": ("resources", "cpu"),
    "gpus_per_trial": ("resources", "gpu"),
    "workers_per_trial": ("resources", "workers"),
}


def load_config(source: str | os.PathLike | Mapping[str, Any] | ExperimentConfig,
                **overrides: Any) -> ExperimentConfig:
    """Read and validate an experiment; raises :class:`ConfigError` listing every problem.

    Args:
        source: a YAML file path, a mapping of the same shape, or an :class:`ExperimentConfig`.
        overrides: names from :data:`OVERRIDES` (``search``, ``num_samples``, ``max_epochs`` ...).
    """
    where = None
    if isinstance(source, ExperimentConfig):
        raw = source.to_dict()
    elif isinstance(source, Mapping):
        raw = dict(source)
    else:
        where = str(Path(source))
        raw = _read_file(Path(source))
    raw = _apply_overrides(raw, overrides)
    problems = Problems()
    config = ExperimentConfig.from_dict(raw, problems)
    problems.raise_if_any(where)
    return config


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The experiment as plain data in the file's layout (the inverse of :func:`load_config`)."""
    return config.to_dict()


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError([f"experiment file {str(path)!r} does not exist; check the path"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source=str(path)) from None
    if not isinstance(raw, Mapping):
        raise ConfigError(["the file must hold a mapping (name:, model:, data:, ...)"], source=str(path))
    raw = dict(raw)
    # `pkg.mod:Name` targets may live next to the file
    paths = raw.get("import_paths") or []
    raw["import_paths"] = [*paths, str(path.resolve().parent)] if isinstance(paths, list) else raw.get("import_paths")
    return raw


def _apply_overrides(raw: dict, overrides: Mapping[str, Any]) -> dict:
    # A searcher object in the dict is the user's own, used as it is (never copied).
    searcher = raw.get("search", {}).get("algorithm") if isinstance(raw.get("search"), Mapping) else None
    raw = copy.deepcopy(raw, {id(searcher): searcher} if is_searcher_object(searcher) else None)
    unknown = [k for k in overrides if k not in OVERRIDES]
    if unknown:
        raise ConfigError([f"override {k!r} is not known{Problems.suggest(k, OVERRIDES)} "
                           f"(known: {', '.join(OVERRIDES)})" for k in unknown])
    for key, value in overrides.items():
        if value is None:
            continue
        path = OVERRIDES[key]
        if key == "scheduler":
            current = raw.get("scheduler")
            current = {"name": current} if isinstance(current, str) else dict(current or {})
            if current.get("name") != value:
                # Keep only the options the new scheduler understands.
                spec = SCHEDULERS.get(value, {})
                current = {k: v for k, v in current.items() if k in spec}
            current["name"] = value
            raw["scheduler"] = current
            continue
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, Mapping) else {}
            node = node[part]
        node[path[-1]] = value
        if key == "metric" and "mode" not in overrides:
            node.pop("mode", None)  # re-derive the mode from the new metric
    return raw
