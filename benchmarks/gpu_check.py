#!/usr/bin/env python
"""Four trials sharing one GPU: samples/s and peak GPU memory per trial, against one trial alone.

    python benchmarks/gpu_check.py                 # on a CUDA machine (a few minutes)
    python benchmarks/gpu_check.py --smoke         # anywhere: tiny data, a logical GPU, CPU fallback;
                                                   # checks the script, measures nothing of a GPU

A CIFAR-sized synthetic set (50,000 train and 10,000 val images of 3x32x32 float32, ten classes
drawn as noisy class templates: 737 MB in memory, nothing downloaded) trains :class:`CifarNet`
(three conv layers, batch 256, Adam) for ``--epochs`` epochs, in these arms, each a raytune_torch
run in a child process with its own private Ray instance:

| arm | trials at ``gpu: 0.25`` | ``data.device_cache`` | ``train.precision`` |
|---|---|---|---|
| ``alone_fp32`` | 1 | auto (cached) | 32 |
| ``four_fp32_cached`` | 4 | auto (cached) | 32 |
| ``four_fp32_pinned`` | 4 | false (batches from pinned host memory) | 32 |
| ``alone_bf16`` | 1 | auto | bf16 |
| ``four_bf16_cached`` | 4 | auto | bf16 |

Printed per arm: each trial's median samples/s over the epochs after its first, their sum (the
card's throughput), the per-trial and summed rates against the lone trial of the same precision,
each trial's peak GPU memory (``gpu_peak_mib``, torch's allocator peak in the trial's process) and
the run's wall time. ``--out`` writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

#: name -> (trials, device_cache, precision)
ARMS = {
    "alone_fp32": (1, "auto", "32"),
    "four_fp32_cached": (4, "auto", "32"),
    "four_fp32_pinned": (4, False, "32"),
    "alone_bf16": (1, "auto", "bf16"),
    "four_bf16_cached": (4, "auto", "bf16"),
}
LRS = (3e-4, 1e-3, 2e-3, 3e-3)


def cifar_like(n_train: int = 50_000, n_val: int = 10_000, size: int = 32, classes: int = 10,
               seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-sized images: each class a random 3 x size x size template, each image its class's
    template plus Gaussian noise (float32, generated a slice at a time)."""
    rng = np.random.default_rng(seed)
    templates = rng.normal(0.0, 1.0, size=(classes, 3, size, size)).astype(np.float32)
    out = {}
    for split, n in (("train", n_train), ("val", n_val)):
        y = rng.integers(0, classes, size=n)
        X = rng.standard_normal(size=(n, 3, size, size), dtype=np.float32) * 2.0
        for start in range(0, n, 8192):
            X[start:start + 8192] += templates[y[start:start + 8192]]
        out[split] = (X, y.astype(np.int64))
    return out


def cifar_smoke() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The smoke run's data: 512 train and 128 val images."""
    return cifar_like(512, 128)


class CifarNet(nn.Module):
    """Three conv blocks and a linear head for (3, H, W) images."""

    def __init__(self, out_features: int = 10, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def experiment(arm: str, storage: str, epochs: int, smoke: bool) -> dict:
    trials, cache, precision = ARMS[arm]
    return {
        "name": arm, "seed": 0, "storage": storage,
        "data": {"factory": "benchmarks.gpu_check:cifar_smoke" if smoke else "benchmarks.gpu_check:cifar_like",
                 "device_cache": cache},
        "model": {"name": "benchmarks.gpu_check:CifarNet"},
        "train": {"max_epochs": epochs, "batch_size": 256, "precision": precision, "metrics": ["accuracy"]},
        "space": {"optimizer__lr": {"type": "grid", "values": list(LRS[:trials])}},
        "search": {"algorithm": "grid", "metric": "val_accuracy"},
        "resources": {"cpu": 0.5 if smoke else 2, "gpu": 0.25, "cpu_fallback": smoke},
        "checkpoint": {"every": epochs, "keep": 1},
        "tensorboard": False,
    }


def child(arm: str, storage: str, epochs: int, smoke: bool) -> int:
    """One arm: run it, print one JSON line of per-trial figures."""
    os.chdir(ROOT)  # benchmarks.gpu_check imports from the repository root, in Ray workers too
    import raytune_torch as rt

    started = time.monotonic()
    result = rt.run(experiment(arm, storage, epochs, smoke), quiet=True, num_gpus=1 if smoke else None)
    wall = time.monotonic() - started
    table = result.table
    trials = []
    for trial_id, rows in table.groupby("trial_id"):
        rows = rows.sort_values("epoch")
        rates = rows["samples_per_s"].tolist()[1:] or rows["samples_per_s"].tolist()
        peak = rows["gpu_peak_mib"].max() if "gpu_peak_mib" in rows else None
        trials.append({"trial_id": str(trial_id), "samples_per_s": float(statistics.median(rates)),
                       "gpu_peak_mib": None if peak is None or peak != peak else float(peak),
                       "device": str(rows["device"].iloc[-1]), "val_accuracy": float(rows["val_accuracy"].iloc[-1])})
    print(json.dumps({"arm": arm, "wall_s": wall, "trials": trials}))
    return 0


def run_arm(arm: str, work: Path, epochs: int, smoke: bool, timeout: float) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", arm, "--storage", str(work / "runs"),
                           "--epochs", str(epochs)] + (["--smoke"] if smoke else []),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"arm {arm} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def report(results: dict[str, dict]) -> list[str]:
    """The Markdown table: per arm, the trials' rates and peaks against the lone trial."""
    lines = ["| arm | trials | samples/s per trial (median) | sum | per trial vs alone | sum vs alone | "
             "peak GPU MiB per trial (max) | wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, res in results.items():
        precision = ARMS[arm][2]
        alone = results.get("alone_bf16" if precision == "bf16" else "alone_fp32")
        rates = [t["samples_per_s"] for t in res["trials"]]
        per, total = statistics.median(rates), sum(rates)
        base = alone["trials"][0]["samples_per_s"] if alone else None
        peaks = [t["gpu_peak_mib"] for t in res["trials"] if t["gpu_peak_mib"] is not None]
        lines.append(f"| {arm} | {len(rates)} | {per:,.0f} | {total:,.0f} | "
                     f"{per / base:.2f}x | {total / base:.2f}x | {_mib(max(peaks) if peaks else None)} | "
                     f"{res['wall_s']:.0f} |" if base else
                     f"| {arm} | {len(rates)} | {per:,.0f} | {total:,.0f} | | | "
                     f"{_mib(max(peaks) if peaks else None)} | {res['wall_s']:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny data on a logical GPU with CPU fallback")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 4; 2 with --smoke)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--arm-timeout", type=float, default=600.0, help="seconds per arm (default 600)")
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.smoke else 4)
    if args.child:
        return child(args.child, args.storage, epochs, args.smoke)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    if not args.smoke and not torch.cuda.is_available():
        print(f"no CUDA device here (torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}): "
              "run this on a machine with an NVIDIA GPU, or pass --smoke to check the script itself",
              file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (smoke run, CPU fallback)"
    with tempfile.TemporaryDirectory(prefix="rtt-gpu-check-") as work:
        results = {arm: run_arm(arm, Path(work), epochs, args.smoke, args.arm_timeout) for arm in arms}
    print(f"{device}; torch {torch.__version__}; {epochs} epochs per trial (the first left out of the rates); "
          f"{'smoke data' if args.smoke else 'CIFAR-sized synthetic data, 737 MB'}")
    print("\n".join(report(results)))
    if args.out:
        Path(args.out).write_text(json.dumps({"device": device, "epochs": epochs, "smoke": args.smoke,
                                              "arms": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
