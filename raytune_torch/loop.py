"""Plain PyTorch: train one epoch, evaluate, compute metrics. Knows nothing of Ray or scikit-learn."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .metrics import Metric, compute, resolve_metrics

__all__ = ["AUTOCAST_DTYPES", "CHECK_EVERY", "StepContext", "autocast", "make_scaler", "default_step", "train_epoch",
           "predict", "evaluate", "evaluate_parts", "metrics_from_parts", "compute_metrics"]

# The autocast dtype of each train.precision (None: no autocast, float32 throughout).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# How many batches pass between two checks of the running loss for NaN/inf: each check waits for
# the device, so a diverging epoch stops at most CHECK_EVERY - 1 batches late.
CHECK_EVERY = 8


def autocast(device: torch.device, precision: str = "32") -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``precision``'s dtype on ``device``'s type; nothing for ``"32"``."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, precision: str = "32") -> torch.amp.GradScaler:
    """A gradient scaler for ``precision``: enabled for fp16 only (bf16 has float32's range);
    a disabled one passes the loss and the optimizer step through unchanged."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


class StepContext:
    """What a per-batch step sees: the model, optimizer, loss and device of the trial, its
    ``precision`` (``"32"``, ``"bf16"``, ``"fp16"``) and gradient ``scaler``.

    A step of your own runs its forward pass and loss under ``with ctx.autocast():`` and steps
    through ``ctx.scaler`` (``scale(loss).backward()``, ``step(optimizer)``, ``update()``) to honour
    ``train.precision``; both do nothing at precision 32.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                 device: torch.device, *, precision: str = "32", scaler: torch.amp.GradScaler | None = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.device = device
        self.precision = precision
        self.scaler = scaler if scaler is not None else make_scaler(device, precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the trial's precision (nothing at 32)."""
        return autocast(self.device, self.precision)


def default_step(ctx: StepContext, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """One optimisation step on one batch; returns the (detached) batch loss."""
    ctx.optimizer.zero_grad(set_to_none=True)
    with ctx.autocast():
        loss = ctx.loss_fn(ctx.model(xb), yb)
    ctx.scaler.scale(loss).backward()
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    return loss.detach()


def _running_sum(device: torch.device) -> torch.Tensor:
    """A zero on ``device`` to add batch losses to (float64 where the device has it)."""
    return torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)


def train_epoch(ctx: StepContext, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                step: Callable[[StepContext, torch.Tensor, torch.Tensor], Any] = default_step, *,
                check_every: int = CHECK_EVERY) -> float:
    """Run ``step`` over every batch in train mode; returns the sample-weighted mean loss.

    The loss is summed on the device and read back once, at the end. Every ``check_every`` batches
    the sum is checked for NaN/inf on the device; a non-finite sum ends the epoch there and is
    returned (NaN or inf), so a diverging configuration costs at most ``check_every - 1`` more batches.
    """
    ctx.model.train()
    device = ctx.device
    running, count = _running_sum(device), 0
    for index, (xb, yb) in enumerate(batches, start=1):
        if xb.device != device:
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
        loss = step(ctx, xb, yb)
        running.add_(loss.detach() if isinstance(loss, torch.Tensor) else float(loss), alpha=len(xb))
        count += len(xb)
        if index % check_every == 0 and not torch.isfinite(running):
            break
    return float(running) / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]], device: torch.device, *,
            precision: str = "32") -> torch.Tensor:
    """Model outputs (float32) for every batch, concatenated on the CPU (eval mode, no grad)."""
    model.eval()
    outs = []
    for xb, _ in batches:
        with autocast(device, precision):
            outs.append(model(xb.to(device, non_blocking=True)).float())
    return torch.cat(outs).cpu() if outs else torch.empty(0)


def compute_metrics(task: str, outputs: torch.Tensor, targets: torch.Tensor,
                    metrics: Sequence[str | Metric]) -> dict[str, float]:
    """Metrics by reported name (see :mod:`raytune_torch.metrics`): built-in names, scikit-learn
    scorer names, import paths ``pkg.mod:fn``, or :class:`~raytune_torch.metrics.Metric` objects
    already resolved. Classification outputs are logits."""
    if not metrics:
        return {}
    resolved = [m if isinstance(m, Metric) else resolve_metrics(task, [m])[0] for m in metrics]
    return compute(resolved, targets.cpu().numpy(), outputs.cpu().numpy())


def evaluate_parts(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: nn.Module,
                   device: torch.device, *, keep_outputs: bool, precision: str = "32") -> tuple[float, int, Any, Any]:
    """What :func:`evaluate` reduces: (summed loss, rows, outputs, targets) over ``batches``, the
    outputs (float32) and targets on the CPU when ``keep_outputs``, else None. Several workers
    gather these from each rank's shard before the metrics are computed."""
    model.eval()
    outs, ys = [], []
    running, count = _running_sum(device), 0
    with torch.no_grad():
        for xb, yb in batches:
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            with autocast(device, precision):
                o = model(xb)
                loss = loss_fn(o, yb)
            running.add_(loss, alpha=len(xb))
            count += len(xb)
            if keep_outputs:
                outs.append(o.float())
                ys.append(yb)
    if not outs:
        return float(running), count, None, None
    return float(running), count, torch.cat(outs).cpu(), torch.cat(ys).cpu()


def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: nn.Module,
             device: torch.device, task: str, metrics: Sequence[str | Metric], *,
             precision: str = "32") -> dict[str, float]:
    """Loss (sample mean) and ``metrics`` over ``batches``: ``{"loss": ..., "accuracy": ...}``.

    The loss is summed on the device and the outputs are kept there; both are read back once.
    """
    parts = evaluate_parts(model, batches, loss_fn, device, keep_outputs=bool(metrics), precision=precision)
    return metrics_from_parts(task, metrics, *parts)


def metrics_from_parts(task: str, metrics: Sequence[str | Metric], total: float, count: int, outs: Any,
                       ys: Any) -> dict[str, float]:
    """:func:`evaluate`'s result from :func:`evaluate_parts`' (summed over ranks, for several workers)."""
    result = {"loss": total / max(count, 1)}
    if outs is not None:
        result.update(compute_metrics(task, outs, ys, metrics))
    return result
