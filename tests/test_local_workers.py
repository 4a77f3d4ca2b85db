"""The private local instance's own workers run the trials, with torch already imported.

Runs in a fresh Python process: the workers that matter are the ones Ray starts with a new
instance (this test session's shared instance has used its own up long ago).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import BASE, ROOT

pytestmark = [pytest.mark.slow]

SCRIPT = textwrap.dedent("""
    import json, sys, time
    import os, psutil, ray
    from ray import tune
    import raytune_torch as rt
    from raytune_torch import _ray

    started_with, logs, survived, ready, torch_loaded = set(), [], [], [], []
    run_tuner = _ray.run_tuner

    def workers():
        # Python workers: the raylet's children but its agents (a worker's title is ray::IDLE,
        # or ray::<actor class> once it holds an actor).
        raylets = [p for p in psutil.Process().children(recursive=True)
                   if any(part.endswith("/raylet") for part in p.cmdline()[:1])]
        return {p.pid for r in raylets for p in r.children()
                if p.cmdline() and p.cmdline()[0].startswith(("ray::", "python")) and "Agent" not in p.cmdline()[0]}

    def recording_run_tuner(*args, **kwargs):
        # The workers the instance started by itself (one per CPU), before any trial actor.
        deadline = time.monotonic() + 30
        while len(workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        started_with.update(workers())
        logs.append(ray._private.worker._global_node.get_logs_dir_path())
        # Each says when it has imported torch and the trial code; the Tuner waits for all.
        ready.append(_ray.local._workers_ready.wait(timeout_s=60))
        ready.extend(_ray.local._workers_ready.ready())
        torch_loaded.extend(any("libtorch" in (m.path or "") for m in psutil.Process(pid).memory_maps())
                            for pid in started_with)
        # A large dataset keeps the driver busy after the workers are up: they sit idle for
        # seconds, then Tune's placement groups reserve every CPU a moment before its trial
        # actors ask for workers. Ray's default kills a worker idle for a second in that moment.
        from ray.util.placement_group import placement_group, remove_placement_group

        time.sleep(1.5)
        group = placement_group([{"CPU": ray.cluster_resources()["CPU"]}])
        ray.get(group.ready())
        time.sleep(1.0)  # the raylet looks for idle workers to kill every 200 ms
        survived.append(all(psutil.pid_exists(pid) for pid in started_with))
        remove_placement_group(group)
        return run_tuner(*args, **kwargs)

    _ray.run_tuner = recording_run_tuner

    class Probe(tune.Callback):
        pids = set()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            Probe.pids.add(result["pid"])

    experiment = json.loads(sys.argv[1])
    result = rt.run(experiment, quiet=True, callbacks=[Probe()])
    # Ray only logs a module that failed to preload; the workers' logs must not say so.
    failed = [name for name in os.listdir(logs[0]) if name.startswith("worker")
              and "Failed to preload" in open(os.path.join(logs[0], name), errors="replace").read()]
    print(json.dumps({"started_with": sorted(started_with), "trial_pids": sorted(Probe.pids),
                      "survived_reservation": survived, "ready": ready, "torch_loaded": torch_loaded,
                      "preload_failed_in": failed, "logs": logs[0],
                      "trials": int(result.table["trial_id"].nunique())}))
""")


def test_trials_run_in_the_workers_started_with_the_instance(tmp_path):
    experiment = {**BASE, "storage": str(tmp_path / "runs"),
                  "space": {"optimizer__lr": {"type": "grid", "values": [0.001, 0.003, 0.01, 0.03]}}}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(experiment)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["trials"] == 4
    # Two CPUs, one per trial: the four trials share at most two reused workers, the ones Ray
    # started with the instance (not new processes for the trial actors, which Tune's per-actor
    # runtime environment would force, nor replacements for workers killed while idle).
    assert len(report["started_with"]) >= 2, report
    assert report["survived_reservation"] == [True], report
    # They said they were ready (with torch imported) before the Tuner started.
    assert report["ready"][0] is True and set(report["started_with"]) <= set(report["ready"][1:]), report
    assert report["torch_loaded"] and all(report["torch_loaded"]), report
    assert 1 <= len(report["trial_pids"]) <= 2, report
    assert set(report["trial_pids"]) <= set(report["started_with"]), report
    # Each of them imported torch and the trial code as it started (raytune_torch._preload).
    assert report["preload_failed_in"] == [], report


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GPU device nodes are looked up on Linux")
def test_no_gpu_driver_means_no_torch_import_before_ray_starts():
    """Without a GPU driver's device node the local instance advertises 0 GPUs without importing
    torch first (2 s on the critical path; the data loader imports it in its own thread)."""
    from raytune_torch import _ray

    if any(os.path.exists(p) for p in _ray.local._GPU_DEVICE_NODES):
        pytest.skip("this machine has a GPU driver: torch is asked how many GPUs it can use")
    code = "import sys; from raytune_torch import _ray; print(_ray.local._cuda_count(), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "False"]


IDLE_DAEMONS = ("log_monitor.py", "autoscaler/_private/monitor.py")
API_SERVER = "dashboard/dashboard.py"
CHILDREN = """
import contextlib, json, psutil
from raytune_torch import _ray
_ray.start_local(num_cpus=1, num_gpus=0)
commands = []
for child in psutil.Process().children(recursive=True):
    with contextlib.suppress(psutil.Error):
        commands.append(" ".join(child.cmdline()))
_ray.shutdown()
print(json.dumps(commands))
"""


def _children() -> list[str]:
    import psutil

    commands = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            commands.append(" ".join(child.cmdline()))
    return commands


@pytest.mark.usefixtures("ray_session")
def test_local_instance_runs_no_idle_daemons():
    """The private instance has its GCS, raylet, the raylet's agents and workers, but none of the
    Python daemons that have nothing to do on it: autoscaler monitor, log monitor, and the API
    server unless trials of several workers need its State API (the test session's instance
    starts it, as `run` does for them); a plain `start_local()` has none."""
    commands = _children()
    assert any("gcs_server" in c for c in commands) and any("raylet" in c for c in commands), commands
    assert [c for c in commands if any(name in c for name in IDLE_DAEMONS)] == []
    from raytune_torch._ray.group import support_error

    assert any(API_SERVER in c for c in commands) == (support_error() is None)  # conftest: state_api
    done = subprocess.run([sys.executable, "-c", CHILDREN], capture_output=True, text=True, timeout=120,
                          cwd=str(ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert any("raylet" in c for c in plain), plain
    assert [c for c in plain if any(name in c for name in (*IDLE_DAEMONS, API_SERVER))] == []


@pytest.mark.usefixtures("ray_session")
def test_local_instance_retries_connections_every_100_ms_and_exports_no_metrics():
    """The instance's configuration as its GCS gives it to the raylet and the workers: a socket
    that is not listening yet is retried after 100 ms (Ray's default is a second, which the raylet
    often waits at start: its object store is starting on another thread), within the same 10 s;
    no metrics exporter (no dashboard reads them); workers started as soon as the raylet is up."""
    import ray

    config = ray._private.state.state.get_system_config()
    assert config["raylet_client_connect_timeout_milliseconds"] == 100
    assert config["raylet_client_connect_timeout_milliseconds"] * config["raylet_client_num_connect_attempts"] == 10_000
    assert config["enable_metrics_collection"] is False
    # Workers start with the raylet, not when the first driver registers.
    assert config["enable_worker_prestart"] is True


def test_a_killed_drivers_worker_directory_is_removed_by_the_next_run(tmp_path):
    """The directory where workers say they are ready is named after its driver's PID; a driver
    killed before its cleanup leaves it, and the next local instance removes it."""
    from raytune_torch import _ray

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"raytune-torch-workers-{dead.pid}-abc"
    alive = tmp_path / f"raytune-torch-workers-{os.getpid()}-def"
    for folder in (stale, alive):
        folder.mkdir()
        (folder / "123").touch()
    _ray.local._WorkersReady._remove_stale(str(tmp_path))
    assert not stale.exists() and alive.exists()
