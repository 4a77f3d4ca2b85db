"""Loading and validating experiment files and dicts, overrides, and the dict round trip (no Ray)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from raytune_torch.config import (
    SCHEDULERS,
    ComponentConfig,
    EarlyStoppingConfig,
    ExperimentConfig,
    config_to_dict,
    load_config,
)
from raytune_torch.exceptions import ConfigError, RaytuneTorchError
from raytune_torch.space import Choice, Float, Grid, Int

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = {
    "name": "mini",
    "data": {"dataset": "digits"},
    "model": {"name": "examples.models:MLP"},
}

FULL = {
    "name": "full",
    "seed": 7,
    "storage": "somewhere/runs",
    "data": {"dataset": "digits", "val_fraction": 0.25, "test_fraction": 0.1, "standardize": True},
    "model": {"name": "examples.models:MLP", "args": {"hidden": 32}},
    "optimizer": {"name": "sgd", "args": {"momentum": 0.9}},
    "loss": "cross_entropy",
    "lr_scheduler": {"name": "step", "args": {"step_size": 2}},
    "train": {
        "max_epochs": 6,
        "batch_size": 32,
        "metrics": ["accuracy", "f1"],
        "early_stopping": {"patience": 2, "min_delta": 0.01},
    },
    "space": {
        "optimizer__lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "module__hidden": {"type": "int", "low": 16, "high": 64, "step": 16},
        "batch_size": {"type": "choice", "values": [32, 64]},
        "module__dropout": {"type": "grid", "values": [0.0, 0.2]},
        "optimizer__weight_decay": 1e-4,
    },
    "search": {"algorithm": "random", "num_samples": 3, "metric": "val_accuracy", "max_concurrent": 2},
    "scheduler": {"name": "asha", "grace_period": 2, "reduction_factor": 2},
    "resources": {"cpu": 2, "gpu": 0.5},
    "checkpoint": {"every": 2, "keep": 3},
}


def problems_of(source, **overrides) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(source, **overrides)
    return info.value.problems


def write(tmp_path: Path, data, name="exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


# --- valid experiments --------------------------------------------------------------------------


def test_minimal_dict_gets_defaults():
    cfg = load_config(MINIMAL)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == "mini"
    assert cfg.task == "classification"  # from the bundled dataset
    assert cfg.model == ComponentConfig("examples.models:MLP", {})
    assert cfg.optimizer == ComponentConfig("adam", {})
    assert cfg.loss is None and cfg.lr_scheduler is None
    assert cfg.train.metrics == ("accuracy",)  # the task's first metric
    assert cfg.train.max_epochs == 10 and cfg.train.batch_size == 64
    assert cfg.search.algorithm == "random" and cfg.search.metric == "val_loss" and cfg.search.mode == "min"
    assert cfg.scheduler.name == "fifo" and dict(cfg.scheduler.options) == {}
    assert cfg.metric_names == ("train_loss", "val_loss", "val_accuracy")
    assert cfg.run_dir == str(Path("runs") / "mini")
    assert cfg.import_paths == ()


def test_regression_task_from_bundled_dataset():
    cfg = load_config({**MINIMAL, "data": {"dataset": "diabetes"}, "train": {"metrics": ["r2", "mse"]},
                       "search": {"metric": "val_r2"}})
    assert cfg.task == "regression"
    assert cfg.train.metrics == ("r2", "mse")
    assert cfg.search.mode == "max"


def test_minimal_yaml_file(tmp_path):
    path = write(tmp_path, """
name: mini
data:
  dataset: digits
model:
  name: examples.models:MLP
space:
  optimizer__lr: {type: float, low: 1e-4, high: 1e-1, log: true}
search:
  metric: val_accuracy
""")
    cfg = load_config(path)
    assert cfg.space == {"optimizer__lr": Float(1e-4, 1e-1, log=True)}
    assert cfg.search.mode == "max"
    # the file's directory is added to the import paths (for `pkg.mod:Name` next to the file)
    assert cfg.import_paths == (str(tmp_path.resolve()),)
    assert load_config(str(path)) == cfg


def test_full_experiment():
    cfg = load_config(FULL)
    assert cfg.seed == 7
    assert cfg.data.val_fraction == 0.25 and cfg.data.test_fraction == 0.1 and cfg.data.standardize
    assert cfg.optimizer == ComponentConfig("sgd", {"momentum": 0.9})
    assert cfg.loss == ComponentConfig("cross_entropy", {})
    assert cfg.lr_scheduler == ComponentConfig("step", {"step_size": 2})
    assert cfg.train.early_stopping == EarlyStoppingConfig(patience=2, min_delta=0.01)
    assert cfg.space == {
        "optimizer__lr": Float(1e-4, 1e-1, log=True),
        "module__hidden": Int(16, 64, step=16),
        "batch_size": Choice([32, 64]),
        "module__dropout": Grid([0.0, 0.2]),
        "optimizer__weight_decay": 1e-4,
    }
    assert cfg.search.mode == "max" and cfg.search.num_samples == 3 and cfg.search.max_concurrent == 2
    assert dict(cfg.scheduler.options) == {"grace_period": 2, "reduction_factor": 2.0, "brackets": 1}
    assert (cfg.resources.cpu, cfg.resources.gpu) == (2.0, 0.5)
    assert (cfg.checkpoint.every, cfg.checkpoint.keep) == (2, 3)
    assert cfg.metric_names == ("train_loss", "val_loss", "val_accuracy", "val_f1")


def test_scheduler_as_a_plain_name():
    cfg = load_config({**MINIMAL, "scheduler": "median"})
    assert cfg.scheduler.name == "median"
    assert dict(cfg.scheduler.options) == {"grace_period": 1, "min_samples_required": 3}


# --- one ConfigError listing every problem ------------------------------------------------------


def test_many_problems_in_one_error():
    bad = {
        **MINIMAL,
        "checkpoints": {"every": 1},  # unknown top-level key
        "train": {"max_epochs": 3, "metrics": ["accuracy"]},
        "space": {"optimizer_lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
        "search": {"algorithm": "gird", "metric": "val_f1"},
        "scheduler": {"name": "ashaa"},
    }
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    exc = info.value
    assert isinstance(exc, RaytuneTorchError) and isinstance(exc, ValueError)
    problems = exc.problems
    assert len(problems) == 5, problems

    def one(prefix: str) -> str:
        found = [p for p in problems if p.startswith(prefix)]
        assert len(found) == 1, (prefix, problems)
        return found[0]

    assert one("experiment: unknown key 'checkpoints'; did you mean 'checkpoint'? (allowed: name, seed,")
    assert one("space.optimizer_lr: unknown trial parameter; did you mean 'optimizer__lr'? "
               "A trial parameter is one of batch_size, lr, optimizer, seed, module__<name>")
    assert one("search.algorithm: ") == (
        "search.algorithm: unknown searcher 'gird'; did you mean 'grid'? "
        "(choose from grid, random, optuna, hyperopt, bohb)")
    metric = one("search.metric: 'val_f1' is not reported")
    assert metric.endswith("trials report train_loss, val_loss, val_accuracy and n_params, epoch_time_s, "
                           "samples_per_s (add the metric to train.metrics)")
    assert one("scheduler.name: ") == (
        f"scheduler.name: unknown scheduler 'ashaa'; did you mean 'asha'? (choose from {', '.join(SCHEDULERS)})")
    assert list(SCHEDULERS)[:4] == ["fifo", "asha", "hyperband", "median"]
    text = str(exc)
    assert text.startswith("5 problems:\n  - ")
    assert text.count("\n  - ") == 5
    assert exc.source is None


def test_grace_period_longer_than_training_and_other_problems():
    problems = problems_of({
        **MINIMAL,
        "train": {"max_epochs": 3, "metrics": ["accuracy", "mse"], "batch_size": 0},
        "scheduler": {"name": "asha", "grace_period": 5, "reduction_factor": 1, "bracket": 2},
        "resources": {"cpu": 0, "gpu": 1.5},
        "space": {"foo": 1, "module_hidden": {"type": "choice", "values": [1]}},
    })
    expected = [
        "train.batch_size: must be >= 1, got 0",
        "space.foo: unknown trial parameter. A trial parameter is one of batch_size, lr, optimizer, seed, "
        "module__<name>, optimizer__<name>, loss__<name>, lr_scheduler__<name>",
        "space.module_hidden: unknown trial parameter; did you mean 'module__hidden'? A trial parameter",
        "scheduler (asha): unknown key 'bracket'; did you mean 'brackets'? (allowed: grace_period, "
        "reduction_factor, brackets)",
        "scheduler.reduction_factor: must be > 1.0, got 1.0",
        "resources.cpu: must be > 0.0, got 0.0",
        "resources.gpu: 1.5 asks for more than one GPU per worker",
        # the rules between sections come after every section is read
        "train.metrics: 'mse' is not a classification metric (choose from accuracy, f1, roc_auc, a scikit-learn "
        "scorer name, or `package.module:function`)",
        "scheduler.grace_period: 5 is more than train.max_epochs (3); lower it or train longer",
    ]
    assert len(problems) == len(expected), problems
    for want, got in zip(expected, problems):
        assert got.startswith(want), (want, got)


def test_data_model_and_name_problems():
    problems = problems_of({
        "name": "a/b",
        "data": {"dataset": "digts", "factory": "nocolon", "val_fraction": 0.0, "standardize": "yes"},
        "model": {"name": "MLP", "arg": {}},
        "task": "ranking",
    })
    assert "name: must be a non-empty name without '/', got 'a/b'" in problems
    assert any(p.startswith("data: set exactly one of `dataset`") and p.endswith("got ['dataset', 'factory']")
               for p in problems)
    assert ("data.dataset: unknown bundled dataset 'digts'; did you mean 'digits'? "
            "(bundled: digits, breast_cancer, iris, wine, diabetes)") in problems
    assert "data.factory: 'nocolon' is not an import path; write `package.module:function`" in problems
    assert "data.val_fraction: must be > 0.0, got 0.0" in problems
    assert "data.standardize: must be true or false, got 'yes'" in problems
    assert any(p.startswith("model: unknown key 'arg'; did you mean 'args'?") for p in problems)
    assert "model.name: 'MLP' is not an import path; write `package.module:ClassName`" in problems
    assert "task: must be one of classification, regression, got 'ranking'" in problems
    assert len(problems) == 9, problems


def test_missing_model_and_parquet_without_label():
    problems = problems_of({"name": "x", "data": {"parquet": "t.parquet"}})
    assert problems == [
        "data.label: a parquet source needs `label` (the target column)",
        "model: missing; give e.g. `model: {name: pkg.module:Name}`",
    ]


def test_task_that_does_not_fit_the_bundled_dataset():
    assert problems_of({**MINIMAL, "task": "regression"}) == [
        "task: the bundled dataset 'digits' is for classification, not regression"
    ]


def test_searcher_rules_are_checked_by_the_config():
    grid_float = {**MINIMAL, "space": {"optimizer__lr": {"type": "float", "low": 0.001, "high": 0.1}},
                  "search": {"algorithm": "grid"}}
    (problem,) = problems_of(grid_float)
    assert problem.startswith("space.optimizer__lr: a float range without `step` cannot be enumerated")
    mixed = {**MINIMAL, "space": {"optimizer__lr": {"type": "float", "low": 0.001, "high": 0.1},
                                  "module__hidden": {"type": "grid", "values": [8, 16]}},
             "search": {"algorithm": "optuna"}}
    (problem,) = problems_of(mixed)
    assert problem.startswith("space: search: optuna cannot mix grid parameters ['module__hidden']")
    all_grid = copy.deepcopy(mixed)
    all_grid["space"]["optimizer__lr"] = {"type": "grid", "values": [0.01, 0.1]}
    assert load_config(all_grid).search.algorithm == "optuna"


def test_file_problems_name_the_file(tmp_path):
    path = write(tmp_path, {**MINIMAL, "seed": -1})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["seed: must be >= 0, got -1"]
    assert info.value.source == str(path)
    assert str(info.value) == f"1 problem in {path}:\n  - seed: must be >= 0, got -1"


# --- files that cannot be read ------------------------------------------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.problems == [f"experiment file {str(missing)!r} does not exist; check the path"]
    with pytest.raises(ConfigError):
        load_config(tmp_path)  # a directory is not an experiment file


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "name: x\ndata: {dataset: digits\nmodel: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith("not valid YAML: ")
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"1 problem in {path}:")


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "- name: x\n- model: y\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["the file must hold a mapping (name:, model:, data:, ...)"]


# --- overrides ----------------------------------------------------------------------------------


def test_override_search_num_samples_and_max_epochs():
    base = {**MINIMAL, "space": {"module__hidden": {"type": "grid", "values": [8, 16]}}}
    cfg = load_config(base, search="grid", num_samples=4, max_epochs=5, seed=3, name="other")
    assert cfg.search.algorithm == "grid"
    assert cfg.search.num_samples == 4
    assert cfg.train.max_epochs == 5
    assert cfg.seed == 3 and cfg.name == "other"
    # None means "not given"
    assert load_config(base, search=None, num_samples=None) == load_config(base)
    # the overrides do not change the caller's dict
    assert "search" not in base and "train" not in base


def test_override_is_validated():
    base = {**MINIMAL, "space": {"optimizer__lr": {"type": "float", "low": 0.001, "high": 0.1}}}
    (problem,) = problems_of(base, search="grid")
    assert problem.startswith("space.optimizer__lr: a float range without `step`")
    assert problems_of(base, num_samples=0) == ["search.num_samples: must be >= 1, got 0"]
    asha = {**MINIMAL, "scheduler": {"name": "asha", "grace_period": 4}, "train": {"max_epochs": 8}}
    assert problems_of(asha, max_epochs=3) == [
        "scheduler.grace_period: 4 is more than train.max_epochs (3); lower it or train longer"
    ]


def test_unknown_override():
    with pytest.raises(ConfigError) as info:
        load_config(MINIMAL, epochs=3)
    (problem,) = info.value.problems
    assert problem.startswith("override 'epochs' is not known; did you mean 'max_epochs'? "
                              "(known: name, seed, storage, search,")
    with pytest.raises(ConfigError) as info:
        load_config(MINIMAL, zzz=1)
    assert info.value.problems[0].startswith("override 'zzz' is not known (known: name,")
    with pytest.raises(ConfigError) as info:
        load_config(MINIMAL, num_sample=3)
    assert info.value.problems[0].startswith("override 'num_sample' is not known; did you mean 'num_samples'?")


def test_switching_scheduler_drops_options_the_new_one_does_not_take():
    base = {**MINIMAL, "train": {"max_epochs": 6},
            "scheduler": {"name": "asha", "grace_period": 2, "reduction_factor": 2, "brackets": 1}}
    median = load_config(base, scheduler="median")
    assert median.scheduler.name == "median"
    assert dict(median.scheduler.options) == {"grace_period": 2, "min_samples_required": 3}
    hyperband = load_config(base, scheduler="hyperband")
    assert dict(hyperband.scheduler.options) == {"reduction_factor": 2.0}
    fifo = load_config(base, scheduler="fifo")
    assert fifo.scheduler.name == "fifo" and dict(fifo.scheduler.options) == {}
    same = load_config(base, scheduler="asha")
    assert dict(same.scheduler.options) == {"grace_period": 2, "reduction_factor": 2.0, "brackets": 1}
    # from a config object (config_to_dict writes every option, defaults included)
    cfg = load_config(base)
    assert dict(cfg.with_overrides(scheduler="median").scheduler.options) == {
        "grace_period": 2, "min_samples_required": 3}
    # from no scheduler at all, and from a scheduler given as a plain name
    assert dict(load_config(MINIMAL, scheduler="asha").scheduler.options) == {
        "grace_period": 1, "reduction_factor": 3.0, "brackets": 1}
    assert load_config({**MINIMAL, "scheduler": "median"}, scheduler="asha").scheduler.name == "asha"
    # an unknown scheduler is still reported
    (problem,) = problems_of(base, scheduler="ashaa")
    assert problem.startswith("scheduler.name: unknown scheduler 'ashaa'; did you mean 'asha'?")


def test_metric_override_re_derives_mode():
    base = {**MINIMAL, "train": {"metrics": ["accuracy", "f1"]},
            "search": {"metric": "val_loss", "mode": "min"}}
    cfg = load_config(base, metric="val_accuracy")
    assert (cfg.search.metric, cfg.search.mode) == ("val_accuracy", "max")
    back = cfg.with_overrides(metric="val_loss")  # config_to_dict wrote mode: max explicitly
    assert (back.search.metric, back.search.mode) == ("val_loss", "min")
    assert load_config(base, metric="train_loss").search.mode == "min"
    assert load_config(base, metric="val_f1").search.mode == "max"
    # an explicit mode override wins
    assert load_config(base, metric="val_accuracy", mode="min").search.mode == "min"
    assert load_config(base, mode="max").search.mode == "max"
    # the new metric must be reported
    (problem,) = problems_of(base, metric="val_roc_auc")
    assert problem.startswith("search.metric: 'val_roc_auc' is not reported")


def test_override_resources_and_storage():
    cfg = load_config(MINIMAL, cpus_per_trial=2, gpus_per_trial=0.25, storage="elsewhere/runs", max_concurrent=3)
    assert (cfg.resources.cpu, cfg.resources.gpu) == (2.0, 0.25)
    assert cfg.storage == "elsewhere/runs" and cfg.search.max_concurrent == 3


# --- round trip ---------------------------------------------------------------------------------


def test_config_to_dict_round_trip():
    for source in (MINIMAL, FULL):
        cfg = load_config(source)
        data = config_to_dict(cfg)
        assert load_config(data) == cfg
        assert load_config(cfg) == cfg  # an ExperimentConfig is accepted as a source too
        # and through YAML text
        assert load_config(yaml.safe_load(yaml.safe_dump(data))) == cfg


def test_round_trip_through_a_file(tmp_path):
    cfg = load_config({**FULL, "import_paths": ["/some/dir"]})
    path = write(tmp_path, config_to_dict(cfg))
    again = load_config(path)
    # loading from a file adds the file's directory to import_paths; all else is equal
    assert again.import_paths == ("/some/dir", str(tmp_path.resolve()))
    assert again == dataclasses.replace(cfg, import_paths=again.import_paths)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_example_files_load_and_round_trip(name):
    cfg = load_config(ROOT / "examples" / name)
    assert load_config(config_to_dict(cfg)) == cfg
    assert cfg.with_overrides() == cfg


def test_config_to_dict_layout():
    data = config_to_dict(load_config(FULL))
    assert data["model"] == {"name": "examples.models:MLP", "args": {"hidden": 32}}
    assert data["loss"] == {"name": "cross_entropy", "args": {}}
    assert data["train"]["early_stopping"] == {"patience": 2, "min_delta": 0.01}
    assert data["scheduler"] == {"name": "asha", "grace_period": 2, "reduction_factor": 2.0, "brackets": 1}
    assert data["search"] == {"algorithm": "random", "num_samples": 3, "metric": "val_accuracy",
                              "mode": "max", "max_concurrent": 2}
    assert "import_paths" not in data
    assert "factory_args" not in data["data"] and "parquet" not in data["data"]
