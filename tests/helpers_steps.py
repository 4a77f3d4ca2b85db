"""Training steps used by the tests (importable by Ray workers as tests.helpers_steps:NAME)."""

from __future__ import annotations

import time

from raytune_torch.loop import default_step

_calls = 0


def slow_step(ctx, xb, yb):
    """The default step, slowed down so that a test can interrupt a run mid-way."""
    time.sleep(0.02)
    return default_step(ctx, xb, yb)


def failing_step(ctx, xb, yb):
    """Fails every trial whose learning rate is 0.03 once it has trained a few batches."""
    global _calls
    _calls += 1
    if ctx.optimizer.param_groups[0]["lr"] == 0.03 and _calls > 15:
        raise RuntimeError("injected failure for lr=0.03")
    return default_step(ctx, xb, yb)
