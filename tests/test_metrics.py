"""train.metrics: built-in names, scikit-learn scorers and functions of your own, computed and
checked in the experiment file; train.precision and resources.gpu in the file (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from sklearn import metrics as skm
from scipy.special import softmax

from raytune_torch.cli import main
from raytune_torch.config import Problems, TrainConfig, load_config
from raytune_torch.config.train import PRECISIONS, check_metrics, direction, reported_name, scorer_tasks
from raytune_torch.exceptions import ConfigError, MetricError
from raytune_torch.loop import AUTOCAST_DTYPES, compute_metrics
from raytune_torch.metrics import compute, resolve_metrics

MINIMAL = {"name": "mini", "data": {"dataset": "digits"}, "model": {"name": "examples.models:MLP"}}


def problems_of(raw):
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    return info.value.problems


@pytest.fixture(scope="module")
def classified():
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(4), 50)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y]
    return y, logits.astype(np.float32)


def metrics_of(task, names, y, outputs, **kw):
    return compute_metrics(task, torch.tensor(outputs), torch.tensor(y), resolve_metrics(task, names, **kw))


# --- scikit-learn scorers: the value scikit-learn gives on the same predictions ---------------


def test_classification_scorers_equal_scikit_learn(classified):
    y, logits = classified
    proba = softmax(logits.astype(np.float64), axis=1)
    got = metrics_of("classification", ["balanced_accuracy", "neg_log_loss", "top_k_accuracy", "roc_auc_ovr",
                                        "f1_weighted"], y, logits)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, logits.argmax(1)))
    assert got["neg_log_loss"] == pytest.approx(-skm.log_loss(y, proba), rel=1e-5)  # negated: higher is better
    assert got["neg_log_loss"] < 0
    assert got["top_k_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, proba, k=2))
    assert got["roc_auc_ovr"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"), rel=1e-5)
    assert got["f1_weighted"] == pytest.approx(skm.f1_score(y, logits.argmax(1), average="weighted"))


def test_binary_scorers_use_the_positive_class(classified):
    y, logits = classified
    y2, logits2 = (y % 2), logits[:, :2]
    got = metrics_of("classification", ["average_precision", "neg_log_loss", "precision"], y2, logits2)
    assert got["average_precision"] == pytest.approx(skm.average_precision_score(y2, logits2[:, 1] - logits2[:, 0]))
    proba = softmax(logits2.astype(np.float64), axis=1)
    assert got["neg_log_loss"] == pytest.approx(-skm.log_loss(y2, proba[:, 1]), rel=1e-5)
    assert got["precision"] == pytest.approx(skm.precision_score(y2, logits2.argmax(1)))


def test_regression_scorers_equal_scikit_learn():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(80, 1)).astype(np.float32)
    pred = (y + rng.normal(scale=0.3, size=y.shape)).astype(np.float32)
    got = metrics_of("regression", ["neg_mean_absolute_error", "explained_variance", "r2", "mse"], y, pred)
    assert got["neg_mean_absolute_error"] == pytest.approx(-skm.mean_absolute_error(y, pred), rel=1e-6)
    assert got["explained_variance"] == pytest.approx(skm.explained_variance_score(y, pred), rel=1e-5)
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-5)  # the built-in one
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y, pred), rel=1e-5)


# --- functions of your own ----------------------------------------------------------------------


def test_an_import_path_metric_gets_labels_and_logits(classified, write_module, tmp_path):
    y, logits = classified
    name = write_module("""
        from sklearn.metrics import recall_score

        def macro_recall(y_true, outputs):
            assert outputs.ndim == 2  # the raw logits
            return recall_score(y_true, outputs.argmax(axis=1), average="macro")
    """)
    got = metrics_of("classification", [f"{name}:macro_recall", "accuracy"], y, logits, import_paths=(str(tmp_path),))
    assert got == {"macro_recall": pytest.approx(skm.recall_score(y, logits.argmax(1), average="macro")),
                   "accuracy": pytest.approx(skm.accuracy_score(y, logits.argmax(1)))}
    assert reported_name(f"{name}:macro_recall") == "macro_recall"
    assert reported_name("pkg.mod:Scores.kappa") == "kappa"


def broken(y_true, outputs):
    raise ValueError("no good")


def wordy(y_true, outputs):
    return "high"


def test_a_metric_that_raises_or_returns_a_non_number_is_named(classified):
    y, logits = classified
    with pytest.raises(MetricError) as info:
        compute(resolve_metrics("classification", [broken]), y, logits)
    assert str(info.value) == (f"train.metrics: {__name__}:broken raised ValueError: no good (given y_true of shape "
                               f"(200,) and outputs of shape (200, 4))")
    with pytest.raises(MetricError) as info:
        compute(resolve_metrics("classification", [wordy]), y, logits)
    assert str(info.value) == f"train.metrics: {__name__}:wordy returned 'high' (str), not a number; return a float"


def test_non_finite_outputs_give_nan_without_calling_scorers_or_functions(classified):
    y, logits = classified
    bad = logits.copy()
    bad[0, 0] = np.nan
    got = compute(resolve_metrics("classification", ["neg_log_loss", lambda y, o: 1 / 0, "accuracy"]), y, bad)
    assert np.isnan(got["neg_log_loss"]) and np.isnan(got["<lambda>"]) and 0 <= got["accuracy"] <= 1


# --- the experiment file --------------------------------------------------------------------------


def test_scorer_names_are_split_by_task():
    tasks = scorer_tasks()
    assert tasks["neg_log_loss"] == tasks["balanced_accuracy"] == tasks["top_k_accuracy"] == "classification"
    assert tasks["neg_mean_absolute_error"] == tasks["r2"] == tasks["explained_variance"] == "regression"
    assert set(tasks) == set(skm.get_scorer_names())


def test_metrics_of_every_kind_load():
    cfg = load_config({**MINIMAL, "train": {"metrics": ["balanced_accuracy", "neg_log_loss", "pkg.mod:kappa"]},
                       "search": {"metric": "val_kappa", "mode": "max"}})
    assert cfg.metric_names == ("train_loss", "val_loss", "val_balanced_accuracy", "val_neg_log_loss", "val_kappa")
    regression = load_config({**MINIMAL, "task": "regression", "data": {"dataset": "diabetes"},
                              "train": {"metrics": ["neg_mean_absolute_error"]},
                              "search": {"metric": "val_neg_mean_absolute_error"}})
    assert regression.train.metrics == ("neg_mean_absolute_error",) and regression.search.mode == "max"


@pytest.mark.parametrize("metrics, metric, mode", [
    (["neg_log_loss"], "val_neg_log_loss", "max"),  # every scorer: higher is better
    (["balanced_accuracy"], "val_balanced_accuracy", "max"),
    (["accuracy"], "val_accuracy", "max"),
    (["accuracy"], "val_loss", "min"),
    (["accuracy"], "train_loss", "min"),
])
def test_mode_follows_the_metric(metrics, metric, mode):
    assert load_config({**MINIMAL, "train": {"metrics": metrics}, "search": {"metric": metric}}).search.mode == mode
    assert direction("val_mse", ["mse"]) == "min" and direction("val_fn", ["a.b:fn"]) is None


def test_own_metric_as_search_metric_needs_a_mode():
    raw = {**MINIMAL, "train": {"metrics": ["pkg.mod:accuracy"]}, "search": {"metric": "val_accuracy"}}
    assert problems_of(raw) == [
        "search.mode: the search metric 'val_accuracy' comes from a function of yours in train.metrics, so whether "
        "higher is better is yours to say; set search.mode: max or min"]
    assert load_config({**raw, "search": {"metric": "val_accuracy", "mode": "min"}}).search.mode == "min"


def test_bad_metrics_are_config_errors():
    raw = {**MINIMAL, "train": {"metrics": ["balanced_acuracy", "neg_mean_absolute_error", "pkg.mod:", "accuracy",
                                            "other.mod:accuracy", "pkg.mod:loss", 3]}}
    assert problems_of(raw) == [
        "train.metrics: 'balanced_acuracy' is not a classification metric; did you mean 'balanced_accuracy'? "
        "(choose from accuracy, f1, roc_auc, a scikit-learn scorer name, or `package.module:function`)",
        "train.metrics: 'neg_mean_absolute_error' is a scikit-learn scorer for regression, but the task is "
        "classification",
        "train.metrics: 'pkg.mod:' is not an import path; write `package.module:function`",
        "train.metrics: 'accuracy' and 'other.mod:accuracy' would both be reported as val_accuracy; keep one "
        "(or rename your function)",
        "train.metrics: 'pkg.mod:loss' would be reported as val_loss, the validation loss; rename the function",
        "train.metrics: 3 is not a metric name, an import path or a function",
    ]
    problems, valid = check_metrics("regression", ["accuracy", "r2"])
    assert valid == ["r2"] and problems == [
        "train.metrics: 'accuracy' is a scikit-learn scorer for classification, but the task is regression"]


def test_precision_field():
    assert PRECISIONS == tuple(AUTOCAST_DTYPES)
    assert load_config(MINIMAL).train.precision == "32"
    for written, read in ((32, "32"), ("32", "32"), ("bf16", "bf16"), ("fp16", "fp16")):
        assert load_config({**MINIMAL, "train": {"precision": written}}).train.precision == read
    assert problems_of({**MINIMAL, "train": {"precision": "fp8"}}) == [
        "train.precision: unknown precision 'fp8' (choose from 32, bf16, fp16)"]
    assert problems_of({**MINIMAL, "train": {"precision": 16}})[0].startswith("train.precision: unknown precision '16'")


@pytest.mark.parametrize("section", [
    TrainConfig(precision="bf16"),
    TrainConfig(precision="fp16", metrics=("balanced_accuracy", "neg_log_loss", "pkg.mod:kappa")),
], ids=repr)
def test_train_round_trip(section):
    problems = Problems()
    assert TrainConfig.from_dict(section.to_dict(), problems) == section
    assert list(problems) == []


def test_experiment_round_trip_with_new_fields():
    cfg = load_config({**MINIMAL, "train": {"precision": "bf16", "metrics": ["neg_log_loss", "pkg.mod:kappa"]},
                       "search": {"metric": "val_kappa", "mode": "min"}, "resources": {"gpu": 1}})
    assert load_config(cfg.to_dict()) == cfg


GPU_REFUSED = ("resources.gpu: 2 asks for more than one GPU per worker, but a worker trains on one device, so the "
               "others would sit idle; to train one model on 2 GPUs set resources.workers: 2 with gpu: 1 "
               "(DistributedDataParallel, one GPU per worker)")


def test_more_than_one_gpu_per_trial_is_refused():
    assert problems_of({**MINIMAL, "resources": {"gpu": 2}}) == [GPU_REFUSED]
    with pytest.raises(ConfigError) as info:
        load_config(MINIMAL, gpus_per_trial=2)  # the CLI's --gpus-per-trial goes the same way
    assert info.value.problems == [GPU_REFUSED]
    assert problems_of({**MINIMAL, "resources": {"gpu": 1.5}})[0].startswith(
        "resources.gpu: 1.5 asks for more than one GPU per worker")
    assert "resources.workers: 2 with gpu: 1" in problems_of({**MINIMAL, "resources": {"gpu": 1.5}})[0]
    assert load_config({**MINIMAL, "resources": {"gpu": 1}}).resources.gpu == 1.0
    assert load_config(MINIMAL, gpus_per_trial=0.25).resources.gpu == 0.25


def test_the_cli_refuses_more_than_one_gpu_per_trial(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    assert main(["validate", str(path), "--gpus-per-trial", "2"]) == 2
    assert f"1 problem in {path}:\n  - {GPU_REFUSED}" in capsys.readouterr().err
