"""Ray's HyperBand schedulers, settled: a bracket is judged when a trial leaves it in the cases
stock Ray leaves out. The logic and its version check are in
:class:`~raytune_torch._ray.internals.SettledHyperBand`; this module (imported when a run builds
its scheduler) only names the classes, and they override public scheduler methods only."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import HyperBandForBOHB, HyperBandScheduler

from .internals import SETTLED_HYPERBAND


class _Settled:
    """Mixed in before one of Ray's HyperBand schedulers."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        with SETTLED_HYPERBAND.judging(self):
            return super().on_trial_result(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        SETTLED_HYPERBAND.on_trial_remove(self, super().on_trial_remove, tune_controller, trial)


class SettledHyperBandScheduler(_Settled, HyperBandScheduler):
    pass


class SettledHyperBandForBOHB(_Settled, HyperBandForBOHB):
    pass
