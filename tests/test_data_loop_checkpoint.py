"""Data loading and splitting, the plain training loop and metrics, and checkpoints (no Ray)."""

from __future__ import annotations

import json
import math
import random
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn import metrics as skm
from sklearn.datasets import load_diabetes, load_digits
from torch import nn

from raytune_torch import checkpoint as ckpt
from raytune_torch.config import DataConfig
from raytune_torch.data import as_tensors, iterate_batches, load_splits
from raytune_torch.exceptions import CheckpointError, PreflightError
from raytune_torch.loop import StepContext, compute_metrics, default_step, evaluate, predict, train_epoch

# --- bundled datasets -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_digits(return_X_y=True)


def test_digits_split_sizes_and_types(digits):
    X, y = digits
    s = load_splits(DataConfig(dataset="digits"), "classification", 0)
    assert (len(s.X_train), len(s.X_val)) == (1437, 360)
    assert s.X_test is None and s.y_test is None
    assert s.X_train.dtype == np.float32 and s.X_train.flags.c_contiguous
    assert s.y_train.dtype == np.int64 and s.y_train.ndim == 1
    assert s.classes == list(range(10))
    assert (s.n_features, s.n_outputs) == (64, 10)
    assert s.describe() == "1437 train, 360 val rows; 64 features; 10 classes"
    # the split is a partition of the data: every class count adds up
    counts = np.bincount(s.y_train, minlength=10) + np.bincount(s.y_val, minlength=10)
    assert counts.tolist() == np.bincount(y).tolist()


def test_digits_split_is_stratified(digits):
    _, y = digits
    s = load_splits(DataConfig(dataset="digits", val_fraction=0.2), "classification", 0)
    assert set(s.y_train.tolist()) == set(range(10)) and set(s.y_val.tolist()) == set(range(10))
    expected = 0.2 * np.bincount(y)
    assert np.all(np.abs(np.bincount(s.y_val, minlength=10) - expected) <= 1.0)


def test_digits_with_a_test_split(digits):
    s = load_splits(DataConfig(dataset="digits", val_fraction=0.2, test_fraction=0.15), "classification", 0)
    assert len(s.X_test) == 270  # ceil(0.15 * 1797)
    assert len(s.X_train) + len(s.X_val) + len(s.X_test) == 1797
    assert set(s.y_test.tolist()) == set(range(10))
    assert s.y_test.dtype == np.int64 and s.X_test.dtype == np.float32
    assert s.describe().startswith(f"{len(s.X_train)} train, {len(s.X_val)} val, test 270 rows")


def test_same_seed_same_split_other_seed_other_split():
    cfg = DataConfig(dataset="digits", test_fraction=0.1)
    a = load_splits(cfg, "classification", 3)
    b = load_splits(cfg, "classification", 3)
    c = load_splits(cfg, "classification", 4)
    for name in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.X_train, c.X_train)
    assert not np.array_equal(a.y_val, c.y_val)


def test_diabetes_regression_targets():
    s = load_splits(DataConfig(dataset="diabetes"), "regression", 0)
    assert (len(s.X_train), len(s.X_val)) == (353, 89)
    assert s.y_train.shape == (353, 1) and s.y_val.shape == (89, 1)
    assert s.y_train.dtype == np.float32
    assert s.classes is None
    assert (s.n_features, s.n_outputs) == (10, 1)
    _, y = load_diabetes(return_X_y=True)
    assert sorted(np.concatenate([s.y_train, s.y_val]).ravel().tolist()) == sorted(y.astype(np.float32).tolist())
    assert s.describe() == "353 train, 89 val rows; 10 features; 1 target(s)"


def test_standardize_uses_train_statistics_only():
    raw = load_splits(DataConfig(dataset="digits", test_fraction=0.1), "classification", 1)
    std = load_splits(DataConfig(dataset="digits", test_fraction=0.1, standardize=True), "classification", 1)
    mean, scale = raw.X_train.mean(axis=0), raw.X_train.std(axis=0)
    scale[scale == 0] = 1.0
    assert np.array_equal(std.feature_mean, mean)
    assert np.array_equal(std.feature_std, scale)
    assert np.array_equal(std.X_train, (raw.X_train - mean) / scale)
    assert np.array_equal(std.X_val, (raw.X_val - mean) / scale)
    assert np.array_equal(std.X_test, (raw.X_test - mean) / scale)
    assert np.array_equal(std.y_train, raw.y_train)
    # statistics of all the rows would differ
    everything = np.concatenate([raw.X_train, raw.X_val, raw.X_test])
    assert not np.allclose(std.feature_mean, everything.mean(axis=0))
    assert np.allclose(std.X_train.mean(axis=0), 0.0, atol=1e-5)
    assert not np.allclose(std.X_val.mean(axis=0), 0.0, atol=1e-3)
    assert raw.feature_mean is None and raw.feature_std is None


# --- factories ------------------------------------------------------------------------------------

FACTORY_SOURCE = textwrap.dedent('''
    import numpy as np

    def make(n=100, classes=4):
        X = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
        y = np.arange(n) % classes
        return X, y

    def splits():
        tr = (np.zeros((6, 3)), np.array(["cat", "dog", "cat", "dog", "cat", "dog"]))
        va = (np.ones((2, 3)), np.array(["dog", "cat"]))
        te = (np.full((3, 3), 2.0), np.array(["cat", "cat", "dog"]))
        return {"train": tr, "val": va, "test": te}

    def unseen():
        return {"train": (np.zeros((2, 1)), np.array([0, 1])), "val": (np.zeros((2, 1)), np.array([1, 7]))}

    def bad_keys():
        return {"train": (np.zeros((2, 1)), np.array([0, 1])), "valid": (np.zeros((2, 1)), np.array([0, 1]))}

    def mismatch():
        return np.zeros((5, 2)), np.zeros(4)

    def fail():
        raise ValueError("boom")

    def text_features():
        return np.array([["a", "b"], ["c", "d"]], dtype=object), np.array([0, 1])
''')


@pytest.fixture
def factory_module(write_module, tmp_path):
    return write_module(FACTORY_SOURCE), (str(tmp_path),)


def test_factory_returning_x_y(factory_module):
    name, paths = factory_module
    cfg = DataConfig(factory=f"{name}:make", factory_args={"n": 200, "classes": 4}, val_fraction=0.25)
    s = load_splits(cfg, "classification", 0, import_paths=paths)
    assert (len(s.X_train), len(s.X_val)) == (150, 50)
    assert s.classes == [0, 1, 2, 3]
    assert sorted(np.bincount(s.y_val).tolist()) == [12, 12, 13, 13]  # stratified: 12.5 per class
    # the rows are a partition of the original rows, features kept with their labels
    rows = np.concatenate([s.X_train, s.X_val])
    assert sorted(rows[:, 0].tolist()) == [float(2 * i) for i in range(200)]
    for X, y in ((s.X_train, s.y_train), (s.X_val, s.y_val)):
        assert np.array_equal((X[:, 0] / 2).astype(np.int64) % 4, y)
    # a callable works like an import path
    from importlib import import_module

    fn = import_module(name).make
    again = load_splits(DataConfig(factory=fn, factory_args={"n": 200, "classes": 4}, val_fraction=0.25),
                        "classification", 0)
    assert np.array_equal(again.X_train, s.X_train)


def test_factory_returning_splits(factory_module):
    name, paths = factory_module
    s = load_splits(DataConfig(factory=f"{name}:splits"), "classification", 0, import_paths=paths)
    assert (len(s.X_train), len(s.X_val), len(s.X_test)) == (6, 2, 3)  # used as given, not re-split
    assert s.classes == ["cat", "dog"]
    assert s.y_train.tolist() == [0, 1, 0, 1, 0, 1]
    assert s.y_val.tolist() == [1, 0]
    assert s.y_test.tolist() == [0, 0, 1]
    assert np.all(s.X_val == 1.0) and np.all(s.X_test == 2.0)


@pytest.mark.parametrize(
    "fn, message",
    [
        ("unseen", "data: the val split has labels [7] that the train split lacks"),
        ("bad_keys", "data: a dict of splits needs keys 'train' and 'val' (and optionally 'test'), "
                     "got ['train', 'valid']"),
        ("mismatch", "data: the data has 5 rows of features but 4 labels; they must match"),
        ("text_features", "data: the features are not numeric (dtype object); convert them to numbers first"),
        ("fail", "data.factory '{name}:fail' failed: ValueError: boom"),
    ],
)
def test_factory_errors(factory_module, fn, message):
    name, paths = factory_module
    with pytest.raises(PreflightError) as info:
        load_splits(DataConfig(factory=f"{name}:{fn}"), "classification", 0, import_paths=paths)
    assert str(info.value) == message.format(name=name)


def test_split_that_cannot_be_stratified(factory_module):
    name, paths = factory_module
    # 4 classes with one row each cannot be split with stratification
    with pytest.raises(PreflightError) as info:
        load_splits(DataConfig(factory=f"{name}:make", factory_args={"n": 4, "classes": 4}),
                    "classification", 0, import_paths=paths)
    assert str(info.value).startswith("data: cannot split the data: ")


# --- parquet ------------------------------------------------------------------------------------


def _write_parquet(path: Path, n: int = 60, start: int = 0) -> None:
    idx = np.arange(start, start + n)
    table = pa.table({
        "a": idx.astype(np.float64),
        "b": (idx * 10).astype(np.int64),
        "c": np.sin(idx).astype(np.float32),
        "target": idx % 3,
    })
    pq.write_table(table, path)


def test_parquet_file(tmp_path):
    path = tmp_path / "data.parquet"
    _write_parquet(path)
    s = load_splits(DataConfig(parquet=str(path), label="target", val_fraction=0.25), "classification", 0)
    assert (len(s.X_train), len(s.X_val)) == (45, 15)
    assert s.n_features == 3
    assert s.classes == [0, 1, 2]
    for X, y in ((s.X_train, s.y_train), (s.X_val, s.y_val)):
        a = X[:, 0].astype(np.int64)
        assert np.array_equal(X[:, 1], (a * 10).astype(np.float32))
        assert np.array_equal(a % 3, y)
    # chosen feature columns, in the given order
    s2 = load_splits(DataConfig(parquet=str(path), label="target", features=("c", "a")), "classification", 0)
    assert s2.n_features == 2
    assert np.array_equal(s2.X_train[:, 0], np.sin(s2.X_train[:, 1].astype(np.int64)).astype(np.float32))


def test_parquet_directory(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    _write_parquet(folder / "part-0.parquet", n=30, start=0)
    _write_parquet(folder / "part-1.parquet", n=30, start=30)
    s = load_splits(DataConfig(parquet=str(folder), label="target", val_fraction=0.5), "regression", 0)
    assert len(s.X_train) + len(s.X_val) == 60
    assert s.y_train.shape == (30, 1) and s.y_train.dtype == np.float32
    all_a = sorted(np.concatenate([s.X_train[:, 0], s.X_val[:, 0]]).tolist())
    assert all_a == [float(i) for i in range(60)]


def test_parquet_errors(tmp_path):
    path = tmp_path / "data.parquet"
    _write_parquet(path)
    with pytest.raises(PreflightError) as info:
        load_splits(DataConfig(parquet=str(path), label="y"), "classification", 0)
    assert str(info.value) == f"data.label: column 'y' is not in {str(path)!r} (columns: a, b, c, target)"
    with pytest.raises(PreflightError) as info:
        load_splits(DataConfig(parquet=str(path), label="target", features=("a", "zz")), "classification", 0)
    assert str(info.value) == f"data.features: columns ['zz'] are not in {str(path)!r} (columns: a, b, c, target)"
    missing = tmp_path / "missing.parquet"
    with pytest.raises(PreflightError) as info:
        load_splits(DataConfig(parquet=str(missing), label="target"), "classification", 0)
    assert str(info.value) == (
        f"data.parquet: {str(missing)!r} does not exist; give a Parquet file or a directory of them")


# --- batches ------------------------------------------------------------------------------------


def test_iterate_batches_in_order():
    X = torch.arange(10).float().reshape(10, 1)
    y = torch.arange(10) * 2
    batches = list(iterate_batches(X, y, 4, shuffle=False))
    assert [len(xb) for xb, _ in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([xb for xb, _ in batches]), X)
    assert torch.equal(torch.cat([yb for _, yb in batches]), y)
    assert list(iterate_batches(X[:0], y[:0], 4, shuffle=False)) == []


def test_iterate_batches_shuffled():
    X = torch.arange(100).float().reshape(100, 1)
    y = torch.arange(100) * 2

    def order(seed):
        batches = list(iterate_batches(X, y, 32, shuffle=True, generator=torch.Generator().manual_seed(seed)))
        assert [len(xb) for xb, _ in batches] == [32, 32, 32, 4]
        for xb, yb in batches:
            assert torch.equal(xb[:, 0].long() * 2, yb)  # rows stay with their labels
        return torch.cat([xb for xb, _ in batches])[:, 0]

    first = order(0)
    assert sorted(first.tolist()) == list(range(100))
    assert not torch.equal(first, X[:, 0])
    assert torch.equal(order(0), first)
    assert not torch.equal(order(1), first)


def test_as_tensors_is_zero_copy_and_keeps_none():
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    a.setflags(write=False)  # object-store arrays are read-only
    t, none = as_tensors(a, None)
    assert none is None
    assert t.shape == (3, 2) and t.data_ptr() == a.ctypes.data


# --- metrics ------------------------------------------------------------------------------------


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y]  # better than chance
    out = compute_metrics("classification", torch.tensor(logits, dtype=torch.float32), torch.tensor(y),
                          ["accuracy", "f1", "roc_auc"])
    assert set(out) == {"accuracy", "f1", "roc_auc"}
    pred = logits.argmax(axis=1)
    proba = _softmax(logits.astype(np.float32).astype(np.float64))
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=0, rel=1e-12)
    assert out["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), rel=1e-12)
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"), rel=1e-6)
    assert 0.5 < out["roc_auc"] < 1.0 and out["accuracy"] > 0.4
    assert compute_metrics("classification", torch.tensor(logits), torch.tensor(y), []) == {}
    assert list(compute_metrics("classification", torch.tensor(logits), torch.tensor(y), ["f1"])) == ["f1"]


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=150)
    logits = rng.normal(size=(150, 2)) + np.eye(2)[y]
    out = compute_metrics("classification", torch.tensor(logits), torch.tensor(y), ["accuracy", "roc_auc", "f1"])
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, logits.argmax(1)), rel=1e-12)
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(y, _softmax(logits)[:, 1]), rel=1e-9)
    assert out["f1"] == pytest.approx(skm.f1_score(y, logits.argmax(1), average="macro"), rel=1e-12)
    # a single logit column (bce_with_logits): positive means class 1
    single = logits[:, 1:] - logits[:, :1]
    out1 = compute_metrics("classification", torch.tensor(single), torch.tensor(y), ["accuracy", "roc_auc"])
    assert out1["accuracy"] == pytest.approx(skm.accuracy_score(y, (single[:, 0] > 0).astype(int)), rel=1e-12)
    assert out1["roc_auc"] == pytest.approx(out["roc_auc"], rel=1e-9)


def test_roc_auc_edge_cases():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, size=90)  # class 3 never appears
    logits = rng.normal(size=(90, 4))
    got = compute_metrics("classification", torch.tensor(logits), torch.tensor(y), ["roc_auc"])["roc_auc"]
    proba = _softmax(logits)[:, :3]
    proba = proba / proba.sum(axis=1, keepdims=True)
    assert got == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"), rel=1e-9)
    one_class = compute_metrics("classification", torch.tensor(logits), torch.zeros(90, dtype=torch.long), ["roc_auc"])
    assert math.isnan(one_class["roc_auc"])
    bad = logits.copy()
    bad[0, 0] = np.nan
    assert math.isnan(compute_metrics("classification", torch.tensor(bad), torch.tensor(y), ["roc_auc"])["roc_auc"])


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    y = rng.normal(size=(120, 1))
    pred = y + rng.normal(scale=0.5, size=(120, 1))
    out = compute_metrics("regression", torch.tensor(pred), torch.tensor(y), ["mse", "mae", "r2"])
    assert out["mse"] == pytest.approx(skm.mean_squared_error(y, pred), rel=1e-12)
    assert out["mae"] == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-12)
    assert out["r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-12)
    # several targets: averaged over them
    y2 = rng.normal(size=(120, 2)) * [1.0, 5.0]
    p2 = y2 + rng.normal(size=(120, 2))
    out2 = compute_metrics("regression", torch.tensor(p2), torch.tensor(y2), ["mse", "mae", "r2"])
    assert out2["mse"] == pytest.approx(skm.mean_squared_error(y2, p2), rel=1e-12)
    assert out2["mae"] == pytest.approx(skm.mean_absolute_error(y2, p2), rel=1e-12)
    assert out2["r2"] == pytest.approx(skm.r2_score(y2, p2, multioutput="uniform_average"), rel=1e-12)
    # 1-d outputs against (n, 1) targets
    out3 = compute_metrics("regression", torch.tensor(pred[:, 0]), torch.tensor(y), ["mse"])
    assert out3["mse"] == pytest.approx(out["mse"], rel=1e-12)


# --- training loop ------------------------------------------------------------------------------


def _ctx(seed=0, lr=0.1):
    torch.manual_seed(seed)
    model = nn.Linear(2, 3)
    return StepContext(model, torch.optim.SGD(model.parameters(), lr=lr), nn.CrossEntropyLoss(), torch.device("cpu"))


def _toy(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    X = torch.randn(n, 2, generator=g) * 0.3 + torch.stack([y.float(), -y.float()], dim=1)
    return X, y


def test_train_epoch_returns_the_sample_weighted_mean():
    ctx = _ctx()
    X, y = _toy(10)
    losses = iter([1.0, 2.0, 3.0])

    def step(ctx, xb, yb):
        return torch.tensor(next(losses))

    assert train_epoch(ctx, iterate_batches(X, y, 4, shuffle=False), step) == pytest.approx((4 * 1 + 4 * 2 + 2 * 3) / 10)
    assert ctx.model.training


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_train_epoch_stops_at_the_first_check_after_a_non_finite_loss(bad):
    ctx = _ctx()
    X, y = _toy(50)
    calls = []

    def step(ctx, xb, yb):
        calls.append(len(xb))
        return bad if len(calls) == 2 else 0.5

    result = train_epoch(ctx, iterate_batches(X, y, 10, shuffle=False), step, check_every=3)
    assert calls == [10, 10, 10]  # the check after the third batch ends it; two batches never ran
    if math.isnan(bad):
        assert math.isnan(result)
    else:
        assert result == math.inf


def test_default_step_learns_and_evaluate_reports():
    ctx = _ctx(lr=0.5)
    X, y = _toy(90)
    before = evaluate(ctx.model, iterate_batches(X, y, 1000, shuffle=False), ctx.loss_fn, ctx.device,
                      "classification", ["accuracy"])
    assert set(before) == {"loss", "accuracy"}
    with torch.no_grad():
        assert before["loss"] == pytest.approx(float(ctx.loss_fn(ctx.model(X), y)), rel=1e-6)
    g = torch.Generator().manual_seed(0)
    losses = [train_epoch(ctx, iterate_batches(X, y, 16, shuffle=True, generator=g), default_step) for _ in range(8)]
    assert losses[-1] < losses[0]
    after = evaluate(ctx.model, iterate_batches(X, y, 7, shuffle=False), ctx.loss_fn, ctx.device,
                     "classification", ["accuracy"])
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.8
    assert not ctx.model.training
    outputs = predict(ctx.model, iterate_batches(X, y, 7, shuffle=False), ctx.device)
    assert outputs.shape == (90, 3)
    assert after["accuracy"] == pytest.approx(float((outputs.argmax(1) == y).float().mean()), rel=1e-6)


# --- checkpoints --------------------------------------------------------------------------------


class NotAllowed:
    """An arbitrary object: weights_only loading must refuse it."""


def _state(model=None, epoch=3, **changes):
    model = nn.Linear(4, 2) if model is None else model
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    state = {
        "format": ckpt.FORMAT,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "lr_scheduler": None,
        "scaler": None,
        "early_stopping": {"best": 0.25, "bad_epochs": 1},
        "rng": ckpt.capture_rng(torch.Generator().manual_seed(5)),
        "params": {"optimizer__lr": 0.01, "module__hidden": 4, "optimizer": "adam"},
        "trial_seed": 1234,
        "history": [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.25}],
        "stop": {"rule": "", "time_s": 1.5},
    }
    state.update(changes)
    return state


def _rewrite_meta(directory: Path) -> None:
    """Make state.json match whatever state.pt now holds (as if written that way)."""
    state_path = directory / "state.pt"
    meta = json.loads((directory / "state.json").read_text())
    meta["bytes"] = state_path.stat().st_size
    meta["sha256"] = ckpt._sha256(state_path)
    (directory / "state.json").write_text(json.dumps(meta))


def test_save_and_load_round_trip(tmp_path):
    model = nn.Linear(4, 2)
    state = _state(model)
    out = ckpt.save_state(tmp_path / "ck", state)
    assert out == tmp_path / "ck"
    assert sorted(p.name for p in out.iterdir()) == ["state.json", "state.pt"]
    meta = ckpt.read_meta(out)
    assert meta["format"] == "raytune_torch/1" and meta["epoch"] == 3
    assert meta["bytes"] == (out / "state.pt").stat().st_size
    loaded = ckpt.load_state(out)
    assert set(loaded) == set(ckpt.STATE_KEYS)
    assert loaded["epoch"] == 3 and loaded["trial_seed"] == 1234
    assert loaded["params"] == state["params"]
    assert loaded["early_stopping"] == {"best": 0.25, "bad_epochs": 1}
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    fresh = nn.Linear(4, 2)
    ckpt.load_model_state(fresh, loaded, str(out))
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    opt = torch.optim.Adam(fresh.parameters(), lr=0.5)
    opt.load_state_dict(loaded["optimizer"])
    assert opt.param_groups[0]["lr"] == 0.01
    assert torch.equal(opt.state[fresh.weight]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])


def test_truncated_state_file(tmp_path):
    directory = ckpt.save_state(tmp_path / "ck", _state())
    state_path = directory / "state.pt"
    data = state_path.read_bytes()
    state_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        ckpt.load_state(directory)
    assert str(info.value).startswith(f"checkpoint file {str(state_path)!r} is truncated or corrupted "
                                      f"({len(data) // 2} bytes, {len(data)} expected")
    # a truncated file whose state.json was (wrongly) written to match still cannot be read
    _rewrite_meta(directory)
    with pytest.raises(CheckpointError) as info:
        ckpt.load_state(directory)
    assert str(info.value).startswith(f"checkpoint file {str(state_path)!r} cannot be read: ")


def test_corrupted_state_file_same_size(tmp_path):
    directory = ckpt.save_state(tmp_path / "ck", _state())
    state_path = directory / "state.pt"
    data = bytearray(state_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state_path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_state(directory)
    assert "is truncated or corrupted" in str(info.value) and "SHA-256" in str(info.value)


def test_unfinished_checkpoints(tmp_path):
    directory = ckpt.save_state(tmp_path / "ck", _state())
    (directory / "state.json").unlink()
    with pytest.raises(CheckpointError) as info:
        ckpt.load_state(directory)
    assert str(info.value) == f"checkpoint {str(directory)!r} has no state.json; it was not finished writing"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError) as info:
        ckpt.load_state(empty)
    assert str(info.value) == (
        f"checkpoint {str(empty)!r} has no state.pt; it is not a raytune_torch checkpoint or was not finished")


def test_bad_meta(tmp_path):
    directory = ckpt.save_state(tmp_path / "ck", _state())
    meta_path = directory / "state.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format": "other/9"}))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_state(directory)
    assert str(info.value) == f"checkpoint {str(meta_path)!r} has format 'other/9', expected 'raytune_torch/1'"
    meta_path.write_text("{not json")
    with pytest.raises(CheckpointError) as info:
        ckpt.load_state(directory)
    assert str(info.value).startswith(f"checkpoint {str(meta_path)!r} is corrupted: ")


def test_state_keys_are_checked(tmp_path):
    with pytest.raises(CheckpointError) as info:
        ckpt.save_state(tmp_path / "a", _state(extra=1))
    assert str(info.value) == "internal: checkpoint state keys differ (missing [], unexpected ['extra'])"
    incomplete = _state()
    del incomplete["scaler"]
    with pytest.raises(CheckpointError) as info:
        ckpt.save_state(tmp_path / "b", incomplete)
    assert str(info.value) == "internal: checkpoint state keys differ (missing ['scaler'], unexpected [])"
    assert not (tmp_path / "a" / "state.pt").exists() and not (tmp_path / "b").exists()
    # a file with an extra key (written by something else) is refused on load
    directory = ckpt.save_state(tmp_path / "c", _state())
    torch.save({**_state(), "extra": 1}, directory / "state.pt")
    _rewrite_meta(directory)
    with pytest.raises(CheckpointError) as info:
        ckpt.load_state(directory)
    assert str(info.value) == (
        f"checkpoint file {str(directory / 'state.pt')!r}: missing keys [], unexpected keys ['extra']")


def test_arbitrary_objects_are_not_unpickled(tmp_path):
    directory = ckpt.save_state(tmp_path / "ck", _state(params={"obj": NotAllowed()}))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_state(directory)
    assert str(info.value).startswith(f"checkpoint file {str(directory / 'state.pt')!r} cannot be read: ")


def test_load_model_state_shape_mismatch(tmp_path):
    directory = ckpt.save_state(tmp_path / "ck", _state(nn.Linear(4, 2)))
    state = ckpt.load_state(directory)
    with pytest.raises(CheckpointError) as info:
        ckpt.load_model_state(nn.Linear(4, 3), state, str(directory))
    message = str(info.value)
    assert message.startswith(f"checkpoint {str(directory)!r} does not fit the model: ")
    assert "size mismatch for weight" in message
    with pytest.raises(CheckpointError) as info:
        ckpt.load_model_state(nn.Sequential(nn.Linear(4, 2)), state, "where")
    assert str(info.value).startswith("checkpoint 'where' does not fit the model: ")


def _draws(gen):
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(),
            torch.rand(3).tolist(), torch.rand(2, generator=gen).tolist())


def test_capture_and_restore_rng(tmp_path):
    gen = torch.Generator().manual_seed(11)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gauss value in both generators
    np.random.randn()
    state = ckpt.capture_rng(gen)
    first = _draws(gen)
    assert _draws(gen) != first
    ckpt.restore_rng(state, gen)
    assert _draws(gen) == first
    # through a checkpoint (weights_only loading) too
    directory = ckpt.save_state(tmp_path / "ck", _state(rng=state))
    other = torch.Generator().manual_seed(99)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    ckpt.restore_rng(ckpt.load_state(directory)["rng"], other)
    assert _draws(other) == first
    # without a shuffle generator, the global streams are still restored
    no_shuffle = ckpt.capture_rng()
    assert no_shuffle["shuffle"] is None
    a = _draws(torch.Generator().manual_seed(0))
    ckpt.restore_rng(no_shuffle)
    assert _draws(torch.Generator().manual_seed(0)) == a


def test_pruning_during_a_run_warns_instead_of_failing(tmp_path, caplog):
    """The driver's pruning thread: a checkpoint it cannot prune is logged and left for the
    results step; the run is not stopped."""
    import logging

    from raytune_torch._ray.callbacks import _prune_or_warn

    missing = tmp_path / "trial_x" / "checkpoint_000003"  # its folder is gone: the marker cannot be written
    with caplog.at_level(logging.WARNING, logger="raytune_torch"):
        _prune_or_warn(str(missing), None)
    assert "could not prune checkpoint" in caplog.text and str(missing) in caplog.text

    kept = tmp_path / "checkpoint_000001"
    ckpt.save_state(kept, {"format": ckpt.FORMAT, "epoch": 1, "model": {}, "optimizer": {}, "lr_scheduler": None,
                           "scaler": None, "early_stopping": {}, "rng": {}, "params": {}, "trial_seed": 0,
                           "history": [], "stop": {}})
    _prune_or_warn(str(kept), None)
    assert not (kept / ckpt.STATE_FILE).exists() and (kept / ckpt.PRUNED_FILE).is_file()
