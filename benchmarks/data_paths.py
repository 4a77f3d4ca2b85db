#!/usr/bin/env python
"""Samples/s inside a trial: the benchmark CNN through a torch Dataset and DataLoader, through the
in-memory arrays, and in hand-written PyTorch loops over the same data, side by side.

    python benchmarks/data_paths.py                    # 5 rounds of 6 epochs per arm (about 2 min)
    python benchmarks/data_paths.py --rounds 2 --epochs 3

Every arm trains ``examples.models:DigitsCNN`` (channels 20, Adam lr 1e-3, batch 64) on the same
digits split (benchmarks/workloads.py) with one torch thread, as a trial with ``resources.cpu: 1``
does, in this one process; each epoch is a training pass plus a validation pass with accuracy:

- ``hand_dataloader``: a plain loop over ``DataLoader(TensorDataset(...), shuffle=True)``
  (``num_workers=0``), ``loss.item()`` per batch, as most PyTorch scripts do;
- ``trial_dataset``: raytune_torch's trial (``run_trial``) on a factory returning the same
  ``TensorDataset`` splits (the Dataset path, ``data.loader`` defaults);
- ``trial_arrays``: the trial on a factory returning the arrays (the in-memory path);
- ``hand_indexing``: a plain loop indexing the tensors (benchmarks.workloads.plain_epoch).

The trial's rate is its own ``samples_per_s`` (train rows over the epoch's wall time, validation
included); the hand loops are timed the same way. The arms take turns, round by round, and the
median over every epoch after each run's first is printed, with each trial arm's ratio to the
hand loop over the same source.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import workloads  # noqa: E402

CHANNELS, LR, BATCH = 20, 1e-3, 64
ARMS = ("hand_dataloader", "trial_dataset", "trial_arrays", "hand_indexing")


def digits_datasets() -> dict:
    """The benchmark's digits split as ``TensorDataset`` splits (a raytune_torch data factory)."""
    from torch.utils.data import TensorDataset

    X_tr, y_tr, X_va, y_va = workloads.tensors()
    return {"train": TensorDataset(X_tr, y_tr), "val": TensorDataset(X_va, y_va)}


def trial_rates(factory: str, epochs: int) -> list[float]:
    """samples_per_s of each epoch of one raytune_torch trial on ``factory``."""
    from raytune_torch.config import load_config
    from raytune_torch.data import load_data
    from raytune_torch.trainable import run_trial

    config = load_config({
        "name": "data-paths", "seed": 0,
        "data": {"factory": factory},
        "model": {"name": "examples.models:DigitsCNN", "args": {"channels": CHANNELS}},
        "train": {"max_epochs": epochs, "batch_size": BATCH, "metrics": ["accuracy"]},
        "search": {"metric": "val_accuracy"},
        "checkpoint": {"every": epochs},
    })
    data = load_data(config.data, config.task, config.seed, import_paths=config.import_paths)
    reporter = workloads.Collect()
    with contextlib.redirect_stdout(None):  # the trial's start line
        run_trial({"optimizer__lr": LR}, config, data, reporter, cpus=1)
    return [row["samples_per_s"] for row in reporter.rows]


def hand_dataloader_rates(epochs: int) -> list[float]:
    """A plain PyTorch loop over DataLoaders of the same TensorDatasets."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    splits = digits_datasets()
    model = workloads.build_model(workloads.get_workload("cnn"), CHANNELS)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    train = DataLoader(splits["train"], batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(splits["val"], batch_size=1024)
    rates = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        total = 0.0
        for xb, yb in train:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(xb)
        model.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in val:
                correct += int((model(xb).argmax(1) == yb).sum())
        rates.append(len(splits["train"]) / (time.perf_counter() - started))
    return rates


def hand_indexing_rates(epochs: int) -> list[float]:
    """A plain PyTorch loop indexing the tensors (the benchmark suite's reference epoch)."""
    torch.manual_seed(0)
    data = workloads.tensors()
    model = workloads.build_model(workloads.get_workload("cnn"), CHANNELS)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    rates = []
    for _ in range(epochs):
        started = time.perf_counter()
        workloads.plain_epoch(model, optimizer, data, BATCH, gen)
        rates.append(len(data[0]) / (time.perf_counter() - started))
    return rates


def run_arm(arm: str, epochs: int) -> list[float]:
    if arm == "hand_dataloader":
        return hand_dataloader_rates(epochs)
    if arm == "trial_dataset":
        return trial_rates("benchmarks.data_paths:digits_datasets", epochs)
    if arm == "trial_arrays":
        return trial_rates("benchmarks.workloads:digits_splits", epochs)
    return hand_indexing_rates(epochs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="turns per arm (default 5)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per turn; the first is left out (default 6)")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (each run's first epoch is left out)")
    torch.set_num_threads(1)
    rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for _ in range(args.rounds):
        for arm in ARMS:
            rates[arm].extend(run_arm(arm, args.epochs)[1:])
    median = {arm: statistics.median(values) for arm, values in rates.items()}
    reference = {"trial_dataset": "hand_dataloader", "trial_arrays": "hand_indexing"}
    print(f"DigitsCNN(channels={CHANNELS}), batch {BATCH}, 1 torch thread; median of {args.rounds} x "
          f"{args.epochs - 1} epochs per arm (train + validation)")
    print("| arm | samples/s | vs hand_dataloader | vs its hand loop |")
    print("|---|---:|---:|---:|")
    for arm in ARMS:
        ref = reference.get(arm)
        own = f"{median[arm] / median[ref]:.2f}x {ref}" if ref else ""
        print(f"| {arm} | {median[arm]:,.0f} | {median[arm] / median['hand_dataloader']:.2f}x | {own} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"median_samples_per_s": median, "rates": rates,
                                              "rounds": args.rounds, "epochs": args.epochs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
