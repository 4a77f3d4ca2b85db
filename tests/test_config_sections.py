"""Each section of the experiment file on its own, the Problems collector, and the rules between sections (no Ray)."""

from __future__ import annotations

import dataclasses

import pytest

from raytune_torch import _names
from raytune_torch import sklearn as rt_sklearn
from raytune_torch.config import (
    PREFIXES,
    RULES,
    SCHEDULERS,
    SECTIONS,
    CheckpointConfig,
    ComponentConfig,
    DataConfig,
    EarlyStoppingConfig,
    ExperimentConfig,
    LoaderConfig,
    Problems,
    ResourcesConfig,
    SchedulerConfig,
    SearchConfig,
    TrainConfig,
    check_param_names,
    load_config,
    parse_scheduler,
)
from raytune_torch.config import rules
from raytune_torch.exceptions import ConfigError
from raytune_torch.space import Float, Grid, Int

MINIMAL = {"name": "mini", "data": {"dataset": "digits"}, "model": {"name": "examples.models:MLP"}}


# --- round trips: from_dict(to_dict(x)) == x ------------------------------------------------------

SECTION_VALUES = [
    DataConfig(dataset="digits"),
    DataConfig(factory="examples.data:diabetes_scaled", factory_args={"n": 3}, val_fraction=0.3,
               test_fraction=0.1, standardize=True),
    DataConfig(parquet="t.parquet", features=("a", "b"), label="y"),
    DataConfig(factory="examples.images:shapes", num_classes=4,
               loader=LoaderConfig(num_workers=2, pin_memory=False, persistent_workers=True, prefetch_factor=4,
                                   drop_last=True)),
    DataConfig(parquet="big/", label="y", stream=True, shuffle_buffer=500, val_parquet="val/"),
    DataConfig(parquet="t.parquet", label="y", stream=False),
    LoaderConfig(),
    LoaderConfig(num_workers=1, prefetch_factor=2),
    TrainConfig(),
    TrainConfig(metrics=None),
    TrainConfig(max_epochs=3, batch_size=8, metrics=("accuracy", "f1"),
                early_stopping=EarlyStoppingConfig(patience=2, min_delta=0.5), step="pkg.mod:step"),
    TrainConfig(loop="pkg.mod:loop", early_stopping=EarlyStoppingConfig(patience=1)),
    TrainConfig(precision="bf16", metrics=("balanced_accuracy", "neg_log_loss", "pkg.mod:kappa")),
    SearchConfig(),
    SearchConfig(algorithm="optuna", num_samples=5, metric="val_accuracy", mode="max", max_concurrent=2),
    *(SchedulerConfig.from_dict(name, Problems()) for name in SCHEDULERS),
    SchedulerConfig("asha", {"grace_period": 2, "reduction_factor": 2.0, "brackets": 3}),
    ResourcesConfig(),
    ResourcesConfig(cpu=2.0, gpu=0.5, cpu_fallback=True),
    CheckpointConfig(),
    CheckpointConfig(every=2, keep=3),
]


@pytest.mark.parametrize("section", SECTION_VALUES, ids=repr)
def test_section_round_trip(section):
    problems = Problems()
    assert type(section).from_dict(section.to_dict(), problems) == section
    assert list(problems) == []


def test_early_stopping_round_trip():
    early = EarlyStoppingConfig(patience=3, min_delta=0.01)
    problems = Problems()
    assert EarlyStoppingConfig.from_dict(early.to_dict(), problems) == early
    assert EarlyStoppingConfig.from_dict({"patience": 3}, problems) == EarlyStoppingConfig(3, 0.0)
    assert list(problems) == []


@pytest.mark.parametrize("where, component", [
    ("model", ComponentConfig("examples.models:MLP", {"hidden": 8})),
    ("optimizer", ComponentConfig("sgd", {"momentum": 0.9})),
    ("loss", ComponentConfig("torch.nn:MSELoss", {})),
    ("lr_scheduler", ComponentConfig("step", {"step_size": 2})),
])
def test_component_round_trip(where, component):
    problems = Problems()
    assert ComponentConfig.from_dict(component.to_dict(), problems, where=where) == component
    assert list(problems) == []


def test_experiment_round_trip():
    cfg = load_config({**MINIMAL, "loss": "cross_entropy", "train": {"early_stopping": {"patience": 2}},
                       "space": {"optimizer__lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
                       "scheduler": "median", "import_paths": ["/x"]})
    problems = Problems()
    assert ExperimentConfig.from_dict(cfg.to_dict(), problems) == cfg
    assert list(problems) == []


def test_sections_cover_every_experiment_field():
    assert set(SECTIONS) == {f.name for f in dataclasses.fields(ExperimentConfig)}
    # the order the file is checked and written in, and the "allowed:" list of an unknown key
    assert list(SECTIONS) == ["name", "seed", "storage", "task", "data", "model", "optimizer", "loss", "lr_scheduler",
                              "train", "space", "search", "scheduler", "resources", "checkpoint", "stop",
                              "stop_all_at", "max_failures", "tensorboard", "loggers", "import_paths"]


def test_absent_sections_take_the_field_defaults():
    cfg = load_config(MINIMAL)
    assert cfg.optimizer == ComponentConfig("adam") and cfg.resources == ResourcesConfig()
    assert cfg.checkpoint == CheckpointConfig() and cfg.train.early_stopping is None
    # the task follows the bundled dataset, and the metrics the task
    regression = load_config({**MINIMAL, "data": {"dataset": "diabetes"}})
    assert regression.task == "regression" and regression.train.metrics == ("mse",)
    assert load_config({**MINIMAL, "train": {"metrics": []}}).train.metrics == ()


# --- Problems: the shared checks ------------------------------------------------------------------

def test_typed_numbers_and_bounds():
    problems = Problems()
    assert problems.typed("a", 3, int, minimum=1) == 3
    assert problems.typed("b", 2, float) == 2.0 and isinstance(problems.typed("b", 2, float), float)
    assert problems.typed("c", "1e-4", float) == 1e-4  # YAML reads 1e-4 as a string
    assert list(problems) == []
    assert problems.typed("d", True, int) is None
    assert problems.typed("e", 2.5, int) is None
    assert problems.typed("f", 0.0, float, minimum=0.0, exclusive_min=True) is None
    assert problems.typed("g", -1, int, minimum=0) is None
    assert problems.typed("h", 0.95, float, maximum=0.9) is None
    assert problems.typed("i", "x", float) is None
    assert list(problems) == [
        "d: must be an integer, got True",
        "e: must be an integer, got 2.5",
        "f: must be > 0.0, got 0.0",
        "g: must be >= 0, got -1",
        "h: must be <= 0.9, got 0.95",
        "i: must be a number, got 'x'",
    ]


def test_boolean_mapping_unknown_and_one_of():
    problems = Problems()
    assert problems.boolean("a", False) is False
    assert problems.boolean("b", "yes") is None
    assert problems.mapping("c", None) == {} and problems.mapping("c", {"k": 1}) == {"k": 1}
    assert problems.mapping("d", [1]) == {}
    problems.unknown("e", {"every": 1, "kep": 2}, ["every", "keep"])
    assert problems.one_of("f", "asha", SCHEDULERS, noun="scheduler")
    assert not problems.one_of("g", "ashaa", ["fifo", "asha"], noun="scheduler")
    assert not problems.one_of("h", ["x"], ["fifo"], noun="scheduler")  # unhashable: reported, no crash
    assert list(problems) == [
        "b: must be true or false, got 'yes'",
        "d: must be a mapping, got [1]",
        "e: unknown key 'kep'; did you mean 'keep'? (allowed: every, keep)",
        "g: unknown scheduler 'ashaa'; did you mean 'asha'? (choose from fifo, asha)",
        "h: unknown scheduler ['x'] (choose from fifo)",
    ]


def test_import_path():
    problems = Problems()
    assert problems.import_path("a", "pkg.mod:Name") and problems.import_path("a", len)
    assert list(problems) == []
    assert not problems.import_path("b", "nocolon", what="function")
    assert not problems.import_path("c", ":Name")
    assert not problems.import_path("d", "pkg.mod:")
    assert not problems.import_path("e", 5)
    assert list(problems) == [
        "b: 'nocolon' is not an import path; write `package.module:function`",
        "c: ':Name' is not an import path; write `package.module:Name`",
        "d: 'pkg.mod:' is not an import path; write `package.module:Name`",
        "e: must be an import path or a callable, got 5",
    ]


def test_suggest_and_raise_if_any():
    assert Problems.suggest("gird", ["grid", "random"]) == "; did you mean 'grid'?"
    assert Problems.suggest("zzz", ["grid", "random"]) == ""
    problems = Problems()
    problems.raise_if_any("exp.yaml")  # nothing found: no error
    problems.add("one")
    problems.extend(["two"])
    with pytest.raises(ConfigError) as info:
        problems.raise_if_any("exp.yaml")
    assert str(info.value) == "2 problems in exp.yaml:\n  - one\n  - two"


# --- names shared with the scikit-learn estimators ------------------------------------------------

def test_one_suggest_and_one_prefix_table():
    assert _names.suggest("max_epoch", ["max_epochs", "batch_size"]) == "max_epochs"
    assert _names.suggest("hidden", ["device", "module"]) is None
    assert PREFIXES is _names.PREFIXES
    assert rt_sklearn.PREFIXES is _names.ESTIMATOR_PREFIXES
    assert _names.is_routed("module__hidden", PREFIXES) and not _names.is_routed("module__", PREFIXES)
    stems = {"module": "module__", "loss": "criterion__"}
    assert _names.fix_prefix("module_hidden", stems) == "module__hidden"
    assert _names.fix_prefix("loss__weight", stems) == "criterion__weight"
    assert _names.fix_prefix("module_", stems) is None


def test_check_param_names():
    assert check_param_names(["lr", "batch_size", "module__hidden", "lr_scheduler__gamma"]) == []
    tail = ("A trial parameter is one of batch_size, lr, optimizer, seed, module__<name>, optimizer__<name>, "
            "loss__<name>, lr_scheduler__<name>")
    assert check_param_names(["loss_weight", "btch_size", "foo", 3]) == [
        f"space.loss_weight: unknown trial parameter; did you mean 'loss__weight'? {tail}",
        f"space.btch_size: unknown trial parameter; did you mean 'batch_size'? {tail}",
        f"space.foo: unknown trial parameter. {tail}",
    ]


# --- the scheduler section as search_cv reads it --------------------------------------------------

def test_parse_scheduler_checks_the_grace_period():
    problems = Problems()
    assert parse_scheduler("median", problems, max_epochs=5) == SchedulerConfig(
        "median", {"grace_period": 1, "min_samples_required": 3})
    assert parse_scheduler(None, problems, max_epochs=5) == SchedulerConfig()
    assert list(problems) == []
    parse_scheduler({"name": "asha", "grace_period": 4}, problems, max_epochs=3)
    assert list(problems) == ["scheduler.grace_period: 4 is more than train.max_epochs (3); lower it or train longer"]


# --- the rules between sections, each on a config that breaks only it -------------------------------

BASE = load_config({**MINIMAL, "train": {"max_epochs": 4, "metrics": ["accuracy"]},
                    "space": {"optimizer__lr": Float(1e-3, 1e-1, log=True)}})


def _rule(rule, **changes) -> list[str]:
    """``rule`` on BASE with ``changes``: a value, or for a section a dict of its fields to change."""
    for key, value in changes.items():
        current = getattr(BASE, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = dataclasses.replace(current, **value)
    return rule(dataclasses.replace(BASE, **changes))


def test_rules_pass_a_valid_config():
    assert [problem for rule in RULES for problem in rule(BASE)] == []


def test_task_fits_dataset():
    assert _rule(rules.task_fits_dataset, task="regression") == [
        "task: the bundled dataset 'digits' is for classification, not regression"]


def test_loss_fits_task():
    assert _rule(rules.loss_fits_task, loss=ComponentConfig("MSE")) == [
        "loss: 'MSE' is a regression loss but the task is classification; use e.g. `loss: cross_entropy` "
        "(or set `task:`)"]
    assert _rule(rules.loss_fits_task, loss=ComponentConfig("torch.nn:MSELoss")) == []


def test_metrics_fit_task_and_metric_is_reported():
    assert _rule(rules.metrics_fit_task, train={"metrics": ("accuracy", "mae")}) == [
        "train.metrics: 'mae' is not a classification metric (choose from accuracy, f1, roc_auc, a scikit-learn "
        "scorer name, or `package.module:function`)"]
    # a metric of the wrong task is not reported either
    assert _rule(rules.metric_is_reported, train={"metrics": ("accuracy", "mae")}, search={"metric": "val_mae"}) == [
        "search.metric: 'val_mae' is not reported; trials report train_loss, val_loss, "
        "val_accuracy and n_params, epoch_time_s, samples_per_s (add the metric to train.metrics)"]


def test_searcher_takes_space():
    (problem,) = _rule(rules.searcher_takes_space, search={"algorithm": "grid"})
    assert problem.startswith("space.optimizer__lr: a float range without `step` cannot be enumerated")
    assert _rule(rules.searcher_takes_space, search={"algorithm": "gird"}) == []  # the search section said so


def test_grace_period_within_training():
    asha = SchedulerConfig("asha", {"grace_period": 5, "reduction_factor": 3.0, "brackets": 1})
    assert _rule(rules.grace_period_within_training, scheduler=asha) == [
        "scheduler.grace_period: 5 is more than train.max_epochs (4); lower it or train longer"]


def test_hyperband_without_concurrency_limit():
    (problem,) = _rule(rules.hyperband_without_concurrency_limit, scheduler=SchedulerConfig("hyperband"),
                       search={"max_concurrent": 2})
    assert problem.startswith("search.max_concurrent: hyperband assigns trials to its brackets as they are created")
    assert _rule(rules.hyperband_without_concurrency_limit, scheduler=SchedulerConfig("hyperband")) == []


def test_pbt_can_mutate():
    pbt = SchedulerConfig("pbt", {"perturbation_interval": 3})
    assert _rule(rules.pbt_can_mutate, scheduler=pbt) == []
    assert _rule(rules.pbt_can_mutate, scheduler=pbt, space={"module__hidden": Grid([8, 16])},
                 search={"algorithm": "optuna"}, checkpoint={"every": 2}) == [
        "scheduler: pbt starts its population from search: random (or grid), not 'optuna'",
        "space: pbt copies weights between trials, so the model's shape must not change; make "
        "['module__hidden'] constants (pbt mutates optimizer, loss and batch-size parameters)",
        "checkpoint.every: pbt perturbs every 3 epoch(s) and needs a checkpoint then; make checkpoint.every a "
        "divisor of scheduler.perturbation_interval",
    ]
    assert _rule(rules.pbt_can_mutate, scheduler=pbt, space={"module__hidden": 8}) == [
        "space: pbt needs at least one searched parameter to mutate"]
    assert _rule(rules.pbt_can_mutate, scheduler=pbt, space={"module__hidden": Int(8, 16)})[0].startswith(
        "space: pbt copies weights")


# --- data: loader and stream options --------------------------------------------------------------


@pytest.mark.parametrize("data, messages", [
    ({"factory": "m:f", "loader": {"prefetch_factor": 2}},
     ["data.loader.prefetch_factor: needs num_workers > 0 (batches prefetched by worker processes), got "
      "prefetch_factor 2 with num_workers 0; remove it or set num_workers"]),
    ({"factory": "m:f", "loader": {"persistent_workers": True}},
     ["data.loader.persistent_workers: needs num_workers > 0 (there are no worker processes to keep), got true "
      "with num_workers 0; remove it or set num_workers"]),
    ({"factory": "m:f", "loader": {"num_workers": -1, "pin_memory": "yes", "prefetch_factor": 0, "workers": 2}},
     ["data.loader: unknown key 'workers'; did you mean 'num_workers'? (allowed: num_workers, pin_memory, "
      "persistent_workers, prefetch_factor, drop_last)",
      "data.loader.num_workers: must be >= 0, got -1",
      "data.loader.prefetch_factor: must be >= 1, got 0",
      "data.loader.pin_memory: must be true or false, got 'yes'"]),
    ({"dataset": "digits", "loader": {"num_workers": 2}},
     ["data.loader: applies to a `factory` that returns torch Datasets, not to a bundled dataset source; remove it"]),
    ({"factory": "m:f", "stream": True, "shuffle_buffer": 10},
     ["data.stream: applies to a `parquet` source only; remove it",
      "data.shuffle_buffer: applies to a `parquet` source only; remove it"]),
    ({"parquet": "t", "label": "y", "stream": "yes", "shuffle_buffer": 0},
     ["data.stream: must be auto, true or false, got 'yes'", "data.shuffle_buffer: must be >= 1, got 0"]),
    ({"parquet": "t", "label": "y", "val_parquet": "v", "test_fraction": 0.1},
     ["data.test_fraction: with val_parquet the validation split is given, and a test split is not cut from "
      "the table; remove test_fraction (got 0.1)"]),
    ({"factory": "m:f", "num_classes": 1}, ["data.num_classes: must be >= 2, got 1"]),
])
def test_data_loader_and_stream_problems(data, messages):
    problems = Problems()
    DataConfig.from_dict(data, problems)
    assert list(problems) == messages


def test_data_loader_and_stream_defaults_are_left_out_of_the_file():
    assert DataConfig(factory="m:f").to_dict() == {"factory": "m:f", "val_fraction": 0.2, "test_fraction": 0.0,
                                                   "standardize": False}
    assert DataConfig(factory="m:f", loader=LoaderConfig(num_workers=2)).to_dict()["loader"] == {
        "num_workers": 2, "pin_memory": True, "persistent_workers": False, "drop_last": False}
