"""The cluster path on a real multi-node Ray cluster on this machine (cluster/local_cluster.py):
a head with no CPUs and two 1-CPU worker nodes, all on 127.0.0.1, token authentication on.

Every driver runs as a subprocess (this test process may hold the session's own Ray instance),
and every cluster is stopped by its own handle (PIDs), never `ray stop`.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cluster.local_cluster import LocalCluster
from tests.conftest import BASE, ROOT

pytestmark = [pytest.mark.slow]

MODEL_CODE = '''
import torch.nn as nn


class TinyMLP(nn.Module):
    """User model code that only the uploaded working directory has."""

    def __init__(self, in_features, out_features, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))

    def forward(self, x):
        return self.net(x)
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cluster")
    with LocalCluster(dir=str(directory), workers=2, cpus_per_node=1, head_cpus=0) as c:
        yield c


@pytest.fixture
def token(cluster) -> str:
    return Path(cluster.token_file).read_text().strip()


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No token anywhere (an empty HOME, no RAY_AUTH_* variables) unless given in ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), **extra)
    return env


def _cli(args: list[str], env: dict[str, str], cwd: Path | str = ROOT, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "raytune_torch.cli", *args], capture_output=True, text=True,
                          env=env, cwd=str(cwd), timeout=timeout)


def _experiment(tmp_path: Path, name: str, lrs=(0.003, 0.01, 0.03, 0.1), **train) -> dict:
    exp = copy.deepcopy(BASE)
    exp.update(name=name, storage=str(tmp_path / "shared-runs"))
    exp["space"] = {"optimizer__lr": {"type": "grid", "values": list(lrs)}}
    exp["train"].update(train)
    return exp


def _nodes_used(run_dir: Path) -> set[str]:
    return set(pd.read_parquet(run_dir / "results.parquet")["node_id"])


def test_run_with_ray_address_joins_the_cluster_and_trials_span_nodes(cluster, tmp_path, token):
    exp = _experiment(tmp_path, "across")
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    env = _clean_env(tmp_path, RAY_ADDRESS=cluster.gcs_address, RAY_AUTH_TOKEN_PATH=cluster.token_file)
    proc = _cli(["run", str(path)], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 3 node(s)" in proc.stdout
    assert "written and read from 3 node(s)" in proc.stdout  # the storage preflight ran on every node
    workers = {cluster.node("w1").node_id, cluster.node("w2").node_id}
    assert _nodes_used(tmp_path / "shared-runs" / "across") == workers  # both workers, never the 0-CPU head
    assert token not in proc.stdout + proc.stderr


def test_submit_uploads_the_working_dir_streams_logs_and_jobs_commands_work(cluster, tmp_path, token):
    project = tmp_path / "project"
    project.mkdir()
    (project / "usermodels.py").write_text(MODEL_CODE)
    exp = _experiment(tmp_path, "submitted")
    exp["model"] = {"name": "usermodels:TinyMLP", "args": {"hidden": 8}}
    (project / "exp.yaml").write_text(yaml.safe_dump(exp))
    env = _clean_env(tmp_path)
    auth = ["--address", cluster.dashboard_url, "--token-file", cluster.token_file]

    proc = _cli(["submit", "exp.yaml", *auth, "--max-epochs", "3"], env, cwd=project)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    job = out.split("submitted job ", 1)[1].split()[0]
    assert "[4/4" in out and "best trial" in out  # the job's own console, streamed
    assert f"job {job} SUCCEEDED" in out
    assert token not in out
    run_dir = tmp_path / "shared-runs" / "submitted"
    table = pd.read_parquet(run_dir / "results.parquet")
    assert table.groupby("trial_id")["epoch"].max().tolist() == [3] * 4  # the override reached the job
    assert len(_nodes_used(run_dir)) == 2

    status = _cli(["jobs", "status", job, *auth], env)
    assert status.returncode == 0 and f"{job}: SUCCEEDED" in status.stdout, status.stderr
    logs = _cli(["jobs", "logs", job, *auth], env)
    assert logs.returncode == 0 and "best trial" in logs.stdout
    listed = _cli(["jobs", "list", *auth], env)
    assert job in listed.stdout
    missing = _cli(["jobs", "status", "no-such-job", *auth], env)
    assert missing.returncode == 2 and "no job 'no-such-job'" in missing.stderr


def test_submit_no_wait_then_stop(cluster, tmp_path):
    exp = _experiment(tmp_path, "stopped", lrs=(0.01,), max_epochs=200, step="tests.helpers_steps:slow_step")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    (tmp_path / "tests").mkdir()  # the step, uploaded with the working dir
    (tmp_path / "tests" / "helpers_steps.py").write_text((ROOT / "tests" / "helpers_steps.py").read_text())
    env = _clean_env(tmp_path)
    auth = ["--address", cluster.dashboard_url, "--token-file", cluster.token_file]
    proc = _cli(["submit", "exp.yaml", *auth, "--no-wait", "--job-id", "rt-stop-me"], env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted job rt-stop-me" in proc.stdout and "jobs logs rt-stop-me --follow" in proc.stdout
    stopped = _cli(["jobs", "stop", "rt-stop-me", *auth], env)
    assert stopped.returncode == 0 and "rt-stop-me: STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    status = _cli(["jobs", "status", "rt-stop-me", *auth], env)
    assert "STOPPED" in status.stdout


def test_bad_input_fails_locally_before_anything_is_uploaded(cluster, tmp_path):
    env = _clean_env(tmp_path)
    auth = ["--address", cluster.dashboard_url, "--token-file", cluster.token_file]
    bad = copy.deepcopy(BASE)
    bad["search"]["metric"] = "val_nonsense"
    bad["storage"] = str(tmp_path / "runs")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = _cli(["submit", "bad.yaml", *auth], env, cwd=tmp_path)
    assert proc.returncode == 2 and "val_nonsense" in proc.stderr
    relative = copy.deepcopy(BASE)
    relative["storage"] = "runs"
    (tmp_path / "relative.yaml").write_text(yaml.safe_dump(relative))
    proc = _cli(["submit", "relative.yaml", *auth], env, cwd=tmp_path)
    assert proc.returncode == 2 and "is a relative path" in proc.stderr and "s3://" in proc.stderr
    outside = _cli(["submit", str(tmp_path / "relative.yaml"), *auth, "--storage", str(tmp_path / "runs"),
                    "--working-dir", str(ROOT / "examples")], env)
    assert outside.returncode == 2 and "outside the working directory" in outside.stderr
    listed = _cli(["jobs", "list", *auth], env)
    assert "bad" not in listed.stdout and "relative" not in listed.stdout  # nothing was submitted


def test_missing_or_wrong_token_is_a_clear_error_at_once(cluster, tmp_path):
    exp = _experiment(tmp_path, "denied")
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    env = _clean_env(tmp_path)
    for extra, expected in (([], "requires token authentication and no token was found"),
                            (["--token-file", str(wrong)], f"refused the token from --token-file {wrong}")):
        ran = _cli(["run", "exp.yaml", "--address", cluster.gcs_address, *extra], env, cwd=tmp_path)
        assert ran.returncode == 2 and expected in ran.stderr, ran.stderr[-2000:]
        assert "Failed to connect to Ray cluster" not in ran.stderr  # not Ray's own 20 s retry loop
        sub = _cli(["submit", "exp.yaml", "--address", cluster.dashboard_url, *extra], env, cwd=tmp_path)
        assert sub.returncode == 2 and expected in sub.stderr, sub.stderr[-2000:]
        jobs = _cli(["jobs", "list", "--address", cluster.dashboard_url, *extra], env)
        assert jobs.returncode == 2 and expected in jobs.stderr
        assert "0" * 64 not in ran.stderr + sub.stderr + jobs.stderr
    nothing = _cli(["run", "exp.yaml", "--address", "127.0.0.1:1"], env, cwd=tmp_path)
    assert nothing.returncode == 2 and "no Ray cluster answers at 127.0.0.1:1" in nothing.stderr
    url = _cli(["run", "exp.yaml", "--address", cluster.dashboard_url], env, cwd=tmp_path)
    assert url.returncode == 2 and "is a dashboard (Jobs API) URL" in url.stderr


LOCAL_THEN_CLUSTER = """
import json, sys
import raytune_torch as rt
from raytune_torch._ray import internals
from ray._private import ray_constants
from ray.tune.execution import class_cache

stock = (class_cache._ActorClassCache.get, ray_constants.ENABLE_RAY_CLUSTER)
local, remote, address, token = json.loads(sys.argv[1])
rt.run(local, quiet=True)  # the private instance, with the tweaks this Ray allows, then shut down
after_local = {"left": internals.in_effect(),
               "restored": (class_cache._ActorClassCache.get, ray_constants.ENABLE_RAY_CLUSTER) == stock}
result = rt.run(remote, quiet=True, address=address, token_file=token)
print(json.dumps({**after_local, "trials": int(result.table["trial_id"].nunique()),
                  "nodes": sorted(set(result.table["node_id"]))}))
"""


def test_a_local_run_then_a_cluster_run_in_the_same_process(cluster, tmp_path):
    """The private instance's changes to Ray are undone at its shutdown: the same process then
    joins a cluster with Ray's stock behaviour, and its trials run on the cluster's nodes."""
    local = _experiment(tmp_path, "local-first", lrs=(0.01,))
    local["storage"] = str(tmp_path / "local-runs")
    remote = _experiment(tmp_path, "then-cluster", lrs=(0.003, 0.03))
    env = _clean_env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", LOCAL_THEN_CLUSTER,
                           json.dumps([local, remote, cluster.gcs_address, cluster.token_file])],
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["left"] == [] and out["restored"] is True, out
    assert out["trials"] == 2
    assert set(out["nodes"]) <= {cluster.node("w1").node_id, cluster.node("w2").node_id}


def test_a_two_worker_trial_spans_both_nodes_from_run_and_submit(cluster, tmp_path, token):
    """resources.workers: 2 with one CPU each: the trial's two DDP ranks land on the two 1-CPU
    nodes (the trial itself, Train's driver, holds no CPU), from `run --address` and `submit`."""
    exp = _experiment(tmp_path, "ddp-run", lrs=(0.05,), max_epochs=2)
    exp["resources"] = {"cpu": 1, "workers": 2}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    env = _clean_env(tmp_path, RAY_ADDRESS=cluster.gcs_address, RAY_AUTH_TOKEN_PATH=cluster.token_file)
    proc = _cli(["run", str(tmp_path / "exp.yaml")], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "each trial 2 workers x {cpu: 1, gpu: 0} (DistributedDataParallel), 1 trial(s) at once at most" in proc.stdout
    table = pd.read_parquet(tmp_path / "shared-runs" / "ddp-run" / "results.parquet")
    assert table["epoch"].tolist() == [1, 2] and set(table["worker_nodes"]) == {2} and set(table["workers"]) == {2}
    assert table["node_id"].iloc[0] in {cluster.node("w1").node_id, cluster.node("w2").node_id}  # rank 0's node

    project = tmp_path / "project"
    project.mkdir()
    (project / "usermodels.py").write_text(MODEL_CODE)
    exp["name"], exp["model"] = "ddp-submit", {"name": "usermodels:TinyMLP", "args": {"hidden": 8}}
    (project / "exp.yaml").write_text(yaml.safe_dump(exp))
    auth = ["--address", cluster.dashboard_url, "--token-file", cluster.token_file]
    proc = _cli(["submit", "exp.yaml", *auth], _clean_env(tmp_path), cwd=project)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "SUCCEEDED" in out, out[-4000:]
    table = pd.read_parquet(tmp_path / "shared-runs" / "ddp-submit" / "results.parquet")
    assert set(table["worker_nodes"]) == {2} and table["epoch"].max() == 2

    # three workers of one CPU do not fit two 1-CPU nodes: refused before anything starts
    exp["name"], exp["resources"]["workers"], exp["model"] = "ddp-too-big", 3, {"name": "examples.models:MLP"}
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(exp))
    proc = _cli(["run", str(tmp_path / "big.yaml")], env)
    assert proc.returncode != 0
    assert ("each trial asks for 3 workers of {cpu: 1, gpu: 0} (3 CPUs, 0 GPUs in all), but the Ray cluster holds "
            "2 such worker(s) at once") in proc.stderr
    assert "lower resources.workers (--workers-per-trial) to at most 2" in proc.stderr
    assert not (tmp_path / "shared-runs" / "ddp-too-big" / "results.parquet").exists()


def _history(run_dir: Path) -> list[dict]:
    rows = []
    for path in run_dir.glob("trial_*/history.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def test_worker_node_killed_mid_run_trials_finish_on_the_other(cluster, tmp_path):
    """Runs last in this module: it takes w1 away for good."""
    exp = _experiment(tmp_path, "nodeloss", max_epochs=6, step="tests.helpers_steps:slow_step")
    exp["max_failures"] = 3
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    run_dir = tmp_path / "shared-runs" / "nodeloss"
    env = _clean_env(tmp_path)
    w1 = cluster.node("w1").node_id
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "raytune_torch.cli", "run", str(tmp_path / "exp.yaml"),
                               "--address", cluster.gcs_address, "--token-file", cluster.token_file, "--quiet"],
                              cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not any(r.get("node_id") == w1 and r["epoch"] >= 2 for r in _history(run_dir)):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial reached epoch 2 on w1"
            time.sleep(0.2)
        cluster.kill_node("w1")  # SIGKILL: raylet, its workers and agents, mid-trial
        assert driver.wait(timeout=400) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.send_signal(signal.SIGTERM)
            driver.wait(timeout=30)
        log.close()
    table = pd.read_parquet(run_dir / "results.parquet")
    assert table["trial_id"].nunique() == 4
    assert (table.groupby("trial_id")["epoch"].apply(sorted).map(lambda e: e == [1, 2, 3, 4, 5, 6])).all()
    assert set(table["status"]) == {"completed"}
    w2 = cluster.node("w2").node_id
    moved = table.groupby("trial_id")["node_id"].agg(set)
    assert any(nodes == {w1, w2} for nodes in moved), moved  # a trial began on w1 and finished on w2
    assert set(table[table["epoch"] == 6]["node_id"]) == {w2}


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs a mount namespace (Linux, root)")
def test_storage_preflight_refuses_a_node_local_path(tmp_path):
    """A worker node with its own (empty) view of the storage path, as on a separate machine."""
    local = tmp_path / "node-local"
    with LocalCluster(dir=str(tmp_path / "c"), workers=1, cpus_per_node=1, private_path=str(local)) as c:
        w1 = c.node("w1").node_id
        exp = _experiment(tmp_path, "local-only", lrs=(0.01,))
        exp["storage"] = str(local / "runs")
        (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
        proc = _cli(["run", str(tmp_path / "exp.yaml"), "--address", c.gcs_address, "--token-file", c.token_file],
                    _clean_env(tmp_path))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "is not shared by every node of the cluster" in proc.stderr
    assert f"(node {w1[:8]})" in proc.stderr  # the worker node, named
    assert "use a path every node mounts" in proc.stderr and "s3://" in proc.stderr
    assert "done after" not in proc.stdout  # refused before any trial started
