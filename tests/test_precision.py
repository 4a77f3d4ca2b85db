"""Mixed precision (bf16, fp16 with its scaler in the checkpoint), the loss summed on the device with
its NaN/inf check, and metrics of your own in trials and in the preflight (no Ray)."""

from __future__ import annotations

import copy
import math
import sys

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.datasets import load_digits
from torch import nn

from raytune_torch import checkpoint as ckpt
from raytune_torch.config import load_config
from raytune_torch.data import iterate_batches, load_splits
from raytune_torch.exceptions import PreflightError
from raytune_torch.loop import CHECK_EVERY, StepContext, evaluate, make_scaler, train_epoch
from raytune_torch.sklearn import TorchClassifier
from raytune_torch.trainable import Trial, preflight, run_trial
from reporters import Crash, FakeReporter

BASE = {
    "name": "precision-test",
    "seed": 0,
    "data": {"dataset": "digits", "standardize": True},
    "model": {"name": "examples.models:MLP", "args": {"hidden": 16}},
    "train": {"max_epochs": 3, "batch_size": 64, "metrics": ["accuracy"]},
}


def make_config(**train):
    raw = copy.deepcopy(BASE)
    raw["train"].update(train)
    return load_config(raw)


@pytest.fixture(scope="module")
def digits():
    cfg = make_config()
    return load_splits(cfg.data, cfg.task, cfg.seed)


# --- precision ----------------------------------------------------------------------------------


def test_bf16_trains_on_the_cpu_with_finite_metrics(tmp_path, digits):
    reporter = FakeReporter(tmp_path)
    trial = run_trial({"optimizer__lr": 0.01}, make_config(precision="bf16", metrics=["accuracy", "neg_log_loss"]),
                      digits, reporter)
    assert [m["epoch"] for m in reporter.metrics] == [1, 2, 3]
    for m in reporter.metrics:
        assert m["diverged"] == 0
        assert all(math.isfinite(m[k]) for k in ("train_loss", "val_loss", "val_accuracy", "val_neg_log_loss"))
    assert reporter.metrics[-1]["val_accuracy"] > 0.8
    assert not trial.scaler.is_enabled() and ckpt.load_state(reporter.checkpoints[3])["scaler"] is None
    assert all(p.dtype == torch.float32 for p in trial.model.parameters())  # autocast, not a bf16 model


def test_fp16_scaler_state_round_trips_through_a_checkpoint(tmp_path):
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = make_scaler(torch.device("cpu"), "fp16")
    ctx = StepContext(model, optimizer, nn.CrossEntropyLoss(), torch.device("cpu"), precision="fp16", scaler=scaler)
    X, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    train_epoch(ctx, iterate_batches(X, y, 8, shuffle=False))
    scaler.update(1024.0)  # a scale of its own, to see it come back
    state = {"format": ckpt.FORMAT, "epoch": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "lr_scheduler": None, "scaler": scaler.state_dict(), "early_stopping": {}, "rng": ckpt.capture_rng(),
             "params": {}, "trial_seed": 0, "history": [], "stop": {}}
    ckpt.save_state(tmp_path, state)
    loaded = ckpt.load_state(tmp_path)["scaler"]
    assert loaded == {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                      "_growth_tracker": 5}  # five steps, none skipped
    restored = make_scaler(torch.device("cpu"), "fp16")
    restored.load_state_dict(loaded)
    assert restored.state_dict() == scaler.state_dict()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_resume_at_reduced_precision_is_exact(tmp_path, digits, precision):
    cfg = make_config(precision=precision, max_epochs=4, batch_size=32)
    params = {"optimizer__lr": 0.01}
    whole = FakeReporter(tmp_path / "whole")
    full = run_trial(params, cfg, digits, whole)
    crashed = FakeReporter(tmp_path / "crashed", crash_after=2)
    with pytest.raises(Crash):
        run_trial(params, cfg, digits, crashed)
    assert crashed.stable() == whole.stable()[:2]
    saved = ckpt.load_state(crashed.checkpoints[2])["scaler"]
    if precision == "fp16":  # 45 steps of 32 rows per epoch, none of them skipped
        assert saved["_growth_tracker"] == 2 * 45 and saved["scale"] == 65536.0
    else:
        assert saved is None
    torch.manual_seed(999)
    resumed = FakeReporter(tmp_path / "resumed", resume_from=crashed.checkpoints[2])
    trial = run_trial(params, cfg, digits, resumed)
    assert resumed.stable() == whole.stable()[2:]
    assert trial.scaler.state_dict() == full.scaler.state_dict()
    for key, value in full.model.state_dict().items():
        assert torch.equal(trial.model.state_dict()[key], value), key


def test_trial_restores_the_scaler(tmp_path, digits):
    cfg = make_config(precision="fp16", max_epochs=1)
    first = FakeReporter(tmp_path / "a")
    run_trial({}, cfg, digits, first)
    trial = Trial(cfg, {}, digits, FakeReporter(tmp_path / "b", resume_from=first.checkpoints[1]))
    assert trial.epoch == 1 and trial.scaler.state_dict() == ckpt.load_state(first.checkpoints[1])["scaler"]
    assert trial.step_ctx.scaler is trial.scaler and trial.step_ctx.precision == "fp16"


def test_evaluate_at_bf16_is_close_to_float32(digits):
    torch.manual_seed(0)
    model = nn.Linear(64, 10)
    X, y = torch.tensor(digits.X_val, dtype=torch.float32), torch.tensor(digits.y_val)
    batches = lambda: iterate_batches(X, y, 50, shuffle=False)  # noqa: E731
    exact = evaluate(model, batches(), nn.CrossEntropyLoss(), torch.device("cpu"), "classification", ["accuracy"])
    low = evaluate(model, batches(), nn.CrossEntropyLoss(), torch.device("cpu"), "classification", ["accuracy"],
                   precision="bf16")
    assert low["loss"] == pytest.approx(exact["loss"], rel=0.02) and low["loss"] != exact["loss"]


# --- the loss summed on the device, and its NaN/inf check ---------------------------------------


def _ctx():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    return StepContext(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), torch.device("cpu"))


@pytest.mark.parametrize("bad_at, check_every, ran", [(2, CHECK_EVERY, 8), (9, 8, 16), (2, 1, 2), (19, 8, 20)])
def test_a_non_finite_loss_stops_the_epoch_within_check_every_batches(bad_at, check_every, ran):
    X, y = torch.randn(200, 2), torch.randint(0, 3, (200,))
    calls = []

    def step(ctx, xb, yb):
        calls.append(len(xb))
        return torch.tensor(float("nan") if len(calls) == bad_at else 0.5)

    result = train_epoch(_ctx(), iterate_batches(X, y, 10, shuffle=False), step, check_every=check_every)
    assert len(calls) == ran and math.isnan(result)


def test_a_step_that_turns_nan_marks_the_trial_diverged(tmp_path, digits, write_module):
    name = write_module("""
        from raytune_torch.loop import default_step

        CALLS = []

        def step(ctx, xb, yb):
            CALLS.append(len(xb))
            if len(CALLS) > 25:  # an epoch is 23 batches: NaN from the second epoch's third batch on
                return float("nan")
            return default_step(ctx, xb, yb)
    """)
    cfg = load_config({**BASE, "train": {**BASE["train"], "step": f"{name}:step"},
                       "import_paths": [str(tmp_path)]})
    reporter = FakeReporter(tmp_path / "r")
    run_trial({}, cfg, digits, reporter)
    assert [m["diverged"] for m in reporter.metrics] == [0, 1]
    assert math.isnan(reporter.metrics[1]["train_loss"])
    assert len(sys.modules[name].CALLS) == 23 + CHECK_EVERY  # stopped at the first check after the NaN


# --- metrics of your own in a trial and in the preflight ----------------------------------------


def test_a_trial_reports_scorers_and_functions(tmp_path, digits, write_module):
    name = write_module("""
        from sklearn.metrics import cohen_kappa_score

        def kappa(y_true, outputs):
            return cohen_kappa_score(y_true, outputs.argmax(axis=1))
    """)
    cfg = load_config({**BASE, "train": {**BASE["train"], "max_epochs": 1,
                                         "metrics": ["balanced_accuracy", "top_k_accuracy", f"{name}:kappa"]},
                       "search": {"metric": "val_kappa", "mode": "max"}, "import_paths": [str(tmp_path)]})
    reporter = FakeReporter(tmp_path / "r")
    trial = run_trial({"optimizer__lr": 0.01}, cfg, digits, reporter)
    (m,) = reporter.metrics
    with torch.no_grad():
        logits = trial.model(torch.tensor(digits.X_val)).numpy()
    y = digits.y_val
    assert m["val_balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, logits.argmax(1)))
    assert m["val_top_k_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, logits, k=2))
    assert m["val_kappa"] == pytest.approx(skm.cohen_kappa_score(y, logits.argmax(1))) and m["val_kappa"] > 0.8
    assert trial.best == m["val_kappa"]


@pytest.mark.parametrize("body, message", [
    ("raise ValueError('no good')", "raised ValueError: no good (given y_true of shape ({n},) and outputs of shape "
                                    "({n}, 10))"),
    ("return 'high'", "returned 'high' (str), not a number; return a float"),
])
def test_a_metric_that_fails_stops_the_preflight(digits, write_module, tmp_path, body, message):
    name = write_module(f"""
        def score(y_true, outputs):
            {body}
    """)
    cfg = load_config({**BASE, "train": {**BASE["train"], "metrics": ["accuracy", f"{name}:score"]},
                       "import_paths": [str(tmp_path)]})
    with pytest.raises(PreflightError) as info:
        preflight(cfg, digits, {})
    assert str(info.value) == f"train.metrics: {name}:score " + message.format(n=len(digits.y_val))


# --- the scikit-learn estimators --------------------------------------------------------------


def test_torch_classifier_at_bf16_fits_and_predicts():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    net = TorchClassifier("examples.models:MLP", module__hidden=32, max_epochs=5, lr=0.01, precision="bf16",
                          random_state=0).fit(X[:1200], y[:1200])
    assert net.score(X[1200:], y[1200:]) > 0.85
    assert net.predict_proba(X[:3]).dtype == np.float64
    assert not net.scaler_.is_enabled()
    assert TorchClassifier("examples.models:MLP", precision=32, max_epochs=1).fit(X[:200], y[:200]).precision == 32
    with pytest.raises(ValueError) as info:
        TorchClassifier("examples.models:MLP", precision="fp8").fit(X, y)
    assert str(info.value) == "TorchClassifier: precision must be one of '32', 'bf16', 'fp16', got 'fp8'"
