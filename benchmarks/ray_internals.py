#!/usr/bin/env python
"""What each use of Ray's private internals buys, measured on the benchmark's grid in one sitting.

    python benchmarks/ray_internals.py [--workload cnn|mlp] [--rounds 2] [--before DIR] [--out FILE]

Runs the ``raytune_torch_grid`` experiment of ``benchmarks/arms.py`` in a fresh process per run,
with ``RAYTUNE_TORCH_RAY_INTERNALS`` set to: every tweak (``on``), none (``off``), and every tweak
but one (``-NAME``) for each tweak of ``raytune_torch._ray.internals`` that only buys speed. The
configurations are interleaved round by round so that drift on a shared machine spreads over all
of them. ``--before DIR`` adds a checkout of other code (e.g. ``git worktree add DIR REV``) run
the same way, as ``before``.

Prints, per configuration: the median wall time of ``raytune_torch.run`` and its start-up (from
the call to the first trial's first result), and both as a ratio to ``on``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the tweaks of raytune_torch._ray.internals that only buy speed
TWEAKS = ("no_idle_daemons", "preloaded_workers", "checkpoint_from_result")

CHILD = r"""
import json, sys, tempfile, time
t0 = time.perf_counter()
import raytune_torch as rt
from ray import tune
from benchmarks import arms as A, workloads as wl

class First(tune.Callback):
    at = None
    def on_trial_result(self, iteration, trials, trial, result, **info):
        if First.at is None:
            First.at = time.perf_counter()

workload = wl.get_workload(sys.argv[1])
wl.digits_splits()
with tempfile.TemporaryDirectory(prefix="rtt-internals-") as storage:
    start = time.perf_counter()
    result = rt.run(A.experiment(workload, storage, "raytune_torch_grid"), quiet=True, callbacks=[First()])
    wall = time.perf_counter() - start
    table = result.table
print(json.dumps({"wall_s": wall, "startup_s": First.at - start, "epochs": int((table["epoch"] > 0).sum()),
                  "best": float(table["val_accuracy"].max())}))
"""


def configurations(before: str | None) -> dict[str, tuple[str, str]]:
    """name -> (code root, RAYTUNE_TORCH_RAY_INTERNALS)."""
    out = {"on": (str(ROOT), "on"), "off": (str(ROOT), "off")}
    for name in TWEAKS:
        out[f"-{name}"] = (str(ROOT), ",".join(t for t in TWEAKS if t != name))
    if before:
        out["before"] = (os.path.abspath(before), "on")
    return out


def run_once(root: str, internals: str, workload: str, timeout: float) -> dict:
    env = dict(os.environ, RAYTUNE_TORCH_RAY_INTERNALS=internals, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-c", CHILD, workload], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=("cnn", "mlp"), default="cnn")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--before", help="a checkout of other code to run as 'before'")
    p.add_argument("--only", help="comma-separated configuration names (default: all)")
    p.add_argument("--with", dest="extra", action="append", default=[], metavar="NAME=TWEAKS",
                   help="another configuration: NAME runs with only TWEAKS (comma-separated) on; repeatable")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--out", help="write the JSON report here")
    args = p.parse_args(argv)
    configs = configurations(args.before)
    for item in args.extra:
        name, _, tweaks = item.partition("=")
        configs[name] = (str(ROOT), tweaks or "off")
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only.split(",")}
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for round_ in range(args.rounds):
        for name, (root, internals) in configs.items():
            res = run_once(root, internals, args.workload, args.timeout)
            runs[name].append(res)
            shown = res.get("error") or f"wall {res['wall_s']:.2f}s, start-up {res['startup_s']:.2f}s"
            print(f"round {round_ + 1} {name:>24}: {shown}", flush=True)
    rows = {}
    for name, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if ok:
            rows[name] = {"wall_s": statistics.median(r["wall_s"] for r in ok),
                          "startup_s": statistics.median(r["startup_s"] for r in ok),
                          "epochs": ok[0]["epochs"], "best": ok[0]["best"], "runs": len(ok)}
    base = rows.get("on")
    print(f"\n{args.workload} grid, {args.rounds} round(s), median of each ({started}):")
    print(f"{'configuration':>26} {'wall s':>8} {'x on':>6} {'start-up s':>11} {'x on':>6} {'epochs':>7}")
    for name, row in rows.items():
        ratio = row["wall_s"] / base["wall_s"] if base else float("nan")
        sratio = row["startup_s"] / base["startup_s"] if base else float("nan")
        print(f"{name:>26} {row['wall_s']:8.2f} {ratio:6.3f} {row['startup_s']:11.2f} {sratio:6.3f} {row['epochs']:7d}")
    if args.out:
        Path(args.out).write_text(json.dumps({"started": started, "workload": args.workload, "rows": rows,
                                              "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
