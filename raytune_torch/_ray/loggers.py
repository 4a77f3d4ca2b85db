"""Ray's own MLflow and W&B logger callbacks for the experiment's ``loggers:``, imported only when asked for.

Both run in the driver (W&B through one small actor per trial). Two things are pinned that Ray's
callbacks leave to the process: MLflow's tracking URI is resolved once (file, environment,
MLflow's default) and set again before every write (:mod:`.mlflow_callback`), so another
``mlflow.set_tracking_uri`` in the same process cannot move a run's records; W&B's mode and
directory are passed to ``wandb.init`` itself (:mod:`.wandb_callback`), since the logging actors do
not see environment variables set in the driver after Ray started.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["logger_callbacks"]


def logger_callbacks(config: Any, local_run_dir: str) -> list:
    """One Ray logger callback per tracker of ``config.loggers`` (none: an empty list).

    ``local_run_dir``: the run directory on this machine (a URI run's staging copy); W&B writes
    its files under ``wandb/`` there unless told otherwise (Ray's default is a temporary folder)."""
    if not config.loggers:
        return []
    from ..trackers import mlflow_uri, tracker_settings

    callbacks = []
    for name, settings in tracker_settings(config):
        if name == "mlflow":
            callbacks.append(_mlflow_callback(mlflow_uri(settings), settings))
        else:
            callbacks.append(_wandb_callback({**settings, "dir": settings["dir"] or local_run_dir}))
    return callbacks


def _mlflow_callback(uri: str, settings: dict) -> Any:
    from .mlflow_callback import MLflowCallback

    return MLflowCallback(tracking_uri=uri, experiment_name=settings["experiment_name"],
                          tags=settings["tags"] or None, save_artifact=settings["save_artifact"])


def _wandb_callback(settings: dict) -> Any:
    from .wandb_callback import WandbCallback

    init: dict[str, Any] = {"mode": settings["mode"]}
    for key in ("entity", "dir"):
        if settings[key]:
            init[key] = settings[key]
    if settings["dir"]:
        os.makedirs(settings["dir"], exist_ok=True)
    if settings["tags"]:
        init["tags"] = settings["tags"]
    return WandbCallback(project=settings["project"], group=settings["group"], api_key_file=settings["api_key_file"],
                         upload_checkpoints=settings["upload_checkpoints"], **init)
