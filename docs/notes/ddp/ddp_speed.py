"""Issue #24: DigitsCNN epoch time, 1 process vs 2 gloo DDP processes (1 torch thread each) on this
machine, same global batch.  "2w-nosync" skips the gradient all-reduce (ddp.no_sync) to show what
the communication costs.  No Ray: the TorchTrainer start-up cost is measured in tune_ddp.py.

PYTHONPATH=$PWD python research/ddp_speed.py [--batch 64] [--epochs 4]
"""
from __future__ import annotations

import argparse
import contextlib
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from examples.models import DigitsCNN


def data():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)


def run(rank, world, port, batch, epochs, nosync, q):
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    X, y = data()
    torch.manual_seed(0)
    model = DigitsCNN()
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs):
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        perm = torch.randperm(len(X), generator=gen)
        for s in range(0, len(X), batch):
            mine = perm[s:s + batch][rank::world]
            opt.zero_grad(set_to_none=True)
            ctx = ddp.no_sync() if (nosync and world > 1) else contextlib.nullcontext()
            with ctx:
                nn.functional.cross_entropy(ddp(X[mine]), y[mine]).backward()
            opt.step()
        if world > 1:
            dist.barrier()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        q.put(times)
    if world > 1:
        dist.destroy_process_group()


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    a = p.parse_args()
    ctx = mp.get_context("spawn")
    for label, world, nosync in (("1 worker", 1, False), ("2 workers", 2, False), ("2w-nosync", 2, True)):
        q = ctx.Queue()
        t0 = time.perf_counter()
        procs = [ctx.Process(target=run, args=(r, world, port() if r == 0 else None, a.batch, a.epochs, nosync, q))
                 for r in range(world)]
        if world > 1:
            pt = port()
            procs = [ctx.Process(target=run, args=(r, world, pt, a.batch, a.epochs, nosync, q)) for r in range(world)]
        for pr in procs:
            pr.start()
        times = q.get()
        for pr in procs:
            pr.join()
        steady = sorted(times[1:])[len(times[1:]) // 2]
        print(f"{label:10s} global batch {a.batch}: epoch times {[round(t, 3) for t in times]} s; "
              f"median after the first {steady:.3f} s; process start+import {time.perf_counter() - t0 - sum(times):.1f} s",
              flush=True)
