"""The console line of a finished trial says what ended it."""

from __future__ import annotations

import io

import pytest

from raytune_torch._ray.callbacks import ConsoleCallback, finish_status


@pytest.mark.parametrize("last, status", [
    ({"epoch": 8, "early_stopped": 1}, "done"),  # patience ran out at the last epoch: it ended nothing early
    ({"epoch": 5, "early_stopped": 1}, "early-stopped"),
    ({"epoch": 3, "diverged": 1}, "diverged"),
    ({"epoch": 8, "diverged": 1}, "diverged"),
    ({"epoch": 4}, "pruned"),  # the scheduler stopped it
    ({"epoch": 8}, "done"),
])
def test_what_ended_a_trial(last, status):
    assert finish_status(last, max_epochs=8) == status


class _Trial:
    trial_id = "abc_00001"
    config = {"optimizer__lr": 0.01}
    last_result = {"epoch": 8, "early_stopped": 1, "val_accuracy": 0.9}


def test_console_line_of_a_trial_whose_patience_ran_out_at_its_last_epoch():
    out = io.StringIO()
    console = ConsoleCallback("val_accuracy", total=1, stream=out, max_epochs=8)
    console.on_trial_complete(0, [], _Trial())
    line = out.getvalue()
    assert "abc_00001 done after 8 epoch(s): val_accuracy=0.9  (optimizer__lr=0.01)" in line
