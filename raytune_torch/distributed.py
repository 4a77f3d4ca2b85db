"""Several workers training one trial's model with ``DistributedDataParallel``: who is who, which
rows each rank trains on, how gradients are combined, and the reductions the trial reports.

Plain ``torch.distributed``: the process group is set up by Ray Train (``_ray.group``) or by a test.

One worker's results are the reference. A trial of N workers reproduces them, within floating-point
rounding, on the same global batch (``train.batch_size`` or the ``batch_size`` parameter):

* every rank draws the same permutation from the trial's replicated shuffle generator and takes
  every Nth row of each global batch (``idx[rank::N]``); a Dataset gets the same rows through
  :class:`ShardedBatchSampler` (``DistributedSampler`` shards the epoch instead, which changes the
  batches), a streamed table or iterable dataset is read by every rank and sliced;
* DDP averages the ranks' gradients, which is the global mean only when the local batches are
  equal (99 rows on 2 ranks are 50 and 49): a communication hook weights each rank's gradient by
  its share of the global batch before summing (:func:`wrap`), so the step function is unchanged;
* the training loss is summed over ranks and rows; validation outputs are gathered from every
  rank's shard, so every metric (AUC, F1, scikit-learn scorers) sees the whole split.

A final global batch with fewer rows than workers is skipped (some rank would have none).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Group", "BatchShare", "wrap", "shard_rows", "shard", "global_batch_sizes", "ShardedBatchSampler",
           "weighted", "gather", "check_ddp_model", "rank_seed"]


@dataclass(frozen=True)
class Group:
    """This process's place in a trial's group of workers."""

    rank: int
    world: int

    @property
    def leader(self) -> bool:
        """Rank 0: the one that saves checkpoints."""
        return self.rank == 0


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random streams (dropout, augmentation): rank 0 keeps the
    trial's seed, so one worker is unchanged; the others get streams of their own."""
    return (seed + 1_000_003 * rank) & 0x7FFFFFFF


class BatchShare:
    """This rank's share of the current global batch (rows here / rows in the global batch), read
    by the gradient hook of :func:`wrap` and set as batches are handed out."""

    def __init__(self, world: int) -> None:
        self.weight = 1.0 / world


def _weighted_sum(share, bucket):  # no annotations: DDP checks them against its own types, not strings
    """DDP communication hook: scale this rank's gradients by its share of the global batch and
    sum them over ranks (the global batch's mean gradient, whatever the local batch sizes)."""
    buffer = bucket.buffer()
    buffer.mul_(share.weight)
    return dist.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])


def wrap(model: nn.Module, device: torch.device, share: BatchShare) -> nn.parallel.DistributedDataParallel:
    """``model`` in DistributedDataParallel (rank 0's parameters are broadcast to every rank), with
    the gradient hook that weights each rank by ``share``."""
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    ddp.register_comm_hook(share, _weighted_sum)
    return ddp


def global_batch_sizes(n: int, batch_size: int, drop_last: bool = False) -> list[int]:
    """The sizes of an epoch's global batches over ``n`` rows."""
    sizes = [batch_size] * (n // batch_size)
    if n % batch_size and not drop_last:
        sizes.append(n % batch_size)
    return sizes


def shard_rows(idx: Any, group: Group | None, share: BatchShare | None = None) -> Any:
    """This rank's rows (every Nth, ``[rank::N]``) of one global batch ``idx`` (indices or a tensor
    of rows; all of them without a group), or None when the batch has fewer rows than workers; sets
    ``share`` to this rank's part of the batch."""
    if group is None:
        return idx
    if len(idx) < group.world:
        return None
    mine = idx[group.rank::group.world]
    if share is not None:
        share.weight = len(mine) / len(idx)
    return mine


def shard(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], group: Group,
          share: BatchShare | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every rank reads the same global batches and keeps its rows of each (:func:`shard_rows`)."""
    for xb, yb in batches:
        mine = shard_rows(xb, group, share)
        if mine is not None:
            yield mine, shard_rows(yb, group)


def weighted(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], sizes: list[int],
             share: BatchShare) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Local batches whose global sizes are known (:class:`ShardedBatchSampler`'s): sets ``share``
    for each as it is handed out (a DataLoader's sampler runs ahead of the training step)."""
    for (xb, yb), size in zip(batches, sizes):
        share.weight = len(xb) / size
        yield xb, yb


class ShardedBatchSampler(torch.utils.data.Sampler):
    """A DataLoader ``batch_sampler`` giving rank ``rank`` its rows of each global batch: the epoch's
    permutation is drawn from ``generator`` (the same on every rank), cut into global batches of
    ``batch_size``, and every Nth index of each is this rank's. Only this rank's items are loaded.
    Without ``shuffle`` the order is the dataset's."""

    def __init__(self, n: int, batch_size: int, group: Group, *, shuffle: bool,
                 generator: torch.Generator | None = None, drop_last: bool = False) -> None:
        self.n, self.batch_size, self.group = n, batch_size, group
        self.shuffle, self.generator, self.drop_last = shuffle, generator, drop_last

    def global_sizes(self) -> list[int]:
        """The sizes of the global batches this sampler's batches come from, in order."""
        return [s for s in global_batch_sizes(self.n, self.batch_size, self.drop_last) if s >= self.group.world]

    def _global_batches(self) -> list[list[int]]:
        # The order is a RandomSampler's, as one worker's DataLoader draws it (the same draws from
        # the generator), so the global batches are one worker's.
        sampler = torch.utils.data.RandomSampler(range(self.n), generator=self.generator) if self.shuffle \
            else range(self.n)
        order = list(sampler)
        out = []
        for start, size in zip(range(0, self.n, self.batch_size),
                               global_batch_sizes(self.n, self.batch_size, self.drop_last)):
            if size >= self.group.world:
                out.append(order[start:start + size])
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            yield batch[self.group.rank::self.group.world]

    def __len__(self) -> int:
        return len(self.global_sizes())


def gather(obj: Any, group: Group) -> list[Any]:
    """``obj`` from every rank, in rank order, on every rank (picklable objects; tensors on the CPU)."""
    out: list[Any] = [None] * group.world
    dist.all_gather_object(out, obj)
    return out


def check_ddp_model(model: nn.Module, *, stepped: bool) -> str | None:
    """Why DistributedDataParallel cannot train ``model``, or None. Checked in the preflight, before
    any worker starts: once the model is built (``stepped=False``: no trainable parameters) and
    after one backward pass on a batch (``stepped=True``: parameters without a gradient)."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if stepped:
        return _unused(params)
    if not params:
        return ("it has no parameters that require gradients, so there is nothing for several workers to "
                "synchronise; train it with resources.workers: 1")
    return None


def _unused(params: list[tuple[str, nn.Parameter]]) -> str | None:
    unused = [name for name, p in params if p.grad is None]
    if unused:
        return (f"its parameters {', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''} got no gradient from "
                f"a training step, and DistributedDataParallel waits for every parameter's gradient before it "
                f"steps (the workers would hang or fail on the second batch): remove the unused layers, or "
                f"freeze them with requires_grad_(False)")
    return None
