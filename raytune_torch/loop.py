"""Plain PyTorch: train one epoch, evaluate, compute metrics. Knows nothing of Ray or scikit-learn."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["StepContext", "default_step", "train_epoch", "predict", "evaluate", "compute_metrics"]


class StepContext:
    """What a per-batch step sees: the model, optimizer, loss and device of the trial."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                 device: torch.device) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.device = device


def default_step(ctx: StepContext, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """One optimisation step on one batch; returns the (detached) batch loss."""
    ctx.optimizer.zero_grad(set_to_none=True)
    loss = ctx.loss_fn(ctx.model(xb), yb)
    loss.backward()
    ctx.optimizer.step()
    return loss.detach()


def train_epoch(ctx: StepContext, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                step: Callable[[StepContext, torch.Tensor, torch.Tensor], Any] = default_step) -> float:
    """Run ``step`` over every batch in train mode; returns the sample-weighted mean loss.

    Stops at the first non-finite batch loss and returns it (NaN or inf), so a diverging
    configuration costs at most one more batch.
    """
    ctx.model.train()
    total, count = 0.0, 0
    device = ctx.device
    for xb, yb in batches:
        if xb.device != device:
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
        loss = step(ctx, xb, yb)
        value = float(loss)
        if not math.isfinite(value):
            return value
        total += value * len(xb)
        count += len(xb)
    return total / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]], device: torch.device) -> torch.Tensor:
    """Model outputs for every batch, concatenated on the CPU (eval mode, no grad)."""
    model.eval()
    outs = []
    for xb, _ in batches:
        outs.append(model(xb.to(device, non_blocking=True)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def _softmax_np(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def compute_metrics(task: str, outputs: torch.Tensor, targets: torch.Tensor,
                    names: Sequence[str]) -> dict[str, float]:
    """Metrics by name. Classification: accuracy, f1 (macro), roc_auc (binary, or one-vs-rest
    macro); outputs are logits. Regression: mse, mae, r2 (averaged over targets)."""
    out: dict[str, float] = {}
    if not names:
        return out
    y = targets.cpu().numpy()
    o = outputs.cpu().numpy()
    if task == "classification":
        pred = o.argmax(axis=1) if o.ndim == 2 and o.shape[1] > 1 else (o.reshape(-1) > 0).astype(np.int64)
        for name in names:
            if name == "accuracy":
                out[name] = float((pred == y).mean())
            elif name == "f1":
                from sklearn.metrics import f1_score

                out[name] = float(f1_score(y, pred, average="macro", zero_division=0))
            elif name == "roc_auc":
                out[name] = _roc_auc(o, y)
    else:
        err = o.reshape(len(o), -1) - y.reshape(len(y), -1)
        for name in names:
            if name == "mse":
                out[name] = float((err ** 2).mean())
            elif name == "mae":
                out[name] = float(np.abs(err).mean())
            elif name == "r2":
                yy = y.reshape(len(y), -1)
                ss_res = (err ** 2).sum(axis=0)
                ss_tot = ((yy - yy.mean(axis=0)) ** 2).sum(axis=0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    r2 = np.where(ss_tot > 0, 1 - ss_res / ss_tot, 0.0)
                out[name] = float(r2.mean())
    return out


def _roc_auc(logits: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if not np.isfinite(logits).all() or len(np.unique(y)) < 2:
        return float("nan")
    if logits.ndim == 1 or logits.shape[1] == 1:
        return float(roc_auc_score(y, logits.reshape(-1)))
    if logits.shape[1] == 2:
        return float(roc_auc_score(y, logits[:, 1] - logits[:, 0]))
    proba = _softmax_np(logits)
    present = np.unique(y)
    if len(present) < logits.shape[1]:
        proba = proba[:, present]
        proba = proba / proba.sum(axis=1, keepdims=True)
        y = np.searchsorted(present, y)
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: nn.Module,
             device: torch.device, task: str, metrics: Sequence[str]) -> dict[str, float]:
    """Loss (sample mean) and ``metrics`` over ``batches``: ``{"loss": ..., "accuracy": ...}``."""
    model.eval()
    outs, ys = [], []
    total, count = 0.0, 0
    with torch.no_grad():
        for xb, yb in batches:
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            o = model(xb)
            total += float(loss_fn(o, yb)) * len(xb)
            count += len(xb)
            outs.append(o.float().cpu())
            ys.append(yb.cpu())
    result = {"loss": total / max(count, 1)}
    if outs:
        result.update(compute_metrics(task, torch.cat(outs), torch.cat(ys), metrics))
    return result
