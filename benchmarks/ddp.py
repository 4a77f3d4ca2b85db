#!/usr/bin/env python
"""Several workers per trial (``resources.workers``): one trial's speed with 1 and 2 CPU workers
training one model with DistributedDataParallel, side by side, and where the time goes.

    python benchmarks/ddp.py              # both parts, full sizes (about 6-7 min on 2 cores)
    python benchmarks/ddp.py --quick      # tiny sizes, to check the script (about 1.5 min)
    python benchmarks/ddp.py --part train # only part 1 (no Ray)

Part 1, ``train`` (no Ray): the library's own trial (``run_trial`` with ``group=Group(rank, world)``)
in 1 process and in 2 processes joined by a gloo group on 127.0.0.1 (``torch.multiprocessing``,
spawned, one torch thread each, as ``resources: {cpu: 1}`` gives every worker), on the same global
batch (each rank trains on half of every batch and DDP all-reduces the gradients). Models:

- the benchmark CNN, ``examples.models:DigitsCNN(channels=20)`` (a size of the cnn grid), on
  the digits train split repeated 16 times (22,992 rows; the same rows, so an epoch lasts seconds);
- a wider one, ``DigitsCNN(channels=128)`` (11x the parameters, 15x the compute per row), on the
  digits split as it is (1,437 rows).

samples/s = training rows / ``epoch_time_s`` (the training pass of the slowest rank; validation is
not in it), median over every epoch after each run's first; the configurations take turns, round by
round. Then, in the same processes, where the time goes, in ms per global batch (one training
step), each the slowest rank's, after a warm-up: a plain PyTorch loop in the 1-worker process on
the whole batch and on half of it (what each of 2 ranks computes, alone); in the 2-worker
processes, on this rank's rows of each global batch without DDP (compute only; the 2 ranks run at
once), the same loop with the model wrapped in DDP as the trial wraps it
(``raytune_torch.distributed.wrap``: compute + the gradient all-reduce), and one ``all_reduce`` of
a float32 buffer the size of the model alone. The trial's own step is ``epoch_time_s`` / steps.

Part 2, ``tune`` (Ray Tune, the public API): ``raytune_torch.run(experiment, quiet=True)`` of a
2-trial grid (two learning rates) of the benchmark CNN with ``resources: {cpu: 1, workers: 1}``
and with ``{cpu: 1, workers: 2}`` (on 2 CPUs: two 1-worker trials run at once, two 2-worker trials
one after the other; the same work either way). Per run: the wall time of ``run()``; per trial
(mean of the two): Tune's ``time_total_s`` at its first epoch (start-up: for 2 workers, Ray
Train's controller, worker processes and gloo group; plus the first epoch) and at its last, from
each trial's ``history.jsonl``; on the driver's clock (a Tune callback passed to ``run()``), the
trial's start, results and end, so also what ``time_total_s`` leaves out (the trial's end after
its last result), and the run's time before the first trial, between trials and after the last;
the median samples/s from the results table. Storage is a fresh folder under the system's
temporary directory, removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LR = 1e-3
BATCHES = (64, 256)
DATA_FACTORY = "benchmarks.ddp:digits_repeated"


def models(quick: bool) -> list[dict]:
    """Part 1's models: a label, DigitsCNN's channels, how many times the train split is repeated."""
    if quick:
        return [{"label": "benchmark CNN (channels 20, 1,437 rows)", "channels": 20, "repeat": 1}]
    return [{"label": "benchmark CNN (channels 20, 22,992 rows)", "channels": 20, "repeat": 16},
            {"label": "wide CNN (channels 128, 1,437 rows)", "channels": 128, "repeat": 1}]


def digits_repeated(repeat: int = 1) -> dict:
    """The benchmark's digits split (benchmarks/workloads.py) with its train split repeated ``repeat``
    times (a data factory: longer epochs of the same rows; validation unchanged)."""
    import numpy as np

    from benchmarks import workloads

    splits = workloads.digits_splits()
    X, y = splits["train"]
    return {"train": (np.tile(X, (repeat, 1)), np.tile(y, repeat)), "val": splits["val"]}


def experiment(channels: int, repeat: int, batch: int, epochs: int) -> dict:
    """The experiment both parts train (part 2 adds storage, a grid and resources)."""
    return {
        "name": "ddp-bench", "seed": 0, "import_paths": [str(ROOT)],
        "data": {"factory": DATA_FACTORY, "factory_args": {"repeat": repeat}},
        "model": {"name": "examples.models:DigitsCNN", "args": {"channels": channels}},
        "optimizer": "adam", "loss": "cross_entropy",
        "train": {"max_epochs": epochs, "batch_size": batch, "metrics": ["accuracy"]},
        "space": {"optimizer__lr": LR},
        "search": {"metric": "val_accuracy", "mode": "max"},
        "checkpoint": {"every": epochs},  # one checkpoint, at the end: this measures training
    }


# ------------------------------------------------------------------------------------------------
# Part 1: the trial in 1 and 2 gloo processes, no Ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain_step_s(X, y, channels: int, batch: int, steps: int, part: int, parts: int, *, ddp: bool = False) -> float:
    """Seconds per global batch of a plain loop on rows ``part::parts`` of each global batch; in a
    process group, the slowest rank's (barriers around the timed steps), with or without DDP."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from examples.models import DigitsCNN
    from raytune_torch.distributed import BatchShare, wrap

    torch.manual_seed(0)
    model = DigitsCNN(channels=channels)
    net = wrap(model, torch.device("cpu"), BatchShare(parts)) if ddp else model
    sync = dist.is_initialized()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    per_epoch = len(X) // batch
    mine = [order[(i % per_epoch) * batch:(i % per_epoch + 1) * batch][part::parts] for i in range(steps + 3)]

    def step(idx):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(X[idx]), y[idx]).backward()
        optimizer.step()

    for idx in mine[:3]:  # warm-up
        step(idx)
    if sync:
        dist.barrier()
    started = time.perf_counter()
    for idx in mine[3:]:
        step(idx)
    if sync:
        dist.barrier()
    return (time.perf_counter() - started) / steps


def _allreduce_s(n_params: int, steps: int) -> float:
    """Seconds per ``all_reduce`` of a float32 buffer of ``n_params`` (the gradients' size)."""
    import torch
    import torch.distributed as dist

    buf = torch.ones(n_params)
    for _ in range(3):
        dist.all_reduce(buf)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(steps):
        dist.all_reduce(buf)
    dist.barrier()
    return (time.perf_counter() - started) / steps


def _rank_main(rank: int, world: int, port: int, raw: dict, plain_steps: int, out: str) -> None:
    """One rank: join the gloo group, run the library's trial, then the plain loops."""
    sys.path[:0] = [str(ROOT)]
    import torch
    import torch.distributed as dist

    from benchmarks import workloads
    from raytune_torch.config import load_config
    from raytune_torch.data import load_data
    from raytune_torch.distributed import Group
    from raytune_torch.trainable import run_trial

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        config = load_config(raw)
        data = load_data(config.data, config.task, config.seed, import_paths=config.import_paths)
        reporter = workloads.Collect()
        with contextlib.redirect_stdout(None):  # the trial's start line
            trial = run_trial(dict(raw["space"]), config, data, reporter, cpus=1,
                              group=Group(rank, world) if world > 1 else None)
        X, y = torch.from_numpy(data.X_train), torch.from_numpy(data.y_train)
        channels, batch = raw["model"]["args"]["channels"], raw["train"]["batch_size"]
        if world == 1:  # the whole batch, and half of it (what each of 2 ranks computes), alone
            plain = {"compute": _plain_step_s(X, y, channels, batch, plain_steps, 0, 1),
                     "half_alone": _plain_step_s(X, y, channels, batch, plain_steps, 0, 2)}
        else:
            plain = {"compute": _plain_step_s(X, y, channels, batch, plain_steps, rank, world),
                     "ddp": _plain_step_s(X, y, channels, batch, plain_steps, rank, world, ddp=True),
                     "allreduce": _allreduce_s(trial.n_params, plain_steps)}
        if rank == 0:
            Path(out).write_text(json.dumps({
                "epoch_time_s": [r["epoch_time_s"] for r in reporter.rows],
                "samples_per_s": [r["samples_per_s"] for r in reporter.rows],
                "val_accuracy": reporter.rows[-1]["val_accuracy"], "n_train": len(X), "n_params": trial.n_params,
                "plain_step_s": plain}))
    finally:
        if world > 1:
            dist.destroy_process_group()


def run_group(raw: dict, world: int, plain_steps: int) -> dict:
    """One trial on ``world`` spawned processes; rank 0's figures."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="rtt-bench-ddp-") as tmp:
        out = os.path.join(tmp, "rank0.json")
        mp.start_processes(_rank_main, args=(world, _free_port(), raw, plain_steps, out), nprocs=world,
                           join=True, start_method="spawn")
        return json.loads(Path(out).read_text())


def part_train(args: argparse.Namespace) -> dict:
    cases = [(m, b) for m in models(args.quick) for b in (BATCHES[:1] if args.quick else BATCHES)]
    runs: dict[tuple[int, int, int], list[dict]] = {}
    for round_ in range(args.rounds):
        for m, batch in cases:
            raw = experiment(m["channels"], m["repeat"], batch, args.epochs)
            plain_steps = min(-(-1437 * m["repeat"] // batch), 20 if args.quick else 120)
            for world in ((1, 2) if round_ % 2 == 0 else (2, 1)):  # alternate who goes first
                t0 = time.perf_counter()
                result = run_group(raw, world, plain_steps)
                result["process_wall_s"] = time.perf_counter() - t0
                result["steps_per_epoch"] = -(-result["n_train"] // batch)
                runs.setdefault((m["channels"], m["repeat"], batch, world), []).append(result)
                print(f"  round {round_ + 1}/{args.rounds}: {m['label']}, batch {batch}, {world} worker(s): "
                      f"{result['process_wall_s']:.1f} s", file=sys.stderr, flush=True)

    def med(key: tuple, field: str) -> float:
        return statistics.median(v for r in runs[key] for v in r[field][1:])

    def plain(key: tuple, field: str) -> float:
        return statistics.median(r["plain_step_s"][field] for r in runs[key]) * 1e3

    rows = []
    for m, batch in cases:
        k1, k2 = (m["channels"], m["repeat"], batch, 1), (m["channels"], m["repeat"], batch, 2)
        steps = runs[k1][0]["steps_per_epoch"]
        rows.append({
            "model": m["label"], "channels": m["channels"], "repeat": m["repeat"], "batch": batch,
            "n_params": runs[k1][0]["n_params"], "steps_per_epoch": steps,
            "samples_per_s_1": med(k1, "samples_per_s"), "samples_per_s_2": med(k2, "samples_per_s"),
            "trial_step_ms_1": med(k1, "epoch_time_s") / steps * 1e3,
            "trial_step_ms_2": med(k2, "epoch_time_s") / steps * 1e3,
            "plain_1_ms": plain(k1, "compute"), "plain_half_alone_ms": plain(k1, "half_alone"),
            "plain_2_compute_ms": plain(k2, "compute"),
            "plain_2_ddp_ms": plain(k2, "ddp"), "allreduce_ms": plain(k2, "allreduce"),
            "val_accuracy_1": runs[k1][-1]["val_accuracy"], "val_accuracy_2": runs[k2][-1]["val_accuracy"],
        })

    print(f"\nPart 1: the library's trial without Ray, 1 process vs 2 gloo processes on 127.0.0.1, 1 torch thread "
          f"each; median of {args.rounds} round(s) x {args.epochs - 1} epoch(s) after the first")
    print("| model | global batch | params | 1 worker samples/s | 2 workers samples/s | 2 workers / 1 worker |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['n_params']:,} | {r['samples_per_s_1']:,.0f} | "
              f"{r['samples_per_s_2']:,.0f} | {r['samples_per_s_2'] / r['samples_per_s_1']:.2f}x |")
    print("\nWhere the time goes, ms per global batch (the slowest rank's). Plain loops: 1 process on the whole "
          "batch, 1 process on half of it alone, 2 processes on half each at once without DDP (compute only) and "
          "with it (compute + gradient all-reduce); one all_reduce of the gradients' size alone")
    print("| model | global batch | trial, 1 worker | trial, 2 workers | plain, whole batch | plain, half alone "
          "| plain, 2 halves at once | plain, 2 halves with DDP | all_reduce alone |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['trial_step_ms_1']:.2f} | {r['trial_step_ms_2']:.2f} | "
              f"{r['plain_1_ms']:.2f} | {r['plain_half_alone_ms']:.2f} | {r['plain_2_compute_ms']:.2f} | "
              f"{r['plain_2_ddp_ms']:.2f} | {r['allreduce_ms']:.2f} |")
    print("\nThe same as speed-ups over the plain whole batch: what halving the batch gives (half alone), with two "
          "processes sharing the machine (at once), with DDP; and the trial's own 2 workers / 1 worker")
    print("| model | global batch | half alone | 2 halves at once | with DDP | trial, 2 workers / 1 worker |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        base = r["plain_1_ms"]
        print(f"| {r['model']} | {r['batch']} | {base / r['plain_half_alone_ms']:.2f}x | "
              f"{base / r['plain_2_compute_ms']:.2f}x | {base / r['plain_2_ddp_ms']:.2f}x | "
              f"{r['trial_step_ms_1'] / r['trial_step_ms_2']:.2f}x |")
    return {"rows": rows, "runs": {"/".join(map(str, k)): v for k, v in runs.items()}}


# ------------------------------------------------------------------------------------------------
# Part 2: end to end through Ray Tune


#: (seconds since the run() call, event, trial id), appended by :class:`_Timeline` in the driver
_EVENTS: list[tuple[float, str, str]] = []
_T0 = [0.0]


def _timeline_callback():
    """A Tune callback (the driver's clock) recording when each trial starts and ends."""
    from ray import tune

    class _Timeline(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            _EVENTS.append((time.perf_counter() - _T0[0], "start", trial.trial_id))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            _EVENTS.append((time.perf_counter() - _T0[0], "result", trial.trial_id))

        def on_trial_complete(self, iteration, trials, trial, **info):
            _EVENTS.append((time.perf_counter() - _T0[0], "end", trial.trial_id))

        def on_trial_error(self, iteration, trials, trial, **info):
            _EVENTS.append((time.perf_counter() - _T0[0], "end", trial.trial_id))

    return _Timeline()


def _timeline(events: list[tuple[float, str, str]], wall: float) -> dict:
    """Before the first trial starts, while no trial runs between trials, after the last one ends."""
    starts = [t for t, kind, _ in events if kind == "start"]
    ends = [t for t, kind, _ in events if kind == "end"]
    idle, running, last = 0.0, 0, None
    for t, kind, _ in sorted(events):
        if kind == "result":
            continue
        if kind == "start":
            if running == 0 and last is not None:
                idle += t - last
            running += 1
        else:
            running -= 1
            last = t
    per_trial = {}
    for t, kind, trial_id in events:
        per_trial.setdefault(trial_id, {}).setdefault(kind, []).append(t)
    spans = [(e["start"][0], e["result"][0], e["result"][-1], e["end"][-1]) for e in per_trial.values()]
    return {"before_first_s": min(starts), "between_s": idle, "after_last_s": wall - max(ends),
            "trial_span_s": statistics.mean(end - start for start, _, _, end in spans),
            "to_first_result_s": statistics.mean(first - start for start, first, _, _ in spans),
            "after_last_result_s": statistics.mean(end - last for _, _, last, end in spans)}


def _histories(run_dir: str) -> list[list[dict]]:
    out = []
    for path in sorted(Path(run_dir).glob("trial_*/history.jsonl")):
        out.append(sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()),
                          key=lambda row: row["epoch"]))
    return out


def part_tune(args: argparse.Namespace) -> dict:
    m = models(args.quick)[0]
    epochs = args.tune_epochs
    rows = []
    for workers in (1, 2):
        storage = tempfile.mkdtemp(prefix="rtt-bench-ddp-tune-")
        try:
            exp = experiment(m["channels"], m["repeat"], 64, epochs)
            exp.update(name=f"ddp-workers-{workers}", storage=storage,
                       space={"optimizer__lr": {"type": "grid", "values": [1e-3, 3e-3]}},
                       search={"algorithm": "grid", "metric": "val_accuracy", "mode": "max"},
                       resources={"cpu": 1, "workers": workers})
            import raytune_torch as rt

            _EVENTS.clear()
            _T0[0] = t0 = time.perf_counter()
            result = rt.run(exp, quiet=True, callbacks=[_timeline_callback()])
            wall = time.perf_counter() - t0
            table = result.table
            table = table[table["epoch"] > 0]
            histories = _histories(result.local_dir)
            trained = table[table["epoch"] > 1]
            rows.append({
                "workers": workers, "wall_s": wall, "trials": int(table["trial_id"].nunique()),
                "epochs": int(len(table)),
                "status": sorted(set(table["status"])),
                "trial_s": statistics.mean(h[-1]["time_total_s"] for h in histories),
                "first_epoch_total_s": statistics.mean(h[0]["time_total_s"] for h in histories),
                "first_epoch_time_s": statistics.mean(h[0]["epoch_time_s"] for h in histories),
                "samples_per_s": float(trained["samples_per_s"].median()),
                **_timeline(_EVENTS, wall), "events": list(_EVENTS),
                "histories": histories,
            })
            print(f"  tune, {workers} worker(s) per trial: {wall:.1f} s", file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(storage, ignore_errors=True)
    one = rows[0]
    print(f"\nPart 2: raytune_torch.run, a 2-trial grid of the {m['label']}, batch 64, {epochs} epochs, "
          f"resources {{cpu: 1, workers: N}} on {os.cpu_count()} CPUs")
    print("Per trial (mean of the two; seconds): start to end and start to its first result on the driver's "
          "clock; Tune's time_total_s at the first epoch and the last; the first epoch's epoch_time_s; from the "
          "last result to the trial's end")
    print("| workers per trial | run() wall s | x 1 worker | trial start to end | start to first result | "
          "time_total_s, epoch 1 | time_total_s, last epoch | epoch 1 epoch_time_s | last result to end | "
          "samples/s after epoch 1 | x 1 worker |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['wall_s']:.1f} | {r['wall_s'] / one['wall_s']:.2f}x | {r['trial_span_s']:.1f} | "
              f"{r['to_first_result_s']:.1f} | {r['first_epoch_total_s']:.1f} | {r['trial_s']:.1f} | "
              f"{r['first_epoch_time_s']:.2f} | {r['after_last_result_s']:.1f} | {r['samples_per_s']:,.0f} | "
              f"{r['samples_per_s'] / one['samples_per_s']:.2f}x |")
    print("\nThe run's wall time, from the driver's clock: before the first trial starts (Ray's start, the "
          "preflight), trials running, no trial running between trials, after the last one ends")
    print("| workers per trial | before the first trial s | trials running s | between trials s | after the last s |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        running = r["wall_s"] - r["before_first_s"] - r["between_s"] - r["after_last_s"]
        print(f"| {r['workers']} | {r['before_first_s']:.1f} | {running:.1f} | {r['between_s']:.1f} | "
              f"{r['after_last_s']:.1f} |")
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--part", choices=("both", "train", "tune"), default="both")
    parser.add_argument("--rounds", type=int, help="part 1: turns per configuration (default 2, 1 with --quick)")
    parser.add_argument("--epochs", type=int, help="part 1: epochs per trial; the first is left out "
                                                   "(default 4, 2 with --quick)")
    parser.add_argument("--tune-epochs", type=int, help="part 2: epochs per trial (default 4, 2 with --quick)")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.epochs = args.epochs or (2 if args.quick else 4)
    args.tune_epochs = args.tune_epochs or (2 if args.quick else 4)
    if args.epochs < 2 or args.tune_epochs < 2:
        parser.error("--epochs and --tune-epochs must be at least 2 (the first epoch is left out)")
    import ray
    import torch

    started = time.perf_counter()
    print(f"torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} at the start", flush=True)
    report: dict = {"settings": {k: v for k, v in vars(args).items() if k != "out"}}
    if args.part in ("both", "train"):
        report["train"] = part_train(args)
    if args.part in ("both", "tune"):
        report["tune"] = part_tune(args)
    print(f"\n{time.perf_counter() - started:.0f} s in all; load average {os.getloadavg()[0]:.2f} at the end")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
