"""A finished run: ``results.parquet`` (one row per trial and epoch), ``best.json``, ``load_model()``.

Run directory layout (``STORAGE/NAME``)::

    experiment.yaml        the experiment as it ran (after overrides)
    results.parquet        trial_id, epoch, train_loss, val_loss, val_<metric>..., status, config/<name>...
    best.json              the best trial (by the experiment's metric over all its epochs); with
                           several objectives, also the Pareto front (``pareto_front``)
    trial_<id>/            per trial: history.jsonl (one line per epoch), checkpoint_*/, stdout/stderr
    tuner.pkl, experiment_state-*.json   Ray's own experiment files
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import ResultsError
from .space import active_params

__all__ = ["TuneResult", "write_results", "write_trial_table", "pareto_front", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "epoch_time_s", "samples_per_s", "n_params", "trial_seed",
                  "diverged", "early_stopped", "stop_rule", "device", "node_id", "gpu_peak_mib", "workers",
                  "worker_nodes")

#: the status of a trial the run's own rule stopped (``search.time_budget_s``, ``stop_all_at``)
RUN_RULE_STATUS = {"time_budget_s": "time_budget", "stop_all_at": "stopped_all"}


def _status(rows: list[dict], error: str | None, max_epochs: int, run_stop: dict | None = None,
            trial_id: str | None = None) -> str:
    """What ended a trial: ``error``, ``diverged``, ``target_reached`` (``stop:``, or the trial that
    reached ``stop_all_at``), ``early_stopped``, ``time_limit`` (``train.time_limit_s``),
    ``time_budget`` / ``stopped_all`` (running when the run's rule ended it), ``not_started``
    (waiting then), ``pruned`` (the scheduler), ``completed``, or ``no_result``."""
    if error:
        return "error"
    stopped_by_run = run_stop is not None and trial_id in run_stop.get("stopped_trials", ())
    if not rows:
        if stopped_by_run and trial_id not in run_stop.get("waiting_trials", ()):
            return RUN_RULE_STATUS[run_stop["rule"]]  # started, stopped before its first report
        return "not_started" if stopped_by_run else "no_result"
    last = rows[-1]
    if last.get("diverged"):
        return "diverged"
    if last.get("stop_rule") == "target" or (run_stop or {}).get("trial_id") == trial_id:
        return "target_reached"
    if last.get("early_stopped"):
        return "early_stopped"
    if last.get("stop_rule") == "time_limit":
        return "time_limit"
    if last.get("epoch", 0) < max_epochs:
        # running when the run's rule fired, else stopped by the scheduler (ASHA, Hyperband, median)
        return RUN_RULE_STATUS[run_stop["rule"]] if stopped_by_run else "pruned"
    return "completed"


def _trial_rows(path: str, metric_names: tuple[str, ...]) -> list[dict]:
    """The per-epoch rows of a trial's history file (last row per epoch, in epoch order)."""
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return []
    keep = tuple(dict.fromkeys((*METRIC_COLUMNS, *metric_names)))
    by_epoch: dict[int, dict] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if "epoch" in row:
            by_epoch[int(row["epoch"])] = {k: row[k] for k in keep if k in row}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _better(a: float, b: float, mode: str) -> bool:
    return a < b if mode == "min" else a > b


#: in a run that ``resume --num-samples`` extends: the earlier results, merged into the new ones
EARLIER_RESULTS, EARLIER_BEST = "results.earlier.parquet", "best.earlier.json"


def set_aside_results(local_dir: str) -> None:
    """Before more trials are added to a finished run: its results become the earlier ones (a
    second extension merges them first), and the run counts as unfinished until they are merged."""
    earlier = Path(local_dir, EARLIER_RESULTS)
    if not earlier.exists():
        os.replace(Path(local_dir, "results.parquet"), earlier)
        os.replace(Path(local_dir, "best.json"), Path(local_dir, EARLIER_BEST))
    else:  # an extension that did not finish: the earlier files already hold everything before it
        for name in ("results.parquet", "best.json"):
            Path(local_dir, name).unlink(missing_ok=True)


def _earlier(local_dir: str) -> tuple[list[dict], dict | None]:
    """The rows and ``best.json`` of the run before it was extended (none when it was not)."""
    import pyarrow.parquet as pq

    path = Path(local_dir, EARLIER_RESULTS)
    if not path.exists():
        return [], None
    return pq.read_table(path).to_pylist(), json.loads(Path(local_dir, EARLIER_BEST).read_text())


def pareto_front(points: list[tuple[float, ...]], modes: tuple[str, ...]) -> list[int]:
    """The indices of the non-dominated ``points`` (one value per objective, ``modes`` min or max
    each), in their order. A point dominates another when it is at least as good in every objective
    and better in one; equal points are all on the front."""
    sign = [1.0 if m == "min" else -1.0 for m in modes]
    costs = [tuple(s * v for s, v in zip(sign, p)) for p in points]

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [i for i, c in enumerate(costs) if not any(dominates(o, c) for j, o in enumerate(costs) if j != i)]


def _front(candidates: list[dict], metrics: tuple[str, ...], modes: tuple[str, ...]) -> list[dict]:
    """The Pareto front of the trials' objective values (each trial's last epoch: what the searcher
    was told), sorted by the first objective, best first."""
    front = [candidates[i] for i in pareto_front([tuple(c["values"][m] for m in metrics) for c in candidates], modes)]
    front.sort(key=lambda c: c["values"][metrics[0]], reverse=modes[0] == "max")
    return front


def _earlier_candidates(rows: list[dict], checkpoints: dict[str, str | None], search: Any,
                        metric_names: tuple[str, ...]) -> list[dict]:
    """The Pareto candidates among the trials of the run before it was extended (their last epochs)."""
    last: dict[str, dict] = {}
    for row in rows:
        if row.get("epoch") and (row["trial_id"] not in last or row["epoch"] >= last[row["trial_id"]]["epoch"]):
            last[row["trial_id"]] = row
    out = []
    for trial_id, row in last.items():
        values = {m: row.get(m) for m in search.metrics}
        if row.get("status") in ("error", "diverged") or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in values.values()):
            continue
        params = {k.removeprefix("config/"): v for k, v in row.items() if k.startswith("config/")}
        out.append({"trial_id": trial_id, "epoch": int(row["epoch"]), "values": values, "params": params,
                    "status": row["status"], "checkpoint": checkpoints.get(trial_id),
                    "metrics": {k: row[k] for k in row if k in metric_names or k in ("epoch", "device")}})
    return out


def write_results(run_dir: str, config: Any, data: Any, grid: Any, local_dir: str | None = None,
                  run_stop: dict | None = None) -> None:
    """Write ``results.parquet`` and ``best.json`` from Ray's ResultGrid.

    ``run_dir`` is the run's path or URI (checkpoint locations in ``best.json`` are given in its
    terms); the files are written to ``local_dir`` (default: ``run_dir``; for a URI run, the
    staging copy the caller uploads). ``run_stop``: what the run's own rule recorded when it ended
    the run (``rule``, ``stopped_trials``, ...), or None.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .storage import filesystem, join

    local_dir = local_dir or run_dir
    _, root = filesystem(run_dir)

    def location(path: str) -> str:  # a checkpoint's fs path -> a path or URI users can open
        rel = path.rstrip("/")[len(root):].lstrip("/") if path.startswith(root) else path
        return join(run_dir, rel)

    search = config.search
    metric, mode = search.primary_metric, search.primary_mode
    multi = search.multi_objective
    metric_names = tuple(dict.fromkeys((*config.metric_names, *search.metrics)))
    earlier_rows, earlier_best = _earlier(local_dir)
    rows: list[dict] = [{k: v for k, v in r.items() if v is not None} for r in earlier_rows]
    best: dict | None = None
    if earlier_best is not None and "trial_id" in earlier_best:
        best = {k: earlier_best[k] for k in ("value", "trial_id", "epoch", "params", "metrics", "checkpoint", "status")}
    trials = list(dict.fromkeys(r["trial_id"] for r in earlier_rows))
    checkpoints: dict[str, str | None] = dict((earlier_best or {}).get("checkpoints", {}))
    # several objectives: each trial's last epoch, when every value is finite
    candidates: list[dict] = _earlier_candidates(earlier_rows, checkpoints, search, metric_names) if multi else []
    for result in grid:
        trial_id = Path(result.path).name.removeprefix("trial_")
        error = _error_text(result.error)
        history = _trial_rows(os.path.join(local_dir, f"trial_{trial_id}", "history.jsonl"), metric_names)
        status = _status(history, error, config.train.max_epochs, run_stop, trial_id)
        ranked = _ranked_checkpoints(result, metric, mode)
        _prune_checkpoints(result, _kept_checkpoints(result, ranked, config.checkpoint.keep, status, latest=multi))
        latest = result.checkpoint.path if result.checkpoint else None
        # Several objectives are judged at the last epoch, so a trial's model is its latest checkpoint.
        best_checkpoint = latest if multi else (ranked[0] if ranked else latest)
        best_checkpoint = location(best_checkpoint) if best_checkpoint else None
        checkpoints[trial_id] = best_checkpoint
        # inactive conditional parameters are missing
        params = {k: _plain(v) for k, v in active_params(config.space, result.config or {}).items()}
        trials.append(trial_id)
        if multi and history and status not in ("error", "diverged"):
            last = history[-1]
            values = {m: last.get(m) for m in search.metrics}
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values.values()):
                candidates.append({"trial_id": trial_id, "epoch": int(last["epoch"]), "values": values,
                                   "params": params, "status": status, "checkpoint": best_checkpoint,
                                   "metrics": {k: last[k] for k in last if k in metric_names or k in ("epoch", "device")}})
        base = {"trial_id": trial_id, "status": status, "error": error}
        cfg = {f"config/{k}": (v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v))
               for k, v in params.items()}
        if not history:
            rows.append({**base, "epoch": 0, **cfg})
        for row in history:
            rows.append({**base, **{k: row.get(k) for k in row}, **cfg})
            value = row.get(metric)
            if status == "error" or row.get("diverged") or value is None or not math.isfinite(value):
                continue  # an errored trial never counts as the best
            if best is None or _better(value, best["value"], mode):
                best = {"value": value, "trial_id": trial_id, "epoch": int(row["epoch"]), "params": params,
                        "metrics": {k: row[k] for k in row if k in metric_names or k in ("epoch", "device")},
                        "checkpoint": best_checkpoint, "status": status}
    if not rows:
        raise ResultsError(f"the run in {run_dir!r} produced no trials")
    columns = ["trial_id", "epoch", "status", *metric_names,
               *[c for c in METRIC_COLUMNS if c not in ("epoch",)], "error"]
    front = _front(candidates, search.metrics, search.modes) if multi else []
    if multi:
        on_front = {c["trial_id"] for c in front}
        for row in rows:
            row["pareto"] = row["trial_id"] in on_front
        columns.insert(3, "pareto")
        # the front's member best by the first objective stands for "the best trial"
        best = {"value": front[0]["values"][metric], **{k: front[0][k] for k in (
            "trial_id", "epoch", "params", "metrics", "checkpoint", "status")}} if front else None
    config_cols = sorted({k for r in rows for k in r if k.startswith("config/")})
    table = {c: [r.get(c) for r in rows] for c in [*dict.fromkeys(columns), *config_cols]}
    tmp = os.path.join(local_dir, "results.parquet.tmp")
    pq.write_table(pa.table({k: pa.array(v, pa.bool_()) if k == "pareto" else _column(v) for k, v in table.items()}),
                   tmp)
    os.replace(tmp, os.path.join(local_dir, "results.parquet"))
    summary: dict[str, Any] = {
        "metric": list(search.metrics) if multi else metric, "mode": list(search.modes) if multi else mode,
        "trials": len(trials),
        "status_counts": {s: sum(1 for r in _last_rows(rows) if r["status"] == s)
                          for s in sorted({r["status"] for r in rows})},
        "task": config.task, "n_features": data.n_features, "n_outputs": data.n_outputs, "classes": data.classes,
        "feature_mean": None if data.feature_mean is None else data.feature_mean.tolist(),
        "feature_std": None if data.feature_std is None else data.feature_std.tolist(),
    }
    summary["checkpoint_bytes"] = sum(_checkpoint_bytes(r) for r in grid) + (earlier_best or {}).get("checkpoint_bytes", 0)
    summary["checkpoints"] = checkpoints
    if multi:
        summary["pareto_front"] = front
    if run_stop is not None:
        summary["stopped_by"] = {k: v for k, v in run_stop.items() if k not in ("stopped_trials", "waiting_trials")}
    if best is not None:
        summary.update({"trial_id": best["trial_id"], "epoch": best["epoch"], "status": best["status"],
                        "value": best["value"], "params": best["params"], "metrics": best["metrics"],
                        "checkpoint": best["checkpoint"]})
        if data.has_test and best["checkpoint"]:
            summary["test_metrics"] = _score_test(config, data, best)
    Path(local_dir, "best.json").write_text(json.dumps(_jsonable(summary), indent=2))
    for name in (EARLIER_RESULTS, EARLIER_BEST):  # merged: the run is one whole again
        Path(local_dir, name).unlink(missing_ok=True)


def _error_text(error: BaseException | None) -> str | None:
    """One line: the exception type and the last line of its message (Ray wraps tracebacks)."""
    if error is None:
        return None
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    cause = lines[-1] if lines else type(error).__name__
    return cause if ":" in cause else f"{type(error).__name__}: {cause}"


def _checkpoint_dirs(result: Any) -> list[Any]:
    import pyarrow.fs as pafs

    try:
        infos = result.filesystem.get_file_info(pafs.FileSelector(result.path))
    except OSError:
        return []
    return [i for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")]


def _ranked_checkpoints(result: Any, metric: str, mode: str) -> list[str]:
    """The trial's checkpoints with a finite metric, best first."""
    from .checkpoint import is_complete

    candidates = [(c.path, m[metric]) for c, m in (result.best_checkpoints or [])
                  if isinstance(m.get(metric), (int, float)) and math.isfinite(m[metric])
                  and is_complete(c.path, result.filesystem)]
    candidates.sort(key=lambda pv: pv[1], reverse=mode == "max")
    return [p for p, _ in candidates]


def _kept_checkpoints(result: Any, ranked: list[str], keep: int, status: str, latest: bool = False) -> set[str]:
    """The disk budget: the ``keep`` best of ``ranked`` plus the latest; a trial stopped early
    keeps its best (and its latest too with ``latest``: several objectives are judged at the
    last epoch)."""
    if status in ("pruned", "early_stopped", "diverged", "time_limit", "time_budget", "stopped_all"):
        kept = set(ranked[:1])
        if latest and result.checkpoint is not None:
            kept.add(result.checkpoint.path)
    else:
        kept = set(ranked[:keep])
        if result.checkpoint is not None:
            kept.add(result.checkpoint.path)
    if not kept and result.checkpoint is not None:
        kept.add(result.checkpoint.path)
    return {p.rstrip("/") for p in kept}


def _prune_checkpoints(result: Any, keep: set[str]) -> None:
    """Delete the trial's checkpoints outside ``keep`` (never all of them)."""
    if not keep:
        return
    for info in _checkpoint_dirs(result):
        if info.path.rstrip("/") not in keep:
            result.filesystem.delete_dir(info.path)


def _checkpoint_bytes(result: Any) -> int:
    import pyarrow.fs as pafs

    total = 0
    for info in _checkpoint_dirs(result):
        for f in result.filesystem.get_file_info(pafs.FileSelector(info.path, recursive=True)):
            total += f.size or 0 if f.type == pafs.FileType.File else 0
    return total


def write_trial_table(trials: list[tuple[Any, dict]], metric_names: tuple[str, ...], run_dir: str) -> None:
    """``results.parquet`` of a run whose trials are not an experiment's (TorchSearchCV): every
    trial and epoch from its history file. ``trials``: ``(Ray Result, the trial's parameters)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for result, params in trials:
        base = {"trial_id": os.path.basename(result.path).removeprefix("trial_"), "error": _error_text(result.error)}
        config = {f"config/{k}": v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)
                  for k, v in params.items()}
        history = f"{result.path.rstrip('/')}/history.jsonl"
        rows.extend({**base, **row, **config} for row in _trial_rows(history, metric_names))
    if rows:
        columns = ["trial_id", "epoch", *metric_names, "error",
                   *sorted({k for r in rows for k in r if k.startswith("config/")})]
        pq.write_table(pa.table({c: _column([r.get(c) for r in rows]) for c in columns}),
                       os.path.join(run_dir, "results.parquet"))


def _column(values: list) -> Any:
    import pyarrow as pa

    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {int, float, bool, np.float64, np.int64}:
        if kinds <= {int, np.int64, bool} and float not in kinds:
            return pa.array([None if v is None else int(v) for v in values], type=pa.int64())
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _last_rows(rows: list[dict]) -> list[dict]:
    last: dict[str, dict] = {}
    for r in rows:
        last[r["trial_id"]] = r
    return list(last.values())


def _score_test(config: Any, data: Any, best: dict) -> dict[str, float]:
    import torch

    from .checkpoint import load_model_state, load_state
    from .data import Splits, as_tensors, iterate_batches
    from .loop import evaluate
    from .metrics import resolve_metrics
    from .trainable import build_components

    from .storage import fetch_dir

    device = torch.device("cpu")
    model, _, loss_fn, _ = build_components(config, best["params"], data.n_features, data.n_outputs, device)
    with fetch_dir(best["checkpoint"]) as directory:
        load_model_state(model, load_state(directory), best["checkpoint"])
    if isinstance(data, Splits):
        X, y = as_tensors(data.X_test, data.y_test)
        batches = iterate_batches(X, y, 1024, shuffle=False)
    else:  # a Dataset source or a streamed table
        batches = data.open().batches("test", data.eval_batch_size, device)
    metrics = resolve_metrics(config.task, config.train.metrics, import_paths=config.import_paths)
    scores = evaluate(model, batches, loss_fn, device, config.task, metrics, precision=config.train.precision)
    return {f"test_{k}": v for k, v in scores.items()}


def _plain(value: Any) -> Any:
    """A parameter value as a plain Python value (a searcher may give NumPy scalars)."""
    return value.item() if isinstance(value, np.generic) else value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


class TuneResult:
    """The results of a run directory: best trial, per-epoch table, and the best trained model."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        from .storage import display, is_uri, local_copy

        self.run_dir = str(run_dir)
        self._shown = display(self.run_dir)
        if not is_uri(self.run_dir) and not Path(self.run_dir).is_dir():
            raise ResultsError(f"run directory {self._shown!r} does not exist; give STORAGE/NAME of a run")
        #: a local directory with the run's files (the run directory, or a URI run's cached copy)
        self.local_dir = local_copy(self.run_dir)
        path = Path(self.local_dir)
        missing = [f for f in ("best.json", "results.parquet", "experiment.yaml") if not (path / f).is_file()]
        if missing:
            raise ResultsError(
                f"{self._shown!r} is not a finished raytune_torch run (missing {', '.join(missing)}); "
                f"an interrupted run has no results yet")
        try:
            self.best = json.loads((path / "best.json").read_text())
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{str(path / 'best.json')!r} is corrupted: {exc}") from None
        metric, mode = self.best["metric"], self.best["mode"]
        #: the objectives and their modes (one each for a single metric)
        self.metrics: tuple[str, ...] = tuple(metric) if isinstance(metric, list) else (metric,)
        self.modes: tuple[str, ...] = tuple(mode) if isinstance(mode, list) else (mode,)
        #: the metric (the first objective of several) and its mode
        self.metric: str = self.metrics[0]
        self.mode: str = self.modes[0]

    @property
    def multi_objective(self) -> bool:
        """Whether the run optimized several objectives (see :attr:`pareto_front`)."""
        return len(self.metrics) > 1

    @property
    def pareto_front(self) -> list[dict[str, Any]]:
        """The non-dominated trials of a run with several objectives, best first by the first
        objective: each with ``trial_id``, ``epoch``, ``values`` (the objectives at the trial's last
        epoch), ``params``, ``metrics``, ``status`` and ``checkpoint``. Empty for one metric."""
        return [dict(member) for member in self.best.get("pareto_front", [])]

    # -- the best trial ----------------------------------------------------------------------------
    def _need_best(self) -> None:
        if "trial_id" not in self.best:
            raise ResultsError(f"no trial of {self._shown!r} reported a finite {self.metric}; see the table for errors")

    @property
    def best_trial_id(self) -> str:
        self._need_best()
        return self.best["trial_id"]

    @property
    def best_config(self) -> dict[str, Any]:
        self._need_best()
        return dict(self.best["params"])

    @property
    def best_metrics(self) -> dict[str, Any]:
        self._need_best()
        return {**self.best["metrics"], **self.best.get("test_metrics", {})}

    @property
    def best_checkpoint(self) -> str | None:
        self._need_best()
        return self.best.get("checkpoint")

    # -- tables ------------------------------------------------------------------------------------
    @property
    def table(self):
        """Every trial and epoch as a pandas DataFrame."""
        import pyarrow.parquet as pq

        return pq.read_table(os.path.join(self.local_dir, "results.parquet")).to_pandas()

    def trials(self):
        """One row per trial: its best epoch by the metric, status, epochs run, parameters. With
        several objectives: its last epoch (where the objectives were judged), the Pareto front
        first (``pareto``), each part by the first objective."""
        df = self.table
        out = []
        for trial_id, group in df.groupby("trial_id", sort=False):
            finite = group[np.isfinite(group[self.metric].astype(float))] if self.metric in group else group.iloc[0:0]
            finite = finite[finite.get("diverged", 0).fillna(0) == 0] if "diverged" in finite else finite
            if self.multi_objective:
                row = group.iloc[-1].to_dict()
            elif len(finite):
                idx = finite[self.metric].idxmin() if self.mode == "min" else finite[self.metric].idxmax()
                row = finite.loc[idx].to_dict()
            else:
                row = group.iloc[-1].to_dict()
            row["epochs"] = int(group["epoch"].max())
            row["status"] = group["status"].iloc[-1]
            out.append(row)
        import pandas as pd

        trials = pd.DataFrame(out)
        if self.multi_objective and "pareto" in trials:
            trials = trials.sort_values(["pareto", self.metric], ascending=[False, self.mode == "min"],
                                        na_position="last")
        else:
            trials = trials.sort_values(self.metric, ascending=self.mode == "min", na_position="last")
        return trials.reset_index(drop=True)

    def top(self, k: int = 5):
        """The ``k`` best trials (see :meth:`trials`)."""
        return self.trials().head(k)

    def plot(self, directory: str | os.PathLike, *, top: int = 5):
        """Write learning curves, each parameter against the metric and parameter importance as PNGs
        (and a README.md index) into the local ``directory``; returns a
        :class:`~raytune_torch.plots.Plots` (``.paths``, ``.notes``, ``.importances``). Needs the
        ``plots`` extra."""
        from .plots import write_plots

        return write_plots(self, directory, top=top)

    def summary(self, elapsed: float | None = None) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.best.get("status_counts", {}).items())
        took = f" in {elapsed:.1f}s" if elapsed is not None else ""
        lines = [f"raytune-torch: {self.best.get('trials', 0)} trial(s){took} ({counts}); results in {self._shown}"]
        if "checkpoint_bytes" in self.best:
            lines.append(f"checkpoints on disk: {self.best['checkpoint_bytes'] / 2**20:.2f} MiB")
        if self.multi_objective:
            front = self.pareto_front
            objectives = ", ".join(f"{m} ({mode})" for m, mode in zip(self.metrics, self.modes))
            lines.append(f"Pareto front of {objectives}: {len(front)} trial(s)")
            for member in front:
                values = "  ".join(f"{m}={member['values'][m]:.4g}" for m in self.metrics)
                lines.append(f"  trial {member['trial_id']} (epoch {member['epoch']}): {values}  "
                             f"params={member['params']}")
            if not front:
                lines.append(f"no trial reported finite {', '.join(self.metrics)}")
        elif "trial_id" in self.best:
            m = self.best["metrics"]
            lines.append(f"best trial {self.best['trial_id']} at epoch {self.best['epoch']}: "
                         f"{self.metric}={m.get(self.metric):.4g}  params={self.best['params']}")
            if self.best.get("test_metrics"):
                lines.append("held-out test: " + ", ".join(f"{k}={v:.4g}" for k, v in self.best["test_metrics"].items()
                                                           if v is not None))
        else:
            lines.append(f"no trial reported a finite {self.metric}")
        return "\n".join(lines)

    # -- the model ---------------------------------------------------------------------------------
    def load_model(self, trial_id: str | None = None, device: str = "cpu"):
        """A trained model in eval mode: the best trial's (from its best checkpoint by the metric),
        or with ``trial_id`` that trial's (any trial of the run, e.g. a member of the
        :attr:`pareto_front`). With several objectives a trial's model is its last epoch's, where
        the objectives were judged."""
        import torch

        from .checkpoint import load_model_state, load_state
        from .components import build_model
        from .config import load_config
        from .storage import fetch_dir

        if trial_id is None:
            self._need_best()
            trial_id, checkpoint = self.best_trial_id, self.best.get("checkpoint")
            if not checkpoint:
                raise ResultsError(f"the best trial {trial_id} of {self._shown!r} has no checkpoint")
        else:
            checkpoints = self.best.get("checkpoints", {})
            if trial_id not in checkpoints:
                known = sorted(checkpoints) or ([self.best["trial_id"]] if "trial_id" in self.best else [])
                raise ResultsError(f"{self._shown!r} has no trial {trial_id!r}{self._suggest(trial_id, known)}; "
                                   f"its trials: {', '.join(known)}")
            checkpoint = checkpoints[trial_id]
            if not checkpoint:
                raise ResultsError(f"trial {trial_id} of {self._shown!r} has no checkpoint (it ended before its first)")
        config = load_config(os.path.join(self.local_dir, "experiment.yaml"))
        with fetch_dir(checkpoint) as directory:
            state = load_state(directory, map_location=device)
        model = build_model(config.model.name, config.model.args, state["params"],
                            in_features=self.best["n_features"], out_features=self.best["n_outputs"],
                            import_paths=config.import_paths)
        load_model_state(model, state, checkpoint)
        return model.to(torch.device(device)).eval()

    @staticmethod
    def _suggest(name: str, options: list[str]) -> str:
        from ._names import suggest

        match = suggest(name, options)
        return f"; did you mean {match!r}?" if match is not None else ""

    def transform(self, X: Any) -> np.ndarray:
        """Features prepared as the trials saw them (float32; standardized with the train split's
        statistics when the experiment set ``data.standardize``)."""
        X = np.asarray(X, dtype=np.float32)
        if self.best.get("feature_mean") is not None:
            X = (X - np.asarray(self.best["feature_mean"], dtype=np.float32)) / np.asarray(
                self.best["feature_std"], dtype=np.float32)
        return X

    def predict(self, X: Any, model: Any = None) -> np.ndarray:
        """Predictions of the best model for raw features ``X``: class labels (classification,
        in the data's own labels) or target values (regression)."""
        import torch

        model = model if model is not None else self.load_model()
        with torch.no_grad():
            out = model(torch.from_numpy(self.transform(X))).numpy()
        if self.best.get("task") == "classification":
            return np.asarray(self.best["classes"])[out.argmax(axis=1)]
        return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out
