"""Trials of two workers (resources.workers: 2) on the session's real local Ray instance (2 CPUs):
each trial is a Ray Train TorchTrainer of two gloo ranks. Their results match one-worker trials on
the same global batch; a rank that fails mid-run is restarted by Tune from the trial's checkpoint
and continues exactly; ASHA stops two-worker trials and their workers' resources come back; a
driver killed mid-run resumes. The numerics themselves are checked without Ray in
tests/test_distributed.py."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import yaml

import raytune_torch as rt
from raytune_torch._ray.group import support_error
from raytune_torch.exceptions import ConfigError, ResourceError
from tests.conftest import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]
#: why this Ray cannot run trials of several workers (Ray 2.41: no Train V2 user callbacks), or None
UNSUPPORTED = support_error()
needs_train_v2 = pytest.mark.skipif(UNSUPPORTED is not None, reason=str(UNSUPPORTED))

EXP = {
    "name": "ddp",
    "seed": 0,
    "data": {"dataset": "digits", "standardize": True, "val_fraction": 0.2},
    "model": {"name": "examples.models:MLP", "args": {"hidden": 16}},
    "optimizer": {"name": "sgd", "args": {"momentum": 0.9}},
    # 1437 training rows in global batches of 99: ranks get 50 and 49 rows of each
    "train": {"max_epochs": 3, "batch_size": 99, "metrics": ["accuracy"]},
    "space": {"optimizer__lr": {"type": "grid", "values": [0.1, 0.03]}, "module__dropout": 0.0},
    "search": {"algorithm": "grid", "metric": "val_accuracy"},
    "resources": {"cpu": 1, "workers": 2},
}
COMPARED = ["train_loss", "val_loss", "val_accuracy"]


def experiment(tmp_path: Path, name: str, **changes) -> dict:
    exp = copy.deepcopy(EXP)
    exp.update(name=name, storage=str(tmp_path / "runs"))
    for key, value in changes.items():
        exp[key] = {**exp[key], **value} if isinstance(value, dict) and isinstance(exp.get(key), dict) else value
    return exp


def by_lr_epoch(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["config/optimizer__lr", "epoch"]).reset_index(drop=True)


def wait_until_freed(timeout: float = 60) -> None:
    """The run's trials and their workers gave back every CPU, and no placement group is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        groups = [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
        if ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"] and not groups:
            return
        time.sleep(0.2)
    raise AssertionError(f"resources still held: {ray.available_resources()}; placement groups {groups}")


@pytest.mark.slow
@needs_train_v2
def test_two_worker_trials_match_one_worker_and_a_failed_rank_resumes_exactly(tmp_path, write_module):
    marker = tmp_path / "rank1-failed"
    step = write_module(f"""
        import torch.distributed as dist
        from pathlib import Path
        from raytune_torch.loop import default_step

        CALLS = [0]

        def step(ctx, xb, yb):
            '''The default step; rank 1 of the lr=0.1 trial fails once, in its second epoch.'''
            CALLS[0] += 1
            marker = Path({str(marker)!r})
            if (dist.is_initialized() and dist.get_rank() == 1 and ctx.optimizer.param_groups[0]["lr"] == 0.1
                    and CALLS[0] == 20 and not marker.exists()):
                marker.touch()
                raise RuntimeError("injected failure of rank 1")
            return default_step(ctx, xb, yb)
    """)
    two = rt.run(experiment(tmp_path, "two", train={"step": f"{step}:step"}, max_failures=1,
                            import_paths=[str(tmp_path)]), quiet=True)
    assert marker.exists(), "the injected failure never ran"
    one = rt.run(experiment(tmp_path, "one", resources={"workers": 1}), quiet=True)

    a, b = by_lr_epoch(two.table), by_lr_epoch(one.table)
    assert a["epoch"].tolist() == b["epoch"].tolist() == [1, 2, 3, 1, 2, 3]  # each epoch once, across the restart
    pd.testing.assert_frame_equal(a[COMPARED], b[COMPARED], rtol=1e-5, atol=1e-6)
    assert set(a["workers"]) == {2} and set(a["worker_nodes"]) == {1} and set(b["workers"]) == {1}
    assert set(two.trials()["status"]) == {"completed"}
    assert a["val_accuracy"].max() > 0.8

    # Tune holds the trial's checkpoints as it does for one worker: folders, best model, TensorBoard
    run_dir = tmp_path / "runs" / "two"
    for trial_id in a["trial_id"].unique():
        assert list((run_dir / f"trial_{trial_id}").glob("checkpoint_*/state.pt")), trial_id
    model = two.load_model()
    assert sum(p.numel() for p in model.parameters()) == int(a["n_params"].iloc[0])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / f"trial_{a['trial_id'].iloc[0]}"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/val")] == [1, 2, 3]
    assert not any((run_dir / ".train").iterdir())  # Train's own copies went with their trials
    wait_until_freed()


@pytest.mark.slow
@needs_train_v2
def test_asha_stops_two_worker_trials_and_their_workers_go(tmp_path):
    exp = experiment(tmp_path, "asha", train={"max_epochs": 4},
                     space={"optimizer__lr": {"type": "grid", "values": [0.3, 0.1, 0.01, 0.001]}},
                     scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2})
    result = rt.run(exp, quiet=True)
    statuses = result.trials()["status"].value_counts().to_dict()
    assert statuses.get("pruned", 0) >= 1 and statuses.get("completed", 0) >= 1, statuses
    epochs = result.table.groupby("trial_id")["epoch"].max()
    assert epochs.max() == 4 and epochs.min() < 4
    wait_until_freed()  # the stopped trials' workers and placement groups are gone


def _epochs(run_dir: Path) -> dict[str, int]:
    out = {}
    for path in run_dir.glob("trial_*/history.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.parent.name] = max((r.get("epoch", 0) for r in rows), default=0)
    return out


@pytest.mark.slow
@needs_train_v2
def test_driver_killed_mid_run_then_resume_continues_the_two_worker_trial(tmp_path):
    exp = experiment(tmp_path, "killed", train={"max_epochs": 5, "step": "tests.helpers_steps:slow_step"},
                     space={"optimizer__lr": 0.1, "module__dropout": 0.0}, max_failures=0)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    run_dir = tmp_path / "runs" / "killed"
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "raytune_torch.cli", "run", str(path), "--quiet"],
                                  start_new_session=True, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            deadline = time.monotonic() + 240
            while not any(2 <= e < 5 for e in _epochs(run_dir).values()) and driver.poll() is None:
                assert time.monotonic() < deadline, "the trial never got past epoch 2"
                time.sleep(0.1)
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        finally:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray instance it started
            driver.wait()
    assert max(_epochs(run_dir).values()) < 5

    result = rt.resume(run_dir, quiet=True)

    table = by_lr_epoch(result.table)
    assert table["epoch"].tolist() == [1, 2, 3, 4, 5]
    assert set(result.trials()["status"]) == {"completed"}
    exp.update(storage=str(tmp_path / "clean"), resources={"cpu": 1, "workers": 1})
    exp["train"]["step"] = None
    clean = by_lr_epoch(rt.run(exp, quiet=True).table)
    pd.testing.assert_frame_equal(table[COMPARED], clean[COMPARED], rtol=1e-5, atol=1e-6)
    wait_until_freed()


@needs_train_v2
def test_a_group_that_does_not_fit_is_refused_before_launch(tmp_path):
    with pytest.raises(ResourceError) as info:
        rt.run(experiment(tmp_path, "big", resources={"workers": 3}), quiet=True)
    assert str(info.value).startswith("each trial asks for 3 workers of {cpu: 1, gpu: 0} (3 CPUs, 0 GPUs in all), but "
                                      "the Ray cluster holds 2 such worker(s) at once (127.0.0.1: 2 CPU(s), 0 GPU(s) "
                                      "-> 2 worker(s)); lower resources.workers (--workers-per-trial) to at most 2; "
                                      "lower resources.cpu to at most 0.666667 per worker")
    assert not (tmp_path / "runs" / "big" / "results.parquet").exists()


def test_older_ray_refuses_several_workers_before_launch(tmp_path):
    """Runs on Ray 2.41 (CI's oldest Ray): no Train V2 user callbacks there."""
    if UNSUPPORTED is None:
        pytest.skip(f"Ray {ray.__version__} runs trials of several workers")
    with pytest.raises(ConfigError) as info:
        rt.run(experiment(tmp_path, "old"), quiet=True)
    assert f"this Ray {ray.__version__} does not have" in str(info.value)
    assert "use Ray 2.60 (the release this was verified on), or resources.workers: 1" in str(info.value)
    assert not (tmp_path / "runs" / "old" / "results.parquet").exists()
