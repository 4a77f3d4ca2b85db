"""Ray's MLflow logger callback with its tracking URI pinned (imported only when ``loggers:`` asks for MLflow)."""

from __future__ import annotations

from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.result import TRAINING_ITERATION

__all__ = ["MLflowCallback"]


class MLflowCallback(MLflowLoggerCallback):
    """Ray's MLflow callback, writing to its own tracking URI whatever the process's is; each run
    tagged with its ``trial_id`` (the run directory's ``trial_<id>``), one MLflow step per epoch."""

    def _pinned(self) -> None:
        import mlflow

        if mlflow.get_tracking_uri() != self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self._pinned()
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial: Any) -> None:
        self._pinned()
        shared = self.tags
        self.tags = {**shared, "trial_id": trial.trial_id}
        try:
            super().log_trial_start(trial)
        finally:
            self.tags = shared

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        self._pinned()
        super().log_trial_result(iteration, trial, _epoch_step(result))

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        self._pinned()
        super().log_trial_end(trial, failed)


def _epoch_step(result: dict) -> dict:
    """Ray logs at step = its training iteration; one report is one epoch here, so the trial's own
    epoch (which survives a restore from a newer checkpoint) is the step."""
    if isinstance(result.get("epoch"), int):
        return {**result, TRAINING_ITERATION: result["epoch"]}
    return result
