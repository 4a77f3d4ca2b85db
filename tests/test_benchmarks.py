"""Smoke test of the benchmark harness: ``benchmarks/run.py --quick`` runs every arm and writes a
complete report. No timing assertions (the machine may be shared)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ARMS = ("loop", "skorch_gridsearchcv", "optuna", "ray_tune_raw", "raytune_torch_grid", "raytune_torch_random",
        "raytune_torch_asha", "raytune_torch_grid_ckpt_end")
GRID_ARMS = ("loop", "skorch_gridsearchcv", "ray_tune_raw", "raytune_torch_grid", "raytune_torch_random",
             "raytune_torch_grid_ckpt_end")
KEYS = ("arm", "workload", "wall_s", "ratio_to_fastest_peer", "speedup_vs_fastest_peer", "parallel_efficiency",
        "per_trial_overhead_s", "best_val_accuracy", "epochs", "trials", "peak_rss_mb", "other_cpu_pct", "noisy")


@pytest.mark.slow
@pytest.mark.ray
def test_quick_benchmark_reports_every_arm(tmp_path):
    out = tmp_path / "tmp.json"
    # Its own session, so that a timeout ends the whole tree (the arm's child and its Ray) by group.
    proc = subprocess.Popen([sys.executable, "benchmarks/run.py", "--quick", "--checkpoint-pairs", "2",
                             "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        pytest.fail(f"benchmarks/run.py --quick took more than 400 s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "| arm | workload | wall_s |" in stdout
    report = json.loads(out.read_text())
    assert {"machine", "arms", "data_sharing"} <= set(report)
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"] and report["machine"]["ray"]

    workload = report["settings"]["workloads"]["mlp"]
    grid_size, epochs = workload["grid_size"], workload["epochs"]
    assert (grid_size, epochs) == (4, 2)  # --quick: a 4-point grid, 2 epochs, mlp only
    rows = {r["arm"]: r for r in report["arms"]}
    assert set(rows) == set(ARMS) and len(report["arms"]) == len(ARMS)
    for name, row in rows.items():
        assert "error" not in row, (name, row.get("error"))
        for key in KEYS:
            value = row.get(key)
            assert value is not None, (name, key)
            if key in ("arm", "workload"):
                assert isinstance(value, str)
            elif key == "noisy":
                assert isinstance(value, bool)
            else:
                assert isinstance(value, (int, float)) and math.isfinite(value), (name, key, value)
        assert row["workload"] == "mlp"
        assert row["speedup_vs_fastest_peer"] == pytest.approx(1 / row["ratio_to_fastest_peer"])
        assert row["noisy"] == (row["other_cpu_pct"] > 15)
        assert 0 < row["best_val_accuracy"] <= 1
        assert row["peak_rss_mb"] > 0 and row["wall_s"] > 0 and row["parallel_efficiency"] > 0

    grid_epochs = grid_size * epochs
    for name in GRID_ARMS:
        assert rows[name]["epochs"] == grid_epochs, name
        assert rows[name]["trials"] == grid_size, name
    assert rows["optuna"]["trials"] == grid_size
    assert grid_size <= rows["optuna"]["epochs"] <= grid_epochs
    assert grid_size <= rows["raytune_torch_asha"]["epochs"] <= grid_epochs
    assert min(rows[a]["ratio_to_fastest_peer"] for a in ("loop", "skorch_gridsearchcv", "optuna", "ray_tune_raw")) \
        == pytest.approx(1.0)
    full_grid = min(rows[a]["wall_s"] for a in ("loop", "skorch_gridsearchcv", "ray_tune_raw"))
    for name, row in rows.items():
        assert row["speedup_vs_fastest_full_grid_peer"] == pytest.approx(full_grid / row["wall_s"]), name
    # The arms' own walls are the first pair; --checkpoint-pairs 2 ran one more pair; the cost is
    # the median (here: the mean) of the two ratios.
    pairs = rows["raytune_torch_grid"]["checkpoint_every_epoch_overhead_pairs"]
    assert len(pairs) == 2
    assert pairs[0] == pytest.approx(rows["raytune_torch_grid"]["wall_s"] / rows["raytune_torch_grid_ckpt_end"]["wall_s"] - 1)
    assert rows["raytune_torch_grid"]["checkpoint_every_epoch_overhead"] == pytest.approx(sum(pairs) / 2)
    assert "checkpoint pair 2/2" in stdout
    assert "checkpoints every epoch vs once per trial (mlp)" in stdout
    # What running one reference epoch per core at once costs each (the ceiling of efficiency).
    contention = report["calibration"]["mlp"]["contention"]
    assert contention["processes"] == report["machine"]["cores"]
    assert len(contention["concurrent_s_per_epoch"]) == contention["processes"]
    assert contention["slowdown"] == pytest.approx(
        sum(contention["concurrent_s_per_epoch"]) / contention["processes"] / contention["solo_s_per_epoch"])
    assert "reference epochs at once (mlp, lr=0.01,hidden=64)" in stdout


def _bench_run_module():
    sys.path.insert(0, str(ROOT))
    from benchmarks import run

    return run


def _has_shmem_split() -> bool:
    try:
        return "Pss_Shmem:" in Path("/proc/self/smaps_rollup").read_text() and Path("/dev/shm").is_dir()
    except OSError:
        return False


_MAPPER = """
import mmap, sys, time
with open(sys.argv[1], "rb") as fh:
    m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
for i in range(0, len(m), 4096):  # touch every page: now it is in this process's PSS
    m[i]
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.skipif(not _has_shmem_split(), reason="needs /dev/shm and Pss_Shmem in /proc/PID/smaps_rollup")
def test_tree_monitor_counts_shared_pages_once_and_reports_the_steady_state():
    run = _bench_run_module()
    size = 48 * 2 ** 20
    shm = Path("/dev/shm") / f"raytune-torch-test-{os.getpid()}"
    shm.write_bytes(b"\x01" * size)
    monitor = run.TreeMonitor(0.05).start()
    procs = []
    try:
        for _ in range(3):  # titled like Ray's trial processes, which the monitor counts as trials
            procs.append(subprocess.Popen(["ray::ImplicitFunc.train", "-c", _MAPPER, str(shm), "3"],
                                          executable=sys.executable))
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        measured = monitor.stop()
        shm.unlink()
    assert measured["max_trial_processes"] == 3
    assert measured["steady_samples"] >= 10
    # Three processes map the same 48 MB: PSS splits the pages between them, so the sum is one copy.
    assert measured["steady_shmem_pss_mb"] == pytest.approx(48, abs=3)
    assert measured["steady_pss_mb"] >= measured["steady_shmem_pss_mb"]
    assert measured["steady_pss_mb"] <= measured["peak_pss_while_trials_mb"]


def test_data_sharing_figures_pair_each_big_case_with_the_baseline_of_as_many_trials():
    run = _bench_run_module()
    mb = 2 ** 20
    data = 300 * mb
    base = 30 * mb
    measured, results = {}, {}
    # (steady PSS, steady Pss_Shmem, peak PSS) per case: the data once in the store, +2 MB private per trial
    figures = {"baseline_one": (1000, 30, 1010), "one": (1272, 300, 1290),
               "baseline": (2000, 30, 2020), "four": (2278, 300, 2310)}
    for case, (steady, shmem, peak) in figures.items():
        measured[case] = {"steady_pss_mb": steady, "steady_shmem_pss_mb": shmem, "steady_samples": 9,
                          "peak_pss_while_trials_mb": peak, "peak_pss_mb": peak + 50, "max_trial_processes": 4,
                          "other_cpu_pct": 1.0, "peak_pss_while_trials_by_process_mb": [],
                          "peak_pss_by_process_mb": []}
        big = not case.startswith("baseline")
        results[case] = {"rows": 1000 if big else 100, "dataset_bytes": data if big else base,
                         "trials": 4 if case in ("four", "baseline") else 1}
    ds = run.data_sharing_figures(measured, results, {c: 1.0 for c in figures})
    assert ds["copies_of_dataset"] == pytest.approx(278 / 270)
    assert ds["copies_of_dataset_one_trial"] == pytest.approx(272 / 270)
    assert ds["object_store_copies"] == ds["object_store_copies_one_trial"] == pytest.approx(1.0)
    assert ds["private_mb_per_trial"] == pytest.approx(2.0)
    assert ds["private_mb_one_trial"] == pytest.approx(2.0)
    assert ds["copies_of_dataset_at_peak"] == pytest.approx(290 / 270)
    text = run.data_sharing_lines(ds)
    assert "copies_of_dataset: 4 trials 1.03, 1 trial 1.01" in text
    assert "object store's pages: 1.00 / 1.00" in text
    # Without the shared-memory split (an older kernel) the parts are n/a, the totals still there.
    for case in figures:
        measured[case]["steady_shmem_pss_mb"] = None
    ds = run.data_sharing_figures(measured, results, {c: 1.0 for c in figures})
    assert ds["object_store_copies"] is None and ds["private_mb_per_trial"] is None
    assert ds["copies_of_dataset"] == pytest.approx(278 / 270)
    assert "object store's pages: n/a / n/a" in run.data_sharing_lines(ds)


def _run_script(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """A benchmark script in its own session; a timeout ends its whole tree by group."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
        pytest.fail(f"{args[0]} ran past {timeout} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def test_data_paths_prints_every_arm_with_its_ratios(tmp_path):
    out = tmp_path / "paths.json"
    done = _run_script(["benchmarks/data_paths.py", "--rounds", "1", "--epochs", "2", "--out", str(out)], 300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())["median_samples_per_s"]
    assert set(figures) == {"hand_dataloader", "trial_dataset", "trial_arrays", "hand_indexing"}
    assert all(value > 0 for value in figures.values())
    assert "| trial_dataset |" in done.stdout and "x hand_dataloader |" in done.stdout


@pytest.mark.slow
@pytest.mark.ray
def test_gpu_check_smoke_runs_four_trials_beside_one_alone(tmp_path):
    out = tmp_path / "gpu.json"
    done = _run_script(["benchmarks/gpu_check.py", "--smoke", "--arms", "alone_bf16,four_bf16_cached",
                        "--out", str(out)], 400)
    assert done.returncode == 0, done.stderr[-3000:]
    arms = json.loads(out.read_text())["arms"]
    assert [len(arms[a]["trials"]) for a in ("alone_bf16", "four_bf16_cached")] == [1, 4]
    assert {t["device"] for a in arms.values() for t in a["trials"]} == {"cpu"}  # logical GPU, CPU fallback
    assert "| four_bf16_cached | 4 |" in done.stdout


def test_gpu_check_without_cuda_says_how_to_run_it():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = _run_script(["benchmarks/gpu_check.py"], 60)
    assert done.returncode == 2
    assert "run this on a machine with an NVIDIA GPU, or pass --smoke to check the script itself" in done.stderr


@pytest.mark.slow  # not `ray`: it starts Ray instances of its own, and Ray 2.41 runs no trials of several workers
def test_ddp_quick_prints_one_and_two_workers_per_trial_side_by_side(tmp_path):
    out = tmp_path / "ddp.json"
    done = _run_script(["benchmarks/ddp.py", "--quick", "--out", str(out)], 500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # part 1 (no Ray): the trial in 1 and 2 gloo processes, and where the time goes
    assert "| model | global batch | params | 1 worker samples/s | 2 workers samples/s | 2 workers / 1 worker |" \
        in done.stdout
    assert done.stdout.count("| benchmark CNN (channels 20, 1,437 rows) | 64 |") == 3  # speed, ms, speed-ups
    row = json.loads(out.read_text())["train"]["rows"][0]
    for key in ("samples_per_s_1", "samples_per_s_2", "trial_step_ms_1", "trial_step_ms_2", "plain_1_ms",
                "plain_half_alone_ms", "plain_2_compute_ms", "plain_2_ddp_ms", "allreduce_ms"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["n_params"] == 49114 and row["steps_per_epoch"] == 23
    # part 2 (Ray Tune through raytune_torch.run): a 2-trial grid with workers 1 and 2
    assert "| workers per trial | run() wall s | x 1 worker |" in done.stdout
    tune = json.loads(out.read_text())["tune"]["rows"]
    assert [r["workers"] for r in tune] == [1, 2]
    for r in tune:
        assert (r["trials"], r["epochs"], r["status"]) == (2, 4, ["completed"]), r["workers"]
        assert [[row["workers"] for row in h] for h in r["histories"]] == [[r["workers"]] * 2] * 2
        assert 0 < r["first_epoch_total_s"] <= r["trial_s"] < r["wall_s"]
    assert "| workers per trial | before the first trial s | trials running s |" in done.stdout
    assert done.stdout.count("| 1 | ") == done.stdout.count("| 2 | ") == 2  # a row in each of the two tables
