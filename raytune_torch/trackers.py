"""The experiment trackers of ``loggers:`` as the driver sees them: settings resolved from the file
and the environment, and the checks made before Ray starts.

:func:`tracker_settings` turns each configured tracker into the keyword arguments of its Ray
callback (built by :mod:`raytune_torch._ray.loggers`); :func:`check_trackers` imports each tracker's
package and finds what would fail only once the run is under way: an MLflow store on this
machine that MLflow refuses or cannot open, a W&B run online without an API key. Neither
imports Ray.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .config import ExperimentConfig, MLflowLogger, WandbLogger
from .config.loggers import missing_package
from .exceptions import ConfigError

__all__ = ["tracker_settings", "check_trackers", "absolute_tracking_uri", "local_store", "TRACKER_ENV", "job_env",
           "job_problems"]

#: Environment variables a tracker reads that are not secrets: ``submit`` passes those set on
#: this machine to the job (API keys and tokens are never sent: set them on the cluster).
TRACKER_ENV = {
    "mlflow": ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"),
    "wandb": ("WANDB_PROJECT", "WANDB_PROJECT_NAME", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_MODE", "WANDB_DIR",
              "WANDB_BASE_URL"),
}


def absolute_tracking_uri(uri: str, cwd: str | None = None) -> str:
    """``uri`` with a relative local path made absolute against ``cwd`` (default: the working
    directory): a plain path or ``file:`` URI becomes ``file:///ABS``, ``sqlite:///REL.db`` becomes
    ``sqlite:////ABS/REL.db``. Servers and absolute locations are returned unchanged."""
    from pathlib import Path

    base = Path(cwd or os.getcwd())
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        return uri if path.startswith("/") or path.startswith(":memory:") or not path else \
            f"sqlite:///{(base / path).resolve()}"
    if uri.startswith("file:"):
        path = uri[len("file:"):]
        if path.startswith("//"):  # file://HOST/PATH or file:///PATH: already absolute
            return uri
        return (base / path).resolve().as_uri()
    if "://" in uri or uri in ("databricks",) or uri.startswith("databricks"):
        return uri
    return (base / os.path.expanduser(uri)).resolve().as_uri()


def local_store(uri: str) -> bool:
    """Whether an MLflow tracking URI is a file or database on this machine (not a server)."""
    return uri.startswith(("file:", "sqlite:")) or "://" not in uri and not uri.startswith("databricks")


def tracker_settings(config: ExperimentConfig, environ: Mapping[str, str] | None = None) -> list[tuple[str, dict]]:
    """``[(name, settings), ...]`` for the experiment's trackers, in the file's order: the file's
    values, else the environment's, else the defaults; local MLflow locations made absolute."""
    out = []
    for logger in config.loggers:
        settings = logger.settings(config.name, environ)
        if isinstance(logger, MLflowLogger) and settings["tracking_uri"]:
            settings["tracking_uri"] = absolute_tracking_uri(settings["tracking_uri"])
        if isinstance(logger, WandbLogger) and settings["dir"]:
            settings["dir"] = os.path.abspath(os.path.expanduser(settings["dir"]))
        out.append((logger.name, settings))
    return out


def check_trackers(config: ExperimentConfig, environ: Mapping[str, str] | None = None) -> None:
    """Import each tracker's package and check what it would refuse once the run is under way.

    Raises:
        ConfigError: every problem found (the package is missing; MLflow refuses or cannot open a
            local store; W&B would run online without an API key).
    """
    problems: list[str] = []
    env = os.environ if environ is None else environ
    for i, (name, settings) in enumerate(tracker_settings(config, env)):
        where = f"loggers[{i}]"
        try:
            __import__(name)
        except ImportError:
            problems.append(missing_package(where, name))
            continue
        if name == "mlflow":
            problems.extend(_check_mlflow(where, settings))
        else:
            problems.extend(_check_wandb(where, settings, env))
    if problems:
        raise ConfigError(problems)


def mlflow_uri(settings: Mapping[str, Any]) -> str:
    """The tracking URI a run logs to: the resolved setting, else MLflow's default, made absolute."""
    uri = settings.get("tracking_uri")
    if uri:
        return uri
    import mlflow

    return absolute_tracking_uri(mlflow.get_tracking_uri())


def _check_mlflow(where: str, settings: Mapping[str, Any]) -> list[str]:
    """A local store is opened once (a database file is created; a server is not contacted)."""
    uri = mlflow_uri(settings)
    if not local_store(uri):
        return []
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:////"):
        os.makedirs(os.path.dirname(uri[len("sqlite:///"):]), exist_ok=True)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except MlflowException as exc:
        import mlflow

        if "MLFLOW_ALLOW_FILE_STORE" in str(exc):
            return [f"{where}.tracking_uri: {uri!r} is an MLflow file store, which MLflow {mlflow.__version__} "
                    f"refuses by default; use a database (sqlite:///PATH/mlflow.db) or set "
                    f"MLFLOW_ALLOW_FILE_STORE=true"]
        return [f"{where}.tracking_uri: MLflow cannot open {uri!r}: {exc}"]
    except Exception as exc:  # a database driver's or the file system's own error
        return [f"{where}.tracking_uri: MLflow cannot open {uri!r}: {type(exc).__name__}: {exc}"]
    return []


def _check_wandb(where: str, settings: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """Online, W&B needs an API key: the same sources Ray's callback tries, in its order."""
    if settings["mode"] != "online":
        return []
    key_file = settings.get("api_key_file")
    if key_file:
        path = os.path.expanduser(key_file)
        if not os.path.isfile(path):
            return [f"{where}.api_key_file: {key_file!r} does not exist; give the file holding your W&B API key"]
        return []
    if env.get("WANDB_API_KEY") or env.get("WANDB_SETUP_API_KEY_HOOK"):
        return []
    import wandb

    try:
        wandb.ensure_configured()
        if wandb.api.api_key:
            return []
    except AttributeError:
        pass
    return [f"{where}: W&B runs online but finds no API key; set WANDB_API_KEY, run `wandb login`, give "
            f"api_key_file, or use `mode: offline` (sync later with `wandb sync`)"]


def job_env(config: ExperimentConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tracker variables of :data:`TRACKER_ENV` set here, for the trackers the experiment asks
    for: what ``submit`` passes to the job, so the cluster resolves the same settings."""
    env = os.environ if environ is None else environ
    names = [key for logger in config.loggers for key in TRACKER_ENV[logger.name]]
    return {key: env[key] for key in names if env.get(key)}


def job_problems(config: ExperimentConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """What a tracker would lose on a cluster: MLflow with no tracking URI, or a relative local one,
    and a relative W&B ``dir``, would write into the job's temporary working directory."""
    problems = []
    for i, (logger, (name, settings)) in enumerate(zip(config.loggers, tracker_settings(config, environ))):
        where = f"loggers[{i}]"
        if name == "mlflow":
            uri = logger.settings(config.name, environ)["tracking_uri"]
            if uri is None:
                problems.append(f"{where}.tracking_uri: not set (nor MLFLOW_TRACKING_URI here); on the cluster MLflow "
                                f"would write into the job's temporary working directory and lose it. Set it to a "
                                f"server (http://HOST:5000) or a location every node sees "
                                f"(sqlite:////mnt/shared/mlflow.db)")
            elif local_store(uri) and absolute_tracking_uri(uri) != uri:
                problems.append(f"{where}.tracking_uri: {uri!r} is a relative path; on the cluster it would land in "
                                f"the job's temporary working directory and be lost. Use a server (http://HOST:5000) "
                                f"or an absolute location every node sees (sqlite:////mnt/shared/mlflow.db)")
        elif logger.dir is not None and not os.path.isabs(os.path.expanduser(logger.dir)):
            problems.append(f"{where}.dir: {logger.dir!r} is a relative path; on the cluster it would land in the "
                            f"job's temporary working directory and be lost. Leave it out (W&B's files go to the "
                            f"run directory) or give an absolute path every node sees")
    return problems
