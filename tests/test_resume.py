"""Crash safety on a real local Ray: killed trials, killed drivers, failing trials, PBT, disk budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ray import tune

import raytune_torch as rt
from raytune_torch import checkpoint as ckpt
from raytune_torch.cli import main
from raytune_torch.tuner import resume

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


def _latest_state(trial_dir: Path) -> dict:
    """The newest checkpoint of a trial directory, by the epoch it records."""
    dirs = sorted(trial_dir.glob("checkpoint_*"), key=lambda d: ckpt.read_meta(d)["epoch"])
    return ckpt.load_state(dirs[-1])


def _by_lr(result: rt.TuneResult) -> dict[float, Path]:
    trials = result.trials()
    return {row["config/optimizer__lr"]: Path(result.run_dir) / f"trial_{row['trial_id']}"
            for _, row in trials.iterrows()}


class KillTrialProcess(tune.Callback):
    """SIGKILLs the process of the first trial that reports epoch ``at`` (once)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.killed: list[str] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not self.killed and result.get("epoch") == self.at:
            self.killed.append(trial.trial_id)
            os.kill(result["pid"], signal.SIGKILL)


def test_trial_killed_with_sigkill_resumes_bit_for_bit(experiment, tmp_path):
    experiment["train"]["max_epochs"] = 4
    experiment["search"]["max_concurrent"] = 1
    experiment["max_failures"] = 1
    killer = KillTrialProcess(at=2)
    interrupted = rt.run(experiment, quiet=True, callbacks=[killer])
    assert killer.killed, "the callback never fired"
    experiment["storage"] = str(tmp_path / "clean")
    clean = rt.run(experiment, quiet=True)

    cols = ["epoch", "train_loss", "val_loss", "val_accuracy", "trial_seed"]
    key = ["config/optimizer__lr", "epoch"]
    a = interrupted.table.sort_values(key)
    b = clean.table.sort_values(key)
    assert len(a) == len(b) == 8  # every trial and epoch once, despite the restart
    np.testing.assert_array_equal(a[cols].to_numpy(), b[cols].to_numpy())
    dirs_a, dirs_b = _by_lr(interrupted), _by_lr(clean)
    for lr in dirs_a:
        state_a, state_b = _latest_state(dirs_a[lr]), _latest_state(dirs_b[lr])
        assert state_a["epoch"] == state_b["epoch"] == 4
        for name, tensor in state_a["model"].items():
            assert torch.equal(tensor, state_b["model"][name]), name
    killed_lr = a[a["trial_id"] == killer.killed[0]]["config/optimizer__lr"].iloc[0]
    assert set(interrupted.trials()["status"]) == {"completed"}, killed_lr


def test_trial_that_keeps_failing_ends_errored_and_others_are_kept(experiment):
    experiment["train"].update(max_epochs=3, step="tests.helpers_steps:failing_step")
    experiment["max_failures"] = 1
    result = rt.run(experiment, quiet=True)
    trials = result.trials().set_index("config/optimizer__lr")
    assert trials.loc[0.03, "status"] == "error"
    assert "RuntimeError: injected failure for lr=0.03" in trials.loc[0.03, "error"]
    assert trials.loc[0.003, "status"] == "completed"
    best = json.loads((Path(result.run_dir) / "best.json").read_text())
    assert best["params"] == {"optimizer__lr": 0.003}
    assert best["status_counts"] == {"completed": 1, "error": 1}
    assert main(["results", result.run_dir, "--format", "csv"]) == 0


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _epochs(run_dir: Path) -> dict[str, int]:
    out = {}
    for path in run_dir.glob("trial_*/history.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.parent.name] = max((r.get("epoch", 0) for r in lines), default=0)
    return out


@pytest.mark.slow
def test_driver_killed_mid_run_then_resume_finishes_every_trial_once(experiment, tmp_path):
    experiment["train"].update(max_epochs=5, step="tests.helpers_steps:slow_step")
    experiment["space"] = {"optimizer__lr": {"type": "grid", "values": [0.002, 0.005, 0.01, 0.03]}}
    experiment["search"]["max_concurrent"] = 2
    experiment["max_failures"] = 0
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment))
    run_dir = Path(experiment["storage"]) / "t"
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "raytune_torch.cli", "run", str(path), "--quiet"],
                              start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: (lambda e: any(v == 5 for v in e.values()) and any(0 < v < 5 for v in e.values()))(
            _epochs(run_dir)) or driver.poll() is not None, 240, "one finished trial and one mid-run")
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray instance it started
        driver.wait()
        log.close()
    before = _epochs(run_dir)
    finished = {t for t, e in before.items() if e == 5}
    finished_results = {t: (run_dir / t / "history.jsonl").read_text() for t in finished}

    result = resume(run_dir, quiet=True)

    table = result.table
    assert table["trial_id"].nunique() == 4
    assert (table.groupby("trial_id")["epoch"].apply(sorted).map(lambda e: e == [1, 2, 3, 4, 5])).all()
    for t, text in finished_results.items():  # finished trials were not run again
        assert (run_dir / t / "history.jsonl").read_text() == text
    assert set(result.trials()["status"]) == {"completed"}
    # Unfinished trials continued from their checkpoints: the same numbers as a clean run.
    experiment["storage"] = str(tmp_path / "clean")
    experiment["train"]["step"] = None
    clean = rt.run(experiment, quiet=True).table
    key = ["config/optimizer__lr", "epoch"]
    np.testing.assert_array_equal(table.sort_values(key)[["val_loss", "trial_seed"]].to_numpy(),
                                  clean.sort_values(key)[["val_loss", "trial_seed"]].to_numpy())

    # TensorBoard curves continue across the crash: every epoch once, no duplicate steps.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for trial_id in table["trial_id"].unique():
        acc = EventAccumulator(str(run_dir / f"trial_{trial_id}"), size_guidance={"scalars": 0})
        acc.Reload()
        assert [e.step for e in acc.Scalars("loss/val")] == [1, 2, 3, 4, 5], trial_id

    with pytest.raises(rt.ResultsError, match="already finished"):
        resume(run_dir, quiet=True)


def test_resume_of_missing_or_foreign_directory(tmp_path, capsys):
    assert main(["resume", str(tmp_path / "nope")]) == 1
    assert "does not exist; give STORAGE/NAME of an interrupted run" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    assert main(["resume", str(tmp_path / "other")]) == 1
    assert "is not a raytune_torch run" in capsys.readouterr().err


def test_pbt_perturbs_and_exploits(experiment):
    experiment["space"] = {"optimizer__lr": {"type": "float", "low": 1e-4, "high": 0.05, "log": True}}
    experiment["search"] = {"algorithm": "random", "num_samples": 4, "metric": "val_loss"}
    experiment["scheduler"] = {"name": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.25}
    experiment["train"]["max_epochs"] = 6
    result = rt.run(experiment, quiet=True)
    run_dir = Path(result.run_dir)
    policy = (run_dir / "pbt_global.txt").read_text().strip().splitlines()
    assert policy, "PBT never exploited a trial"
    table = result.table
    assert table.groupby("trial_id")["epoch"].max().eq(6).all()
    lr_of = table.groupby("trial_id")["lr"].nunique()
    assert (lr_of > 1).any()  # a mutated learning rate reached the optimizer


def test_pbt_refuses_structural_parameters(experiment):
    experiment["space"]["module__hidden"] = {"type": "choice", "values": [8, 16]}
    experiment["search"]["algorithm"] = "random"
    experiment["scheduler"] = "pbt"
    with pytest.raises(rt.ConfigError, match=r"pbt copies weights between trials, so the model's shape must not "
                                             r"change; make \['module__hidden'\] constants"):
        rt.run(experiment, quiet=True)


def test_disk_budget_best_and_latest_and_pruned_trials_keep_their_best(experiment):
    experiment["space"] = {"optimizer__lr": {"type": "grid", "values": [1e-5, 3e-5, 0.01, 0.03]}}
    experiment["train"]["max_epochs"] = 4
    experiment["scheduler"] = {"name": "asha", "grace_period": 1, "reduction_factor": 2}
    experiment["search"]["max_concurrent"] = 1
    result = rt.run(experiment, quiet=True)
    run_dir = Path(result.run_dir)
    total = 0
    for _, row in result.trials().iterrows():
        dirs = list((run_dir / f"trial_{row['trial_id']}").glob("checkpoint_*"))
        if row["status"] == "completed":
            assert 1 <= len(dirs) <= 2  # the best by the metric and the latest
        else:
            assert len(dirs) == 1, row["status"]
        total += sum(f.stat().st_size for d in dirs for f in d.rglob("*") if f.is_file())
    assert "pruned" in set(result.trials()["status"])
    assert result.best["checkpoint_bytes"] == total
    assert Path(result.best_checkpoint).is_dir()


def test_load_model_uses_the_best_checkpoint_not_the_last(experiment):
    # Overfits: val_loss is best early, then rises; the model must come from the best epoch.
    experiment["data"]["val_fraction"] = 0.5
    experiment["model"]["args"] = {"hidden": 256}
    experiment["space"] = {"optimizer__lr": {"type": "grid", "values": [0.05]}}
    experiment["train"]["max_epochs"] = 8
    experiment["search"]["metric"] = "val_loss"
    result = rt.run(experiment, quiet=True)
    table = result.table
    best_epoch = int(table.loc[table["val_loss"].idxmin(), "epoch"])
    assert best_epoch < 8  # otherwise this test could not tell best from last
    assert result.best["epoch"] == best_epoch
    state = ckpt.load_state(result.best_checkpoint)
    assert state["epoch"] == best_epoch
    model = result.load_model()
    for name, tensor in state["model"].items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_corrupted_best_checkpoint_names_the_file(experiment):
    result = rt.run(experiment, quiet=True)
    state = Path(result.best_checkpoint) / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(rt.CheckpointError, match=f"checkpoint file '{state}' is truncated or corrupted"):
        result.load_model()
