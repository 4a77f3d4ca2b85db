"""Several objectives (#23 item 4): the file's checks, the Pareto front, and a real run on Ray."""

from __future__ import annotations

import copy
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import raytune_torch as rt
from raytune_torch.cli import main
from raytune_torch.config import Problems, SearchConfig, load_config
from raytune_torch.results import pareto_front
from tests.conftest import BASE

MULTI = {"algorithm": "optuna", "num_samples": 4, "metric": ["val_accuracy", "n_params"]}
SPACE = {"optimizer__lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
         "module__hidden": {"type": "choice", "values": [4, 16]}}


def _problems(search: dict, **sections) -> list[str]:
    exp = copy.deepcopy(BASE)
    exp["space"] = SPACE
    exp["search"] = search
    exp.update(sections)
    with pytest.raises(rt.ConfigError) as info:
        load_config(exp)
    return info.value.problems


def test_modes_follow_each_metric_and_the_section_round_trips():
    exp = {**copy.deepcopy(BASE), "space": SPACE, "search": MULTI}
    search = load_config(exp).search
    assert search.metric == ("val_accuracy", "n_params") and search.mode == ("max", "min")
    assert search.multi_objective and search.primary_metric == "val_accuracy" and search.primary_mode == "max"
    assert search.objectives_text == "val_accuracy (max), n_params (min)"
    assert search.to_dict()["metric"] == ["val_accuracy", "n_params"]
    assert SearchConfig.from_dict(search.to_dict(), Problems()) == search
    # speed and size are objectives too, each with its own direction
    speed = load_config({**exp, "search": {**MULTI, "metric": ["val_accuracy", "samples_per_s", "epoch_time_s"]}})
    assert speed.search.mode == ("max", "max", "min")
    # a list of one is one metric
    assert load_config({**exp, "search": {**MULTI, "metric": ["val_loss"], "mode": ["min"]}}).search.metric == "val_loss"


@pytest.mark.parametrize("search, sections, message", [
    ({**MULTI, "algorithm": "random"}, {},
     "search.metric: 2 objectives ['val_accuracy', 'n_params'] run on search: optuna (its multi-objective samplers), "
     "not random; set search.algorithm: optuna, or optimize one metric"),
    (MULTI, {"scheduler": "asha"},
     "scheduler: asha stops or pauses trials by one metric, but the search has 2 objectives "
     "['val_accuracy', 'n_params']; use scheduler: fifo (the default), or optimize one metric"),
    ({**MULTI, "mode": ["max"]}, {},
     "search.mode: 1 mode(s) ['max'] for 2 metric(s) ['val_accuracy', 'n_params']; give one mode per metric, "
     "in the same order"),
    ({**MULTI, "mode": ["max", "smallest"]}, {},
     "search.mode: each mode must be 'min' or 'max', got ['max', 'smallest']"),
    ({**MULTI, "mode": "max"}, {},
     "search.mode: 'max' is one mode for 2 metrics ['val_accuracy', 'n_params']; give a list of one mode per "
     "metric, e.g. mode: [max, max]"),
    ({**MULTI, "metric": ["val_accuracy", "val_accuracy"]}, {},
     "search.metric: ['val_accuracy'] listed twice in ['val_accuracy', 'val_accuracy']; list each objective once"),
    ({**MULTI, "metric": ["val_accuracy", "n_param"]}, {},
     "search.metric: 'n_param' is not reported; did you mean 'n_params'?; trials report train_loss, val_loss, "
     "val_accuracy and n_params, epoch_time_s, samples_per_s (add the metric to train.metrics)"),
    ({**MULTI, "sampler": "cmaes"}, {},
     "search.sampler: cmaes optimizes one objective, not 2 ['val_accuracy', 'n_params']; use tpe (the default), "
     "nsga2, gp, qmc or random"),
], ids=["not-optuna", "pruning-scheduler", "lengths", "bad-mode", "one-mode-for-two", "twice", "not-reported",
        "cmaes"])
def test_what_cannot_run_is_refused_before_launch(search, sections, message):
    assert _problems(search, **sections) == [message]


def test_an_own_metric_among_the_objectives_needs_its_modes():
    problems = _problems({**MULTI, "metric": ["val_accuracy", "val_mine"]},
                         train={**BASE["train"], "metrics": ["accuracy", "tests.helpers_steps:mine"]})
    assert problems == [
        "search.mode: the search metrics ['val_mine'] come from functions of yours in train.metrics, so whether "
        "higher is better is yours to say; set search.mode to a list of one mode per metric, e.g. [max, max]"]


def test_pareto_front_of_points_checked_by_hand():
    # (accuracy: max, size: min)
    points = [(0.90, 1000), (0.80, 500), (0.85, 1200), (0.80, 500), (0.95, 3000), (0.70, 700), (0.95, 2900)]
    # (0.85, 1200) loses to (0.90, 1000); (0.70, 700) to (0.80, 500); (0.95, 3000) to (0.95, 2900);
    # the two (0.80, 500) are equal, and neither dominates the other.
    assert pareto_front(points, ("max", "min")) == [0, 1, 3, 6]
    assert pareto_front([(1.0,), (0.5,), (1.0,)], ("max",)) == [0, 2]
    assert pareto_front([(1, 1), (2, 2)], ("min", "min")) == [0]
    assert pareto_front([], ("min", "max")) == []


def _front_by_hand(last: dict[str, tuple[float, int]]) -> set[str]:
    """Non-dominated trials for (accuracy up, size down): sweep by size, keep each strict accuracy gain."""
    front, best_acc = set(), -1.0
    for size in sorted({s for _, s in last.values()}):
        same = {t: a for t, (a, s) in last.items() if s == size}
        top = max(same.values())
        if top > best_acc:
            front |= {t for t, a in same.items() if a == top}
            best_acc = top
    return front


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_pareto_front_of_a_real_run_and_a_member_s_model(experiment, capsys):
    """Four trials (two sizes x two learning rates, as Optuna's grid), one epoch: the front in
    best.json and the table's pareto column match the front computed here from the table; each
    front member's model loads and scores its reported accuracy again on the validation split."""
    from raytune_torch.data import load_data

    experiment["space"] = {"module__hidden": {"type": "grid", "values": [4, 16]},
                           "optimizer__lr": {"type": "grid", "values": [3e-4, 3e-2]}}
    experiment["search"] = {"algorithm": "optuna", "metric": ["val_accuracy", "n_params"], "mode": ["max", "min"]}
    experiment["train"]["max_epochs"] = 1
    result = rt.run(experiment, quiet=True)

    table = pq.read_table(f"{result.run_dir}/results.parquet").to_pandas()
    assert table["pareto"].dtype == bool and table["trial_id"].nunique() == 4
    last = {t: (float(g["val_accuracy"].iloc[-1]), int(g["n_params"].iloc[-1])) for t, g in table.groupby("trial_id")}
    sizes = {t: int(g["config/module__hidden"].iloc[0]) for t, g in table.groupby("trial_id")}
    # MLP(64 -> h -> 10): 64h + h + 10h + 10 parameters
    assert all(last[t][1] == 75 * h + 10 for t, h in sizes.items())
    expected = _front_by_hand(last)
    assert 0 < len(expected) < 4
    assert set(table.loc[table["pareto"], "trial_id"]) == expected

    best = json.loads(open(f"{result.run_dir}/best.json").read())
    assert best["metric"] == ["val_accuracy", "n_params"] and best["mode"] == ["max", "min"]
    front = best["pareto_front"]
    assert {m["trial_id"] for m in front} == expected
    assert [m["values"]["val_accuracy"] for m in front] == sorted((last[t][0] for t in expected), reverse=True)
    assert best["trial_id"] == front[0]["trial_id"]  # the member best by the first objective

    config = load_config(result.local_dir + "/experiment.yaml")
    data = load_data(config.data, config.task, config.seed)
    X, y = torch.from_numpy(data.X_val), np.asarray(data.y_val)
    for member in result.pareto_front:
        model = result.load_model(member["trial_id"])
        assert sum(p.numel() for p in model.parameters()) == member["values"]["n_params"]
        with torch.no_grad():
            accuracy = float((model(X).argmax(1).numpy() == y).mean())
        assert accuracy == pytest.approx(member["values"]["val_accuracy"], abs=1e-6)
    with pytest.raises(rt.ResultsError, match=r"has no trial 'nope'; its trials: "):
        result.load_model("nope")

    assert main(["results", result.run_dir]) == 0
    out = capsys.readouterr().out
    assert f"Pareto front of val_accuracy (max), n_params (min): {len(expected)} trial(s)" in out
    for member in front:
        assert f"trial {member['trial_id']} (epoch 1): val_accuracy={member['values']['val_accuracy']:.4g}" in out
    top = result.trials()
    assert top["pareto"].head(len(expected)).all() and not top["pareto"].iloc[len(expected):].any()
