"""What a searcher knows before it starts: points_to_evaluate, warm_start, and more trials for a
finished run (``resume --num-samples``)."""

from __future__ import annotations

import copy
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

import raytune_torch as rt
from raytune_torch import _ray
from raytune_torch.config import load_config
from raytune_torch.exceptions import ConfigError, ResultsError
from raytune_torch.warm import Known, check_points, known_trials
from tests.conftest import BASE

SPACE = {
    "optimizer__lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
    "module__hidden": {"type": "choice", "values": [8, 16]},
    "batch_size": 128,
}


def _config(search, space=None, **more):
    raw = copy.deepcopy(BASE)
    raw["space"] = copy.deepcopy(space or SPACE)
    raw["search"] = {"metric": "val_accuracy", **search}
    raw.update(more)
    return load_config(raw)


def _problems(search, space=None) -> str:
    with pytest.raises(ConfigError) as info:
        _config(search, space)
    return str(info.value)


# --- points_to_evaluate -------------------------------------------------------------------------


def test_points_are_checked_against_the_space():
    space = _config({}).space
    assert check_points(space, [{"optimizer__lr": 0.01}]) == []
    assert check_points(space, [{"optimizer__lr": 0.5, "module__hidden": 12, "batch_size": 64, "optimiser__lr": 1}]) == [
        "search.points_to_evaluate[0].optimizer__lr: 0.5 is outside [0.0001, 0.1], the space's domain for it",
        "search.points_to_evaluate[0].module__hidden: 12 is not one of [8, 16], the space's domain for it",
        "search.points_to_evaluate[0].batch_size: not a searched parameter of the space (it is the constant 128); "
        "searched: optimizer__lr, module__hidden",
        "search.points_to_evaluate[0].optimiser__lr: not a searched parameter of the space; did you mean "
        "'optimizer__lr'?; searched: optimizer__lr, module__hidden",
    ]


def test_points_in_the_file_are_checked_before_anything_starts():
    assert "search.points_to_evaluate[0].optimizer__lr: 2 is outside [0.0001, 0.1]" in _problems(
        {"algorithm": "random", "points_to_evaluate": [{"optimizer__lr": 2}]})
    assert ("search.points_to_evaluate: must be a list of configurations, e.g. [{optimizer__lr: 0.01}], got "
            "{'optimizer__lr': 0.01}") in _problems({"points_to_evaluate": {"optimizer__lr": 0.01}})
    assert ("search.points_to_evaluate: the grid searcher runs every point of the grid already; add the values to "
            "the grid, or use search: random or optuna") in _problems(
        {"algorithm": "grid", "points_to_evaluate": [{"module__hidden": 8}]},
        space={"module__hidden": {"type": "grid", "values": [8, 16]}})
    assert ("search.points_to_evaluate: optuna needs every searched parameter in each point (module__hidden, "
            "optimizer__lr); point(s) [0] leave some out (search: random fills them in)") in _problems(
        {"algorithm": "optuna", "points_to_evaluate": [{"optimizer__lr": 0.01}]})


@pytest.mark.parametrize("algorithm", ["random", "optuna", "hyperopt"])
def test_the_searcher_proposes_the_points_first(algorithm):
    points = [{"optimizer__lr": 0.02, "module__hidden": 16}, {"optimizer__lr": 0.0003, "module__hidden": 8}]
    config = _config({"algorithm": algorithm, "num_samples": 4, "points_to_evaluate": points})
    assert load_config(config.to_dict()) == config
    first = _suggestions(config, 2)
    assert [{k: p[k] for k in points[0]} for p in first] == points


def _suggestions(config, n, known=()):
    """The searcher's first ``n`` configurations, as Tune would ask for them."""
    plan = _ray.build_search(config, known=list(known))
    alg = plan.search_alg
    space = _ray.param_space(config.space, config.search.algorithm)
    if config.search.algorithm == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        assert isinstance(alg, BasicVariantGenerator)
        return [dict(p) for p in alg._points_to_evaluate[:n]]  # Tune resolves these before sampling
    alg.set_search_properties(config.search.metric, config.search.mode, space)
    return [alg.suggest(f"t{i}") for i in range(n)]


# --- warm start ---------------------------------------------------------------------------------


def test_a_warm_started_tpe_proposes_near_the_known_best():
    # Known: accuracy peaks at lr = 1e-2 (log10 = -2) and is better with 16 hidden units.
    known = []
    for i in range(30):
        log_lr = -4 + 3 * i / 29
        for hidden in (8, 16):
            known.append(Known(f"k{i}_{hidden}", {"optimizer__lr": 10 ** log_lr, "module__hidden": hidden},
                               1 - (log_lr + 2) ** 2 / 4 - (0.1 if hidden == 8 else 0)))
    config = _config({"algorithm": "optuna", "num_samples": 8})
    cold = _suggestions(config, 8)
    warm = _suggestions(config, 8, known)

    def distance(points):
        return statistics.mean(abs(math.log10(p["optimizer__lr"]) + 2) for p in points)

    assert distance(warm) < 0.5 < distance(cold)
    assert sum(p["module__hidden"] == 16 for p in warm) > sum(p["module__hidden"] == 16 for p in cold)


def test_warm_start_is_for_a_searcher_that_learns():
    assert ("search.warm_start: 'random' does not learn from earlier scores (Ray's searcher for it takes no "
            "evaluated points); use search: optuna, or give the best earlier configurations as "
            "search.points_to_evaluate") in _problems({"algorithm": "random", "warm_start": "runs/old"})


def test_a_warm_start_directory_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        known_trials(str(tmp_path), _config({}).space, "val_accuracy", "max")
    assert str(info.value).startswith("1 problem:\n  - search.warm_start: ")
    assert "is not a finished raytune_torch run (missing best.json, results.parquet, experiment.yaml)" in str(info.value)


# --- on Ray: warm start from a real run, and more trials for it -----------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, ray_session):
    """A finished Optuna run: 2 trials of 1 epoch."""
    exp = copy.deepcopy(BASE)
    exp.update(storage=str(tmp_path_factory.mktemp("warm") / "runs"), name="first", space=copy.deepcopy(SPACE))
    exp["train"]["max_epochs"] = 1
    exp["search"] = {"algorithm": "optuna", "num_samples": 2, "metric": "val_accuracy"}
    result = rt.run(exp, quiet=True)
    return exp, result


@pytest.mark.ray
@pytest.mark.slow
def test_warm_start_reads_the_earlier_runs_trials_and_checks_its_space(finished_run):
    exp, earlier = finished_run
    known = known_trials(earlier.run_dir, _config({}).space, "val_accuracy", "max")
    table = earlier.table
    assert sorted(k.trial_id for k in known) == sorted(table["trial_id"].unique())
    for k in known:
        rows = table[table["trial_id"] == k.trial_id]
        assert k.value == rows["val_accuracy"].max()
        assert k.params["optimizer__lr"] == rows["config/optimizer__lr"].iloc[0]
    other = {"optimizer__lr": SPACE["optimizer__lr"], "module__layers": {"type": "choice", "values": [1, 2]},
             "batch_size": 128}
    with pytest.raises(ConfigError) as info:
        known_trials(earlier.run_dir, _config({}, space=other).space, "val_accuracy", "max")
    assert (f"search.warm_start: the run in {earlier.run_dir!r} searched other parameters: this space has "
            f"module__layers that it lacks, and it has module__hidden that this space lacks; warm-start from a run "
            f"over the same parameters") in str(info.value)
    narrow = {"optimizer__lr": {"type": "float", "low": 0.5, "high": 0.9}, "module__hidden": SPACE["module__hidden"],
              "batch_size": 128}
    with pytest.raises(ConfigError, match=r"value\(s\) of the run .* lie outside this space"):
        known_trials(earlier.run_dir, _config({}, space=narrow).space, "val_accuracy", "max")


@pytest.mark.ray
@pytest.mark.slow
def test_more_trials_for_a_finished_run_keep_every_trial_once(finished_run):
    exp, earlier = finished_run
    before = earlier.table
    result = rt.resume(earlier.run_dir, num_samples=2, quiet=True)
    table = result.table
    assert table["trial_id"].nunique() == 4
    assert set(before["trial_id"]) < set(table["trial_id"])
    assert table.groupby("trial_id")["epoch"].apply(list).map(lambda e: e == [1]).all()  # each trial once
    best = json.loads(Path(result.run_dir, "best.json").read_text())
    assert best["trials"] == 4 and sum(best["status_counts"].values()) == 4
    assert best["value"] == table["val_accuracy"].max()
    new = table[~table["trial_id"].isin(set(before["trial_id"]))]
    assert set(new["config/optimizer__lr"]).isdisjoint(set(before["config/optimizer__lr"]))
    for trial_id in table["trial_id"].unique():  # every trial's folder and TensorBoard events are there
        folder = Path(result.run_dir, f"trial_{trial_id}")
        assert (folder / "history.jsonl").is_file() and list(folder.glob("events.out.tfevents.*"))
    assert not list(Path(result.run_dir).glob("*.earlier.*"))
    result.load_model()  # the best trial's checkpoint, earlier or new


def test_a_grid_run_has_no_trials_to_add(tmp_path):
    run_dir = tmp_path / "runs" / "g"
    run_dir.mkdir(parents=True)
    exp = {**copy.deepcopy(BASE), "storage": str(tmp_path / "runs"), "name": "g"}
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(exp))
    with pytest.raises(ConfigError) as info:
        rt.resume(str(run_dir), num_samples=2, quiet=True)
    assert (f"search.algorithm: the grid run in {str(run_dir)!r} already ran every point of its grid, so there is "
            f"nothing to add") in str(info.value)


def test_more_trials_need_a_finished_run(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    exp = {**copy.deepcopy(BASE), "storage": str(tmp_path / "runs"), "name": "r"}
    exp["search"] = {"algorithm": "random", "num_samples": 2, "metric": "val_accuracy"}
    exp["space"] = copy.deepcopy(SPACE)
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump(exp))
    with pytest.raises(ResultsError) as info:
        rt.resume(str(run_dir), num_samples=2, quiet=True)
    assert str(info.value).endswith(f"--num-samples adds trials to a finished run (an interrupted one is finished "
                                    f"with `raytune-torch resume {run_dir}` first)")
