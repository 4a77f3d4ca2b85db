"""TorchClassifier and TorchRegressor as scikit-learn estimators (no Ray)."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import loguniform
from sklearn.base import clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.datasets import load_diabetes, load_digits, make_classification
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    RandomizedSearchCV,
    cross_val_score,
    cross_validate,
    train_test_split,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from examples.models import MLP
from raytune_torch.sklearn import PREFIXES, TorchClassifier, TorchRegressor


class TinyMLP(nn.Module):
    """The estimator checks' network: one hidden layer of 8."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RecordingMLP(TinyMLP):
    """Records the first feature (a row id) of every row it sees: one list per forward pass."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 8) -> None:
        super().__init__(in_features, out_features, hidden)
        self.seen: dict[str, list[list[int]]] = {"train": [], "eval": []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen["train" if self.training else "eval"].append([int(v) for v in x[:, 0].tolist()])
        return super().forward(x)


class NaNNet(TinyMLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float("nan")


def _digits(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    X, _, y, _ = train_test_split(X / 16.0, y, train_size=n, stratify=y, random_state=0)
    return X, y


def _with_row_ids(X: np.ndarray) -> np.ndarray:
    return np.column_stack([np.arange(len(X), dtype=np.float64), X])


# --- scikit-learn's own estimator checks -------------------------------------------------------

def expected_failed_checks(estimator) -> dict[str, str]:
    """The estimator checks that cannot pass, each with its reason; strict: each must fail."""
    failures = {
        "check_do_not_raise_errors_in_init_or_set_params":
            "the check passes the literal keyword kwargs=... (the name of **kwargs in the signature); "
            "by contract an unknown keyword is refused at construction with a did-you-mean TypeError",
    }
    if any(key.startswith(PREFIXES) for key in estimator.get_params(deep=False)):
        failures["check_no_attributes_set_in_init"] = (
            "skorch-style module__*/optimizer__*/criterion__* arguments are stored as attributes by "
            "design; they are not in __init__'s signature (get_params, set_params and clone cover them)")
    return failures


CHECKED = [
    TorchClassifier(TinyMLP, max_epochs=10, batch_size=32, lr=0.05, random_state=0),
    TorchRegressor(TinyMLP, max_epochs=10, batch_size=32, lr=0.05, random_state=0),
    # the same checks with routed arguments: get_params/set_params/clone carry them
    TorchClassifier(MLP, module__hidden=8, optimizer__weight_decay=1e-4, max_epochs=10, batch_size=32,
                    lr=0.05, random_state=0),
]


@parametrize_with_checks(CHECKED, expected_failed_checks=expected_failed_checks, xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# --- model selection -----------------------------------------------------------------------------

def test_grid_search_cv_several_metrics_refit_on_accuracy():
    X, y = _digits()
    grid = {"module__hidden": [8, 32], "lr": [0.003, 0.03]}
    search = GridSearchCV(TorchClassifier(MLP, max_epochs=10, batch_size=32, random_state=0), grid, cv=3,
                          scoring=["accuracy", "f1_macro", "roc_auc_ovr"], refit="accuracy",
                          error_score="raise").fit(X, y)

    results = search.cv_results_
    assert len(results["params"]) == 4
    for metric in ("accuracy", "f1_macro", "roc_auc_ovr"):
        assert np.isfinite(results[f"mean_test_{metric}"]).all()
    best = int(np.argmax(results["mean_test_accuracy"]))
    assert search.best_params_ == results["params"][best]
    assert search.best_score_ == results["mean_test_accuracy"][best]
    assert search.best_score_ > 0.8
    assert results["mean_test_roc_auc_ovr"][best] > 0.9
    model = search.best_estimator_
    assert model.module_.net[0].out_features == search.best_params_["module__hidden"]
    assert model.optimizer_.param_groups[0]["lr"] == search.best_params_["lr"]
    assert model.n_epochs_ == 10
    assert search.predict_proba(X).shape == (len(X), 10)


def test_pipeline_in_grid_search_and_cross_val_score():
    X, y = _digits()
    pipe = Pipeline([("scale", StandardScaler()),
                     ("net", TorchClassifier(MLP, max_epochs=8, batch_size=32, lr=0.01, random_state=0))])
    grid = {"net__module__hidden": [16, 32], "net__optimizer__weight_decay": [0.0, 1e-3]}
    search = GridSearchCV(pipe, grid, cv=3, error_score="raise").fit(X, y)
    assert search.best_score_ > 0.8
    net = search.best_estimator_.named_steps["net"]
    assert net.module__hidden == search.best_params_["net__module__hidden"]
    assert net.optimizer_.param_groups[0]["weight_decay"] == search.best_params_["net__optimizer__weight_decay"]

    scores = cross_val_score(pipe, X, y, cv=3, error_score="raise")
    assert scores.shape == (3,)
    assert scores.mean() > 0.8


def test_randomized_search_samples_routed_and_plain_parameters():
    X, y = _digits()
    space = {"lr": loguniform(1e-3, 1e-1), "module__hidden": [8, 16, 32], "optimizer": ["adam", "sgd"]}
    search = RandomizedSearchCV(TorchClassifier(MLP, max_epochs=5, batch_size=32, random_state=0), space,
                                n_iter=3, cv=3, random_state=0, error_score="raise").fit(X, y)
    params = search.cv_results_["params"]
    assert len(params) == 3
    assert all(1e-3 <= p["lr"] <= 1e-1 and p["module__hidden"] in (8, 16, 32) for p in params)
    chosen = search.best_estimator_
    expected = torch.optim.Adam if search.best_params_["optimizer"] == "adam" else torch.optim.SGD
    assert type(chosen.optimizer_) is expected


def test_early_stopping_splits_only_the_fold_it_is_fitted_on():
    X, y = _digits()
    X = _with_row_ids(X)
    net = TorchClassifier(RecordingMLP, max_epochs=4, batch_size=32, early_stopping=True,
                          validation_fraction=0.25, random_state=0)
    # a scorer that never calls the model: every row the module sees was seen during fit
    cv = cross_validate(net, X, y, cv=KFold(3, shuffle=True, random_state=0), scoring=lambda *a: 0.0,
                        return_estimator=True, return_indices=True, error_score="raise")
    for estimator, train in zip(cv["estimator"], cv["indices"]["train"]):
        seen = estimator.module_.seen
        train_rows = {i for batch in seen["train"] for i in batch}
        valid_rows = {i for batch in seen["eval"] for i in batch}
        assert train_rows | valid_rows == set(train.tolist())
        assert not train_rows & valid_rows
        assert len(valid_rows) == math.ceil(0.25 * len(train))


# --- training ------------------------------------------------------------------------------------

def test_partial_fit_trains_exactly_one_epoch_per_call():
    X, y = _digits()
    X = _with_row_ids(StandardScaler().fit_transform(X))
    net = TorchClassifier(RecordingMLP, max_epochs=50, batch_size=32, lr=0.01, random_state=0)
    weights = []
    for call in range(1, 7):
        net.partial_fit(X, y, classes=np.arange(10) if call == 1 else None)
        assert net.n_epochs_ == call
        assert [entry["epoch"] for entry in net.history_] == list(range(1, call + 1))
        rows = [i for batch in net.module_.seen["train"] for i in batch]
        assert len(rows) == call * len(X)  # one pass over every row per call
        weights.append(net.module_.net[0].weight.detach().clone())
    losses = [entry["train_loss"] for entry in net.history_]
    assert losses[-1] < losses[0]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))
    assert not torch.equal(weights[0], weights[1])


def test_partial_fit_after_fit_adds_one_epoch():
    X, y = _digits()
    net = TorchClassifier(MLP, max_epochs=3, batch_size=32, random_state=0).fit(X, y)
    net.partial_fit(X, y)
    assert net.n_epochs_ == 4 and len(net.history_) == 4


def test_partial_fit_needs_classes_on_the_first_call():
    X, y = _digits(100)
    net = TorchClassifier(MLP)
    with pytest.raises(ValueError) as info:
        net.partial_fit(X, y)
    assert str(info.value) == ("TorchClassifier: classes must be passed on the first call to partial_fit, "
                               "e.g. classes=np.unique(y_all)")
    net.partial_fit(X[y < 5], y[y < 5], classes=np.arange(10))  # later calls may bring the other labels
    assert net.classes_.tolist() == list(range(10))
    net.partial_fit(X, y)
    with pytest.raises(ValueError) as info:
        net.partial_fit(X, y, classes=[0, 1])
    assert str(info.value) == ("TorchClassifier: classes=[0, 1] is not classes_=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9] "
                               "of the first call to partial_fit")
    with pytest.raises(ValueError) as info:
        net.partial_fit(X, y + 5)
    assert str(info.value) == ("TorchClassifier: y has labels [10, 11, 12, 13, 14] that are not in classes_ "
                               "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]; pass every label as classes= on the first "
                               "call to partial_fit")


def test_regressor_partial_fit_and_two_targets():
    X, y = make_classification(n_samples=120, n_features=5, random_state=0)
    Y = np.column_stack([X[:, 0] + X[:, 1], X[:, 2] - X[:, 3]])
    net = TorchRegressor(MLP, module__hidden=16, batch_size=16, lr=0.01, random_state=0)
    for _ in range(5):
        net.partial_fit(X, Y)
    assert net.n_epochs_ == 5 and net.n_outputs_ == 2
    assert net.history_[-1]["train_loss"] < net.history_[0]["train_loss"]
    assert net.predict(X).shape == (120, 2)
    with pytest.raises(ValueError, match="y has 1 target"):
        net.partial_fit(X, Y[:, 0])


def test_early_stopping_stops_on_a_plateau():
    X, y = _digits(200)
    net = TorchClassifier(MLP, lr=0.0, max_epochs=50, early_stopping=True, n_iter_no_change=3,
                          random_state=0).fit(X, y)
    assert net.n_epochs_ == 4  # the first epoch is the best; three more without improvement
    assert [sorted(entry) for entry in net.history_] == [["epoch", "train_loss", "valid_loss"]] * 4
    assert len({entry["valid_loss"] for entry in net.history_}) == 1


def test_early_stopping_restores_the_best_weights():
    rng = np.random.default_rng(0)
    X = _with_row_ids(rng.normal(size=(200, 10)))
    y = rng.integers(0, 2, size=200)  # no signal: the validation loss gets worse as the net memorizes
    net = TorchClassifier(RecordingMLP, module__hidden=64, max_epochs=100, batch_size=16, lr=0.03,
                          early_stopping=True, validation_fraction=0.3, n_iter_no_change=2,
                          random_state=0).fit(X, y)
    valid_losses = [entry["valid_loss"] for entry in net.history_]
    best = int(np.argmin(valid_losses))
    assert net.n_epochs_ == best + 1 + 2 < 100
    valid_rows = sorted({i for batch in net.module_.seen["eval"] for i in batch})
    with torch.no_grad():
        net.module_.eval()
        logits = net.module_(torch.as_tensor(X[valid_rows], dtype=torch.float32))
        loss = float(net.criterion_(logits, torch.as_tensor(y[valid_rows])))
    assert loss == pytest.approx(valid_losses[best], rel=1e-5)
    assert loss != pytest.approx(valid_losses[-1], rel=1e-5)


def test_divergence_raises_with_the_fix():
    X, y = _digits(100)
    net = TorchClassifier(NaNNet, max_epochs=5, random_state=0)
    with pytest.raises(ValueError) as info:
        net.fit(X, y)
    assert str(info.value) == ("TorchClassifier: training diverged: the train loss is nan in epoch 1; lower "
                               "the learning rate (lr=0.01) or scale the inputs (StandardScaler)")
    assert net.n_epochs_ == 1


def test_verbose_prints_one_line_per_epoch(capsys):
    X, y = _digits(100)
    TorchClassifier(MLP, max_epochs=2, verbose=1, early_stopping=True, random_state=0).fit(X, y)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("TorchClassifier: epoch 1/2 train_loss=")
    assert " valid_loss=" in lines[0]


# --- parameters and their routing -----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"optimizer_lr": 0.1}, "Got an unexpected argument optimizer_lr, did you mean optimizer__lr?"),
    ({"module_hidden": 8}, "Got an unexpected argument module_hidden, did you mean module__hidden?"),
    ({"criterion_weight": [1.0]}, "Got an unexpected argument criterion_weight, did you mean criterion__weight?"),
    ({"loss__weight": [1.0]}, "Got an unexpected argument loss__weight, did you mean criterion__weight?"),
    ({"model__hidden": 8}, "Got an unexpected argument model__hidden, did you mean module__hidden?"),
    ({"learning_rate": 0.1}, "Got an unexpected argument learning_rate, did you mean lr?"),
    ({"max_epoch": 3}, "Got an unexpected argument max_epoch, did you mean max_epochs?"),
    ({"epochs": 3}, "Got an unexpected argument epochs, did you mean max_epochs?"),
    ({"hidden": 8}, "Got an unexpected argument hidden; TorchClassifier takes batch_size, criterion, device, "
                    "early_stopping, lr, max_epochs, module, n_iter_no_change, optimizer, precision, "
                    "random_state, validation_fraction, verbose, and module__*, optimizer__* and criterion__* arguments."),
    ({"optimizer_lr": 0.1, "learning_rate": 0.1},
     "Got an unexpected argument learning_rate, did you mean lr?\n"
     "Got an unexpected argument optimizer_lr, did you mean optimizer__lr?"),
])
def test_unexpected_arguments_get_did_you_mean(kwargs, message):
    with pytest.raises(TypeError) as info:
        TorchClassifier(MLP, **kwargs)
    assert str(info.value) == message


def test_set_params_takes_new_routed_parameters_and_refuses_typos():
    net = TorchRegressor(MLP)
    assert net.set_params(module__hidden=8, optimizer__weight_decay=0.1, lr=0.5) is net
    params = net.get_params()
    assert (params["module__hidden"], params["optimizer__weight_decay"], params["lr"]) == (8, 0.1, 0.5)
    with pytest.raises(ValueError) as info:
        net.set_params(optimizer_lr=0.1)
    assert str(info.value) == "Got an unexpected argument optimizer_lr, did you mean optimizer__lr?"


def test_routed_parameters_reach_module_optimizer_and_criterion():
    X, y = _digits(100)
    net = TorchClassifier(MLP, optimizer="sgd", lr=0.1, module__hidden=12, module__layers=2,
                          optimizer__momentum=0.9, criterion__weight=[1.0] * 9 + [2.0], max_epochs=1,
                          random_state=0).fit(X, y)
    assert [m.out_features for m in net.module_.net if isinstance(m, nn.Linear)] == [12, 12, 10]
    assert net.module_.net[0].in_features == 64
    assert type(net.optimizer_) is torch.optim.SGD
    assert net.optimizer_.param_groups[0]["momentum"] == 0.9
    assert net.optimizer_.param_groups[0]["lr"] == 0.1
    assert net.criterion_.weight.tolist() == [1.0] * 9 + [2.0]
    # optimizer__lr is more specific than lr, so it wins
    net = TorchClassifier(MLP, lr=0.1, optimizer__lr=0.02, max_epochs=1).fit(X, y)
    assert net.optimizer_.param_groups[0]["lr"] == 0.02


def test_invalid_hyperparameters_are_refused_at_fit():
    X, y = _digits(100)
    with pytest.raises(ValueError) as info:
        TorchClassifier(MLP, max_epochs=0, batch_size=2.5, early_stopping=True, validation_fraction=1.0).fit(X, y)
    assert str(info.value) == (
        "TorchClassifier: max_epochs must be an integer >= 1, got 0; batch_size must be an integer >= 1, "
        "got 2.5; validation_fraction must be a number in (0, 1), both ends exclusive, got 1.0")
    with pytest.raises(ValueError) as info:
        TorchClassifier(MLP(4, 2)).fit(X, y)
    assert str(info.value) == ("TorchClassifier: module must be a class or factory, not an instance of MLP; "
                               "pass the class and give its arguments as module__*")


# --- labels, targets and inputs ------------------------------------------------------------------

def test_string_labels_binary_and_multiclass():
    X, y = _digits()
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    net = TorchClassifier(MLP, module__hidden=32, max_epochs=15, batch_size=32, random_state=0).fit(X, names[y])
    assert net.classes_.tolist() == sorted(names.tolist())
    predicted = net.predict(X)
    assert set(predicted) <= set(names)
    assert (predicted == names[y]).mean() > 0.9
    proba = net.predict_proba(X)
    assert proba.shape == (len(X), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (net.classes_[proba.argmax(axis=1)] == predicted).all()

    binary = np.where(y < 5, "low", "high")
    net = TorchClassifier(MLP, max_epochs=5, random_state=0).fit(X, binary)
    assert net.classes_.tolist() == ["high", "low"]
    assert net.module_.net[-1].out_features == 2  # binary uses two logits
    decision = net.decision_function(X)
    assert decision.shape == (len(X),)
    assert (net.predict(X) == np.where(decision > 0, "low", "high")).all()


def test_regressor_on_diabetes():
    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=42)
    net = TorchRegressor(MLP, module__hidden=32, max_epochs=100, batch_size=32, lr=0.003, early_stopping=True,
                         validation_fraction=0.2, random_state=0)
    model = TransformedTargetRegressor(regressor=Pipeline([("scale", StandardScaler()), ("net", net)]),
                                       transformer=StandardScaler()).fit(X_train, y_train)
    predicted = model.predict(X_test)
    assert predicted.shape == y_test.shape
    assert model.score(X_test, y_test) > 0.3
    assert model.regressor_.named_steps["net"].n_epochs_ < 100


def test_dataframes_set_feature_names():
    X, y = _digits(100)
    frame = pd.DataFrame(X, columns=[f"pixel{i}" for i in range(64)])
    net = TorchClassifier(MLP, max_epochs=1, random_state=0).fit(frame, pd.Series(y))
    assert net.n_features_in_ == 64
    assert net.feature_names_in_.tolist() == list(frame.columns)
    assert net.predict(frame).shape == (100,)


# --- reproducibility, pickling, clone ---------------------------------------------------------------

def test_same_random_state_gives_the_same_predictions():
    X, y = _digits(200)
    torch.manual_seed(123)
    before = torch.get_rng_state()

    def proba(random_state):
        params = dict(max_epochs=3, module__dropout=0.2, early_stopping=True, random_state=random_state)
        return TorchClassifier(MLP, **params).fit(X, y).predict_proba(X)

    np.testing.assert_array_equal(proba(7), proba(7))
    assert not np.array_equal(proba(7), proba(8))
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG stream is left alone


@pytest.mark.parametrize("Estimator", [TorchClassifier, TorchRegressor])
def test_pickle_round_trip_predicts_and_trains_the_same(Estimator):
    X, y = _digits(150)
    net = Estimator(MLP, module__hidden=16, max_epochs=3, random_state=0).fit(X, y)
    copy = pickle.loads(pickle.dumps(net))
    assert copy.get_params() == net.get_params()
    np.testing.assert_array_equal(copy.predict(X), net.predict(X))
    # the optimizer comes back bound to the module's parameters, with its state
    assert copy.optimizer_.param_groups[0]["params"][0] is next(copy.module_.parameters())
    net.partial_fit(X, y)
    copy.partial_fit(X, y)
    assert copy.history_ == net.history_
    np.testing.assert_array_equal(copy.predict(X), net.predict(X))


def test_clone_copies_parameters_not_the_fit():
    X, y = _digits(100)
    net = TorchClassifier(MLP, module__hidden=8, criterion__label_smoothing=0.1, max_epochs=1).fit(X, y)
    fresh = clone(net)
    assert fresh.get_params() == net.get_params()
    assert not hasattr(fresh, "module_")
    with pytest.raises(NotFittedError):
        fresh.predict(X)


def test_importing_the_estimators_does_not_import_ray():
    code = ("import sys; from raytune_torch.sklearn import TorchClassifier, TorchRegressor; "
            "sys.exit(3 if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
