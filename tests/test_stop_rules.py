"""Budgets and stop rules: ``stop``, ``stop_all_at``, ``train.time_limit_s``, ``search.time_budget_s``.

The file's checks and a trial's own rules run without Ray; the run-wide rules run on the
session's Ray instance."""

from __future__ import annotations

import copy
import json

import pytest

import raytune_torch as rt
from raytune_torch.config import load_config
from raytune_torch.data import load_data
from raytune_torch.exceptions import ConfigError
from raytune_torch.results import _status
from raytune_torch.trainable import run_trial
from reporters import FakeReporter
from tests.conftest import BASE


def _config(**changes):
    raw = copy.deepcopy(BASE)
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return load_config(raw)


def _problems(**changes) -> str:
    with pytest.raises(ConfigError) as info:
        _config(**changes)
    return str(info.value)


# --- the file -----------------------------------------------------------------------------------


def test_every_rule_reads_and_round_trips():
    config = _config(stop={"val_accuracy": 0.9}, stop_all_at={"val_loss": 0.2},
                     train={"time_limit_s": 30}, search={"time_budget_s": 600})
    assert config.stop == {"val_accuracy": 0.9} and config.stop_all_at == {"val_loss": 0.2}
    assert config.train.time_limit_s == 30.0 and config.search.time_budget_s == 600.0
    assert load_config(config.to_dict()) == config
    assert "stop" not in _config().to_dict() and "time_budget_s" not in _config().to_dict()["search"]


def test_a_target_on_a_metric_never_reported_is_refused_with_a_suggestion():
    assert ("stop.val_acuracy: trials never report 'val_acuracy', so the target could never be reached; did you "
            "mean 'val_accuracy'?; trials report train_loss, val_loss, val_accuracy, n_params, epoch_time_s, "
            "samples_per_s (add the metric to train.metrics)") in _problems(stop={"val_acuracy": 0.9})
    assert "stop_all_at.val_f1: trials never report 'val_f1'" in _problems(stop_all_at={"val_f1": 0.9})


@pytest.mark.parametrize("raw, message", [
    ([0.9], "stop: must map reported metrics to target values, e.g. {val_accuracy: 0.95} (a trial stops once it "
            "reports it), got [0.9]"),
    ({"val_accuracy": "high"}, "stop.val_accuracy: must be a number, got 'high'"),
    ({"val_accuracy": float("nan")}, "stop.val_accuracy: must be a finite number, got nan"),
])
def test_a_target_must_be_a_number_per_metric(raw, message):
    assert message in _problems(stop=raw)


@pytest.mark.parametrize("changes, message", [
    ({"search": {"time_budget_s": 0}}, "search.time_budget_s: must be > 0.0, got 0.0"),
    ({"train": {"time_limit_s": -1}}, "train.time_limit_s: must be > 0.0, got -1.0"),
    ({"train": {"time_limit_s": "soon"}}, "train.time_limit_s: must be a number, got 'soon'"),
])
def test_time_bounds_must_be_positive(changes, message):
    assert message in _problems(**changes)


def test_the_time_bounds_are_overrides_too():
    config = load_config(BASE, time_budget_s=60, time_limit_s=5)
    assert config.search.time_budget_s == 60 and config.train.time_limit_s == 5


# --- a trial's own rules (no Ray) ---------------------------------------------------------------


def _run(config, reporter=None, **params):
    reporter = reporter or FakeReporter()
    data = load_data(config.data, config.task, config.seed)
    return run_trial({"optimizer__lr": 0.03, **params}, config, data, reporter), reporter


def test_a_trial_stops_at_the_first_epoch_that_reaches_its_target():
    free, _ = _run(_config(train={"max_epochs": 6}))
    accuracies = [row["val_accuracy"] for row in free.history]
    target = accuracies[2]  # reached for the first time at epoch 3 or earlier
    first = next(i for i, a in enumerate(accuracies, start=1) if a >= target)
    trial, reporter = _run(_config(train={"max_epochs": 6}, stop={"val_accuracy": target}))
    assert trial.epoch == first < 6
    assert [m["stop_rule"] for m in reporter.metrics] == [""] * (first - 1) + ["target"]
    assert reporter.given[-1] is not None  # the stopping epoch is checkpointed


def test_a_loss_target_is_reached_from_above():
    trial, reporter = _run(_config(train={"max_epochs": 6}, stop={"val_loss": 100.0}))
    assert trial.epoch == 1 and reporter.metrics[-1]["stop_rule"] == "target"


def test_time_limit_stops_after_the_epoch_that_crosses_it():
    config = _config(train={"max_epochs": 20, "step": "tests.helpers_steps:slow_step", "time_limit_s": 0.3})
    trial, reporter = _run(config)
    assert 1 <= trial.epoch < 20
    times = [m["epoch_time_s"] for m in reporter.metrics]
    assert sum(times[:-1]) < 0.3 <= sum(times)
    assert reporter.metrics[-1]["stop_rule"] == "time_limit"


def test_a_resumed_trial_keeps_its_stop_and_its_time(tmp_path):
    config = _config(train={"max_epochs": 20, "step": "tests.helpers_steps:slow_step", "time_limit_s": 0.3})
    trial, reporter = _run(config, FakeReporter(tmp_path / "a"))
    resumed, again = _run(config, FakeReporter(tmp_path / "b", resume_from=reporter.checkpoints[trial.epoch]))
    assert resumed.epoch == trial.epoch and again.metrics == []  # nothing more to train
    assert resumed.stop_rule == "time_limit" and resumed.time_s == pytest.approx(trial.time_s)


@pytest.mark.parametrize("rows, run_stop, status", [
    ([{"epoch": 2, "stop_rule": "target"}], None, "target_reached"),
    ([{"epoch": 2, "stop_rule": "time_limit"}], None, "time_limit"),
    ([{"epoch": 2, "stop_rule": ""}], {"rule": "time_budget_s", "stopped_trials": ["a"]}, "time_budget"),
    ([{"epoch": 2, "stop_rule": ""}], {"rule": "stop_all_at", "trial_id": "b", "stopped_trials": ["a"]},
     "stopped_all"),
    ([{"epoch": 2, "stop_rule": ""}], {"rule": "stop_all_at", "trial_id": "a", "stopped_trials": []},
     "target_reached"),
    ([], {"rule": "time_budget_s", "stopped_trials": ["a"], "waiting_trials": ["a"]}, "not_started"),
    ([], {"rule": "time_budget_s", "stopped_trials": ["a"], "waiting_trials": []}, "time_budget"),
    ([{"epoch": 2, "stop_rule": ""}], {"rule": "time_budget_s", "stopped_trials": ["z"]}, "pruned"),
    ([{"epoch": 5, "stop_rule": ""}], {"rule": "time_budget_s", "stopped_trials": []}, "completed"),
])
def test_each_rule_has_its_own_status(rows, run_stop, status):
    assert _status(rows, None, 5, run_stop, "a") == status


# --- the run's rules (Ray) ----------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_the_time_budget_stops_the_run_and_keeps_what_the_trials_reported(experiment):
    experiment["space"] = {"optimizer__lr": {"type": "grid", "values": [0.001, 0.003, 0.01, 0.03]}}
    # Each trial would train for about 40 s (200 slowed epochs): the 20 s budget ends them all.
    experiment["train"].update(max_epochs=200, step="tests.helpers_steps:slow_step")
    experiment["search"]["time_budget_s"] = 20
    result = rt.run(experiment, quiet=True)
    best = json.loads(open(f"{result.run_dir}/best.json").read())
    assert best["stopped_by"]["rule"] == "time_budget_s" and best["stopped_by"]["budget_s"] == 20
    assert best["stopped_by"]["after_s"] >= 20
    counts = best["status_counts"]
    assert counts.get("time_budget", 0) >= 1 and set(counts) <= {"time_budget", "not_started"}
    table = result.table
    stopped = table[(table["status"] == "time_budget") & (table["epoch"] > 0)]
    assert len(stopped) and (stopped.groupby("trial_id")["epoch"].max() < 200).all()
    assert stopped["val_accuracy"].notna().all()  # every epoch they reported is kept
    assert best["trial_id"] in set(stopped["trial_id"])


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_stop_all_at_ends_the_run_when_one_trial_reaches_it(experiment):
    experiment["space"] = {"optimizer__lr": {"type": "grid", "values": [0.03, 0.01, 0.003, 0.001]}}
    experiment["train"]["max_epochs"] = 10
    experiment["search"]["max_concurrent"] = 1
    experiment["stop_all_at"] = {"val_accuracy": 0.5}
    result = rt.run(experiment, quiet=True)
    best = json.loads(open(f"{result.run_dir}/best.json").read())
    stopped_by = best["stopped_by"]
    assert stopped_by["rule"] == "stop_all_at" and stopped_by["metric"] == "val_accuracy"
    assert stopped_by["value"] >= 0.5 and stopped_by["target"] == 0.5
    assert best["status_counts"] == {"target_reached": 1}  # one at a time: no other trial was started
    rows = result.table
    assert rows["epoch"].max() < 10 and rows["val_accuracy"].iloc[-1] >= 0.5
    assert stopped_by["trial_id"] == rows["trial_id"].iloc[0]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_trials_own_rules_reach_the_results_table(experiment):
    # lr 0.03 reaches 50% in its first epoch; lr 1e-5 stays far below it until its time runs out.
    experiment["space"] = {"optimizer__lr": {"type": "grid", "values": [0.03, 1.0e-5]}}
    experiment["train"].update(max_epochs=20, step="tests.helpers_steps:slow_step", time_limit_s=0.5)
    experiment["stop"] = {"val_accuracy": 0.5}
    result = rt.run(experiment, quiet=True)
    best = json.loads(open(f"{result.run_dir}/best.json").read())
    assert best["status_counts"] == {"target_reached": 1, "time_limit": 1}
    table = result.table
    last = table.sort_values("epoch").groupby("config/optimizer__lr").tail(1).set_index("config/optimizer__lr")
    assert last.loc[0.03, "stop_rule"] == "target" and last.loc[0.03, "val_accuracy"] >= 0.5
    assert last.loc[1.0e-5, "stop_rule"] == "time_limit" and last.loc[1.0e-5, "epoch"] < 20
