"""Conditional spaces on a real local Ray run, one per searcher that supports them: the inactive
``optimizer__momentum`` never reaches Adam (which takes no ``momentum``: given it, the trial would
fail), and the results, best.json and TensorBoard show it as missing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

import raytune_torch as rt
from raytune_torch.exceptions import ConfigError

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

ROOT = Path(__file__).resolve().parents[1]


def _session_hparams(trial_dir: Path) -> dict:
    acc = EventAccumulator(str(trial_dir), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)[hp_metadata.SESSION_START_INFO_TAG]
    data = HParamsPluginData()
    data.ParseFromString(content)
    return {k: v for k, v in data.session_start_info.hparams.items()}


def _check_run(result: rt.TuneResult, trials: int) -> list:
    """Every trial completed; momentum is a number exactly where the optimizer is sgd, missing
    (null, NaN in pandas) elsewhere, in the table, best.json and each trial's HParams."""
    table = result.trials()
    assert len(table) == trials
    assert set(table["status"]) == {"completed"}, table[["status", "error"]]
    assert set(table["config/optimizer"]) == {"adam", "sgd"}
    for _, row in table.iterrows():
        momentum = row["config/optimizer__momentum"]
        if row["config/optimizer"] == "sgd":
            assert 0.5 <= momentum <= 0.99
        else:
            assert math.isnan(momentum)
        hparams = _session_hparams(Path(result.run_dir) / f"trial_{row['trial_id']}")
        assert ("optimizer__momentum" in hparams) == (row["config/optimizer"] == "sgd")
    best = json.loads((Path(result.run_dir) / "best.json").read_text())
    assert ("optimizer__momentum" in best["params"]) == (best["params"]["optimizer"] == "sgd")
    return list(table["config/optimizer__momentum"])


def _conditional(experiment: dict, algorithm: str, num_samples: int, optimizer: str = "choice") -> dict:
    experiment["space"] = {
        "optimizer": {"type": optimizer, "values": ["adam", "sgd"]},
        "optimizer__lr": 0.05,
        "optimizer__momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}},
    }
    experiment["search"] = {"algorithm": algorithm, "num_samples": num_samples, "metric": "val_accuracy"}
    experiment["train"]["max_epochs"] = 1
    return experiment


def test_grid_runs_each_distinct_point_once(experiment):
    _conditional(experiment, "grid", 1)
    experiment["space"]["optimizer__momentum"] = {"type": "grid", "values": [0.5, 0.9], "when": {"optimizer": "sgd"}}
    momenta = _check_run(rt.run(experiment, quiet=True), trials=3)
    assert sorted(m for m in momenta if not math.isnan(m)) == [0.5, 0.9]


def test_random_draws_then_drops_the_inactive_parameter(experiment):
    _check_run(rt.run(_conditional(experiment, "random", 4), quiet=True), trials=4)


def test_optuna_suggests_momentum_only_for_sgd(experiment):
    _check_run(rt.run(_conditional(experiment, "optuna", 4), quiet=True), trials=4)


def test_example_file_is_valid_and_conditional():
    config = rt.load_config(str(ROOT / "examples" / "digits_conditional.yaml"))
    assert config.space["optimizer__momentum"].when == {"optimizer": ("sgd", "rmsprop")}
    raw = yaml.safe_load((ROOT / "examples" / "digits_conditional.yaml").read_text())
    assert raw["space"]["optimizer__nesterov"]["when"] == {"optimizer": "sgd"}


def test_hyperopt_is_refused_before_anything_starts(experiment, tmp_path):
    _conditional(experiment, "hyperopt", 2)
    with pytest.raises(ConfigError) as info:
        rt.run(experiment, quiet=True)
    assert info.value.problems == [
        "space: search: hyperopt cannot leave out inactive parameters (['optimizer__momentum'] have `when`); use "
        "search: optuna (it suggests a parameter only while it is active), random or grid, or remove `when`"]
    assert not (tmp_path / "runs").exists()
