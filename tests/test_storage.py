"""Run directories on object storage: a real S3-compatible server (moto) on 127.0.0.1.

Drivers run as subprocesses with the S3 endpoint and credentials in their environment, as a
user sets them; this process reads the results back through the same URIs.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import raytune_torch as rt
from raytune_torch import storage as st
from tests.conftest import BASE, ROOT


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with bucket ``runs``; yields the client environment."""
    import pyarrow.fs as pafs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "RAYTUNE_TORCH_CACHE": str(tmp_path_factory.mktemp("cache"))}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="testing",
                                       secret_key="testing", region="us-east-1", allow_bucket_creation=True)
                fs.create_dir("runs")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.3)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture
def s3_env(s3, monkeypatch):
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **s3, "PYTHONPATH": str(ROOT)}


def _cli(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "raytune_torch.cli", *args], capture_output=True, text=True,
                          env=env, cwd=str(ROOT), timeout=timeout)


def _objects(uri: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, root = st.filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return [i.path[len(root):].lstrip("/") for i in infos if i.type == pafs.FileType.File]


# -- no Ray ------------------------------------------------------------------------------------


def test_uri_helpers(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert st.is_uri("s3://b/x") and not st.is_uri("/data/x") and not st.is_uri("runs")
    assert st.join("s3://b/runs?endpoint_override=h:1&scheme=http", "exp", "trial_1") == \
        "s3://b/runs/exp/trial_1?endpoint_override=h:1&scheme=http"
    assert st.display("s3://b/runs/exp?endpoint_override=h:1") == "s3://b/runs/exp"
    assert st.join("/a/b", "c") == "/a/b/c"
    assert st.ray_storage("s3://b/runs") == "s3://b/runs"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert st.ray_storage("s3://b/runs") == "s3://b/runs?endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1"
    assert st.ray_storage("s3://b/runs?endpoint_override=x:1") == "s3://b/runs?endpoint_override=x:1"
    with pytest.raises(rt.ConfigError, match="cannot open 'nosuch://b/x'"):
        st.filesystem("nosuch://b/x")


def test_mirror_uploads_changed_files_and_download_skips_checkpoints(s3_env, tmp_path):
    local = tmp_path / "run"
    (local / "trial_a" / "checkpoint_000001").mkdir(parents=True)
    (local / "experiment.yaml").write_text("name: x\n")
    (local / "trial_a" / "history.jsonl").write_text('{"epoch": 1}\n')
    (local / "trial_a" / "checkpoint_000001" / "state.pt").write_bytes(b"x" * 10)
    uri = "s3://runs/mirror-test"
    mirror = st.Mirror(str(local), uri)
    mirror.sync()
    assert sorted(_objects(uri)) == ["experiment.yaml", "trial_a/history.jsonl"]  # checkpoints are Ray's
    (local / "trial_a" / "history.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    mirror.sync()
    copy_dir = st.download(uri, str(tmp_path / "copy"))
    assert (Path(copy_dir) / "trial_a" / "history.jsonl").read_text().count("epoch") == 2
    with pytest.raises(rt.ResultsError, match="does not exist or is empty"):
        st.download("s3://runs/nothing-here", str(tmp_path / "none"))


def test_mirror_uploads_in_the_background_during_a_run(s3_env, tmp_path, caplog):
    import threading

    local = tmp_path / "run"
    local.mkdir()
    (local / "history.jsonl").write_text('{"epoch": 1}\n')
    uri = "s3://runs/background"
    mirror = st.Mirror(str(local), uri, every_s=0.0)
    calls = []
    real_upload = mirror._upload
    mirror._upload = lambda path: calls.append(threading.current_thread().name) or real_upload(path)
    mirror.maybe_sync()
    mirror._pending.result(timeout=30)
    assert calls and all(name.startswith("raytune-torch-mirror") for name in calls)  # not the caller's thread
    assert _objects(uri) == ["history.jsonl"]
    (local / "history.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    mirror.maybe_sync()
    mirror.sync()  # waits for the upload in flight, then uploads what changed since
    assert mirror._pool is None
    copy_dir = st.download(uri, str(tmp_path / "copy"))
    assert (Path(copy_dir) / "history.jsonl").read_text().count("epoch") == 2

    # A failed background upload is logged and the run goes on; the final sync raises.
    broken = st.Mirror(str(local), "s3://no-such-bucket/run", every_s=0.0)
    with caplog.at_level("WARNING", logger="raytune_torch"):
        broken.maybe_sync()
        broken._pending.result(timeout=60)
    assert "uploading the run's files to s3://no-such-bucket/run failed" in caplog.text
    with pytest.raises(OSError):
        broken.sync()


# -- real Ray (each driver a subprocess with its own private instance) ------------------------


@pytest.mark.slow
def test_run_on_s3_then_results_load_model_and_tensorboard_from_the_uri(s3_env, tmp_path):
    exp = copy.deepcopy(BASE)
    exp.update(name="on-s3", storage="s3://runs/experiments")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    proc = _cli(["run", str(tmp_path / "exp.yaml")], s3_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = "s3://runs/experiments/on-s3"
    assert f"results in {uri}" in proc.stdout
    assert "storage s3://runs/experiments/on-s3 written and read from 1 node(s)" in proc.stdout
    objects = _objects(uri)
    for name in ("experiment.yaml", "results.parquet", "best.json"):
        assert name in objects
    assert sum(o.endswith("history.jsonl") for o in objects) == 2
    assert sum(o.endswith("/state.pt") for o in objects) == 2  # the disk budget on S3: one per trial here
    assert not any(".probe" in o for o in objects)
    assert not (ROOT / "runs" / "on-s3").exists() and not (ROOT / "s3:").exists()

    result = rt.TuneResult(uri)
    assert result.best_checkpoint.startswith(f"{uri}/trial_")
    assert result.table["trial_id"].nunique() == 2
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    accuracy = float(np.mean(result.predict(X) == y))
    assert accuracy > 0.8, accuracy  # the model loaded from S3 is the trained one
    shown = _cli(["results", uri, "--format", "json"], s3_env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["best"]["trial_id"] == result.best_trial_id

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    local = st.local_copy(uri)  # what `raytune-torch tensorboard s3://...` serves
    acc = EventAccumulator(os.path.join(local, f"trial_{result.best_trial_id}"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/val")] == [1, 2]


@pytest.mark.slow
def test_driver_killed_then_resume_from_s3(s3_env, tmp_path):
    exp = copy.deepcopy(BASE)
    exp.update(name="resume-s3", storage="s3://runs/experiments", max_failures=0)
    exp["train"].update(max_epochs=4, step="tests.helpers_steps:slow_step")
    exp["space"] = {"optimizer__lr": {"type": "grid", "values": [0.002, 0.005, 0.01, 0.03]}}
    exp["search"]["max_concurrent"] = 2
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    uri = "s3://runs/experiments/resume-s3"
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "raytune_torch.cli", "run", str(tmp_path / "exp.yaml"), "--quiet"],
                              env=s3_env, cwd=str(ROOT), start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while sum(o.endswith("state.json") for o in _objects(uri)) < 3:  # checkpoints reached S3 mid-run
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoints on S3"
            time.sleep(0.3)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray instance it started
        driver.wait()
        log.close()
    assert "best.json" not in _objects(uri)
    resumed = _cli(["resume", uri, "--quiet"], s3_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    table = rt.TuneResult(uri).table
    assert table["trial_id"].nunique() == 4
    assert (table.groupby("trial_id")["epoch"].apply(sorted).map(lambda e: e == [1, 2, 3, 4])).all()
    assert set(table["status"]) == {"completed"}
    again = _cli(["resume", uri], s3_env)
    assert again.returncode == 1 and "already finished" in again.stderr


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_unwritable_storage_is_refused_before_any_trial(s3_env):
    from raytune_torch import _ray

    with pytest.raises(rt.ConfigError, match="cannot be written from the driver.*Create the bucket"):
        _ray.check_storage("s3://no-such-bucket/runs/x")
