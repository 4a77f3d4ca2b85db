#!/usr/bin/env python
"""Run the same tuning workload through every arm, in one sitting, and report how they compare.

    python benchmarks/run.py --out bench.json [--quick] [--workload mlp|cnn|both] [--arms a,b,...]
                             [--data-sharing | --no-data-sharing]

Arms: loop, skorch_gridsearchcv, optuna, ray_tune_raw, raytune_torch_grid, raytune_torch_random,
raytune_torch_asha (see benchmarks/README.md for what each does and how every figure is computed).

This process stays light (no torch, no Ray): it runs the calibration and each arm in a fresh child
process (``run.py --child ...``) and samples the memory (PSS) and CPU of the whole process tree,
Ray's processes included, every 0.5 s from a thread (0.2 s in the data-sharing cases).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import arms as A  # noqa: E402  (light: no torch, numpy or Ray at import)
from benchmarks import workloads as wl  # noqa: E402

NOISY_PCT = 15.0
SAMPLE_INTERVAL_S = 0.5
MB = 2 ** 20
TABLE_COLUMNS = ("arm", "workload", "wall_s", "speedup_vs_fastest_peer", "speedup_vs_fastest_full_grid_peer",
                 "parallel_efficiency", "per_trial_overhead_s", "best_val_accuracy", "epochs", "peak_rss_mb",
                 "other_cpu_pct", "noisy")
ARM_KEYS = ("arm", "workload", "wall_s", "ratio_to_fastest_peer", "speedup_vs_fastest_peer", "parallel_efficiency",
            "per_trial_overhead_s", "best_val_accuracy", "epochs", "trials", "peak_rss_mb", "other_cpu_pct", "noisy")


# ------------------------------------------------------------------------------------------------
# Sampling the process tree


def _title(cmdline: list[str]) -> str:
    """A short name for a process: Ray's process titles, else the script or module it runs."""
    if not cmdline:
        return "?"
    if cmdline[0].startswith("ray::"):
        return cmdline[0].strip()
    words = [w for w in cmdline if not w.startswith("-")]
    for w in words[1:]:
        if w.endswith(".py"):
            tail = "/".join(Path(w).parts[-2:])
            if tail == "benchmarks/run.py" and "--name" in cmdline:
                return f"{tail} {cmdline[cmdline.index('--name') + 1]}"
            return tail
    return Path(words[0] if words else cmdline[0]).name


def _smaps_rollup(pid: int) -> dict[str, int] | None:
    """``Pss``, ``Pss_Anon``, ``Pss_File`` and ``Pss_Shmem`` of a process in bytes (Linux 4.14+;
    the split needs 5.x), or None where the file is missing."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            text = fh.read()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
            out[key] = int(value.split()[0]) * 1024
    return out if "Pss" in out else None


class TreeMonitor:
    """Samples this process and all its descendants every ``interval`` seconds from a thread.

    * memory: the sum of every process's PSS (shared pages split between the processes that map
      them, so Ray's shared object store and forked workers are not counted once per process);
      ``peak_pss`` is the largest sum seen. Where the kernel has ``/proc/PID/smaps_rollup`` the
      sum is also split into shared memory (``Pss_Shmem``: Ray's object store) and the rest.
    * the steady state: the median of the sums over the samples taken while the most trial
      processes were alive. A peak is the extreme of noisy samples (a trial's working memory
      varies by 10-20 MB between samples of the same state; a sweep that reads one process
      before and another after a third one maps the object store counts those pages twice), so
      a difference of two peaks moves by several tens of MB from run to run; the median does
      not.
    * CPU: our tree's CPU seconds = this process's own CPU delta + the larger of (a) the sum over
      descendants of the last CPU time sampled for each and (b) the delta of this process's
      reaped-children CPU (rusage). Both are lower bounds: (a) misses what a process ran after its
      last sample, (b) misses descendants nobody waited for. ``other_cpu_s`` = system-wide busy
      CPU (all cores, /proc/stat) minus ours.
    """

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        import psutil

        self.psutil = psutil
        self.interval = interval
        self.me = psutil.Process()
        self.seen: dict[tuple[int, float], tuple[float, Any]] = {}
        self.peak_pss = 0
        self.peak_breakdown: list[tuple[int, str]] = []
        # The same, over the samples taken while at least one trial process was alive.
        self.peak_pss_trials = 0
        self.peak_trials_breakdown: list[tuple[int, str]] = []
        self.max_procs = 0
        self.max_trial_procs = 0
        self.samples = 0
        self.trace: list[tuple[int, int, int | None]] = []  # (trial processes, PSS sum, Pss_Shmem sum)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-monitor", daemon=True)

    def start(self) -> "TreeMonitor":
        self.sys0 = self.psutil.cpu_times()
        self.me0 = self.me.cpu_times()
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        psutil = self.psutil
        try:
            procs = self.me.children(recursive=True)
        except psutil.Error:
            procs = []
        total, trial_procs, count = 0, 0, 0
        shmem: int | None = 0
        breakdown = []
        for p in [self.me, *procs]:
            try:
                with p.oneshot():
                    parts = _smaps_rollup(p.pid)
                    pss = parts["Pss"] if parts else p.memory_full_info().pss
                    title = "benchmarks/run.py (parent)"
                    if p.pid != self.me.pid:
                        ct = p.cpu_times()
                        key = (p.pid, p.create_time())
                        cpu = ct.user + ct.system
                        self.seen[key] = (max(cpu, self.seen.get(key, (0.0, None))[0]), p)
                        title = _title(p.cmdline())
                        if title.startswith("ray::ImplicitFunc"):
                            trial_procs += 1
            except psutil.Error:
                continue
            total += pss
            shmem = None if shmem is None or not parts or "Pss_Shmem" not in parts else shmem + parts["Pss_Shmem"]
            count += 1
            breakdown.append((pss, title))
        self.samples += 1
        self.trace.append((trial_procs, total, shmem))
        if total > self.peak_pss:
            self.peak_pss = total
            self.peak_breakdown = sorted(breakdown, reverse=True)
        if trial_procs and total > self.peak_pss_trials:
            self.peak_pss_trials = total
            self.peak_trials_breakdown = sorted(breakdown, reverse=True)
        self.max_procs = max(self.max_procs, count)
        self.max_trial_procs = max(self.max_trial_procs, trial_procs)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        sys1, me1 = self.psutil.cpu_times(), self.me.cpu_times()
        elapsed = time.monotonic() - self.t0

        def fields(t):
            total = t.user + t.nice + t.system + t.idle + t.iowait + t.irq + t.softirq + t.steal
            return total, t.idle + t.iowait

        total1, idle1 = fields(sys1)
        total0, idle0 = fields(self.sys0)
        sys_total = max(total1 - total0, 1e-9)
        sys_busy = sys_total - (idle1 - idle0)
        own = (me1.user + me1.system) - (self.me0.user + self.me0.system)
        reaped = (me1.children_user + me1.children_system) - (self.me0.children_user + self.me0.children_system)
        sampled = sum(cpu for cpu, _ in self.seen.values())
        ours = own + max(sampled, reaped)
        other = max(0.0, sys_busy - ours)
        steady = [(total, shmem) for procs, total, shmem in self.trace if procs and procs == self.max_trial_procs]
        steady_shmem = [shmem for _, shmem in steady if shmem is not None]
        return {"elapsed_s": elapsed, "peak_pss_mb": self.peak_pss / MB, "max_processes": self.max_procs,
                "max_trial_processes": self.max_trial_procs, "samples": self.samples,
                "tree_cpu_s": ours, "tree_cpu_sampled_s": own + sampled, "tree_cpu_reaped_s": own + reaped,
                "system_busy_cpu_s": sys_busy, "other_cpu_s": other,
                "other_cpu_pct": 100.0 * other / sys_total, "monitor_cpu_s": own,
                "peak_pss_by_process_mb": [[title, round(pss / MB, 1)] for pss, title in self.peak_breakdown],
                "peak_pss_while_trials_mb": self.peak_pss_trials / MB,
                "peak_pss_while_trials_by_process_mb": [[title, round(pss / MB, 1)]
                                                        for pss, title in self.peak_trials_breakdown],
                "steady_samples": len(steady),
                "steady_pss_mb": statistics.median(t for t, _ in steady) / MB if steady else None,
                "steady_shmem_pss_mb": (statistics.median(steady_shmem) / MB
                                        if steady and len(steady_shmem) == len(steady) else None)}

    def leftovers(self) -> list[Any]:
        """Descendants seen during the run that are still alive (same pid and start time)."""
        alive = []
        for (pid, created), (_, proc) in self.seen.items():
            try:
                if proc.is_running() and proc.create_time() == created:
                    alive.append(proc)
            except self.psutil.Error:
                pass
        return alive

    def end_leftovers(self, grace_s: float = 5.0) -> int:
        """Wait for seen descendants to exit; terminate (then kill) by pid those that do not."""
        deadline = time.monotonic() + grace_s
        alive = self.leftovers()
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = self.leftovers()
        for proc in alive:
            try:
                proc.terminate()
            except self.psutil.Error:
                pass
        _, still = self.psutil.wait_procs(alive, timeout=3)
        for proc in still:
            try:
                proc.kill()
            except self.psutil.Error:
                pass
        return len(alive)


# ------------------------------------------------------------------------------------------------
# Children


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_child(child_args: list[str], *, workdir: Path, label: str, timeout: float,
              env_extra: dict[str, str] | None = None, interval: float = SAMPLE_INTERVAL_S) -> dict[str, Any]:
    """Run ``run.py --child ...`` under a TreeMonitor; return its result plus the measurements."""
    result_file = workdir / f"{label}.result.json"
    log_file = workdir / f"{label}.log"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), *child_args, "--result", str(result_file)]
    monitor = TreeMonitor(interval).start()
    started = time.monotonic()
    error = None
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_child_env(env_extra), stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f}s"
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc = proc.returncode
    process_wall = time.monotonic() - started
    measured = monitor.stop()
    measured["leftover_processes"] = monitor.end_leftovers()
    measured["process_wall_s"] = process_wall
    out: dict[str, Any] = {"measured": measured, "log": str(log_file)}
    if error is None and rc != 0:
        error = f"exited with status {rc}"
    if error is None:
        try:
            out["result"] = json.loads(result_file.read_text())
        except (OSError, ValueError) as exc:
            error = f"no result ({exc})"
    if error is not None:
        tail = log_file.read_text(errors="replace").splitlines()[-30:]
        out["error"] = error
        print(f"  !! {label}: {error}; last lines of {log_file}:", file=sys.stderr)
        for line in tail:
            print(f"     {line}", file=sys.stderr)
    return out


def child_main(args: argparse.Namespace) -> int:
    """Inside a child: the common prelude, then one arm, calibration or data-sharing case."""
    import numpy  # noqa: F401
    import torch  # noqa: F401

    os.chdir(ROOT)  # examples.models / benchmarks.* import from the repository root, in Ray workers too
    with tempfile.TemporaryDirectory(prefix="raytune-torch-bench-") as scratch:
        storage = args.storage or scratch
        if args.child == "data":
            result = A.data_case(args.name, storage)
        else:
            workload = wl.get_workload(args.workload, quick=args.quick)
            wl.digits_splits()  # load the data before the timer
            if args.child == "calibrate":
                t0 = time.perf_counter()
                result = {"s_per_epoch": wl.calibrate(workload), "wall_s": time.perf_counter() - t0,
                          "contention": wl.contention(workload, os.cpu_count() or 1,
                                                      seconds=1.0 if args.quick else 3.0)}
            else:
                result = A.get_arm(args.name)(workload, storage)
    Path(args.result).write_text(json.dumps(_jsonable(result), indent=1))
    return 0


# ------------------------------------------------------------------------------------------------
# Figures


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f if math.isfinite(f) else None


def arm_row(arm: str, workload: wl.Workload, child: dict[str, Any], calibration: dict[str, float],
            cores: int) -> dict[str, Any]:
    measured = child["measured"]
    row: dict[str, Any] = {k: None for k in ARM_KEYS}
    row.update(arm=arm, workload=workload.name, peak_rss_mb=measured["peak_pss_mb"],
               other_cpu_pct=measured["other_cpu_pct"], noisy=measured["other_cpu_pct"] > NOISY_PCT)
    if "error" in child:
        row["error"] = child["error"]
        row["log"] = child["log"]
        row["measured"] = measured
        return row
    res = child["result"]
    compute = 0.0
    epochs = 0
    for run in res["runs"]:
        key = workload.key(run["lr"], run[workload.size_param])
        if key not in calibration:
            raise KeyError(f"{arm}: configuration {key} is not in the calibrated grid")
        compute += calibration[key] * run["epochs"]
        epochs += run["epochs"]
    wall = res["wall_s"]
    trials = res["trials"]
    row.update(wall_s=wall, epochs=epochs, trials=trials, best_val_accuracy=res["best_val_accuracy"],
               compute_s=compute, parallel_efficiency=compute / (wall * cores),
               per_trial_overhead_s=(wall * cores - compute) / max(trials, 1))
    row["measured"] = measured
    row["extra"] = {k: v for k, v in res.items() if k not in ("wall_s", "trials", "runs", "best_val_accuracy")}
    row["runs"] = res["runs"]
    return row


def contention_lines(calibrations: dict[str, Any]) -> str:
    lines = []
    for name, calib in calibrations.items():
        c = calib["contention"]
        if c["slowdown"] <= 1.0:
            lines.append(f"{c['processes']} reference epochs at once ({name}, {c['configuration']}): no slower than "
                         f"alone ({c['slowdown']:.2f}x)")
            continue
        lines.append(f"{c['processes']} reference epochs at once ({name}, {c['configuration']}): each "
                     f"{c['slowdown']:.2f}x as long as alone ({1000 * c['solo_s_per_epoch']:.1f} ms): no parallel "
                     f"arm's parallel_efficiency can exceed {c['parallel_efficiency_ceiling']:.2f} on this machine")
    return "\n".join(lines)


def add_peer_ratios(rows: list[dict[str, Any]], pairs: dict[str, list[dict[str, Any]]]) -> None:
    for name in {r["workload"] for r in rows}:
        timed = [r for r in rows if r["workload"] == name and r["wall_s"]]

        def of(*arms: str) -> list[dict[str, Any]]:
            return [r for r in timed if r["arm"] in arms]

        fastest = min(of(*A.PEERS), key=lambda r: r["wall_s"], default=None)
        fastest_full = min((r["wall_s"] for r in of(*A.FULL_GRID_PEERS)), default=None)
        for r in timed:
            if fastest:
                r["ratio_to_fastest_peer"] = r["wall_s"] / fastest["wall_s"]
                r["speedup_vs_fastest_peer"] = fastest["wall_s"] / r["wall_s"]
                r["fastest_peer"] = fastest["arm"]
            if fastest_full:
                r["speedup_vs_fastest_full_grid_peer"] = fastest_full / r["wall_s"]
        grid, end = of("raytune_torch_grid"), of("raytune_torch_grid_ckpt_end")
        if grid and end:
            # What checkpointing every epoch (raytune_torch_grid) adds to checkpointing once per
            # trial: the median over the pairs run (the arms' own rows are the first pair). A
            # single pair is at the mercy of start-up noise (ray.init varies by a second here).
            ratios = [grid[0]["wall_s"] / end[0]["wall_s"]]
            ratios += [p["every_epoch_wall_s"] / p["end_wall_s"] for p in pairs.get(name, ()) if "error" not in p]
            grid[0]["checkpoint_every_epoch_overhead"] = statistics.median(ratios) - 1
            grid[0]["checkpoint_every_epoch_overhead_pairs"] = [r - 1 for r in ratios]


def _checkpoint_pairs(rows: list[dict[str, Any]], workload: str, args: argparse.Namespace,
                      run_arm: Any) -> list[dict[str, Any]]:
    """Run ``raytune_torch_grid_ckpt_end`` and ``raytune_torch_grid`` again, one after the other
    (in alternating order), until ``--checkpoint-pairs`` pairs of walls have been measured."""
    names = ("raytune_torch_grid", "raytune_torch_grid_ckpt_end")
    if not all(any(r["arm"] == n and r["workload"] == workload and r["wall_s"] for r in rows) for n in names):
        return []
    out = []
    for i in range(1, args.checkpoint_pairs):
        order = names[::-1] if i % 2 else names
        print(f"- {workload}: checkpoint pair {i + 1}/{args.checkpoint_pairs} ...", end=" ", flush=True)
        walls = {}
        for arm in order:
            child = run_arm(arm, f"{arm}-pair{i + 1}")
            if "error" in child:
                print("FAILED", flush=True)
                out.append({"error": f"{arm}: {child['error']} (log {child['log']})"})
                break
            walls[arm] = child["result"]["wall_s"]
        else:
            pair = {"every_epoch_wall_s": walls[names[0]], "end_wall_s": walls[names[1]]}
            print(f"every epoch {pair['every_epoch_wall_s']:.1f}s, at the end {pair['end_wall_s']:.1f}s", flush=True)
            out.append(pair)
    return out


def _fmt(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if column in ("epochs", "trials"):
        return str(int(value))
    if column in ("peak_rss_mb",):
        return f"{value:.0f}"
    if column == "best_val_accuracy":
        return f"{value:.4f}"
    if column in ("wall_s", "other_cpu_pct"):
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in rows:
        cells = [_fmt(r.get(c), c) for c in TABLE_COLUMNS]
        if "error" in r:
            cells[2] = f"FAILED ({r['error']})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def data_sharing_lines(ds: dict[str, Any]) -> str:
    if ds.get("skipped"):
        return "data sharing: skipped (--data-sharing runs it)"
    if "error" in ds:
        return f"data sharing: FAILED ({ds['error']})"

    def f(value: float | None, spec: str = ".2f") -> str:
        return "n/a" if value is None else format(value, spec)

    steady, n = ds["steady_pss_mb"], ds["steady_samples"]
    return "\n".join([
        f"data sharing: {ds['dataset_mb']:.0f} MB float32 dataset ({ds['rows']} rows x {ds['features']} features), "
        f"raytune_torch, {A.DATA_EPOCHS} epochs, cpu 0.5 per trial, max_concurrent 4; baselines run as many "
        f"trials on {ds['baseline_rows']} rows",
        f"  tree PSS while the trials ran (median of {n['four']}/{n['baseline']} samples with all trial processes "
        f"alive): 4 trials {f(steady['four'], '.0f')} MB vs baseline {f(steady['baseline'], '.0f')} MB; "
        f"1 trial {f(steady['one'], '.0f')} MB vs baseline {f(steady['baseline_one'], '.0f')} MB",
        f"  copies_of_dataset: 4 trials {f(ds['copies_of_dataset'])}, 1 trial {f(ds['copies_of_dataset_one_trial'])} "
        f"(object store's pages: {f(ds['object_store_copies'])} / {f(ds['object_store_copies_one_trial'])}; "
        f"private memory {f(ds['private_mb_per_trial'], '+.1f')} / {f(ds['private_mb_one_trial'], '+.1f')} MB per trial)",
        f"  peaks: 4 trials {ds['four_trials_peak_pss_mb']:.0f} MB (at most {ds['four_trials_max_trial_processes']} "
        f"trial processes alive at once), 1 trial {ds['one_trial_peak_pss_mb']:.0f} MB; "
        f"copies at the peak {ds['copies_of_dataset_at_peak']:.2f} (whole run {ds['copies_of_dataset_whole_run']:.2f}); "
        f"4-trial/1-trial peak PSS = {ds['ratio_four_to_one']:.2f}; "
        f"+{ds['extra_mb_per_extra_trial']:.0f} MB per extra concurrent trial",
    ])


def machine_info(cores: int) -> dict[str, Any]:
    import importlib.metadata as md

    import psutil

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": cores, "cpu_model": cpu_model, "memory_gb": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            **{name: version(name) for name in ("torch", "ray", "skorch", "optuna", "scikit-learn", "numpy",
                                                 "psutil", "raytune-torch")},
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# ------------------------------------------------------------------------------------------------
# Parent


DATA_SAMPLE_INTERVAL_S = 0.2  # four trials overlap for about two seconds


def run_data_sharing(workdir: Path, timeout: float) -> dict[str, Any]:
    measured = {}
    walls = {}
    for case in A.DATA_CASES:
        print(f"- data sharing: {case} ...", flush=True)
        child = run_child(["--child", "data", "--name", case, "--storage", str(workdir / f"data-{case}")],
                          workdir=workdir, label=f"data-{case}", timeout=timeout, interval=DATA_SAMPLE_INTERVAL_S)
        if "error" in child:
            return {"error": f"{case}: {child['error']}", "log": child["log"]}
        measured[case] = child
        walls[case] = child["result"]["wall_s"]
    return data_sharing_figures({c: m["measured"] for c, m in measured.items()},
                                {c: m["result"] for c, m in measured.items()}, walls)


def data_sharing_figures(measured: dict[str, dict[str, Any]], results: dict[str, dict[str, Any]],
                         walls: dict[str, float]) -> dict[str, Any]:
    """What the big dataset costs, from each case's samples (see benchmarks/README.md).

    Each big case is compared with the baseline that runs as many trials on a small dataset, so
    what differs is the data. The headline is the steady state (median PSS sum while the most
    trial processes were alive); the peaks are reported beside it.
    """
    big = results["one"]
    nbytes = big["dataset_bytes"]
    delta = nbytes - results["baseline"]["dataset_bytes"]
    pairs = {"four": "baseline", "one": "baseline_one"}

    def copies(key: str, case: str) -> float | None:
        a, b = measured[case].get(key), measured[pairs[case]].get(key)
        return None if a is None or b is None else (a - b) * MB / delta

    def private_mb(case: str) -> float | None:  # all but the shared memory, per trial
        m, b = measured[case], measured[pairs[case]]
        if None in (m.get("steady_shmem_pss_mb"), b.get("steady_shmem_pss_mb")):
            return None
        return (((m["steady_pss_mb"] - m["steady_shmem_pss_mb"]) - (b["steady_pss_mb"] - b["steady_shmem_pss_mb"]))
                / results[case]["trials"])

    # The peak while trials ran (they are what share the data); the whole run's peak also
    # catches the moment the driver puts the arrays in the store, and idle workers that Ray has
    # not yet stopped after the trials (each holds torch: about 300 MB).
    peak = {case: measured[case]["peak_pss_while_trials_mb"] for case in A.DATA_CASES}
    whole = {case: measured[case]["peak_pss_mb"] for case in A.DATA_CASES}
    return {
        "rows": big["rows"], "features": A.FEATURES, "dataset_bytes": nbytes, "dataset_mb": nbytes / MB,
        "baseline_rows": results["baseline"]["rows"], "baseline_dataset_bytes": results["baseline"]["dataset_bytes"],
        "copies_of_dataset": copies("steady_pss_mb", "four"),
        "copies_of_dataset_one_trial": copies("steady_pss_mb", "one"),
        "object_store_copies": copies("steady_shmem_pss_mb", "four"),
        "object_store_copies_one_trial": copies("steady_shmem_pss_mb", "one"),
        "private_mb_per_trial": private_mb("four"),
        "private_mb_one_trial": private_mb("one"),
        "steady_pss_mb": {c: measured[c]["steady_pss_mb"] for c in A.DATA_CASES},
        "steady_shmem_pss_mb": {c: measured[c]["steady_shmem_pss_mb"] for c in A.DATA_CASES},
        "steady_samples": {c: measured[c]["steady_samples"] for c in A.DATA_CASES},
        "copies_of_dataset_at_peak": (peak["four"] - peak["baseline"]) * MB / delta,
        "copies_of_dataset_whole_run": (whole["four"] - whole["baseline"]) * MB / delta,
        "baseline_peak_pss_mb": peak["baseline"], "one_trial_peak_pss_mb": peak["one"],
        "four_trials_peak_pss_mb": peak["four"],
        "whole_run_peak_pss_mb": whole,
        "ratio_four_to_one": peak["four"] / peak["one"],
        "extra_mb_per_extra_trial": (peak["four"] - peak["one"]) / 3,
        "four_trials_max_trial_processes": measured["four"]["max_trial_processes"],
        "wall_s": walls,
        "other_cpu_pct": {c: measured[c]["other_cpu_pct"] for c in A.DATA_CASES},
        "peak_pss_while_trials_by_process_mb": {c: measured[c]["peak_pss_while_trials_by_process_mb"]
                                                for c in A.DATA_CASES},
        "peak_pss_by_process_mb": {c: measured[c]["peak_pss_by_process_mb"] for c in A.DATA_CASES},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--quick", action="store_true", help="a 4-point grid, 2 epochs, mlp only (~2 minutes)")
    p.add_argument("--workload", choices=("mlp", "cnn", "both"), default=None,
                   help="default: both (mlp with --quick)")
    p.add_argument("--arms", default=",".join(A.ALL_ARMS), help="comma-separated arm names (default: all)")
    ds = p.add_mutually_exclusive_group()
    ds.add_argument("--data-sharing", dest="data_sharing", action="store_true", default=None,
                    help="run the data-sharing case (default in a full run, not with --quick)")
    ds.add_argument("--no-data-sharing", dest="data_sharing", action="store_false")
    p.set_defaults(data_sharing=None)
    p.add_argument("--arm-timeout", type=float, default=None, help="seconds per child (default 900; 300 quick)")
    p.add_argument("--checkpoint-pairs", type=int, default=None,
                   help="pairs of raytune_torch_grid / raytune_torch_grid_ckpt_end runs whose median wall "
                        "ratio is the per-epoch checkpoint cost (default 3; 1 with --quick)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, Ray storage)")
    # inside a child
    p.add_argument("--child", choices=("arm", "calibrate", "data"), help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--storage", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    if not args.out:
        p.error("--out FILE.json is required")
    if args.workload is None:
        args.workload = "mlp" if args.quick else "both"
    if args.quick and args.workload != "mlp":
        p.error("--quick runs the mlp workload only")
    args.arm_list = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arm_list if a not in A.ALL_ARMS]
    if unknown or not args.arm_list:
        p.error(f"unknown arm(s) {unknown}; choose from {', '.join(A.ALL_ARMS)}")
    if args.data_sharing is None:
        args.data_sharing = not args.quick
    if args.checkpoint_pairs is None:
        args.checkpoint_pairs = 1 if args.quick else 3
    if args.checkpoint_pairs < 1:
        p.error("--checkpoint-pairs must be at least 1")
    if args.arm_timeout is None:
        args.arm_timeout = 300.0 if args.quick else 900.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    cores = os.cpu_count() or 1
    names = ["mlp", "cnn"] if args.workload == "both" else [args.workload]
    workloads = [wl.get_workload(n, quick=args.quick) for n in names]
    workdir = Path(tempfile.mkdtemp(prefix="raytune-torch-bench-"))
    started = time.monotonic()
    print(f"benchmarks: {len(args.arm_list)} arm(s) x {len(workloads)} workload(s) on {cores} core(s); "
          f"work directory {workdir}", flush=True)
    rows: list[dict[str, Any]] = []
    calibrations: dict[str, Any] = {}
    checkpoint_pairs: dict[str, list[dict[str, Any]]] = {}
    failed = False
    for workload in workloads:
        common = ["--workload", workload.name, *(["--quick"] if args.quick else [])]
        print(f"- {workload.name}: calibrating {workload.grid_size} configuration(s) ...", flush=True)
        calib = run_child(["--child", "calibrate", *common], workdir=workdir, label=f"calibrate-{workload.name}",
                          timeout=args.arm_timeout, env_extra={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        if "error" in calib:
            print(f"benchmarks: calibration failed; see {calib['log']}", file=sys.stderr)
            return 1
        seconds = calib["result"]["s_per_epoch"]
        calibrations[workload.name] = {"s_per_epoch": seconds, "wall_s": calib["result"]["wall_s"],
                                       "other_cpu_pct": calib["measured"]["other_cpu_pct"],
                                       "contention": calib["result"]["contention"]}
        def run_arm(arm: str, label: str) -> dict[str, Any]:
            env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if arm == "skorch_gridsearchcv" else None
            child = run_child(["--child", "arm", "--name", arm, *common,
                               "--storage", str(workdir / f"{workload.name}-{label}")],
                              workdir=workdir, label=f"{workload.name}-{label}", timeout=args.arm_timeout,
                              env_extra=env)
            if not args.keep:
                shutil.rmtree(workdir / f"{workload.name}-{label}", ignore_errors=True)
            return child

        for arm in args.arm_list:
            print(f"- {workload.name}: {arm} ...", end=" ", flush=True)
            child = run_arm(arm, arm)
            row = arm_row(arm, workload, child, seconds, cores)
            failed |= "error" in row
            rows.append(row)
            if "error" not in row:
                print(f"{row['wall_s']:.1f}s, {row['epochs']} epochs, best val_accuracy "
                      f"{row['best_val_accuracy']:.4f}, peak PSS {row['peak_rss_mb']:.0f} MB", flush=True)
            else:
                print("FAILED", flush=True)
        pairs = _checkpoint_pairs(rows, workload.name, args, run_arm)
        failed |= any("error" in p for p in pairs)
        if pairs:
            checkpoint_pairs[workload.name] = pairs
    add_peer_ratios(rows, checkpoint_pairs)
    data_sharing: dict[str, Any] = {"skipped": True}
    if args.data_sharing:
        data_sharing = run_data_sharing(workdir, args.arm_timeout)
        failed |= "error" in data_sharing
        for case in A.DATA_CASES if not args.keep else ():
            shutil.rmtree(workdir / f"data-{case}", ignore_errors=True)
    report = {
        "machine": machine_info(cores),
        "settings": {"quick": args.quick, "arms": args.arm_list, "noisy_threshold_pct": NOISY_PCT,
                     "sample_interval_s": SAMPLE_INTERVAL_S,
                     "asha": {"reduction_factor": A.ASHA_REDUCTION_FACTOR,
                              "grace_period": {w.name: A.asha_grace_period(w.epochs) for w in workloads}},
                     "workloads": {w.name: w.describe() for w in workloads}},
        "calibration": calibrations,
        "arms": rows,
        "data_sharing": data_sharing,
        "total_wall_s": time.monotonic() - started,
    }
    Path(args.out).write_text(json.dumps(_jsonable(report), indent=1))
    print()
    print(markdown_table(rows))
    print()
    for r in rows:
        if "checkpoint_every_epoch_overhead" in r:
            each = ", ".join(f"{100 * x:+.1f}%" for x in r["checkpoint_every_epoch_overhead_pairs"])
            print(f"checkpoints every epoch vs once per trial ({r['workload']}): "
                  f"{100 * r['checkpoint_every_epoch_overhead']:+.1f}% wall (median of raytune_torch_grid / "
                  f"raytune_torch_grid_ckpt_end - 1 over {len(r['checkpoint_every_epoch_overhead_pairs'])} "
                  f"pair(s): {each})")
    print(contention_lines(calibrations))
    print(data_sharing_lines(data_sharing))
    print(f"\nbenchmarks: {report['total_wall_s']:.0f}s in all; JSON in {args.out}", flush=True)
    if failed or args.keep:
        print(f"benchmarks: logs kept in {workdir}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
