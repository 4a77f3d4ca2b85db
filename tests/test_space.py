"""The search-space types, their parsing from YAML-shaped data, and the searcher rules (no Ray)."""

from __future__ import annotations

import math

import pytest
import yaml

from raytune_torch.space import (
    SEARCHERS,
    Choice,
    Float,
    Grid,
    Int,
    check_searcher,
    grid_points,
    grid_values,
    parse_space,
    representative_point,
    searched,
    space_to_dict,
)


# --- construction and validation --------------------------------------------------------------


def test_valid_ranges_keep_their_fields():
    f = Float(1e-4, 1e-1, log=True)
    assert (f.low, f.high, f.log, f.step) == (1e-4, 1e-1, True, None)
    i = Int(16, 128, step=16)
    assert (i.low, i.high, i.log, i.step) == (16, 128, False, 16)
    assert Float(0, 1) == Float(0, 1)  # ints are accepted as numbers for a float range
    assert Float(0.5, 0.5).low == 0.5  # a one-point range is allowed


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Float(1.0, 0.5), "`low <= high` must hold, but got (low=1.0, high=0.5); swap them."),
        (lambda: Int(10, 2), "`low <= high` must hold, but got (low=10, high=2); swap them."),
        (lambda: Float(0.0, 1.0, log=True),
         "a log range needs `low > 0`, but got (low=0.0); raise `low` or set `log: false`."),
        (lambda: Float(-1.0, 1.0, log=True),
         "a log range needs `low > 0`, but got (low=-1.0); raise `low` or set `log: false`."),
        (lambda: Int(0, 8, log=True),
         "a log range needs `low > 0`, but got (low=0); raise `low` or set `log: false`."),
        (lambda: Float("a", 1.0), "`low` must be a number, but got 'a'."),
        (lambda: Float(0.0, None), "`high` must be a number, but got None."),
        (lambda: Float(True, 2.0), "`low` must be a number, but got True."),
        (lambda: Float(0.0, math.inf), "`high` must be finite, but got inf."),
        (lambda: Float(math.nan, 1.0), "`low` must be finite, but got nan."),
        (lambda: Int(1.5, 3), "`low` must be an integer, but got 1.5."),
        (lambda: Int(1, 3.0), "`high` must be an integer, but got 3.0."),
        (lambda: Float(1.0, 2.0, log="yes"), "`log` must be true or false, but got 'yes'."),
        (lambda: Float(0.0, 1.0, step=0), "`step` must be a number > 0, but got 0."),
        (lambda: Float(0.0, 1.0, step=-0.1), "`step` must be a number > 0, but got -0.1."),
        (lambda: Int(0, 10, step=0), "`step` must be an integer > 0, but got 0."),
        (lambda: Int(0, 10, step=1.5), "`step` must be an integer > 0, but got 1.5."),
        (lambda: Float(0.0, 1.0, step="x"), "`step` must be a number > 0, but got 'x'."),
        (lambda: Float(0.0, 1.0, step=2.0),
         "`step` (2.0) is larger than the range 0.0..1.0; use a smaller step."),
        (lambda: Int(0, 4, step=5), "`step` (5) is larger than the range 0..4; use a smaller step."),
    ],
)
def test_range_validation_messages(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message


@pytest.mark.parametrize("cls", [Choice, Grid])
def test_values_validation(cls):
    assert cls([1, 2]).values == (1, 2)
    assert cls((3,)).values == (3,)
    with pytest.raises(ValueError) as info:
        cls([])
    assert str(info.value) == "`values` is empty; list at least one value."
    with pytest.raises(ValueError) as info:
        cls("abc")
    assert str(info.value) == "`values` must be a list, but got 'abc'."
    with pytest.raises(ValueError) as info:
        cls(5)
    assert str(info.value) == "`values` must be a list, but got 5."
    with pytest.raises(ValueError) as info:
        cls({"a": 1})
    assert str(info.value) == "`values` must be a list, but got {'a': 1}."


def test_params_are_frozen_and_hashable():
    with pytest.raises(Exception):
        Float(0, 1).low = 3  # type: ignore[misc]
    assert len({Choice([1, 2]), Choice([1, 2]), Grid([1, 2])}) == 2
    assert Choice([1, 2]) != Grid([1, 2])


# --- parse_space --------------------------------------------------------------------------------

YAML_SPACE = """
optimizer__lr: {type: float, low: 1e-4, high: 1e-1, log: true}
module__hidden: {type: int, low: 16, high: 128, step: 16}
batch_size: {type: choice, values: [32, 64, 128]}
module__dropout: {type: grid, values: [0.0, 0.2]}
module__activation: relu
optimizer__betas: [0.9, 0.99]
loss__options: {reduction: mean}
optimizer__eps: null
"""


def test_parse_space_on_yaml():
    raw = yaml.safe_load(YAML_SPACE)
    assert raw["optimizer__lr"]["low"] == "1e-4"  # YAML reads `1e-4` (no dot) as a string
    space, problems = parse_space(raw)
    assert problems == []
    assert space == {
        "optimizer__lr": Float(1e-4, 1e-1, log=True),
        "module__hidden": Int(16, 128, step=16),
        "batch_size": Choice([32, 64, 128]),
        "module__dropout": Grid([0.0, 0.2]),
        "module__activation": "relu",
        "optimizer__betas": [0.9, 0.99],
        "loss__options": {"reduction": "mean"},
        "optimizer__eps": None,
    }
    assert isinstance(space["optimizer__lr"].low, float)
    assert set(searched(space)) == {"optimizer__lr", "module__hidden", "batch_size", "module__dropout"}


def test_parse_space_numeric_strings_for_float_step_and_non_numeric_strings():
    space, problems = parse_space({"module__p": {"type": "float", "low": "0", "high": "1", "step": "0.25"}})
    assert problems == []
    assert space["module__p"] == Float(0.0, 1.0, step=0.25)
    space, problems = parse_space({"module__p": {"type": "float", "low": "abc", "high": 1.0}})
    assert space == {}
    assert problems == ["space.module__p: `low` must be a number, but got 'abc'."]
    # only floats accept numeric strings
    space, problems = parse_space({"module__n": {"type": "int", "low": "1", "high": 4}})
    assert problems == ["space.module__n: `low` must be an integer, but got '1'."]


def test_parse_space_passes_param_objects_through_and_none_is_empty():
    p = Float(0.1, 0.2)
    assert parse_space({"lr": p}) == ({"lr": p}, [])
    assert parse_space(None) == ({}, [])
    assert parse_space({}) == ({}, [])


def test_parse_space_collects_every_problem():
    raw = {
        "a": {"type": "float", "low": 0.0},  # missing high
        "b": {"type": "int", "low": 0, "high": 3, "stpe": 1},  # unknown key
        "c": {"type": "uniform", "low": 0, "high": 1},  # unknown type
        "d": {"low": 0, "high": 1},  # no type
        "e": {"type": "choice"},  # missing values
        "f": {"type": "grid", "values": []},  # empty
        "g": {"type": "float", "low": 2.0, "high": 1.0},  # low > high
        "ok": {"type": "choice", "values": [1]},
    }
    space, problems = parse_space(raw)
    assert list(space) == ["ok"]
    assert problems == [
        "space.a: a `float` parameter needs `high`.",
        "space.b: unknown key(s) ['stpe'] for a `int` parameter; allowed: high, log, low, step, type, when.",
        "space.c: `type` must be one of ['choice', 'float', 'grid', 'int'], but got 'uniform'.",
        "space.d: `type` must be one of ['choice', 'float', 'grid', 'int'], but got None; "
        "add e.g. `type: float`.",
        "space.e: a `choice` parameter needs `values`.",
        "space.f: `values` is empty; list at least one value.",
        "space.g: `low <= high` must hold, but got (low=2.0, high=1.0); swap them.",
    ]


def test_parse_space_missing_several_keys_and_bad_shapes():
    _, problems = parse_space({"x": {"type": "int"}})
    assert problems == ["space.x: a `int` parameter needs `high`, `low`."]
    _, problems = parse_space({"x": {"type": "choice", "values": [1], "low": 0}})
    assert problems == ["space.x: unknown key(s) ['low'] for a `choice` parameter; allowed: type, values, when."]
    assert parse_space([1, 2]) == ({}, ["space: must be a mapping of parameter name to definition, got [1, 2]"])
    space, problems = parse_space({"": 1, 3: 2, "lr": 0.1})
    assert space == {"lr": 0.1}
    assert problems == [
        "space: parameter names must be non-empty strings, got ''",
        "space: parameter names must be non-empty strings, got 3",
    ]


# --- check_searcher -----------------------------------------------------------------------------


def test_check_searcher_unknown():
    assert check_searcher({}, "bayes") == [
        "search.algorithm: must be one of ['grid', 'random', 'optuna', 'hyperopt', 'bohb'], got 'bayes'"
    ]
    assert SEARCHERS == ("grid", "random", "optuna", "hyperopt", "bohb")


def test_check_searcher_grid():
    ok = {
        "a": Grid([1, 2]),
        "b": Choice(["x", "y"]),
        "c": Int(1, 4),
        "d": Float(0.0, 1.0, step=0.5),
        "e": Int(1, 64, log=True, step=8),
        "const": 3.0,
    }
    assert check_searcher(ok, "grid") == []
    problems = check_searcher({"lr": Float(1e-4, 1e-1, log=True), "n": Int(1, 64, log=True), "a": Grid([1])}, "grid")
    assert problems == [
        "space.lr: a float range without `step` cannot be enumerated by search: grid; add a `step`, "
        "list the values with `type: grid`, or use search: random/optuna",
        "space.n: a log int range without `step` cannot be enumerated by search: grid; add a `step`, "
        "list the values with `type: grid`, or use search: random/optuna",
    ]


def test_check_searcher_random_accepts_everything():
    space = {"lr": Float(1e-4, 1e-1, log=True), "n": Int(1, 64, log=True), "a": Grid([1, 2]), "b": Choice([1])}
    assert check_searcher(space, "random") == []


def test_check_searcher_optuna():
    mixed = {"a": Grid([1, 2]), "z": Grid([3]), "lr": Float(1e-4, 1e-1, log=True), "b": Choice([1, 2]), "c": 7}
    problems = check_searcher(mixed, "optuna")
    assert len(problems) == 1
    assert problems[0].startswith(
        "space: search: optuna cannot mix grid parameters ['a', 'z'] with sampled ones ['b', 'lr']; "
    )
    assert "Write the grids as `type: choice` to let TPE choose" in problems[0]
    assert "GridSampler" in problems[0]
    # every searched parameter a grid (constants aside): Optuna's GridSampler
    assert check_searcher({"a": Grid([1, 2]), "b": Grid([0.1]), "c": "const"}, "optuna") == []
    # no grid at all: TPE
    assert check_searcher({"lr": Float(1e-4, 1e-1, log=True), "b": Choice([1, 2])}, "optuna") == []


def test_check_searcher_hyperopt():
    problems = check_searcher({"a": Grid([1, 2]), "lr": Float(0.1, 0.2)}, "hyperopt")
    assert problems == [
        "space: search: hyperopt cannot enumerate grid parameters ['a']; write them as "
        "`type: choice` to let it choose, or use search: grid"
    ]
    # even an all-grid space is refused by hyperopt
    assert len(check_searcher({"a": Grid([1, 2])}, "hyperopt")) == 1
    assert check_searcher({"lr": Float(0.1, 0.2), "b": Choice([1, 2])}, "hyperopt") == []


# --- grid values and points -------------------------------------------------------------------


def test_grid_values_int_and_float():
    assert grid_values(Int(1, 4), "grid") == [1, 2, 3, 4]
    assert grid_values(Int(16, 128, step=16), "grid") == [16, 32, 48, 64, 80, 96, 112, 128]
    assert grid_values(Int(0, 10, step=3), "grid") == [0, 3, 6, 9]
    assert grid_values(Int(2, 2), "grid") == [2]
    assert grid_values(Int(1, 64, log=True), "grid") is None
    assert grid_values(Int(1, 9, log=True, step=4), "grid") == [1, 5, 9]
    assert grid_values(Float(0.0, 0.3, step=0.1), "grid") == [0.0, 0.1, 0.2, 0.3]
    assert grid_values(Float(0.0, 1.0, step=0.3), "grid") == [0.0, 0.3, 0.6, 0.9]
    assert grid_values(Float(0.0, 1.0), "grid") is None
    assert grid_values(Choice(["a", "b"]), "grid") == ["a", "b"]
    assert grid_values(Grid([0.1, 0.2]), "grid") == [0.1, 0.2]


@pytest.mark.parametrize("searcher", ["random", "optuna", "hyperopt"])
def test_grid_values_only_grids_enumerate_under_other_searchers(searcher):
    assert grid_values(Grid([1, 2]), searcher) == [1, 2]
    assert grid_values(Choice([1, 2]), searcher) is None
    assert grid_values(Int(1, 4), searcher) is None
    assert grid_values(Float(0.0, 1.0, step=0.5), searcher) is None


def test_grid_points():
    space = {"a": Grid([1, 2]), "b": Choice(["x", "y", "z"]), "lr": Float(0.1, 0.2), "c": "const"}
    assert grid_points(space, "random") == [{"a": 1}, {"a": 2}]
    points = grid_points({"a": Grid([1, 2]), "b": Choice(["x", "y", "z"]), "n": Int(0, 1), "c": 5}, "grid")
    assert len(points) == 2 * 3 * 2
    assert points[0] == {"a": 1, "b": "x", "n": 0}
    assert points[1] == {"a": 1, "b": "x", "n": 1}
    assert points[-1] == {"a": 2, "b": "z", "n": 1}
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert grid_points({"c": 5}) == [{}]  # nothing enumerated: one point


def test_representative_point():
    space = {"a": Grid([3, 4]), "b": Choice(["x"]), "lr": Float(0.01, 0.1, log=True), "n": Int(2, 9), "k": "v"}
    assert representative_point(space) == {"a": 3, "b": "x", "lr": 0.01, "n": 2, "k": "v"}


# --- space_to_dict ------------------------------------------------------------------------------


def test_space_to_dict_round_trip():
    space = {
        "optimizer__lr": Float(1e-4, 1e-1, log=True),
        "module__dropout": Float(0.0, 0.5, step=0.1),
        "module__hidden": Int(16, 128, step=16),
        "module__layers": Int(1, 8, log=True),
        "batch_size": Choice([32, 64]),
        "module__act": Grid(["relu", "tanh"]),
        "seed": 3,
        "loss__cfg": {"reduction": "sum"},
    }
    data = space_to_dict(space)
    assert data["optimizer__lr"] == {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}
    assert data["module__dropout"] == {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}
    assert data["module__hidden"] == {"type": "int", "low": 16, "high": 128, "step": 16}
    assert data["batch_size"] == {"type": "choice", "values": [32, 64]}
    assert data["module__act"] == {"type": "grid", "values": ["relu", "tanh"]}
    assert data["seed"] == 3
    parsed, problems = parse_space(data)
    assert problems == []
    assert parsed == space
    # and through YAML text, as a file would store it
    parsed_yaml, problems = parse_space(yaml.safe_load(yaml.safe_dump(data)))
    assert problems == []
    assert parsed_yaml == space
