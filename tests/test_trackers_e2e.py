"""Experiment trackers for real: a tiny run logging to MLflow (read back with MLflow's own client) and
to W&B offline (its run files read back), and TorchSearchCV with a tracker."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import raytune_torch as rt

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


def _trial_ids(result: rt.TuneResult) -> set[str]:
    return set(result.table["trial_id"].unique())


def _history(result: rt.TuneResult, trial_id: str) -> list[dict]:
    rows = result.table[result.table["trial_id"] == trial_id].sort_values("epoch")
    return rows.to_dict("records")


def _mlflow_runs(uri: str, experiment: str) -> dict[str, object]:
    """MLflow's runs of ``experiment`` by their ``trial_id`` tag."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} in {uri}"
    runs = client.search_runs([found.experiment_id])
    return {run.data.tags["trial_id"]: run for run in runs}


def test_mlflow_file_store_gets_one_run_per_trial_with_params_and_metrics(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.18 refuses a file store unless told
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "not-this-one").as_uri())  # the file wins
    uri = (tmp_path / "mlruns").as_uri()
    experiment["loggers"] = [{"name": "mlflow", "tracking_uri": uri, "experiment_name": "digits-trackers",
                              "tags": {"team": "tests"}}]
    mlflow.set_tracking_uri((tmp_path / "elsewhere").as_uri())  # another URI set in the process meanwhile
    result = rt.run(experiment, quiet=True)

    runs = _mlflow_runs(uri, "digits-trackers")
    assert set(runs) == _trial_ids(result)
    client = MlflowClient(tracking_uri=uri)
    for trial_id, run in runs.items():
        history = _history(result, trial_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["team"] == "tests"
        assert float(run.data.params["optimizer__lr"]) == history[0]["config/optimizer__lr"]
        accuracy = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [(m.step, m.value) for m in sorted(accuracy, key=lambda m: m.step)] == \
            [(row["epoch"], pytest.approx(row["val_accuracy"])) for row in history]
        assert {"train_loss", "val_loss"} <= set(run.data.metrics)
    assert not (tmp_path / "not-this-one").exists() and not (tmp_path / "elsewhere").exists()


def test_mlflow_from_the_environment_into_a_sqlite_database(experiment, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/db/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    experiment["loggers"] = ["mlflow"]
    result = rt.run(experiment, quiet=True)
    assert set(_mlflow_runs(uri, "from-env")) == _trial_ids(result)


@pytest.mark.slow
def test_wandb_offline_writes_each_trials_config_and_history(experiment, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_PROJECT", "digits-project")
    experiment["loggers"] = [{"name": "wandb", "mode": "offline", "tags": ["tiny"]}]
    result = rt.run(experiment, quiet=True)

    runs = sorted((Path(result.run_dir) / "wandb").glob("offline-run-*"))  # W&B's folder in the run directory
    assert len(runs) == 2
    seen = {}
    for run_dir in runs:
        records = _wandb_records(run_dir)
        config = records["config"]
        trial_id = config["trial_id"]
        history = _history(result, trial_id)
        assert config["optimizer__lr"] == history[0]["config/optimizer__lr"]
        assert records["run"]["project"] == "digits-project" and records["run"]["group"] == experiment["name"]
        assert records["run"]["tags"] == ["tiny"]
        assert [row["val_accuracy"] for row in records["history"]] == \
            [pytest.approx(row["val_accuracy"]) for row in history]
        assert records["summary"]["val_accuracy"] == pytest.approx(history[-1]["val_accuracy"])
        seen[trial_id] = run_dir
    assert set(seen) == _trial_ids(result)


def _wandb_records(run_dir: Path) -> dict:
    """A W&B offline run's records, decoded with W&B's own protobuf messages from its ``.wandb``
    file (LevelDB's log format after a 7-byte ``:W&B`` header): the run (project, group, tags),
    its config, every logged history row and the final summary."""
    from wandb.proto import wandb_internal_pb2

    def items(updates) -> dict:
        return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in updates}

    data = next(run_dir.glob("*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    out: dict = {"config": {}, "history": [], "summary": {}, "run": {}}
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # the rest of a block is padding
            pos += left
            continue
        pending = (b"" if kind in (1, 2) else pending) + data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):  # FULL or LAST: a whole record
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        which = record.WhichOneof("record_type")
        if which == "run":
            out["run"] = {"project": record.run.project, "group": record.run.run_group, "tags": list(record.run.tags)}
            out["config"].update(items(record.run.config.update))
        elif which == "config":
            out["config"].update(items(record.config.update))
        elif which == "history":
            out["history"].append(items(record.history.item))
        elif which == "summary":
            out["summary"].update(items(record.summary.update))
    return out


@pytest.mark.slow
def test_torch_search_cv_logs_each_candidate(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    from examples.models import MLP

    uri = f"sqlite:///{tmp_path}/cv.db"
    X, y = load_digits(return_X_y=True)
    X = (X[:300] / 16.0).astype(np.float32)
    y = y[:300]
    search = rt.TorchSearchCV(rt.TorchClassifier(MLP, max_epochs=1, batch_size=64),
                              {"optimizer__lr": [0.003, 0.03]}, cv=2, storage=str(tmp_path / "runs"),
                              name="cv-trackers", refit=False,
                              loggers=[{"name": "mlflow", "tracking_uri": uri}])
    assert search.get_params()["loggers"] == [{"name": "mlflow", "tracking_uri": uri}]
    search.fit(X, y)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("cv-trackers").experiment_id])
    assert sorted(float(r.data.params["optimizer__lr"]) for r in runs) == [0.003, 0.03]
    assert all("mean_test_score" in r.data.metrics for r in runs)
    assert os.path.isdir(search.run_dir_)
