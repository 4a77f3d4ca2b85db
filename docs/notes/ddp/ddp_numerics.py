"""Issue #24 research: does DDP over N gloo processes (each rank a strided slice of every global
batch, local batch = global/N) match one process on the same global batch?  No Ray involved.

python research/ddp_numerics.py            # MLP, no dropout: exact-match check, 2 epochs
python research/ddp_numerics.py --dropout  # with dropout + resume-exactness check (per-rank RNG)
"""
from __future__ import annotations

import argparse
import random
import socket
import tempfile

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


def data():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    return X[:1400], y[:1400], X[1400:], y[1400:]


def build(seed, dropout):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 10))


def local_batches(X, y, batch, gen, rank, world):
    """The same permutation on every rank (replicated generator); rank r takes rows r::world of
    each global batch.  Returns (xb, yb, global_n)."""
    perm = torch.randperm(len(X), generator=gen)
    for start in range(0, len(X), batch):
        idx = perm[start:start + batch]
        mine = idx[rank::world]
        yield X[mine], y[mine], len(idx)


def weighted_mean_hook(state, bucket):
    """DDP comm hook: sum over ranks of (local rows / global rows) * local-mean gradient, i.e. the
    gradient of the global batch mean even when local batches differ in size; the step function
    stays untouched."""
    buf = bucket.buffer()
    buf.mul_(state["w"])
    fut = dist.all_reduce(buf, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def capture_rng(gen):
    return {"torch": torch.get_rng_state(), "np": np.random.get_state(), "py": random.getstate(),
            "shuffle": gen.get_state()}


def restore_rng(s, gen):
    torch.set_rng_state(s["torch"]); np.random.set_state(s["np"]); random.setstate(s["py"]); gen.set_state(s["shuffle"])


def train(rank, world, args, out, ckpt_in=None, ckpt_out=None, epochs=2):
    X, y, Xv, yv = data()
    seed = 1234
    gen = torch.Generator().manual_seed(seed)  # replicated: same shuffle on every rank
    model = build(seed, args.dropout)          # DDP broadcasts rank 0's weights anyway
    torch.manual_seed(seed + rank)             # per-rank stream for dropout
    weight = {"w": 1.0}
    if world > 1:
        model = DDP(model)
        if args.hook:
            model.register_comm_hook(weight, weighted_mean_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    start_epoch = 0
    if ckpt_in:
        state = torch.load(ckpt_in, weights_only=False)
        (model.module if world > 1 else model).load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        restore_rng(state["rng"][rank], gen)  # every rank its own RNG state
        start_epoch = state["epoch"]
    losses = []
    for epoch in range(start_epoch, epochs):
        model.train()
        run = torch.zeros(2, dtype=torch.float64)  # [loss sum, rows]
        for xb, yb, n_global in local_batches(X, y, args.batch, gen, rank, world):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            # DDP averages gradients over ranks: mean_r(grad of local mean).  Equal to the global
            # mean only when every rank's local batch has the same size; the short last batch
            # (e.g. 1400 % 96 = 56 -> 28/28, but 1400 % 100 ... ) needs the weight below.
            scale = 1.0 if (args.no_scale or args.hook) else len(xb) * world / n_global
            weight["w"] = len(xb) / n_global  # read by the comm hook (--hook)
            (loss * scale).backward()
            opt.step()
            run += torch.tensor([float(loss.detach()) * len(xb), len(xb)], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(run)  # SUM across ranks -> global train loss
        # eval: every rank its strided shard of the validation set, sums reduced
        model.eval()
        with torch.no_grad():
            mine = torch.arange(rank, len(Xv), world)
            o = model(Xv[mine])
            ev = torch.tensor([float(loss_fn(o, yv[mine], )) * len(mine), float((o.argmax(1) == yv[mine]).sum()),
                               len(mine)], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(ev)
        losses.append((float(run[0] / run[1]), float(ev[0] / ev[2]), float(ev[1] / ev[2])))
    rngs = [capture_rng(gen)]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if rank == 0:
        m = model.module if world > 1 else model
        state = {"model": m.state_dict(), "opt": opt.state_dict(), "rng": rngs, "epoch": epochs}
        if ckpt_out:
            torch.save(state, ckpt_out)
        torch.save({"losses": losses, "model": m.state_dict()}, out)


def worker(rank, world, port, args, out, ckpt_in, ckpt_out, epochs):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        train(rank, world, args, out, ckpt_in, ckpt_out, epochs)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world, args, out, ckpt_in=None, ckpt_out=None, epochs=2):
    if world == 1:
        torch.set_num_threads(1)
        train(0, 1, args, out, ckpt_in, ckpt_out, epochs)
    else:
        mp.spawn(worker, args=(world, free_port(), args, out, ckpt_in, ckpt_out, epochs), nprocs=world)
    return torch.load(out, weights_only=False)


def compare(a, b, label):
    la, lb = np.array(a["losses"]), np.array(b["losses"])
    wdiff = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
    print(f"{label}: losses A={la.round(6).tolist()}\n{' ' * len(label)}  losses B={lb.round(6).tolist()}\n"
          f"{' ' * len(label)}  max |loss diff|={np.abs(la - lb).max():.3e}  max |weight diff|={wdiff:.3e}")
    return np.abs(la - lb).max(), wdiff


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--no-scale", action="store_true", help="leave out the short-last-batch weight")
    p.add_argument("--hook", action="store_true", help="weight by a DDP comm hook instead of the loss")
    p.add_argument("--batch", type=int, default=100)  # 1400 % 100 = 0; try 96 for a short last batch
    args = p.parse_args()
    d = tempfile.mkdtemp()
    one = run(1, args, f"{d}/one.pt")
    two = run(2, args, f"{d}/two.pt")
    compare(one, two, f"1 worker x {args.batch} vs 2 workers x {args.batch // 2} (dropout {args.dropout})")
    # resume: 2 workers, 1 epoch -> checkpoint (every rank's RNG) -> fresh processes -> epoch 2
    straight = run(2, args, f"{d}/s.pt", epochs=2)
    run(2, args, f"{d}/r1.pt", ckpt_out=f"{d}/ck.pt", epochs=1)
    resumed = run(2, args, f"{d}/r2.pt", ckpt_in=f"{d}/ck.pt", epochs=2)
    resumed["losses"] = straight["losses"][:1] + resumed["losses"]
    compare(straight, resumed, "2 workers straight vs killed after epoch 1 and resumed")
