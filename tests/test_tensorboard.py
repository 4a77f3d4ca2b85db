"""TensorBoard files read back with TensorBoard's own loaders, and a real TensorBoard server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from ray import tune
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

import raytune_torch as rt
from raytune_torch.tensorboard import serve

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


def _load(directory: Path) -> EventAccumulator:
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _hparams(acc: EventAccumulator) -> dict[str, HParamsPluginData]:
    out = {}
    for tag, content in acc.PluginTagToContent(hp_metadata.PLUGIN_NAME).items():
        data = HParamsPluginData()
        data.ParseFromString(content)
        out[tag] = data
    return out


class ReadWhileRunning(tune.Callback):
    """At the last trial's first epoch, reads every trial's event files as TensorBoard would."""

    def __init__(self) -> None:
        self.seen: dict[str, dict] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.seen or result.get("epoch") != 1 or trial is not trials[-1]:
            return
        for t in trials:
            if t.last_result:
                acc = _load(Path(t.path))
                self.seen[t.trial_id] = {"tags": set(acc.Tags()["scalars"]), "hparams": set(_hparams(acc))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: dict | None = None):
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=10).read())


def test_event_files_hparams_and_a_real_tensorboard_server(experiment):
    experiment["space"] = {"optimizer__lr": {"type": "grid", "values": [1e-5, 3e-5, 0.01, 0.03]},
                           "module__activation": {"type": "choice", "values": ["relu", "tanh"]},
                           "module__dropout": {"type": "float", "low": 0.0, "high": 0.3}}
    experiment["search"] = {"algorithm": "random", "num_samples": 1, "metric": "val_accuracy", "max_concurrent": 1}
    experiment["train"] = {"max_epochs": 4, "batch_size": 128, "metrics": ["accuracy", "f1"]}
    experiment["scheduler"] = {"name": "asha", "grace_period": 1, "reduction_factor": 2}
    live = ReadWhileRunning()
    result = rt.run(experiment, quiet=True, callbacks=[live])
    run_dir = Path(result.run_dir)
    table = result.table

    # While the run was going: earlier trials already had scalars and their HParams session start.
    assert live.seen
    for info in live.seen.values():
        assert {"loss/train", "loss/val", "metrics/accuracy", "metrics/f1"} <= info["tags"]
        assert hp_metadata.SESSION_START_INFO_TAG in info["hparams"]

    # The experiment summary at the run root: domains from the one search space.
    root = _hparams(_load(run_dir))
    experiment_info = root[hp_metadata.EXPERIMENT_TAG].experiment
    infos = {i.name: i for i in experiment_info.hparam_infos}
    assert infos["module__dropout"].domain_interval.min_value == 0.0
    assert infos["module__dropout"].domain_interval.max_value == 0.3
    assert [v.string_value for v in infos["module__activation"].domain_discrete.values] == ["relu", "tanh"]
    assert [v.number_value for v in infos["optimizer__lr"].domain_discrete.values] == [1e-5, 3e-5, 0.01, 0.03]
    assert [m.name.tag for m in experiment_info.metric_infos] == [
        "loss/train", "loss/val", "metrics/accuracy", "metrics/f1", "trial/stopped_early"]

    # Each trial: clean tags stepped by epoch, equal to results.parquet; start and end sessions.
    statuses = {}
    for trial_id, rows in table.groupby("trial_id"):
        acc = _load(run_dir / f"trial_{trial_id}")
        rows = rows.sort_values("epoch")
        for tag, column in (("loss/val", "val_loss"), ("metrics/accuracy", "val_accuracy"), ("lr", "lr")):
            events = acc.Scalars(tag)
            assert [e.step for e in events] == rows["epoch"].tolist()
            assert [e.value for e in events] == pytest.approx(rows[column].tolist(), rel=1e-6)
        hp = _hparams(acc)
        start = hp[hp_metadata.SESSION_START_INFO_TAG].session_start_info
        assert start.hparams["module__activation"].string_value in ("relu", "tanh")
        assert hp_metadata.SESSION_END_INFO_TAG in hp
        statuses[trial_id] = acc.Scalars("trial/stopped_early")[-1].value
    pruned = set(result.trials().query("status == 'pruned'")["trial_id"])
    assert pruned, "ASHA stopped no trial"
    assert {t for t, v in statuses.items() if v == 1.0} == pruned

    # A real TensorBoard server on loopback, queried through its HTTP data endpoints.
    port = _free_port()
    log = open(run_dir.parent / "tensorboard.log", "w")
    server = serve(str(run_dir), port=port, log=log)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                runs = _get(f"{base}/data/runs")
                if len(runs) == len(statuses) + 1:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "TensorBoard did not come up"
            time.sleep(0.3)
        trial_id = table["trial_id"].iloc[0]
        query = urllib.parse.urlencode({"run": f"trial_{trial_id}", "tag": "loss/val"})
        scalars = _get(f"{base}/data/plugin/scalars/scalars?{query}")
        assert [step for _, step, _ in scalars] == table[table["trial_id"] == trial_id]["epoch"].tolist()
        groups = _get(f"{base}/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                                       "STATUS_RUNNING"],
            "colParams": [], "startIndex": 0, "sliceSize": 100})["sessionGroups"]
        assert {g["name"] for g in groups} == {f"trial_{t}" for t in statuses}
        for group in groups:
            values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
            trial_rows = table[table["trial_id"] == group["name"].removeprefix("trial_")]
            assert values["metrics/accuracy"] == pytest.approx(trial_rows["val_accuracy"].iloc[-1], rel=1e-6)
            assert group["hparams"]["module__activation"] in ("relu", "tanh")
            assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_tensorboard_can_be_turned_off(experiment):
    experiment["tensorboard"] = False
    result = rt.run(experiment, quiet=True)
    assert not list(Path(result.run_dir).rglob("events.out.tfevents.*"))


def test_cli_tensorboard_serves_a_run_on_loopback(experiment, tmp_path):
    result = rt.run(experiment, quiet=True)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "raytune_torch.cli", "tensorboard", result.run_dir,
                             "--port", str(port)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"TensorBoard for {result.run_dir} at http://127.0.0.1:{port}/")
        runs = _get(f"http://127.0.0.1:{port}/data/runs")
        assert sorted(runs) == sorted([".", *(f"trial_{t}" for t in result.table["trial_id"].unique())])
        import psutil

        listening = [c for c in psutil.net_connections(kind="tcp") if c.status == "LISTEN" and c.laddr.port == port]
        assert listening and all(c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1") for c in listening)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
