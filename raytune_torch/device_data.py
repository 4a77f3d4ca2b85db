"""In-memory splits on the trial's device: kept on the host and sent to a GPU batch by batch from
pinned memory, or cached on the GPU when ``data.device_cache`` says so and they fit.

``data.device_cache``:

- ``auto`` (the default): the train split, then the val split, is cached on the GPU while the cached
  bytes stay within :data:`CACHE_SHARE` of the trial's GPU memory (the card's memory times the
  trial's ``resources.gpu`` share); the rest of that memory is left to the model, its activations and
  the optimizer's state. Four trials at ``gpu: 0.25`` each judge against a quarter of the card.
- ``true``: both splits are cached whatever their size (out of memory is an error that names this
  setting).
- ``false``: never cached.

A split that is not cached stays where the data was loaded (the object store's zero-copy arrays):
each batch is gathered into a page-locked (pinned) buffer and copied with ``non_blocking=True``, so
the copy overlaps the GPU's work. On the CPU nothing is cached or pinned: batches are views.
Both paths draw the same shuffling order from the trial's generator, so caching changes no result.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from .data import iterate_batches
from .distributed import shard_rows

__all__ = ["CACHE_SHARE", "CachePlan", "plan_cache", "trial_gpu_memory",
           "tensor_bytes", "place", "device_batches", "gathered", "pinned"]

#: with ``data.device_cache: auto``, the share of the trial's GPU memory that cached splits may fill
CACHE_SHARE = 0.5


def trial_gpu_memory(device: torch.device, gpu_share: float) -> int:
    """The trial's GPU memory in bytes: the card's total memory times its share (at most the card)."""
    total = torch.cuda.get_device_properties(device).total_memory
    return int(total * min(max(gpu_share, 0.0), 1.0))


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """The bytes the tensors would take on a device."""
    return sum(t.numel() * t.element_size() for t in tensors)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


@dataclass(frozen=True)
class CachePlan:
    """Which splits go to the device whole (``cached``), and why, in one line for the trial's log."""

    cached: tuple[str, ...]
    reason: str


def plan_cache(setting: str | bool, sizes: Mapping[str, int], device: torch.device,
               memory: int | None) -> CachePlan:
    """Decide which of the splits (``sizes``: bytes per split, train first) to cache on ``device``.

    ``memory`` is the trial's GPU memory in bytes (:func:`trial_gpu_memory`); it is only read for
    ``auto`` on a GPU. See the module's docstring for the rules.
    """
    if device.type == "cpu":
        return CachePlan((), "on the CPU: batches are views of the host arrays")
    if setting is False:
        return CachePlan((), "data.device_cache is false: batches go to the device from pinned memory")
    total = sum(sizes.values())
    if setting is True:
        return CachePlan(tuple(sizes), f"data.device_cache is true: {_mib(total)} cached on {device}")
    if memory is None:
        raise ValueError("plan_cache: `auto` on a GPU needs the trial's GPU memory")
    budget = CACHE_SHARE * memory
    cached, used = [], 0
    for split, size in sizes.items():
        if used + size > budget:
            break
        cached.append(split)
        used += size
    where = f"{_mib(used)} of {' and '.join(cached)} cached on {device}" if cached else "nothing cached"
    left = [s for s in sizes if s not in cached]
    host = f"; {' and '.join(left)} ({_mib(sum(sizes[s] for s in left))}) from pinned memory" if left else ""
    return CachePlan(tuple(cached), f"data.device_cache auto: {where}{host} (budget {_mib(budget)}: "
                                    f"{CACHE_SHARE:g} of the trial's {_mib(memory)})")


def place(tensors: tuple[torch.Tensor, ...], device: torch.device, split: str) -> tuple[torch.Tensor, ...]:
    """Copy one split's tensors to ``device`` (a split the plan caches)."""
    try:
        return tuple(t.to(device) for t in tensors)
    except torch.cuda.OutOfMemoryError as exc:
        raise torch.cuda.OutOfMemoryError(
            f"caching the {split} split ({_mib(tensor_bytes(*tensors))}) on {device} ran out of memory: set "
            f"data.device_cache: auto (caches what fits in {CACHE_SHARE:g} of the trial's GPU memory) or "
            f"false; {exc}") from exc


def pinned(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], device: torch.device, *,
           pin: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Host batches sent to a GPU ``device``: through pinned memory, ``non_blocking``, when ``pin``
    (a batch a DataLoader already pinned is not copied again), else a plain copy. On the CPU, or
    for batches already on ``device``, as they come."""
    if device.type != "cuda":
        yield from batches
        return
    for batch in batches:
        xb, yb = ((t.pin_memory() if pin else t).to(device, non_blocking=pin) if t.device != device else t
                  for t in batch)
        yield xb, yb


def device_batches(X: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device, *,
                   shuffle: bool, generator: torch.Generator | None = None,
                   pin: bool | None = None, group=None, share=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of ``X``/``y`` on ``device``, in :func:`~raytune_torch.data.iterate_batches`'
    order (a permutation drawn from ``generator`` when ``shuffle``).

    Tensors already on ``device`` (cached, or the CPU) are indexed there. Host tensors bound for a
    GPU are gathered straight into pinned buffers (``pin``: default, when ``device`` is CUDA) and
    copied ``non_blocking``; torch's pinned-memory cache reuses a buffer once its copy is done.

    With a ``group``, only this rank's rows of each global batch (see :func:`~raytune_torch.distributed.shard_rows`).
    """
    if X.device == device:
        yield from iterate_batches(X, y, batch_size, shuffle=shuffle, generator=generator, group=group, share=share)
        return
    pin = device.type == "cuda" if pin is None else pin
    for xb, yb in gathered(X, y, batch_size, shuffle=shuffle, generator=generator, pin=pin, group=group, share=share):
        yield xb.to(device, non_blocking=pin), yb.to(device, non_blocking=pin)


def gathered(X: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool,
             generator: torch.Generator | None = None, pin: bool = False, group=None,
             share=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Host mini-batches gathered into fresh buffers (page-locked when ``pin``), in
    :func:`~raytune_torch.data.iterate_batches`' order."""
    n = len(X)
    order = torch.randperm(n, generator=generator) if shuffle else None
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        rows = shard_rows(order[start:stop] if order is not None else torch.arange(start, stop), group, share)
        if rows is None:
            continue
        out = []
        for t in (X, y):
            buffer = torch.empty((len(rows), *t.shape[1:]), dtype=t.dtype, pin_memory=pin)
            out.append(torch.index_select(t, 0, rows, out=buffer))
        yield out[0], out[1]
