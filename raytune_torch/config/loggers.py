"""The ``loggers:`` section: experiment trackers (MLflow, Weights & Biases) that receive every trial.

The section is a list; an entry is a tracker's name (``mlflow``) or a mapping with its settings
(``{name: mlflow, tracking_uri: ..., experiment_name: ...}``). A setting left out here comes from
the tracker's own environment variables where the run's driver starts (:meth:`MLflowLogger.settings`,
:meth:`WandbLogger.settings`): the file wins over the environment, the environment over the defaults.

Only names and values are checked here, and whether the tracker's package can be found (it is
not imported); the driver imports it when the run starts.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ._problems import Problems

__all__ = ["MLflowLogger", "WandbLogger", "LOGGERS", "WANDB_MODES", "parse_loggers", "dump_loggers",
           "missing_package"]

WANDB_MODES = ("online", "offline", "disabled")


def missing_package(where: str, name: str) -> str:
    """The problem for a tracker whose package is not installed, with the extra that installs it."""
    return f"{where}: {name} is not installed; pip install 'raytune-torch[{name}]'"


@dataclass(frozen=True)
class MLflowLogger:
    """MLflow: one MLflow run per trial (parameters, and every epoch's metrics at step = epoch).

    ``tracking_uri``: a server (``http://HOST:5000``), a database (``sqlite:///runs/mlflow.db``) or a
    folder (``file:///...``); default ``MLFLOW_TRACKING_URI``, else MLflow's own default. A relative
    local path is taken from the working directory of the driver. ``experiment_name``: default
    ``MLFLOW_EXPERIMENT_NAME``, else the experiment's ``name``. ``tags``: set on every run.
    ``save_artifact``: upload each trial's folder as the run's artifacts when the trial ends.
    """

    name: ClassVar[str] = "mlflow"
    package: ClassVar[str] = "mlflow"

    tracking_uri: str | None = None
    experiment_name: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    save_artifact: bool = False

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], problems: Problems, where: str) -> MLflowLogger:
        return cls(
            tracking_uri=_text(problems, f"{where}.tracking_uri", raw.get("tracking_uri")),
            experiment_name=_text(problems, f"{where}.experiment_name", raw.get("experiment_name")),
            tags=_tags(problems, f"{where}.tags", raw.get("tags")),
            save_artifact=_flag(problems, f"{where}.save_artifact", raw.get("save_artifact", False)),
        )

    def settings(self, experiment: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """What the tracker is given: the file's values, else the environment's, else the defaults.

        ``tracking_uri`` is None when neither the file nor ``MLFLOW_TRACKING_URI`` names one
        (MLflow's own default applies, resolved by the driver)."""
        env = os.environ if environ is None else environ
        return {
            "tracking_uri": self.tracking_uri or env.get("MLFLOW_TRACKING_URI") or None,
            "experiment_name": self.experiment_name or env.get("MLFLOW_EXPERIMENT_NAME") or experiment,
            "tags": dict(self.tags),
            "save_artifact": self.save_artifact,
        }


@dataclass(frozen=True)
class WandbLogger:
    """Weights & Biases: one W&B run per trial (its parameters as the run's config, every epoch's
    metrics in its history), in a group named after the experiment.

    ``project``: default ``WANDB_PROJECT`` (or Ray's ``WANDB_PROJECT_NAME``), else the experiment's
    ``name``. ``entity``, ``group``: default ``WANDB_ENTITY``, the experiment's ``name``. ``mode``:
    online, offline (files only, synced later with ``wandb sync``) or disabled; default
    ``WANDB_MODE``, else online. ``dir``: where W&B writes its ``wandb/`` folder (default ``WANDB_DIR``,
    else the run directory). ``api_key_file``: a file holding the key (default ``WANDB_API_KEY`` or
    ``wandb login``); never written into the file itself. ``tags``: W&B tags of every run.
    ``upload_checkpoints``: log each checkpoint as a W&B artifact.
    """

    name: ClassVar[str] = "wandb"
    package: ClassVar[str] = "wandb"

    project: str | None = None
    entity: str | None = None
    group: str | None = None
    mode: str | None = None
    dir: str | None = None
    api_key_file: str | None = None
    tags: tuple[str, ...] = ()
    upload_checkpoints: bool = False

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], problems: Problems, where: str) -> WandbLogger:
        mode = raw.get("mode")
        if mode is not None and not problems.one_of(f"{where}.mode", mode, WANDB_MODES, noun="mode"):
            mode = None
        tags = raw.get("tags") or ()
        if isinstance(tags, str) or not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
            problems.add(f"{where}.tags: must be a list of strings, got {tags!r}")
            tags = ()
        return cls(
            project=_text(problems, f"{where}.project", raw.get("project")),
            entity=_text(problems, f"{where}.entity", raw.get("entity")),
            group=_text(problems, f"{where}.group", raw.get("group")),
            mode=mode,
            dir=_text(problems, f"{where}.dir", raw.get("dir")),
            api_key_file=_text(problems, f"{where}.api_key_file", raw.get("api_key_file")),
            tags=tuple(tags),
            upload_checkpoints=_flag(problems, f"{where}.upload_checkpoints", raw.get("upload_checkpoints", False)),
        )

    def settings(self, experiment: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """What the tracker is given: the file's values, else the environment's, else the defaults
        (``dir`` and ``entity`` None: W&B's own)."""
        env = os.environ if environ is None else environ
        return {
            "project": self.project or env.get("WANDB_PROJECT") or env.get("WANDB_PROJECT_NAME") or experiment,
            "entity": self.entity or env.get("WANDB_ENTITY") or None,
            "group": self.group or env.get("WANDB_RUN_GROUP") or experiment,
            "mode": self.mode or env.get("WANDB_MODE") or "online",
            "dir": self.dir or env.get("WANDB_DIR") or None,
            "api_key_file": self.api_key_file,
            "tags": list(self.tags),
            "upload_checkpoints": self.upload_checkpoints,
        }


#: Every tracker the ``loggers:`` list accepts, by name.
LOGGERS: dict[str, type] = {"mlflow": MLflowLogger, "wandb": WandbLogger}

Logger = MLflowLogger | WandbLogger


def parse_loggers(raw: Any, problems: Problems) -> tuple[Logger, ...]:
    """Read the ``loggers:`` value (a list of names or mappings); what is wrong goes to ``problems``."""
    if raw is None:
        return ()
    if isinstance(raw, (str, Mapping)) or not isinstance(raw, (list, tuple)):
        problems.add(f"loggers: must be a list such as [mlflow, wandb], got {raw!r}")
        return ()
    out: list[Logger] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"loggers[{i}]"
        settings = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(settings, Mapping) or "name" not in settings:
            problems.add(f"{where}: must be a tracker's name or a mapping with `name:`, got {entry!r}")
            continue
        name = settings["name"]
        if not problems.one_of(f"{where}", name, LOGGERS, noun="logger"):
            continue
        kind = LOGGERS[name]
        problems.unknown(where, settings, ["name", *(f.name for f in fields(kind))])
        if name in seen:
            problems.add(f"{where}: {name} is listed twice; keep one entry")
            continue
        seen.add(name)
        if importlib.util.find_spec(kind.package) is None:
            problems.add(missing_package(where, name))
        out.append(kind.from_dict(settings, problems, where))
    return tuple(out)


def dump_loggers(loggers: tuple[Logger, ...]) -> list[Any] | None:
    """The section as the file writes it: a bare name for a tracker with every default; None when empty."""
    written: list[Any] = []
    for logger in loggers:
        changed = {f.name: _plain(getattr(logger, f.name)) for f in fields(logger)
                   if getattr(logger, f.name) != _default(f)}
        written.append({"name": logger.name, **changed} if changed else logger.name)
    return written or None


def _default(f: Any) -> Any:
    return f.default_factory() if callable(f.default_factory) else f.default


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _text(problems: Problems, where: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.add(f"{where}: must be a non-empty string, got {value!r}")
        return None
    return value


def _flag(problems: Problems, where: str, value: Any) -> bool:
    checked = problems.boolean(where, value)
    return bool(checked)


def _tags(problems: Problems, where: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.add(f"{where}: must be a mapping of tag names to values, got {value!r}")
        return {}
    return {str(k): str(v) for k, v in value.items()}
