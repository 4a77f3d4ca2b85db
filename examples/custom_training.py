"""Bring your own training code and keep reporting, checkpoints and early stopping.

``clipped_step`` replaces the per-batch step (``train.step``); ``mixup_loop`` replaces the whole
loop (``train.loop``). See examples/digits_custom_loop.yaml.
"""

from __future__ import annotations

import torch


def clipped_step(ctx, xb, yb):
    """One step with gradient-norm clipping; returns the batch loss."""
    ctx.optimizer.zero_grad(set_to_none=True)
    loss = ctx.loss_fn(ctx.model(xb), yb)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), max_norm=1.0)
    ctx.optimizer.step()
    return loss.detach()


def mixup_loop(trial):
    """A whole custom loop: mixup training. ``trial.end_epoch`` evaluates, reports and checkpoints."""
    beta = torch.distributions.Beta(0.2, 0.2)
    for _ in trial.epochs():
        trial.model.train()
        total, count = 0.0, 0
        for xb, yb in trial.train_batches():
            lam = float(beta.sample())  # global torch RNG: seeded per trial and checkpointed
            perm = torch.randperm(len(xb), generator=trial.shuffle)
            out = trial.model(lam * xb + (1 - lam) * xb[perm])
            loss = lam * trial.loss_fn(out, yb) + (1 - lam) * trial.loss_fn(out, yb[perm])
            trial.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trial.optimizer.step()
            total += float(loss) * len(xb)
            count += len(xb)
        if trial.end_epoch(total / count):
            break
