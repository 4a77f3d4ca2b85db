"""The run's own stop rules: ``search.time_budget_s`` and ``stop_all_at``, and a record of which
one ended the run and which trials it stopped.

One object is both Tune's stopper (it sees every result, and Tune asks it whether to stop all)
and a callback (it sees the trials, so it can say which were still running or waiting when a
rule fired; its state, the time used so far, is saved with the experiment). Trials stopped by a
rule keep every result they reported; Tune starts no new trial afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ray import tune
from ray.tune.stopper import Stopper

from ..config.stop import reached

__all__ = ["RunRules", "take_record"]

_last_record: dict[str, Any] | None = None


def take_record() -> dict[str, Any] | None:
    """What the last run's rule recorded when it fired (None: no rule fired); cleared once read."""
    global _last_record
    record, _last_record = _last_record, None
    return record


class RunRules(Stopper, tune.Callback):
    """Stop the whole run after ``time_budget_s`` seconds of running (summed across resumes), or
    as soon as any trial's result reaches one of ``targets`` (metric -> (value, mode))."""

    def __init__(self, time_budget_s: float | None, targets: Mapping[str, tuple[float, str]]) -> None:
        self.time_budget_s = time_budget_s
        self.targets = dict(targets)
        self.used_s = 0.0
        self.record: dict[str, Any] | None = None
        self._since: float | None = None
        self._trials: list | None = None

    @property
    def active(self) -> bool:
        return self.time_budget_s is not None or bool(self.targets)

    def _elapsed(self) -> float:
        return self.used_s + (time.monotonic() - self._since if self._since is not None else 0.0)

    def _fire(self, record: dict[str, Any], except_trial: str | None = None) -> None:
        global _last_record
        record["after_s"] = round(self._elapsed(), 3)
        # Tune stops every trial that is neither finished nor errored when stop_all() turns true;
        # those still waiting for resources never started.
        stopped = [t for t in self._trials or [] if t.status not in ("TERMINATED", "ERROR") and t.trial_id != except_trial]
        record["stopped_trials"] = [t.trial_id for t in stopped]
        record["waiting_trials"] = [t.trial_id for t in stopped if t.status == "PENDING"]
        self.record = _last_record = record

    # -- Stopper ------------------------------------------------------------------------------
    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        for metric, (value, mode) in self.targets.items():
            if reached(result.get(metric), value, mode):
                if self.record is None:
                    self._fire({"rule": "stop_all_at", "trial_id": trial_id, "metric": metric,
                                "value": result[metric], "target": value}, except_trial=trial_id)
                return True
        return False

    def stop_all(self) -> bool:
        if self.record is None and self.time_budget_s is not None and self._elapsed() >= self.time_budget_s:
            self._fire({"rule": "time_budget_s", "budget_s": self.time_budget_s})
        return self.record is not None

    # -- Callback -----------------------------------------------------------------------------
    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._trials = trials  # Tune's own list, kept up to date by Tune
        if self._since is None:
            self._since = time.monotonic()

    def get_state(self) -> dict[str, Any]:
        return {"used_s": self._elapsed()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.used_s, self._since = float(state.get("used_s", 0.0)), None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_trials=None, _since=None, used_s=self._elapsed())
        return state
