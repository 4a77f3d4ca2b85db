"""What one full-state checkpoint costs a trial, for the benchmark's models, in one process.

    python benchmarks/checkpoint_cost.py            # ~10 s on 2 CPUs

For the mlp and cnn workloads' largest configurations (Adam, after one epoch), it times the two
ways a trial hands a checkpoint to Ray Tune, side by side:

- ``in place``: saved straight into the folder Tune persists it to (what a trial does when the
  storage is a local filesystem), then Tune's ``persist_current_checkpoint``;
- ``via a temporary directory``: saved to a fresh temporary directory, copied by Tune's
  ``persist_current_checkpoint``, then deleted (what a trial does on object storage, and what
  every trial did before);

and one epoch of the same model (train, validate and that epoch's checkpoint; one thread, after
a warm-up epoch), so the cost reads as a share of an epoch. Ratios within one run are the result;
the machine may be shared.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * times[len(times) // 2]


def measure(workload_name: str, repeat: int) -> dict[str, float]:
    import torch
    from ray import tune
    from ray.train._internal.storage import StorageContext

    from benchmarks import arms as A
    from benchmarks import workloads as wl
    from raytune_torch import _ray
    from raytune_torch import checkpoint as ckpt
    from raytune_torch.config import load_config
    from raytune_torch.data import load_splits
    from raytune_torch.trainable import Trial, _NullReporter, default_loop

    workload = wl.get_workload(workload_name)
    size = max(workload.sizes)
    raw = A.experiment(workload, tempfile.gettempdir(), "raytune_torch_grid")
    raw["train"]["max_epochs"] = 1
    config = load_config(raw)
    data = load_splits(config.data, config.task, config.seed)
    params = {"optimizer__lr": max(workload.lrs), f"module__{workload.size_param}": size}

    torch.set_num_threads(1)
    default_loop(Trial(config, params, data, _NullReporter()))  # warm-up (first optimizer step, allocator)
    trial = Trial(config, params, data, _NullReporter())
    t0 = time.perf_counter()
    default_loop(trial)  # one epoch: train, validate, report, checkpoint (to a temporary dir)
    epoch_ms = 1000 * (time.perf_counter() - t0)
    state = trial.state()

    root = tempfile.mkdtemp(prefix="raytune-torch-ckpt-cost-")
    try:
        storage = StorageContext(root, "exp", trial_dir_name="trial_0")

        def in_place() -> None:
            place = _ray._checkpoint_place(storage)
            ckpt.save_state(place, state)
            storage._update_checkpoint_index({})
            storage.persist_current_checkpoint(tune.Checkpoint.from_directory(place))

        def via_temporary() -> None:
            directory = tempfile.mkdtemp(prefix="rtt-ckpt-")
            try:
                ckpt.save_state(directory, state)
                storage._update_checkpoint_index({})
                storage.persist_current_checkpoint(tune.Checkpoint.from_directory(directory))
            finally:
                shutil.rmtree(directory, ignore_errors=True)

        in_place(), via_temporary()  # warm up
        place_ms = _median_ms(in_place, repeat)
        temporary_ms = _median_ms(via_temporary, repeat)
        nbytes = os.path.getsize(os.path.join(storage.trial_fs_path, storage.checkpoint_dir_name, "state.pt"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"epoch_ms": epoch_ms, "in_place_ms": place_ms, "via_temporary_ms": temporary_ms, "state_kb": nbytes / 1024,
            "size": size}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=200, help="checkpoints timed per way (default 200; median)")
    args = p.parse_args(argv)
    logging.getLogger("ray").setLevel(logging.WARNING)
    print("| workload | state | one epoch | checkpoint in place | via a temporary directory | in place / epoch | temporary / epoch |")
    print("|---|---|---|---|---|---|---|")
    for name in ("mlp", "cnn"):
        r = measure(name, args.repeat)
        print(f"| {name} ({r['size']}) | {r['state_kb']:.0f} KB | {r['epoch_ms']:.1f} ms | {r['in_place_ms']:.2f} ms | "
              f"{r['via_temporary_ms']:.2f} ms | {100 * r['in_place_ms'] / r['epoch_ms']:.1f}% | "
              f"{100 * r['via_temporary_ms'] / r['epoch_ms']:.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
