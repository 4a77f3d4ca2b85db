"""GPU shares. Without a GPU: Ray's logical GPUs check scheduling (four trials at 0.25 run at the
same time) and what happens without CUDA. Tests marked `gpu` run the real CUDA path."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import BASE

pytestmark = pytest.mark.slow


def _experiment(tmp_path: Path, **resources) -> Path:
    exp = copy.deepcopy(BASE)
    exp.update(storage=str(tmp_path / "runs"), max_failures=0)
    exp["space"] = {"optimizer__lr": {"type": "grid", "values": [0.001, 0.003, 0.01, 0.03]}}
    exp["train"].update(max_epochs=1, step="tests.helpers_steps:barrier_step")
    exp["resources"] = {"cpu": 0.5, "gpu": 0.25, **resources}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _run(path: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(RTT_BARRIER_DIR=str(barrier), RTT_BARRIER_N="4")
    # Its own private Ray instance with one logical GPU (this session's instance has none).
    return subprocess.run([sys.executable, "-m", "raytune_torch.cli", "run", str(path), "--num-gpus", "1", *extra],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of logical GPUs")
def test_four_trials_at_a_quarter_gpu_share_one_logical_gpu(tmp_path):
    proc = _run(_experiment(tmp_path, cpu_fallback=True), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray with 2 CPU(s), 1 GPU(s) on 1 node(s); each trial {cpu: 0.5, gpu: 0.25}" in proc.stdout
    marks = list((tmp_path / "barrier").iterdir())
    assert len(marks) == 4  # all four were inside their first batch at the same time
    assert {m.read_text() for m in marks} == {"0"}  # each saw the one GPU
    best = json.loads((tmp_path / "runs" / "t" / "best.json").read_text())
    assert best["status_counts"] == {"completed": 4}
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "runs" / "t" / "results.parquet").to_pandas()
    assert table["device"].tolist() == ["cpu"] * 4  # cpu_fallback: logical GPUs have no CUDA


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_share_without_cuda_is_an_error_not_a_silent_slowdown(tmp_path):
    proc = _run(_experiment(tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]  # the run finishes; every trial is errored
    best = json.loads((tmp_path / "runs" / "t" / "best.json").read_text())
    assert best["status_counts"] == {"error": 4}
    import pyarrow.parquet as pq

    errors = set(pq.read_table(tmp_path / "runs" / "t" / "results.parquet").column("error").to_pylist())
    assert len(errors) == 1
    assert "the trial was given a GPU share of 0.25 (CUDA_VISIBLE_DEVICES='0') but CUDA is not usable" in errors.pop()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trials_train_on_the_gpu(tmp_path):
    proc = _run(_experiment(tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "runs" / "t" / "results.parquet").to_pandas()
    assert set(table["device"]) == {"cuda"}
