"""End to end on a real local Ray instance: searchers, schedulers, results, load_model, bad input."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from ray import tune

import raytune_torch as rt
from raytune_torch import checkpoint as ckpt

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


def _trials(result: rt.TuneResult):
    return result.table.groupby("trial_id")


def test_grid_search_writes_results_table_and_best(experiment):
    result = rt.run(experiment, quiet=True)
    table = pq.read_table(f"{result.run_dir}/results.parquet").to_pandas()
    for column in ("trial_id", "epoch", "train_loss", "val_loss", "val_accuracy", "status",
                   "config/optimizer__lr", "trial_seed"):
        assert column in table.columns, column
    assert table["trial_id"].nunique() == 2
    assert sorted(table["config/optimizer__lr"].unique()) == [0.003, 0.03]
    assert table.groupby("trial_id")["epoch"].apply(list).map(lambda e: e == [1, 2]).all()
    best = json.loads(open(f"{result.run_dir}/best.json").read())
    best_row = table[table["val_accuracy"] == table["val_accuracy"].max()].iloc[0]
    assert best["trial_id"] == best_row["trial_id"]
    assert result.best_metrics["val_accuracy"] == pytest.approx(best_row["val_accuracy"])
    assert result.best_config == {"optimizer__lr": best_row["config/optimizer__lr"]}
    assert best["checkpoint"] and best["status_counts"] == {"completed": 2}


def test_driver_keeps_no_copy_of_the_data_while_trials_run(experiment):
    """Once the data is in the object store, nothing in the driver holds the arrays the factory
    returned: the stored copy is the only one for the rest of the run."""
    import gc

    from ray import tune

    from tests import helpers_steps

    alive = []

    class Watch(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            gc.collect()
            alive.append([ref() is not None for ref in helpers_steps.WATCHED])

    experiment["data"] = {"factory": "tests.helpers_steps:watched_digits"}
    result = rt.run(experiment, quiet=True, callbacks=[Watch()])
    assert len(helpers_steps.WATCHED) == 2 and len(alive) == 4
    assert not any(any(flags) for flags in alive), alive
    assert result.best_metrics["val_accuracy"] > 0.5


def test_load_model_returns_best_trained_model_in_eval_mode(experiment):
    experiment["data"]["test_fraction"] = 0.2
    result = rt.run(experiment, quiet=True)
    model = result.load_model()
    assert not model.training
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    accuracy = float((result.predict(X, model=model) == y).mean())
    assert accuracy > 0.85  # two epochs of a small MLP on digits
    assert set(result.best_metrics) >= {"test_loss", "test_accuracy"}
    # The best checkpoint by the metric holds the model of the best epoch: re-evaluate it.
    Xv = torch.from_numpy(result.transform(X))
    with torch.no_grad():
        assert model(Xv).shape == (len(X), 10)


def test_fifo_grid_runs_its_largest_models_first(experiment):
    experiment["space"] = {"optimizer__lr": {"type": "grid", "values": [0.003, 0.03]},
                           "module__hidden": {"type": "grid", "values": [8, 32, 16]}}
    experiment["train"]["max_epochs"] = 1
    trials = rt.run(experiment, quiet=True).trials()
    in_order = trials.assign(index=trials["trial_id"].str.rsplit("_", n=1).str[-1].astype(int)).sort_values("index")
    assert in_order["config/module__hidden"].tolist() == [32, 32, 16, 16, 8, 8]


def test_largest_first_is_a_stable_sort_by_model_size():
    from raytune_torch._ray.search import _largest_first

    points = [{"optimizer__lr": lr, "module__hidden": h} for h in (8, 32, 16) for lr in (1, 2)]
    sizes = []

    def size(point):
        sizes.append(point["module__hidden"])
        return point["module__hidden"] * 10

    ordered = _largest_first(points, size)
    assert [(p["module__hidden"], p["optimizer__lr"]) for p in ordered] == [(32, 1), (32, 2), (16, 1), (16, 2),
                                                                            (8, 1), (8, 2)]
    assert sorted(sizes) == [8, 16, 32]  # one model per distinct set of module__ parameters
    # Unknown or equal sizes leave the order alone.
    assert _largest_first(points, lambda point: None if point["module__hidden"] == 16 else 1) == points
    assert _largest_first(points, lambda point: 5) == points


def test_only_a_fifo_grid_is_reordered(experiment):
    from raytune_torch._ray import build_search
    from raytune_torch.config import load_config

    experiment["space"] = {"module__hidden": {"type": "grid", "values": [8, 16, 32, 64]}}
    fifo = load_config(experiment)
    asha = load_config({**experiment, "scheduler": {"name": "asha"}})

    def order(config):
        plan = build_search(config, lambda point: point["module__hidden"])
        return [p["module__hidden"] for p in plan.search_alg._points_to_evaluate]

    assert order(fifo) == [64, 32, 16, 8]
    assert order(asha) == [p["module__hidden"] for p in build_search(asha).search_alg._points_to_evaluate]
    assert sorted(order(asha)) == [8, 16, 32, 64]


def test_random_search_crosses_grid_with_samples(experiment):
    experiment["space"] = {"optimizer__lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                           "module__hidden": {"type": "grid", "values": [8, 16]}}
    experiment["search"] = {"algorithm": "random", "num_samples": 2, "metric": "val_loss"}
    experiment["train"]["max_epochs"] = 1
    result = rt.run(experiment, quiet=True)
    trials = result.trials()
    assert len(trials) == 4  # 2 grid points x 2 samples
    assert sorted(trials["config/module__hidden"].tolist()) == [8, 8, 16, 16]
    assert trials["config/optimizer__lr"].between(1e-3, 1e-2).all()


def test_optuna_tpe_samples_the_space(experiment):
    experiment["space"] = {"optimizer__lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
                           "module__hidden": {"type": "int", "low": 8, "high": 32, "step": 8},
                           "batch_size": {"type": "choice", "values": [64, 128]}}
    experiment["search"] = {"algorithm": "optuna", "num_samples": 3, "metric": "val_loss", "max_concurrent": 2}
    experiment["train"]["max_epochs"] = 1
    trials = rt.run(experiment, quiet=True).trials()
    assert len(trials) == 3
    assert set(trials["config/module__hidden"]) <= {8, 16, 24, 32}
    assert set(trials["config/batch_size"]) <= {64, 128}


def test_optuna_all_grid_space_runs_each_point_once(experiment):
    experiment["space"]["module__hidden"] = {"type": "grid", "values": [8, 16]}
    experiment["search"] = {"algorithm": "optuna", "num_samples": 1, "metric": "val_loss"}
    experiment["train"]["max_epochs"] = 1
    trials = rt.run(experiment, quiet=True).trials()
    points = sorted(zip(trials["config/optimizer__lr"], trials["config/module__hidden"]))
    assert points == [(0.003, 8), (0.003, 16), (0.03, 8), (0.03, 16)]


def test_hyperopt_samples_the_space(experiment):
    pytest.importorskip("hyperopt")
    experiment["space"] = {"optimizer__lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}
    experiment["search"] = {"algorithm": "hyperopt", "num_samples": 2, "metric": "val_loss"}
    experiment["train"]["max_epochs"] = 1
    trials = rt.run(experiment, quiet=True).trials()
    assert len(trials) == 2
    assert trials["config/optimizer__lr"].between(1e-3, 3e-2).all()


def test_mixed_grid_under_optuna_is_refused_before_launch(experiment):
    experiment["space"]["module__hidden"] = {"type": "int", "low": 8, "high": 32}
    experiment["search"]["algorithm"] = "optuna"
    with pytest.raises(rt.ConfigError) as info:
        rt.run(experiment, quiet=True)
    assert "cannot mix grid parameters ['optimizer__lr'] with sampled ones ['module__hidden']" in str(info.value)


# Four learning rates, two of them far too small to learn in a few epochs: a pruning scheduler
# must stop some trials early.
PRUNABLE = {"optimizer__lr": {"type": "grid", "values": [1e-5, 3e-5, 0.01, 0.03]}}


# Ray's HyperBand fills its no-pruning bracket first: with max_t=4 and rf=2 a band is 3 + 3 + 4
# trials, so it needs 10 trials to prune in every bracket.
HYPERBAND = {"optimizer__lr": {"type": "grid", "values": [1e-5, 3e-5, 1e-4, 0.01, 0.03]},
             "module__hidden": {"type": "grid", "values": [8, 16]}}


@pytest.mark.parametrize("scheduler, space", [
    ({"name": "asha", "grace_period": 1, "reduction_factor": 2}, PRUNABLE),
    ({"name": "hyperband", "reduction_factor": 2}, HYPERBAND),
    ({"name": "median", "grace_period": 1, "min_samples_required": 2}, PRUNABLE),
], ids=["asha", "hyperband", "median"])
def test_pruning_schedulers_stop_bad_trials_early(experiment, scheduler, space):
    experiment["space"] = space
    experiment["train"]["max_epochs"] = 4
    experiment["scheduler"] = scheduler
    if scheduler["name"] != "hyperband":
        # One at a time: which trial a stop rule judges against which depends on arrival order,
        # and sequential arrival makes the test deterministic.
        experiment["search"]["max_concurrent"] = 1
    result = rt.run(experiment, quiet=True)
    for error in Path(result.run_dir).rglob("error.txt"):  # Tune restarted a failed trial: say why
        warnings.warn(f"{error}: {error.read_text()[-2000:]}", stacklevel=1)
    trials = result.trials()
    n = len(trials)
    assert n == (10 if scheduler["name"] == "hyperband" else 4)
    assert trials["epochs"].sum() < 4 * n, trials[["config/optimizer__lr", "epochs", "status"]]
    assert "pruned" in set(trials["status"])
    best_lr = result.best_config["optimizer__lr"]
    assert best_lr in (0.01, 0.03)


# Steps that fail one trial once (a marker file says it did). FAILS_IN_SECOND_EPOCH: the first
# trial of lr 1e-5, in its second epoch. FAILS_AFTER_RESUMING: the first trial HyperBand resumes
# from a pause (its optimizer comes with state), late in the stage, when the trial it races has
# reached the milestone and waits, paused.
FAILING_STEP = """
import os
from raytune_torch.loop import default_step

MARK = {mark!r}
_calls, _resumed = {{}}, {{}}


def step(ctx, xb, yb):
    key = id(ctx.model)
    _resumed.setdefault(key, bool(ctx.optimizer.state))
    _calls[key] = _calls.get(key, 0) + 1
    if ({condition}) and not os.path.exists(MARK):
        open(MARK, "w").close()
        raise RuntimeError("injected failure")
    return default_step(ctx, xb, yb)
"""
FAILS_IN_SECOND_EPOCH = 'ctx.optimizer.param_groups[0]["lr"] == 1e-5 and _calls[key] > 15'
FAILS_AFTER_RESUMING = "_resumed[key] and _calls[key] == 10"


@pytest.mark.parametrize("condition, max_failures", [(FAILS_IN_SECOND_EPOCH, 2), (FAILS_AFTER_RESUMING, 0)],
                         ids=["retried-failure-finishes-the-bracket", "final-failure-after-a-halving"])
def test_hyperband_goes_on_when_a_trial_fails_in_a_bracket(experiment, write_module, tmp_path, condition,
                                                           max_failures):
    # Ray's stock HyperBand waits forever in both cases (see SettledHyperBand): a failure that
    # leaves the bracket finished, its other trials paused at the last milestone, stops nothing;
    # after a bracket's first halving, a failure no longer halves it again.
    mark = tmp_path / "failed"
    experiment["import_paths"] = [str(tmp_path)]
    experiment["max_failures"] = max_failures
    experiment["space"] = HYPERBAND
    step = write_module(FAILING_STEP.format(mark=str(mark), condition=condition))
    experiment["train"].update(max_epochs=4, step=f"{step}:step")
    experiment["scheduler"] = {"name": "hyperband", "reduction_factor": 2}
    experiment["search"]["time_budget_s"] = 150  # a run that hangs ends here, and fails below
    result = rt.run(experiment, quiet=True)
    best = json.loads(Path(result.run_dir, "best.json").read_text())
    assert mark.exists() and "injected failure" in "".join(p.read_text() for p in Path(result.run_dir).rglob("error.txt"))
    assert "stopped_by" not in best, best["stopped_by"]
    trials = result.trials()
    assert len(trials) == 10
    expected = {"completed", "pruned"} | ({"error"} if max_failures == 0 else set())
    assert set(trials["status"]) <= expected, trials[["config/optimizer__lr", "epochs", "status"]]


def test_hyperband_refuses_a_concurrency_limit(experiment):
    experiment["scheduler"] = "hyperband"
    experiment["search"]["max_concurrent"] = 2
    with pytest.raises(rt.ConfigError, match="hyperband assigns trials to its brackets as they are created"):
        rt.run(experiment, quiet=True)


def test_fifo_runs_every_trial_to_max_epochs(experiment):
    experiment["scheduler"] = "fifo"
    trials = rt.run(experiment, quiet=True).trials()
    assert trials["epochs"].tolist() == [2, 2]
    assert set(trials["status"]) == {"completed"}


def test_same_seed_same_per_trial_metrics(experiment, tmp_path):
    first = rt.run(experiment, quiet=True).table
    experiment["storage"] = str(tmp_path / "again")
    second = rt.run(experiment, quiet=True).table
    key = ["config/optimizer__lr", "epoch"]
    cols = ["train_loss", "val_loss", "val_accuracy", "trial_seed"]
    a = first.sort_values(key)[cols].to_numpy()
    b = second.sort_values(key)[cols].to_numpy()
    np.testing.assert_array_equal(a, b)
    experiment["storage"] = str(tmp_path / "other-seed")
    experiment["seed"] = 1
    third = rt.run(experiment, quiet=True).table
    assert not np.array_equal(third.sort_values(key)[cols].to_numpy(), a)


def test_diverging_trial_is_marked_and_others_kept(experiment):
    experiment["optimizer"] = "sgd"
    experiment["space"] = {"optimizer__lr": {"type": "grid", "values": [0.05, 1.0e6]}}
    experiment["train"]["max_epochs"] = 3
    result = rt.run(experiment, quiet=True)
    trials = result.trials().set_index("config/optimizer__lr")
    assert trials.loc[1.0e6, "status"] == "diverged"
    assert trials.loc[1.0e6, "epochs"] == 1
    assert trials.loc[0.05, "status"] == "completed"
    assert result.best_config == {"optimizer__lr": 0.05}


def test_early_stopping_on_patience(experiment):
    # A learning rate this small cannot improve val_accuracy by 0.5 in an epoch.
    experiment["train"].update(max_epochs=6, early_stopping={"patience": 2, "min_delta": 0.5})
    trials = rt.run(experiment, quiet=True).trials()
    assert set(trials["status"]) == {"early_stopped"}
    assert trials["epochs"].tolist() == [3, 3]


def test_regression_example_metrics(tmp_path):
    result = rt.run("examples/diabetes_regression.yaml", storage=str(tmp_path), max_epochs=3, quiet=True)
    table = result.table
    for column in ("val_mse", "val_mae", "val_r2"):
        assert column in table.columns
    assert table["trial_id"].nunique() == 6
    assert result.metric == "val_r2" and result.mode == "max"
    assert math.isfinite(result.best_metrics["test_r2"])


def test_custom_loop_from_the_example_reports_and_checkpoints(tmp_path):
    result = rt.run("examples/digits_custom_loop.yaml", storage=str(tmp_path), max_epochs=2, quiet=True)
    assert result.table["epoch"].max() == 2
    assert result.best_metrics["val_accuracy"] > 0.5
    assert result.best_checkpoint is not None


def test_custom_step(experiment):
    experiment["train"]["step"] = "examples.custom_training:clipped_step"
    result = rt.run(experiment, quiet=True)
    assert result.best_metrics["val_accuracy"] > 0.5


def test_resource_request_no_node_can_meet_fails_before_launch(experiment):
    experiment["resources"] = {"cpu": 64}
    with pytest.raises(rt.ResourceError) as info:
        rt.run(experiment, quiet=True)
    assert "each trial asks for {cpu: 64, gpu: 0} but no node of the Ray cluster has that much" in str(info.value)
    assert "lower resources.cpu (--cpus-per-trial) to at most 2" in str(info.value)
    experiment["resources"] = {"cpu": 1, "gpu": 1}
    with pytest.raises(rt.ResourceError, match=r"set resources.gpu: 0 \(--gpus-per-trial 0\)"):
        rt.run(experiment, quiet=True)
    assert not Path(experiment["storage"], experiment["name"]).exists()  # a refused run leaves nothing


@pytest.mark.parametrize("change, message", [
    ({"model": {"name": "examples.nowhere:Net"}},
     "model 'examples.nowhere:Net': cannot import module 'examples.nowhere'"),
    ({"model": {"name": "examples.models:MLP", "args": {"out_features": 5}}},
     "but the labels hold 10 classes: a classifier must output (128, 10) logits. Set its output size to 10"),
    ({"model": {"name": "examples.models:MLP", "args": {"in_features": 32}}},
     "failed on a batch of features of shape (128, 64) (64 features per row)"),
    ({"loss": "bce_with_logits"},
     "the loss BCEWithLogitsLoss does not fit the model output (128, 10) and the labels (128,)"),
], ids=["broken-import", "labels-outside-classes", "shape-mismatch", "wrong-loss"])
def test_bad_input_fails_before_any_trial(experiment, change, message):
    experiment.update(change)
    with pytest.raises(rt.PreflightError) as info:
        rt.run(experiment, quiet=True)
    assert message in str(info.value)


_PIDS: dict[str, set] = {}


class _Pids(tune.Callback):
    def on_trial_result(self, iteration, trials, trial, result, **info):
        _PIDS.setdefault(trial.trial_id, set()).add(result["pid"])


def test_reused_workers_keep_each_trials_results_checkpoints_and_seeds_its_own(experiment):
    """More trials than workers under FIFO (six trials, two CPUs): trials share worker processes
    (Tune's actor reuse), yet each trial's rows, checkpoints and seed are its own."""
    from raytune_torch.trainable import derive_seed

    lrs = [0.001, 0.002, 0.004, 0.008, 0.016, 0.032]
    experiment["space"] = {"optimizer__lr": {"type": "grid", "values": lrs}}
    experiment["train"]["max_epochs"] = 3
    experiment["checkpoint"] = {"keep": 3}  # every epoch's checkpoint stays, to compare with the rows
    _PIDS.clear()
    result = rt.run(experiment, quiet=True, callbacks=[_Pids()])
    table = result.table
    assert table["trial_id"].nunique() == 6
    assert sorted(table.groupby("trial_id")["config/optimizer__lr"].first()) == lrs
    assert len(set().union(*_PIDS.values())) <= 2  # six trials went through at most two processes
    assert all(len(pids) == 1 for pids in _PIDS.values())
    for trial_id, rows in table.groupby("trial_id"):
        params = {"optimizer__lr": float(rows["config/optimizer__lr"].iloc[0])}
        seed = derive_seed(0, int(trial_id.rsplit("_", 1)[-1]), params)
        assert rows["epoch"].tolist() == [1, 2, 3]
        assert set(rows["trial_seed"]) == {seed}
        checkpoints = sorted(Path(result.run_dir, f"trial_{trial_id}").glob("checkpoint_*"))
        assert len(checkpoints) == 3
        for folder in checkpoints:
            state = ckpt.load_state(folder)
            assert state["params"] == params and state["trial_seed"] == seed
            epochs = [h["epoch"] for h in state["history"]]
            assert epochs == list(range(1, state["epoch"] + 1))
            for h in state["history"]:
                row = rows[rows["epoch"] == h["epoch"]].iloc[0]
                assert h["val_loss"] == pytest.approx(row["val_loss"], rel=1e-12)
