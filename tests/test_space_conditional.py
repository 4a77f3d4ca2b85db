"""Conditional parameters (``when``): building, parsing, the checks, grid enumeration, random
points, Optuna's define-by-run function, and the trial that never sees an inactive parameter
(no Ray instance: Optuna and the trial run in this process)."""

from __future__ import annotations

import copy
import pickle

import pytest
import yaml

from raytune_torch.config import load_config
from raytune_torch.exceptions import ConfigError
from raytune_torch.space import (
    Choice,
    Float,
    Grid,
    Int,
    active_params,
    check_conditions,
    check_searcher,
    conditions,
    grid_points,
    ordered,
    parse_space,
    representative_point,
    space_to_dict,
)

OPTIMIZERS = {
    "optimizer": Choice(["adam", "sgd"]),
    "optimizer__momentum": Float(0.5, 0.99, when={"optimizer": "sgd"}),
}

YAML = """
optimizer: {type: choice, values: [adam, sgd, rmsprop]}
optimizer__momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer: [sgd, rmsprop]}}
optimizer__nesterov: {type: choice, values: [false, true], when: {optimizer: sgd}}
optimizer__lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
"""


# --- building and parsing -----------------------------------------------------------------------


def test_when_is_kept_with_each_value_as_a_tuple():
    assert Float(0.5, 0.99, when={"optimizer": "sgd"}).when == {"optimizer": ("sgd",)}
    assert Int(1, 3, when={"a": [1, 2]}).when == {"a": (1, 2)}
    assert Choice([1, 2], when={"a": "x", "b": True}).when == {"a": ("x",), "b": (True,)}
    assert Grid([1], when={"a": [[64, 64]]}).when == {"a": ([64, 64],)}  # a list value, listed
    assert Float(0, 1).when is None
    assert Float(0.5, 0.99, when={"optimizer": "sgd"}) == Float(0.5, 0.99, when={"optimizer": ["sgd"]})
    assert Float(0.5, 0.99, when={"optimizer": "sgd"}) != Float(0.5, 0.99)
    assert hash(Float(0.5, 0.99, when={"optimizer": "sgd"})) == hash(Float(0.5, 0.99))


@pytest.mark.parametrize("make, message", [
    (lambda: Float(0.5, 0.99, when="sgd"),
     "`when` must map another parameter to its value (or a list of values), e.g. {'optimizer': 'sgd'}, "
     "but got 'sgd'."),
    (lambda: Choice([1], when={}),
     "`when` must map another parameter to its value (or a list of values), e.g. {'optimizer': 'sgd'}, "
     "but got {}."),
    (lambda: Int(1, 2, when={"optimizer": []}), "`when` lists no value for 'optimizer'; list at least one of its values."),
    (lambda: Grid([1], when={1: "a"}), "`when` keys must be parameter names, but got 1."),
])
def test_when_of_the_wrong_shape_is_refused_when_built(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message


def test_yaml_space_parses_and_round_trips():
    space, problems = parse_space(yaml.safe_load(YAML))
    assert problems == []
    assert space["optimizer__momentum"] == Float(0.5, 0.99, when={"optimizer": ["sgd", "rmsprop"]})
    assert space["optimizer__nesterov"] == Choice([False, True], when={"optimizer": "sgd"})
    written = space_to_dict(space)
    assert written["optimizer__momentum"]["when"] == {"optimizer": ["sgd", "rmsprop"]}
    assert written["optimizer__nesterov"]["when"] == {"optimizer": "sgd"}
    assert parse_space(yaml.safe_load(yaml.safe_dump(written)))[0] == space
    listed = {"module__layers": Choice([[64], [64, 64]]), "x": Float(0, 1, when={"module__layers": [[64]]})}
    assert space_to_dict(listed)["x"]["when"] == {"module__layers": [[64]]}
    assert parse_space(space_to_dict(listed))[0] == listed


# --- the checks on the whole space ---------------------------------------------------------------


def _problems(raw: dict) -> list[str]:
    return parse_space(raw)[1]


def test_a_condition_on_a_missing_parameter_suggests_the_name():
    assert _problems({
        "optimizer": {"type": "choice", "values": ["adam", "sgd"]},
        "optimizer__momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimzer": "sgd"}},
    }) == ["space.optimizer__momentum.when: 'optimzer' is not a parameter of the space; did you mean 'optimizer'?"]
    assert _problems({"x": {"type": "choice", "values": [1], "when": {"zzz": 1}}}) == [
        "space.x.when: 'zzz' is not a parameter of the space; it has ['x']"]


def test_a_value_outside_the_other_parameters_values_is_refused():
    assert _problems({
        "optimizer": {"type": "choice", "values": ["adam", "sgd"]},
        "optimizer__momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": ["sgd", "rmsprop"]}},
    }) == ["space.optimizer__momentum.when: 'rmsprop' is not one of optimizer's values ['adam', 'sgd']; "
           "name one of them"]
    # True is not 1: a bool condition on an int choice is a different value
    assert _problems({"a": {"type": "choice", "values": [0, 1]}, "b": {"type": "choice", "values": [1], "when": {"a": True}}}) == [
        "space.b.when: True is not one of a's values [0, 1]; name one of them"]


def test_a_condition_on_a_range_or_a_constant_is_refused():
    assert _problems({
        "module__hidden": {"type": "int", "low": 16, "high": 64},
        "lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True},
        "module__dropout": {"type": "float", "low": 0.0, "high": 0.5, "when": {"module__hidden": 64, "lr": 0.01}},
        "module__activation": "relu",
        "module__layers": {"type": "choice", "values": [1, 2], "when": {"module__activation": "relu"}},
    }) == [
        "space.module__dropout.when: 'module__hidden' is an int range; a condition needs a `choice` or `grid` "
        "parameter, so list module__hidden's values with `type: choice`",
        "space.module__dropout.when: 'lr' is a log float range; a condition needs a `choice` or `grid` "
        "parameter, so list lr's values with `type: choice`",
        "space.module__layers.when: 'module__activation' is a constant ('relu'); a condition needs a `choice` "
        "or `grid` parameter, so list module__activation's values with `type: choice`",
    ]


def test_a_condition_on_itself_and_cycles_are_refused():
    assert _problems({"a": {"type": "choice", "values": [1, 2], "when": {"a": 1}}}) == [
        "space.a.when: 'a' cannot depend on its own value; name another parameter"]
    assert _problems({
        "a": {"type": "choice", "values": [1, 2], "when": {"b": 1}},
        "b": {"type": "choice", "values": [1, 2], "when": {"a": 1}},
    }) == ["space.a.when: the conditions form a cycle a -> b -> a, so none of them can be active first; "
           "remove one of these `when`s"]
    assert _problems({
        "c": {"type": "choice", "values": [1], "when": {"a": 1}},
        "a": {"type": "choice", "values": [1], "when": {"b": 1}},
        "b": {"type": "choice", "values": [1], "when": {"c": 1}},
    }) == ["space.c.when: the conditions form a cycle c -> a -> b -> c, so none of them can be active first; "
           "remove one of these `when`s"]


def test_a_chain_is_allowed_and_ordered_parents_first():
    space = {
        "c": Choice([1, 2], when={"b": 1}),
        "b": Choice([1, 2], when={"a": "x"}),
        "a": Choice(["x", "y"]),
        "lr": 0.1,
    }
    assert check_conditions(space) == []
    assert ordered(space) == ["a", "b", "c", "lr"]
    assert active_params(space, {"a": "x", "b": 1, "c": 2, "lr": 0.1}) == {"a": "x", "b": 1, "c": 2, "lr": 0.1}
    assert active_params(space, {"a": "x", "b": 2, "c": 2, "lr": 0.1}) == {"a": "x", "b": 2, "lr": 0.1}
    # c's parent is inactive, so c is too, whatever b was drawn as
    assert active_params(space, {"a": "y", "b": 1, "c": 2, "lr": 0.1}) == {"a": "y", "lr": 0.1}
    assert active_params(space, {"a": "y", "other": 3}) == {"a": "y", "other": 3}


def test_a_broken_parameter_is_reported_once_not_again_by_its_dependents():
    assert _problems({
        "optimizer": {"type": "choice", "values": []},
        "optimizer__momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}},
    }) == ["space.optimizer: `values` is empty; list at least one value."]


def test_several_keys_must_all_hold():
    space = {"a": Choice([1, 2]), "b": Choice(["x", "y"]), "c": Float(0, 1, when={"a": [1, 2], "b": "y"})}
    assert "c" not in active_params(space, {"a": 1, "b": "x", "c": 0.5})
    assert "c" in active_params(space, {"a": 2, "b": "y", "c": 0.5})


# --- searchers -----------------------------------------------------------------------------------


def test_grid_drops_inactive_parameters_and_the_repeats_they_leave():
    space = {"optimizer": Grid(["adam", "sgd"]), "optimizer__momentum": Grid([0.5, 0.9, 0.99], when={"optimizer": "sgd"})}
    assert grid_points(space) == [
        {"optimizer": "adam"},
        {"optimizer": "sgd", "optimizer__momentum": 0.5},
        {"optimizer": "sgd", "optimizer__momentum": 0.9},
        {"optimizer": "sgd", "optimizer__momentum": 0.99},
    ]
    chained = {
        "optimizer": Choice(["adam", "sgd"]),
        "optimizer__momentum": Float(0.5, 0.9, step=0.4, when={"optimizer": "sgd"}),
        "optimizer__nesterov": Choice([False, True], when={"optimizer": "sgd"}),
        "module__hidden": Grid([16, 32]),
    }
    assert len(grid_points(chained)) == 2 * (1 + 2 * 2)


def test_representative_point_leaves_inactive_parameters_out():
    assert representative_point(OPTIMIZERS) == {"optimizer": "adam"}


def test_searchers_that_cannot_leave_a_parameter_out_are_refused():
    assert check_searcher(OPTIMIZERS, "hyperopt") == [
        "space: search: hyperopt cannot leave out inactive parameters (['optimizer__momentum'] have `when`); use "
        "search: optuna (it suggests a parameter only while it is active), random or grid, or remove `when`"]
    all_grid = {"optimizer": Grid(["adam", "sgd"]), "optimizer__momentum": Grid([0.5, 0.9], when={"optimizer": "sgd"})}
    assert check_searcher(all_grid, "optuna") == [
        "space: search: optuna runs an all-grid space as Optuna's GridSampler, which sets every parameter in "
        "every trial, so it cannot leave out the conditional parameters ['optimizer__momentum']; use search: "
        "grid (it drops inactive parameters and the repeated points they leave), or write the parameters as "
        "`type: choice`"]
    on_sampled = {"optimizer": Choice(["adam", "sgd"]), "optimizer__momentum": Grid([0.5, 0.9], when={"optimizer": "sgd"})}
    assert check_searcher(on_sampled, "random") == [
        "space.optimizer__momentum.when: under search: random a grid parameter is enumerated before anything is "
        "sampled, so its condition can name only grid parameters, not ['optimizer']; make optimizer__momentum "
        "`type: choice`, make optimizer `type: grid`, or use search: grid"]
    assert check_searcher(all_grid, "random") == []
    assert check_searcher(all_grid, "grid") == []
    assert check_searcher(OPTIMIZERS, "optuna") == []
    assert check_searcher(OPTIMIZERS, "random") == []


EXPERIMENT = {
    "name": "cond",
    "data": {"dataset": "digits"},
    "model": {"name": "examples.models:MLP", "args": {"hidden": 16}},
    "train": {"max_epochs": 2, "metrics": ["accuracy"]},
    "space": {
        "optimizer": {"type": "choice", "values": ["adam", "sgd"]},
        "optimizer__momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}},
    },
    "search": {"algorithm": "random", "metric": "val_accuracy"},
}


def _config_problems(**changes) -> list[str]:
    raw = copy.deepcopy(EXPERIMENT)
    raw.update(changes)
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    return info.value.problems


def test_the_experiment_file_refuses_pbt_and_hyperopt_before_launch():
    assert _config_problems(scheduler={"name": "pbt"}) == [
        "space: pbt mutates every searched parameter of a trial, so it would set the conditional parameters "
        "['optimizer__momentum'] where they are inactive (and switch what they depend on under a running trial); "
        "remove their `when`, or use scheduler: asha"]
    assert _config_problems(search={"algorithm": "hyperopt", "metric": "val_accuracy"}) == [
        "space: search: hyperopt cannot leave out inactive parameters (['optimizer__momentum'] have `when`); use "
        "search: optuna (it suggests a parameter only while it is active), random or grid, or remove `when`"]
    config = load_config(copy.deepcopy(EXPERIMENT))
    assert conditions(config.space) == {"optimizer__momentum": {"optimizer": ("sgd",)}}


def test_the_python_api_takes_space_objects_and_checks_them_too():
    raw = copy.deepcopy(EXPERIMENT)
    raw["space"] = {"optimizer": Choice(["adam", "sgd"]), "optimizer__momentum": Float(0.5, 0.99, when={"optimizer": "nag"})}
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    assert info.value.problems == [
        "space.optimizer__momentum.when: 'nag' is not one of optimizer's values ['adam', 'sgd']; name one of them"]


def test_random_points_draw_every_parameter_then_drop_the_inactive():
    from raytune_torch._ray.search import sampled_points

    space = {**OPTIMIZERS, "module__hidden": Grid([16, 32]), "module__activation": "relu"}
    points = sampled_points(space, 6, seed=3)
    assert len(points) == 12
    assert [p["module__hidden"] for p in points[:2]] == [16, 32]
    assert all(("optimizer__momentum" in p) == (p["optimizer"] == "sgd") for p in points)
    assert {p["optimizer"] for p in points} == {"adam", "sgd"}
    assert all(0.5 <= p["optimizer__momentum"] <= 0.99 for p in points if "optimizer__momentum" in p)
    assert all(type(p.get("optimizer__momentum", 0.0)) is float for p in points)
    assert "module__activation" not in points[0]  # constants come from the param space
    assert sampled_points(space, 6, seed=3) == points
    assert sampled_points(space, 6, seed=4) != points


def test_param_space_keeps_a_conditional_parameter_out_of_rays_sampling():
    from raytune_torch._ray.search import param_space

    space = {**OPTIMIZERS, "module__activation": "relu"}
    grid = param_space(space, "grid")
    assert grid["optimizer__momentum"] is None and grid["module__activation"] == "relu"
    assert param_space(space, "random")["optimizer__momentum"] is None
    assert param_space(space, "optuna") == {"module__activation": "relu"}


def test_optuna_define_by_run_suggests_a_parameter_only_while_active():
    import optuna

    from raytune_torch._ray.search import DefineByRun

    # a log range with a step: Optuna samples it without the step, as Ray's own conversion does
    space = {**OPTIMIZERS, "module__hidden": Int(16, 64, step=16), "lr": Float(1e-3, 1e-1, log=True, step=1e-3)}
    define = pickle.loads(pickle.dumps(DefineByRun(space)))  # OptunaSearch pickles its space
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    seen = []
    for _ in range(20):
        trial = study.ask()
        assert define(trial) is None
        seen.append(dict(trial.params))
        study.tell(trial, 0.0)
    assert {p["optimizer"] for p in seen} == {"adam", "sgd"}
    for params in seen:
        assert ("optimizer__momentum" in params) == (params["optimizer"] == "sgd")
        assert params["module__hidden"] in (16, 32, 48, 64)
        assert 1e-3 <= params["lr"] <= 1e-1
    assert list(seen[0])[:1] == ["optimizer"]  # the parent is suggested first


# --- the trial -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from raytune_torch.data import load_splits

    config = load_config(copy.deepcopy(EXPERIMENT))
    return load_splits(config.data, config.task, config.seed)


def test_an_inactive_parameter_never_reaches_the_optimizer(digits):
    import torch

    from raytune_torch.trainable import run_trial
    from reporters import FakeReporter

    raw = copy.deepcopy(EXPERIMENT)
    raw["train"]["max_epochs"] = 1
    config = load_config(raw)
    # Adam takes no `momentum`: given it, building the optimizer fails
    adam = run_trial({"optimizer": "adam", "optimizer__momentum": 0.9}, config, digits, FakeReporter())
    assert isinstance(adam.optimizer, torch.optim.Adam)
    assert adam.params == {"optimizer": "adam"}
    sgd = run_trial({"optimizer": "sgd", "optimizer__momentum": 0.9}, config, digits, FakeReporter())
    assert isinstance(sgd.optimizer, torch.optim.SGD) and sgd.optimizer.param_groups[0]["momentum"] == 0.9
    assert sgd.params == {"optimizer": "sgd", "optimizer__momentum": 0.9}


def test_tensorboard_leaves_an_inactive_parameter_blank():
    from raytune_torch.tensorboard import session_start
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    summary = session_start({"optimizer": "adam", "optimizer__momentum": None}, OPTIMIZERS)
    data = HParamsPluginData()
    data.ParseFromString(summary.value[0].metadata.plugin_data.content)
    assert set(data.session_start_info.hparams) == {"optimizer"}


def test_torch_search_cv_refuses_conditional_parameters():
    from raytune_torch.search_cv import params_to_space

    params = {"optimizer": ["adam", "sgd"],
              "optimizer__momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}},
              "optimizer__weight_decay": Float(0.0, 0.1, when={"optimizer": "sgd"})}
    with pytest.raises(ConfigError) as info:
        params_to_space(params, "random")
    assert info.value.problems == [
        f"params.{name}: TorchSearchCV takes no conditional parameters (`when`); search them with an experiment "
        f"file (raytune_torch.run), or list the combinations as a list of grids"
        for name in ("optimizer__momentum", "optimizer__weight_decay")]
