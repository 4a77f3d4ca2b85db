"""One trial end to end without Ray: a fake Reporter stands in for Ray Tune's session."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch

from raytune_torch import checkpoint as ckpt
from raytune_torch.config import load_config
from raytune_torch.data import load_splits
from raytune_torch.exceptions import ConfigError, PreflightError
from raytune_torch.trainable import build_components, derive_seed, preflight, run_trial
from reporters import Crash, FakeReporter

METRIC_KEYS = {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "epoch_time_s", "samples_per_s",
               "n_params", "trial_seed", "diverged", "early_stopped", "stop_rule", "device", "workers"}
BASE = {
    "name": "trial-test",
    "seed": 0,
    "data": {"dataset": "digits", "standardize": True},
    "model": {"name": "examples.models:MLP", "args": {"hidden": 16}},
    "train": {"max_epochs": 3, "batch_size": 64, "metrics": ["accuracy"]},
}


def make_config(**changes):
    raw = copy.deepcopy(BASE)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    return load_config(raw)


@pytest.fixture(scope="module")
def digits():
    cfg = make_config()
    return load_splits(cfg.data, cfg.task, cfg.seed)


@pytest.fixture
def user_module(write_module, tmp_path):
    """``(write, folder)``: write a module into tmp_path; folder is its import path."""
    return write_module, str(tmp_path)


def state_dicts_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- reporting ----------------------------------------------------------------------------------


def test_one_report_per_epoch(tmp_path, digits):
    cfg = make_config()
    reporter = FakeReporter(tmp_path / "r")
    params = {"optimizer__lr": 0.01}
    trial = run_trial(params, cfg, digits, reporter)
    assert len(reporter.metrics) == 3
    for epoch, m in enumerate(reporter.metrics, start=1):
        assert set(m) == METRIC_KEYS
        assert m["epoch"] == epoch
        assert m["diverged"] == 0 and m["early_stopped"] == 0
        assert m["lr"] == 0.01
        assert m["trial_seed"] == derive_seed(0, 0, params)
        assert math.isfinite(m["train_loss"]) and math.isfinite(m["val_loss"])
        assert 0.0 <= m["val_accuracy"] <= 1.0
        assert m["epoch_time_s"] > 0 and m["samples_per_s"] == pytest.approx(1437 / m["epoch_time_s"])
    assert reporter.metrics[-1]["train_loss"] < reporter.metrics[0]["train_loss"]
    assert reporter.metrics[-1]["val_accuracy"] > 0.8
    assert trial.epoch == 3 and not trial.stopped_early
    # a checkpoint every epoch (checkpoint.every defaults to 1); the trial removes its temporary copy
    assert sorted(reporter.checkpoints) == [1, 2, 3]
    assert all(d is not None and not Path(d).exists() for d in reporter.given)
    for epoch, directory in reporter.checkpoints.items():
        state = ckpt.load_state(directory)
        assert state["epoch"] == epoch and state["params"] == params
        assert state["trial_seed"] == reporter.metrics[0]["trial_seed"]
    state_dicts_equal(ckpt.load_state(reporter.checkpoints[3])["model"], trial.model.state_dict())


def test_checkpoint_every_two_epochs_and_at_the_end(tmp_path, digits):
    cfg = make_config(checkpoint={"every": 2})
    reporter = FakeReporter(tmp_path)
    run_trial({}, cfg, digits, reporter)
    assert reporter.column("epoch") == [1, 2, 3]
    assert [d is not None for d in reporter.given] == [False, True, True]
    assert sorted(reporter.checkpoints) == [2, 3]


def test_reports_every_configured_metric(tmp_path, digits):
    cfg = make_config(train={"metrics": ["accuracy", "f1", "roc_auc"], "max_epochs": 1})
    reporter = FakeReporter(tmp_path)
    run_trial({}, cfg, digits, reporter)
    (m,) = reporter.metrics
    assert set(m) == METRIC_KEYS | {"val_f1", "val_roc_auc"}
    assert 0 < m["val_f1"] <= 1 and 0.5 < m["val_roc_auc"] <= 1


def test_same_seed_gives_identical_metrics(tmp_path, digits):
    cfg = make_config(model={"name": "examples.models:MLP", "args": {"hidden": 16, "dropout": 0.2}})
    params = {"optimizer__lr": 0.01, "batch_size": 32}
    first = FakeReporter(tmp_path / "a")
    run_trial(params, cfg, digits, first)
    torch.manual_seed(12345)  # whatever the global RNG holds, the trial seeds itself
    second = FakeReporter(tmp_path / "b")
    run_trial(params, cfg, digits, second)
    assert first.stable() == second.stable()
    # another trial index (or experiment seed) gives another trial seed and other numbers
    third = FakeReporter(tmp_path / "c", trial_index=1)
    run_trial(params, cfg, digits, third)
    assert third.metrics[0]["trial_seed"] != first.metrics[0]["trial_seed"]
    assert third.column("val_loss") != first.column("val_loss")
    fourth = FakeReporter(tmp_path / "d")
    run_trial(params, make_config(seed=1, model=cfg.model.__dict__), digits, fourth)
    assert fourth.column("train_loss") != first.column("train_loss")


# --- exact resume -------------------------------------------------------------------------------


def test_resume_after_a_crash_is_exact(tmp_path, digits):
    cfg = make_config(
        model={"name": "examples.models:MLP", "args": {"hidden": 16, "dropout": 0.3}},
        train={"max_epochs": 4, "batch_size": 32, "early_stopping": {"patience": 10}},
        lr_scheduler={"name": "step", "args": {"step_size": 1, "gamma": 0.7}},
        optimizer="adamw",
    )
    params = {"optimizer__lr": 0.01, "module__layers": 2}

    whole = FakeReporter(tmp_path / "whole")
    full = run_trial(params, cfg, digits, whole)
    assert whole.column("epoch") == [1, 2, 3, 4]
    assert whole.column("lr") == pytest.approx([0.01, 0.007, 0.0049, 0.00343])

    crashed = FakeReporter(tmp_path / "crashed", crash_after=2)
    with pytest.raises(Crash):
        run_trial(params, cfg, digits, crashed)
    assert crashed.column("epoch") == [1, 2]
    assert crashed.stable() == whole.stable()[:2]

    torch.manual_seed(999)  # the process that resumes has RNG state of its own
    resumed = FakeReporter(tmp_path / "resumed", resume_from=crashed.checkpoints[2])
    trial = run_trial(params, cfg, digits, resumed)
    assert resumed.column("epoch") == [3, 4]
    assert resumed.stable() == whole.stable()[2:]
    assert resumed.metrics[-1]["val_loss"] == whole.metrics[-1]["val_loss"]
    state_dicts_equal(trial.model.state_dict(), full.model.state_dict())
    opt_a, opt_b = trial.optimizer.state_dict(), full.optimizer.state_dict()
    assert opt_a["param_groups"] == opt_b["param_groups"]
    for index, slots in opt_b["state"].items():
        for name, value in slots.items():
            assert torch.equal(opt_a["state"][index][name], value), (index, name)
    assert trial.lr_scheduler.state_dict() == full.lr_scheduler.state_dict()
    assert (trial.best, trial.bad_epochs) == (full.best, full.bad_epochs)
    state_dicts_equal(ckpt.load_state(resumed.checkpoints[4])["model"],
                      ckpt.load_state(whole.checkpoints[4])["model"])


def test_resume_with_changed_optimizer_params_applies_them(tmp_path, digits):
    # what PBT does: restart from a checkpoint with mutated parameters
    cfg = make_config(train={"max_epochs": 2}, optimizer={"name": "sgd", "args": {"momentum": 0.5}})
    first = FakeReporter(tmp_path / "a")
    run_trial({"optimizer__lr": 0.01, "optimizer__momentum": 0.9}, cfg, digits, first)
    mutated = {"optimizer__lr": 0.002, "optimizer__momentum": 0.8}
    again = FakeReporter(tmp_path / "b", resume_from=first.checkpoints[1])
    trial = run_trial(mutated, cfg, digits, again)
    assert again.column("epoch") == [2]
    assert again.column("lr") == [0.002]
    assert trial.optimizer.param_groups[0]["momentum"] == 0.8
    assert ckpt.load_state(again.checkpoints[2])["params"] == mutated


def test_resume_from_the_last_checkpoint_runs_nothing(tmp_path, digits):
    cfg = make_config()
    first = FakeReporter(tmp_path / "a")
    done = run_trial({}, cfg, digits, first)
    again = FakeReporter(tmp_path / "b", resume_from=first.checkpoints[3])
    trial = run_trial({}, cfg, digits, again)
    assert again.metrics == []
    assert trial.epoch == 3
    state_dicts_equal(trial.model.state_dict(), done.model.state_dict())


def test_resume_into_a_model_of_another_shape_fails(tmp_path, digits):
    first = FakeReporter(tmp_path / "a")
    run_trial({}, make_config(train={"max_epochs": 1}), digits, first)
    other = make_config(model={"name": "examples.models:MLP", "args": {"hidden": 8}})
    with pytest.raises(ckpt.CheckpointError) as info:
        run_trial({}, other, digits, FakeReporter(tmp_path / "b", resume_from=first.checkpoints[1]))
    assert str(info.value).startswith(f"checkpoint {str(first.checkpoints[1])!r} does not fit the model: ")


# --- early stopping and divergence --------------------------------------------------------------


def test_early_stopping(tmp_path, digits):
    # only the first epoch can improve by min_delta: patience 2 stops after epoch 3 of 6
    cfg = make_config(train={"max_epochs": 6, "early_stopping": {"patience": 2, "min_delta": 100.0}})
    reporter = FakeReporter(tmp_path)
    trial = run_trial({}, cfg, digits, reporter)
    assert reporter.column("epoch") == [1, 2, 3]
    assert reporter.column("early_stopped") == [0, 0, 1]
    assert reporter.column("diverged") == [0, 0, 0]
    assert trial.stopped_early and trial.epoch == 3
    assert reporter.given[-1] is not None  # the stopping epoch is checkpointed
    state = ckpt.load_state(reporter.checkpoints[3])
    assert state["early_stopping"]["best"] == reporter.metrics[0]["val_loss"]
    assert state["early_stopping"]["bad_epochs"] == 2
    # resuming from the checkpoint of a trial that stopped early runs nothing more
    again = FakeReporter(tmp_path / "again", resume_from=reporter.checkpoints[3])
    resumed = run_trial({}, cfg, digits, again)
    assert again.metrics == [] and resumed.epoch == 3


def test_early_stopping_on_a_metric_that_does_not_move(tmp_path, digits):
    # lr 0: val_accuracy never changes; with mode max an equal value is no improvement
    cfg = make_config(train={"max_epochs": 5, "early_stopping": {"patience": 1}},
                      search={"metric": "val_accuracy"})
    assert cfg.search.mode == "max"
    reporter = FakeReporter(tmp_path)
    run_trial({"optimizer__lr": 0.0}, cfg, digits, reporter)
    assert reporter.column("epoch") == [1, 2]
    assert reporter.column("early_stopped") == [0, 1]
    assert reporter.metrics[0]["val_accuracy"] == reporter.metrics[1]["val_accuracy"]


def test_no_early_stopping_while_improving(tmp_path, digits):
    cfg = make_config(train={"max_epochs": 4, "early_stopping": {"patience": 1}})
    reporter = FakeReporter(tmp_path)
    run_trial({"optimizer__lr": 0.003}, cfg, digits, reporter)
    val = reporter.column("val_loss")
    assert all(b < a for a, b in zip(val, val[1:]))  # improves every epoch
    assert reporter.column("early_stopped") == [0, 0, 0, 0]


def test_divergence_with_a_huge_learning_rate(tmp_path, digits):
    reporter = FakeReporter(tmp_path)
    trial = run_trial({"optimizer": "sgd", "lr": 1e6}, make_config(), digits, reporter)
    (m,) = reporter.metrics  # the trial ends at the first diverged epoch
    assert m["diverged"] == 1 and m["epoch"] == 1 and m["early_stopped"] == 0
    assert math.isnan(m["train_loss"]) and math.isnan(m["val_loss"]) and math.isnan(m["val_accuracy"])
    assert m["lr"] == 1e6
    assert reporter.given == [None]  # nothing worth resuming is checkpointed
    assert trial.epoch == 1


def test_divergence_from_a_custom_step(tmp_path, digits, user_module):
    write, folder = user_module
    name = write("""
        from raytune_torch.loop import default_step

        CALLS = []

        def step(ctx, xb, yb):
            CALLS.append(len(xb))
            if len(CALLS) > 30:  # an epoch is 23 batches: diverge during the second
                return float("nan")
            return default_step(ctx, xb, yb)
    """)
    cfg = make_config(train={"step": f"{name}:step"}, import_paths=[folder])
    reporter = FakeReporter(tmp_path / "r")
    run_trial({}, cfg, digits, reporter)
    assert reporter.column("epoch") == [1, 2]
    assert reporter.column("diverged") == [0, 1]
    assert math.isfinite(reporter.metrics[0]["train_loss"]) and math.isnan(reporter.metrics[1]["train_loss"])
    assert reporter.given[0] is not None and reporter.given[1] is None
    assert len(sys.modules[name].CALLS) == 23 + 8  # stopped at the first NaN check after it (every 8 batches)


# --- custom code --------------------------------------------------------------------------------


def test_custom_step_from_an_import_path(tmp_path, digits, user_module):
    write, folder = user_module
    name = write("""
        import torch

        CALLS = []

        def clipped(ctx, xb, yb):
            CALLS.append(tuple(xb.shape))
            ctx.optimizer.zero_grad(set_to_none=True)
            loss = ctx.loss_fn(ctx.model(xb), yb)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), max_norm=0.5)
            ctx.optimizer.step()
            return loss.detach()
    """)
    cfg = make_config(train={"step": f"{name}:clipped", "max_epochs": 2}, import_paths=[folder])
    assert cfg.import_paths == (folder,)
    preflight(cfg, digits, {})  # resolves and runs the step on one batch
    module = sys.modules[name]
    assert module.CALLS == [(64, 64)]
    module.CALLS.clear()
    reporter = FakeReporter(tmp_path / "r")
    run_trial({"optimizer__lr": 0.01}, cfg, digits, reporter)
    assert len(module.CALLS) == 2 * 23  # 1437 rows in batches of 64, two epochs
    assert module.CALLS[22] == (1437 - 22 * 64, 64)
    assert reporter.column("epoch") == [1, 2]
    assert reporter.metrics[-1]["val_accuracy"] > 0.5


def test_custom_loop_from_an_import_path(tmp_path, digits, user_module):
    write, folder = user_module
    name = write("""
        def loop(trial):
            for epoch in trial.epochs():
                if trial.end_epoch(1.0 / epoch):
                    break
    """)
    cfg = make_config(train={"loop": f"{name}:loop"}, import_paths=[folder])
    reporter = FakeReporter(tmp_path / "r")
    trial = run_trial({}, cfg, digits, reporter)
    assert reporter.column("train_loss") == [1.0, 0.5, 1.0 / 3]
    assert trial.epoch == 3
    # nothing trained: every epoch evaluates the same (initial) model
    assert len(set(reporter.column("val_loss"))) == 1


# --- preflight ----------------------------------------------------------------------------------


def test_preflight_passes_for_a_good_experiment(digits):
    assert preflight(make_config(), digits, {"optimizer__lr": 0.01, "module__hidden": 8}) is None


def test_model_size_builds_the_model_on_the_meta_device(digits):
    from raytune_torch.trainable import model_size

    cfg = make_config()
    expected = sum(p.numel() for p in build_components(cfg, {"module__hidden": 8}, digits.n_features,
                                                       digits.n_outputs, torch.device("cpu"))[0].parameters())
    assert model_size(cfg, {"module__hidden": 8}, digits) == expected
    assert model_size(cfg, {"module__hidden": 16}, digits) > expected

    class NeedsRealTensors(torch.nn.Module):
        def __init__(self, in_features, out_features):
            super().__init__()
            self.linear = torch.nn.Linear(in_features, out_features)
            self.scale = float(self.linear.weight.abs().max())  # a meta tensor has no value

    assert model_size(make_config(model={"name": NeedsRealTensors}), {}, digits) is None


def test_preflight_wrong_output_size(digits):
    cfg = make_config(model={"name": "examples.models:MLP", "args": {"out_features": 5}})
    with pytest.raises(PreflightError) as info:
        preflight(cfg, digits, {})
    assert str(info.value) == (
        "the model examples.models:MLP outputs shape (64, 5) for a batch of 64, but the labels hold 10 classes: "
        "a classifier must output (64, 10) logits. Set its output size to 10 (a constructor argument "
        "`out_features` is filled in for you)")


def test_preflight_wrong_input_size(digits):
    cfg = make_config(model={"name": "examples.models:MLP", "args": {"in_features": 32}})
    with pytest.raises(PreflightError) as info:
        preflight(cfg, digits, {})
    message = str(info.value)
    assert message.startswith("the model examples.models:MLP failed on a batch of features of shape (64, 64) "
                              "(64 features per row): RuntimeError: ")
    assert message.endswith("Make the model's input size match the data (a constructor argument `in_features` "
                            "is filled in for you)")


def test_regression_loss_on_class_labels_is_a_config_error():
    # Caught before any data is loaded: MSE on (n, 10) logits and (n,) labels broadcasts when the
    # batch happens to have 10 rows, so a one-batch preflight cannot be relied on for it.
    with pytest.raises(ConfigError) as info:
        make_config(loss="mse")
    assert "loss: 'mse' is a regression loss but the task is classification; use e.g. `loss: cross_entropy`" in str(info.value)


def test_preflight_regression_output_shape():
    cfg = load_config({**BASE, "data": {"dataset": "diabetes"}, "train": {"metrics": ["mse"]},
                       "model": {"name": "examples.models:MLP", "args": {"out_features": 2}}})
    data = load_splits(cfg.data, cfg.task, cfg.seed)
    with pytest.raises(PreflightError) as info:
        preflight(cfg, data, {})
    assert str(info.value) == (
        "the model examples.models:MLP outputs shape (64, 2) but the targets have shape (64, 1); make the output "
        "match the targets (a loss would broadcast them silently)")
    # filled in from the data, the output fits
    preflight(load_config({**BASE, "data": {"dataset": "diabetes"}, "train": {"metrics": ["mse"]}}), data, {})


def test_preflight_bad_parameters_and_imports(digits, user_module):
    with pytest.raises(PreflightError) as info:
        preflight(make_config(), digits, {"module__hiden": 8})
    assert str(info.value).startswith("module MLP: got an unexpected keyword argument 'hiden'")
    with pytest.raises(PreflightError) as info:
        preflight(make_config(model={"name": "examples.models:Nope"}), digits, {})
    assert str(info.value) == "model 'examples.models:Nope': module 'examples.models' has no attribute 'Nope'"
    write, folder = user_module
    name = write("""
        def broken(ctx, xb, yb):
            raise KeyError("oops")
    """)
    cfg = make_config(train={"step": f"{name}:broken"}, import_paths=[folder])
    with pytest.raises(PreflightError) as info:
        preflight(cfg, digits, {})
    assert str(info.value) == f"train.step {name}:broken failed on one batch: KeyError: 'oops'"
    cfg = make_config(train={"loop": f"{name}:missing_loop"}, import_paths=[folder])
    with pytest.raises(PreflightError) as info:
        preflight(cfg, digits, {})
    assert str(info.value) == f"train.loop '{name}:missing_loop': module '{name}' has no attribute 'missing_loop'"


def test_preflight_wraps_other_build_errors(digits):
    # a value torch itself refuses (negative lr) is reported with the parameters
    with pytest.raises(PreflightError) as info:
        preflight(make_config(), digits, {"optimizer__lr": -1.0})
    assert str(info.value).startswith(
        "building the trial's components failed with parameters {'optimizer__lr': -1.0}: ValueError: ")
