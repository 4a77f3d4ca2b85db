"""``raytune-torch``: run, resume, submit, jobs, validate, results, tensorboard.

Exit status: 0 success; 2 bad input (the experiment, its data or resources; every problem is
listed and nothing was started); 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .exceptions import ClusterError, ConfigError, PreflightError, RaytuneTorchError, ResourceError

__all__ = ["main", "build_parser"]

_OVERRIDE_FLAGS: list[tuple[str, str, Any, str]] = [
    # flag, override name, type, help
    ("--search", "search", str, "searcher: grid, random, optuna, hyperopt, bohb"),
    ("--sampler", "sampler", str, "Optuna's sampler (search: optuna): tpe, nsga2, cmaes, gp, qmc, random"),
    ("--scheduler", "scheduler", str, "scheduler: fifo, asha, hyperband, median"),
    ("--num-samples", "num_samples", int, "trials to sample (per grid point for random)"),
    ("--max-epochs", "max_epochs", int, "epochs per trial at most (also the schedulers' max_t)"),
    ("--storage", "storage", str, "where run directories go (STORAGE/NAME)"),
    ("--name", "name", str, "the run's name"),
    ("--seed", "seed", int, "the experiment seed"),
    ("--cpus-per-trial", "cpus_per_trial", float, "CPUs per worker of a trial (also torch threads)"),
    ("--gpus-per-trial", "gpus_per_trial", float, "GPU share per worker, at most 1, e.g. 0.25"),
    ("--workers-per-trial", "workers_per_trial", int, "workers training each trial's model together (DDP)"),
    ("--max-concurrent", "max_concurrent", int, "trials running at once at most"),
    ("--metric", "metric", str, "the metric to optimise, e.g. val_accuracy; several: val_accuracy,n_params"),
    ("--mode", "mode", str, "min or max (follows the metric by default); several: max,min"),
    ("--time-budget-s", "time_budget_s", float, "the whole run's time budget, seconds (search.time_budget_s)"),
    ("--time-limit-s", "time_limit_s", float, "each trial's training time limit, seconds (train.time_limit_s)"),
    ("--max-failures", "max_failures", int, "restarts of a failing trial from its checkpoint"),
]


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("overrides of the experiment file")
    for flag, dest, kind, help_text in _OVERRIDE_FLAGS:
        group.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {dest: getattr(args, dest) for _, dest, _, _ in _OVERRIDE_FLAGS if getattr(args, dest) is not None}
    for dest in ("metric", "mode"):  # several objectives: --metric val_accuracy,n_params --mode max,min
        if isinstance(out.get(dest), str) and "," in out[dest]:
            out[dest] = [part.strip() for part in out[dest].split(",")]
    return out


def _override_args(args: argparse.Namespace) -> list[str]:
    """The override flags as given, to pass on to the job's own ``run``."""
    out: list[str] = []
    for flag, dest, _, _ in _OVERRIDE_FLAGS:
        if getattr(args, dest) is not None:
            out += [flag, str(getattr(args, dest))]
    return out


_TOKEN_HELP = ("file with the cluster's auth token (default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, then "
               "~/.ray/auth_token); never printed")
_DASHBOARD_HELP = "the cluster's dashboard / Jobs API URL, e.g. http://127.0.0.1:8265 (default: RAY_API_SERVER_ADDRESS)"


def _add_cluster(parser: argparse.ArgumentParser, dashboard: bool = False) -> None:
    if dashboard:
        parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS"), help=_DASHBOARD_HELP)
    parser.add_argument("--token-file", default=None, help=_TOKEN_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raytune-torch", description="Tune PyTorch models on Ray Tune.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="tune an experiment (a private local Ray instance unless --address)")
    p.add_argument("experiment", help="the experiment YAML file")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="join this Ray cluster ('auto' on its head node, or HOST:PORT of its GCS) instead of "
                        "starting a private local one (default: RAY_ADDRESS)")
    _add_cluster(p)
    p.add_argument("--quiet", action="store_true", help="print only the final summary and errors")
    p.add_argument("--num-gpus", type=int, default=None,
                   help="GPUs the local Ray instance advertises (default: the CUDA devices found)")
    _add_overrides(p)

    p = sub.add_parser("validate", help="check an experiment file, its data and one batch; start nothing")
    p.add_argument("experiment")
    p.add_argument("--no-data", action="store_true", help="check the file only (skip loading data and the batch)")
    _add_overrides(p)

    p = sub.add_parser("resume", help="continue an interrupted run from its checkpoints, or add trials to a "
                                      "finished one (--num-samples)")
    p.add_argument("run_dir", help="the run directory (STORAGE/NAME)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="add this many trials to a finished run (the searcher keeps what it learned)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="join this Ray cluster instead of starting one (default: RAY_ADDRESS)")
    _add_cluster(p)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("submit", help="run an experiment on a Ray cluster as a Ray Job (through its Jobs API)")
    p.add_argument("experiment", help="the experiment YAML file (inside --working-dir)")
    _add_cluster(p, dashboard=True)
    p.add_argument("--working-dir", default=None,
                   help="folder uploaded with the job: your model code and the experiment file (default: .)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument("--job-id", default=None, help="the submission id (default: raytune-NAME-TIME-RANDOM)")
    _add_overrides(p)

    p = sub.add_parser("jobs", help="status, logs, stop or list Ray Jobs on a cluster")
    p.add_argument("action", choices=("status", "logs", "stop", "list"))
    p.add_argument("job_id", nargs="?", default=None)
    _add_cluster(p, dashboard=True)
    p.add_argument("--follow", action="store_true", help="logs: stream until the job ends (exit status = the job's)")

    p = sub.add_parser("tensorboard", help="start TensorBoard for a run directory (127.0.0.1 by default)")
    p.add_argument("run_dir")
    p.add_argument("--port", type=int, default=6006)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; anything but loopback exposes the run to the network on purpose")

    p = sub.add_parser("results", help="show the best trial and a top-k table of a run directory")
    p.add_argument("run_dir")
    p.add_argument("--top", type=int, default=5,
                   help="how many trials to list, and to draw in colour with --plots (default 5; with several "
                        "objectives the Pareto front comes first)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--plots", metavar="DIR", default=None,
                   help="also write PNGs to DIR: learning curves, each parameter against the metric, parameter "
                        "importance (needs raytune-torch[plots])")
    return parser


def _fail(exc: Exception, code: int) -> int:
    label = {ConfigError: "invalid experiment", PreflightError: "the trial would fail",
             ResourceError: "not enough resources", ClusterError: "cluster"}.get(type(exc), "error")
    print(f"raytune-torch: {label}: {exc}", file=sys.stderr)
    return code


def _cmd_run(args: argparse.Namespace) -> int:
    from .tuner import run

    result = run(args.experiment, address=args.address, quiet=args.quiet, num_gpus=args.num_gpus,
                 token_file=args.token_file, **_overrides(args))
    if args.quiet:
        print(result.summary())
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from .tuner import resume

    resume(args.run_dir, address=args.address, quiet=args.quiet, token_file=args.token_file,
           num_samples=args.num_samples)
    return 0


def _need_address(args: argparse.Namespace) -> str:
    if not args.address:
        raise ClusterError("no cluster given: pass --address http://HEAD:8265 (the dashboard / Jobs API; forward it "
                           "with `ray dashboard CLUSTER.yaml`) or set RAY_API_SERVER_ADDRESS")
    return args.address


def _cmd_submit(args: argparse.Namespace) -> int:
    from .jobs import submit

    _, status = submit(args.experiment, _need_address(args), working_dir=args.working_dir, wait=not args.no_wait,
                       token_file=args.token_file, extra_args=_override_args(args), overrides=_overrides(args),
                       job_id=args.job_id)
    return status


def _cmd_jobs(args: argparse.Namespace) -> int:
    from . import jobs

    address = _need_address(args)
    if args.action == "list":
        for job in jobs.list_jobs(address, args.token_file):
            print(f"{job['job_id']}\t{job['status']}\t{job['entrypoint']}")
        return 0
    if not args.job_id:
        raise ClusterError(f"`jobs {args.action}` needs a JOB_ID (see `raytune-torch jobs list --address {address}`)")
    if args.action == "status":
        info = jobs.job_status(args.job_id, address, args.token_file)
        print(f"{info['job_id']}: {info['status']}" + (f" ({info['message']})" if info["message"] else ""))
        return 0
    if args.action == "logs":
        return jobs.job_logs(args.job_id, address, args.token_file, follow_=args.follow)
    print(f"{args.job_id}: {jobs.stop_job(args.job_id, address, args.token_file)}")
    return 0


def _cmd_tensorboard(args: argparse.Namespace) -> int:
    import contextlib
    import time
    import urllib.request

    from .exceptions import ResultsError
    from .tensorboard import serve

    from .storage import display, is_uri, local_copy

    if not is_uri(args.run_dir) and not os.path.isdir(args.run_dir):
        raise ResultsError(f"run directory {args.run_dir!r} does not exist; give STORAGE/NAME of a run")
    logdir = local_copy(args.run_dir)  # a URI run: its event files, downloaded to a local cache
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"raytune-torch: warning: TensorBoard listens on {args.host}: anyone who can reach this machine "
              f"can read the run", file=sys.stderr)
    import tempfile

    log = tempfile.TemporaryFile(mode="w+")
    proc = serve(logdir, host=args.host, port=args.port, log=log)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown}:{args.port}/"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                err = log.read()
                print(f"raytune-torch: TensorBoard exited: {err.strip()[-2000:]}", file=sys.stderr)
                return 1
            try:
                urllib.request.urlopen(url + "data/runs", timeout=2).read()
                break
            except OSError:
                time.sleep(0.3)
        print(f"TensorBoard for {display(args.run_dir)} at {url} (#hparams for the table of all trials; Ctrl-C to "
              f"stop)", flush=True)
        if not is_uri(args.run_dir):
            return proc.wait()
        while proc.poll() is None:  # a URI run may still be running: fetch new events now and then
            time.sleep(15)
            with contextlib.suppress(RaytuneTorchError, OSError):
                local_copy(args.run_dir)
        return proc.returncode
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        log.close()


def _cmd_validate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .space import grid_points

    from .trackers import check_trackers

    if args.no_data:
        config = load_config(args.experiment, **_overrides(args))
        check_trackers(config)
        print(f"OK: {args.experiment} is a valid experiment ({config.name}: search={config.search.algorithm}, "
              f"scheduler={config.scheduler.name}, metric={', '.join(config.search.metrics)})")
        return 0
    from .tuner import prepare

    config, data = prepare(args.experiment, **_overrides(args))
    check_trackers(config)
    grid = len(grid_points(config.space, config.search.algorithm)) if config.search.algorithm in ("grid", "random") else 1
    trials = grid * config.search.num_samples if config.search.algorithm in ("grid", "random") else config.search.num_samples
    print(f"OK: {args.experiment}: {config.name}; about {trials} trial(s), search={config.search.algorithm}, "
          f"scheduler={config.scheduler.name}, metric={config.search.objectives_text}; "
          f"data: {data.describe()}; one batch trained and evaluated")
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from .results import TuneResult

    if args.plots is not None:
        from .plots import require_matplotlib

        require_matplotlib()  # before any output: a missing package is said once, with its install command
    result = TuneResult(args.run_dir)
    plots = result.plot(args.plots, top=max(1, args.top)) if args.plots is not None else None
    top = result.top(max(1, args.top))
    metric = result.metric
    config_cols = [c for c in top.columns if c.startswith("config/")]
    cols = ["trial_id", "status", "epochs", "epoch", *(["pareto"] if result.multi_objective else []), *result.metrics,
            *[c for c in ("val_loss", "train_loss") if c != metric and c in top.columns], *config_cols]
    cols = [c for c in dict.fromkeys(cols) if c in top.columns]
    if args.format == "json":
        shown = {"run_dir": result.run_dir, "best": result.best, "top": json.loads(top[cols].to_json(orient="records"))}
        if plots is not None:
            shown["plots"] = {"files": dict(plots.shows), "notes": list(plots.notes),
                              "importances": dict(plots.importances)}
        print(json.dumps(shown, indent=2))
        return 0
    if args.format == "csv":
        print(top[cols].to_csv(index=False), end="")
    else:
        print(result.summary())
        print()
        print(top[cols].rename(columns=lambda c: c.removeprefix("config/")).to_string(
            index=False, float_format=lambda v: f"{v:.4g}"))
    if plots is not None:  # after a CSV table on stderr, so that stdout stays one table
        out = sys.stderr if args.format == "csv" else sys.stdout
        print(f"\nplots in {plots.directory}:", file=out)
        for path, what in plots.shows.items():
            print(f"  {path}: {what}", file=out)
        for note in plots.notes:
            print(f"note: {note}", file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"run": _cmd_run, "resume": _cmd_resume, "validate": _cmd_validate, "submit": _cmd_submit,
               "jobs": _cmd_jobs, "results": _cmd_results, "tensorboard": _cmd_tensorboard}[args.command]
    try:
        return handler(args)
    except (ConfigError, PreflightError, ResourceError, ClusterError) as exc:
        return _fail(exc, 2)
    except RaytuneTorchError as exc:
        return _fail(exc, 1)
    except KeyboardInterrupt:
        print("raytune-torch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
