"""TorchSearchCV on a real local Ray: the scikit-learn search contract, ported cases, pruning, leakage."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import loguniform, randint
from sklearn.datasets import load_digits
from sklearn.exceptions import FitFailedWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import raytune_torch as rt
from examples.models import MLP
from raytune_torch.cv_trial import CVSpec, _make_fold
from tests.helpers_steps import RecordingScaler  # importable by Ray's workers

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:300].astype(np.float32), y[:300]


def _net(**kw):
    return rt.TorchClassifier(MLP, max_epochs=kw.pop("max_epochs", 2), batch_size=64, random_state=0,
                              module__hidden=kw.pop("module__hidden", 16), **kw)


def _pipe(**kw):
    return Pipeline([("scale", StandardScaler()), ("net", _net(**kw))])


GRID = {"net__lr": [0.003, 0.03], "net__module__hidden": [8, 16]}


def test_same_keys_shapes_and_scores_as_gridsearchcv(digits, tmp_path):
    X, y = digits
    kw = dict(cv=3, scoring=["accuracy", "f1_macro"], refit="accuracy", return_train_score=True)
    ours = rt.TorchSearchCV(_pipe(), GRID, storage=str(tmp_path), **kw).fit(X, y)
    theirs = GridSearchCV(_pipe(), GRID, **kw).fit(X, y)
    assert sorted(ours.cv_results_) == sorted(theirs.cv_results_)
    for key, value in theirs.cv_results_.items():
        assert np.shape(ours.cv_results_[key]) == np.shape(value), key
        if key.startswith(("split", "mean_test", "std_test", "mean_train", "rank")):
            np.testing.assert_allclose(ours.cv_results_[key], value, rtol=1e-6, err_msg=key)
    assert ours.cv_results_["params"] == theirs.cv_results_["params"]
    assert list(ours.cv_results_["param_net__lr"]) == list(theirs.cv_results_["param_net__lr"])
    assert ours.best_index_ == theirs.best_index_
    assert ours.best_params_ == theirs.best_params_
    assert ours.best_score_ == pytest.approx(theirs.best_score_)
    assert ours.n_splits_ == 3 and ours.multimetric_
    # the refitted best estimator predicts like GridSearchCV's
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    assert ours.score(X, y) == pytest.approx(theirs.score(X, y))
    # the run directory of the other issues: Parquet table and TensorBoard files
    run = Path(ours.run_dir_)
    table = pd.read_parquet(run / "results.parquet")
    assert {"trial_id", "epoch", "mean_test_accuracy", "std_test_accuracy"} <= set(table.columns)
    assert table["trial_id"].nunique() == 4
    assert list(run.glob("trial_*/events.out.tfevents.*"))


def test_refit_variants(digits, tmp_path):
    X, y = digits
    grid = {"net__lr": [0.003, 0.03]}
    single = rt.TorchSearchCV(_pipe(), grid, cv=2, storage=str(tmp_path)).fit(X, y)
    assert set(single.cv_results_) >= {"mean_test_score", "rank_test_score"}
    assert single.best_params_ == {"net__lr": 0.03}
    assert single.refit_time_ > 0

    def lowest_lr(results):
        return int(np.argmin([p["net__lr"] for p in results["params"]]))

    chosen = rt.TorchSearchCV(_pipe(), grid, cv=2, refit=lowest_lr, storage=str(tmp_path)).fit(X, y)
    assert chosen.best_params_ == {"net__lr": 0.003}
    assert not hasattr(chosen, "best_score_")

    off = rt.TorchSearchCV(_pipe(), grid, cv=2, refit=False, storage=str(tmp_path)).fit(X, y)
    assert not hasattr(off, "best_estimator_")
    with pytest.raises(NotFittedError):
        off.predict(X)

    with pytest.raises(rt.ConfigError, match="with several metrics, refit must name the metric"):
        rt.TorchSearchCV(_pipe(), grid, cv=2, scoring={"acc": "accuracy", "bal": "balanced_accuracy"},
                         storage=str(tmp_path)).fit(X, y)
    multi = rt.TorchSearchCV(_pipe(), grid, cv=2, scoring={"acc": "accuracy", "bal": "balanced_accuracy"},
                             refit="bal", storage=str(tmp_path)).fit(X, y)
    assert {"mean_test_acc", "mean_test_bal", "rank_test_bal"} <= set(multi.cv_results_)
    assert multi.best_score_ == pytest.approx(max(multi.cv_results_["mean_test_bal"]))


def test_groups_splitter_and_list_of_grids(digits, tmp_path):
    X, y = digits
    groups = np.arange(len(y)) % 3
    grids = [{"net__lr": [0.003]}, {"net__lr": [0.03], "net__module__hidden": [8]}]
    search = rt.TorchSearchCV(_pipe(), grids, cv=GroupKFold(n_splits=3), storage=str(tmp_path)).fit(X, y, groups)
    reference = GridSearchCV(_pipe(), grids, cv=GroupKFold(n_splits=3)).fit(X, y, groups=groups)
    assert search.cv_results_["params"] == reference.cv_results_["params"]
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], reference.cv_results_["mean_test_score"], rtol=1e-6)
    assert search.cv_results_["param_net__module__hidden"].mask.tolist() == [True, False]


def test_pandas_and_list_inputs(digits, tmp_path):
    X, y = digits
    frame = pd.DataFrame(X[:120], columns=[f"px{i}" for i in range(64)])
    labels = pd.Series(y[:120])
    search = rt.TorchSearchCV(_pipe(), {"net__lr": [0.03]}, cv=2, storage=str(tmp_path)).fit(frame, labels)
    assert search.predict(frame).shape == (120,)
    as_lists = rt.TorchSearchCV(_pipe(), {"net__lr": [0.03]}, cv=2, storage=str(tmp_path)).fit(
        X[:120].tolist(), y[:120].tolist())
    np.testing.assert_allclose(as_lists.cv_results_["mean_test_score"], search.cv_results_["mean_test_score"])


def test_failing_configuration_and_error_score(digits, tmp_path):
    X, y = digits
    grid = {"net__optimizer": ["sgd"], "net__lr": [0.05, 1.0e8]}
    with pytest.warns(FitFailedWarning, match="1 of the 2 candidates failed to fit"):
        search = rt.TorchSearchCV(_pipe(max_epochs=3), grid, cv=2, storage=str(tmp_path)).fit(X, y)
    scores = dict(zip([p["net__lr"] for p in search.cv_results_["params"]], search.cv_results_["mean_test_score"]))
    assert np.isnan(scores[1.0e8]) and scores[0.05] > 0.2  # chance is 0.1
    assert search.best_params_["net__lr"] == 0.05
    assert search.cv_results_["rank_test_score"].tolist() == [1, 2]
    zero = rt.TorchSearchCV(_pipe(max_epochs=3), grid, cv=2, error_score=0.0, storage=str(tmp_path))
    with pytest.warns(FitFailedWarning):
        zero.fit(X, y)
    assert 0.0 in zero.cv_results_["mean_test_score"].tolist()
    with pytest.raises(Exception, match="loss"):
        rt.TorchSearchCV(_pipe(max_epochs=3), grid, cv=2, error_score="raise", storage=str(tmp_path)).fit(X, y)
    with pytest.raises(ValueError, match="All the 1 candidates failed to fit; the first error: ValueError: "):
        rt.TorchSearchCV(_pipe(max_epochs=3), {"net__optimizer": ["sgd"], "net__lr": [1.0e8]}, cv=2,
                         storage=str(tmp_path)).fit(X, y)


def test_asha_prunes_on_the_fold_mean(digits, tmp_path):
    X, y = digits
    grid = {"net__lr": [1e-5, 3e-5, 0.01, 0.03]}
    search = rt.TorchSearchCV(_pipe(max_epochs=4), grid, cv=2, n_jobs=1, storage=str(tmp_path),
                              scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2}).fit(X, y)
    epochs = dict(zip([p["net__lr"] for p in search.cv_results_["params"]], search.trial_epochs_))
    assert sum(epochs.values()) < 16, epochs
    assert epochs[0.03] == 4 or epochs[0.01] == 4
    assert search.best_params_["net__lr"] in (0.01, 0.03)


def test_random_and_optuna_over_distributions_and_the_project_space(digits, tmp_path):
    X, y = digits
    dists = {"net__lr": loguniform(1e-3, 3e-2), "net__module__hidden": randint(8, 17)}
    random = rt.TorchSearchCV(_pipe(), dists, search="random", n_iter=3, cv=2, storage=str(tmp_path)).fit(X, y)
    assert len(random.cv_results_["params"]) == 3
    for p in random.cv_results_["params"]:
        assert 1e-3 <= p["net__lr"] <= 3e-2 and 8 <= p["net__module__hidden"] <= 16
    space = {"net__lr": rt.Float(1e-3, 3e-2, log=True), "net__module__hidden": rt.Choice([8, 16])}
    tpe = rt.TorchSearchCV(_pipe(), space, search="optuna", n_iter=3, cv=2, storage=str(tmp_path)).fit(X, y)
    assert len(tpe.cv_results_["params"]) == 3
    assert {p["net__module__hidden"] for p in tpe.cv_results_["params"]} <= {8, 16}


def test_pipeline_steps_fitted_on_each_training_fold_only(digits, tmp_path):
    X, y = digits
    ids = np.arange(len(y), dtype=np.float32)
    X_ids = np.column_stack([ids, X])
    folder = tmp_path / "fits"
    folder.mkdir()
    pipe = Pipeline([("rec", RecordingScaler(str(folder))), ("net", _net())])
    cv = KFold(n_splits=3, shuffle=True, random_state=0)
    rt.TorchSearchCV(pipe, {"net__lr": [0.01, 0.03]}, cv=cv, refit=False, storage=str(tmp_path)).fit(X_ids, y)
    fitted = [set(np.load(f).astype(int).tolist()) for f in folder.glob("*.npy")]
    train_sets = [set(train.tolist()) for train, _ in cv.split(X_ids, y)]
    assert len(fitted) == 2 * 3  # each candidate, each fold
    for rows in fitted:
        assert rows in train_sets  # exactly a training part: never a row of that fold's test part


def test_early_stopping_uses_an_inner_split_of_the_training_fold(digits):
    X, y = digits
    train, test = np.arange(0, 200), np.arange(200, 300)
    spec = CVSpec(X=X, y=y, splits=[(train, test)], estimator=_pipe(early_stopping=True, validation_fraction=0.25),
                  scorers={}, max_epochs=2, error_score=np.nan, return_train_score=False)
    fold = _make_fold(spec, {}, train, test)
    assert fold.X_inner is not None
    assert len(fold.X_fit) + len(fold.X_inner) == len(train)
    fitted_scaler = fold.estimator.named_steps["scale"]
    np.testing.assert_allclose(fitted_scaler.mean_, X[train].mean(axis=0), rtol=1e-5)  # fold's training part only
    inner_rows = {tuple(r) for r in fitted_scaler.inverse_transform(fold.X_inner).round(3)}
    test_rows = {tuple(r) for r in X[test].round(3)}
    train_rows = {tuple(r) for r in X[train].round(3)}
    assert inner_rows <= train_rows and not inner_rows & (test_rows - train_rows)


def test_best_estimator_refit_on_all_data_and_pickles(digits, tmp_path):
    X, y = digits
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    search = rt.TorchSearchCV(_pipe(max_epochs=4), {"net__lr": [0.01, 0.03]}, cv=3, storage=str(tmp_path))
    search.fit(X_train, y_train)
    best = search.best_estimator_
    assert best.named_steps["net"].n_epochs_ == 4
    assert best.named_steps["scale"].n_samples_seen_ == len(X_train)
    restored = pickle.loads(pickle.dumps(search))
    np.testing.assert_array_equal(restored.predict(X_test), search.predict(X_test))
    assert search.score(X_test, y_test) > 0.7
    assert list(search.classes_) == list(range(10))


def test_the_device_parameter_a_gpu_share_sets():
    from raytune_torch.cv_trial import _device_param

    assert _device_param(_pipe()) == "net__device"
    assert _device_param(_net()) == "device"
