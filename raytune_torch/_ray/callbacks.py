"""Driver-side Tune callbacks: every result on disk as it arrives (history, TensorBoard, the
checkpoint budget), and one console line per finished trial."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from ray import tune

log = logging.getLogger("raytune_torch")


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


HISTORY_FILE = "history.jsonl"


class HistoryCallback(tune.Callback):
    """Appends every result a trial reports to ``trial_<id>/history.jsonl`` as it arrives, and
    writes the TensorBoard files (see :mod:`raytune_torch.tensorboard`).

    One line per epoch, flushed at once, in the driver: a row is on disk before anything else
    (a scheduler decision, a failure, a driver crash) can lose it. ``results.parquet`` is built
    from these files (duplicates after a restart are dropped by epoch, keeping the last).
    """

    KEYS = ("epoch", "trial_id", "pid", "node_ip", "time_total_s")

    def __init__(self, config: Any, metric_names: tuple[str, ...] | None = None,
                 staging: tuple[str, str] | None = None) -> None:
        """``staging``: ``(local_dir, run_uri)`` when the run directory is a URI: the driver's
        files go to ``local_dir`` and are uploaded as they change; None for a path."""
        self.metric_names = tuple(metric_names or config.metric_names)
        self.staging = staging
        self._mirror = None
        # The disk budget during the run (Ray keeps every checkpoint: its own num_to_keep forces an
        # experiment-state snapshot per checkpoint, which dominated small trials). PBT copies
        # donors' checkpoints later, so it keeps all until the end (results prunes them then).
        self.prune = config.scheduler.name != "pbt"
        self.keep = config.checkpoint.keep
        # Several objectives: checkpoints are ranked by the first (the latest is always kept).
        self.metric, self.mode = config.search.primary_metric, config.search.primary_mode
        self._checkpoints: dict[str, list[tuple[float, str]]] = {}
        self._pruner = None  # the thread that prunes, made on first use in the driver
        self._logged: dict[str, set] = {}
        self.tensorboard = None
        if config.tensorboard:
            from ..tensorboard import TensorBoardLogger

            self.tensorboard = TensorBoardLogger(config.space, self.metric_names, config.train.max_epochs)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_mirror"] = state["_pruner"] = None
        if self.tensorboard is not None:
            from ..tensorboard import TensorBoardLogger

            tb = self.tensorboard
            state["tensorboard"] = TensorBoardLogger(tb.space, tb.metric_names, tb.max_epochs)
        return state

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        import json

        row = {k: result[k] for k in (*self.KEYS, *self.metric_names) if k in result}
        row.update({k: result[k] for k in result if k in _EXTRA_KEYS})
        directory = self._local_trial_dir(trial)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, HISTORY_FILE)
        logged = self._logged.get(path)
        if logged is None:  # first word from this trial in this driver: a resumed run has lines already
            logged = self._logged[path] = _history_epochs(path)
        if row.get("epoch") not in logged:  # a restarted trial reports its restored epochs again
            with open(path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            logged.add(row.get("epoch"))
        if self.tensorboard is not None and "epoch" in row:
            self.tensorboard.start_run(os.path.dirname(directory.rstrip("/")))
            self.tensorboard.log_epoch(directory, trial.config or {}, row)
        name = result.get("checkpoint_dir_name")
        if self.prune and name:
            self._budget(trial.trial_id, f"{trial.path.rstrip('/')}/{name}", result.get(self.metric),
                         trial.storage.storage_filesystem)
        mirror = self.mirror()
        if mirror is not None:
            mirror.maybe_sync()

    def _local_trial_dir(self, trial: Any) -> str:
        if self.staging is None:
            return trial.path
        return os.path.join(self.staging[0], trial_dirname(trial))

    def mirror(self) -> Any:
        """The uploader of the staged files (URI runs), made on first use in the driver."""
        if self.staging is None:
            return None
        if self._mirror is None:
            from ..storage import Mirror

            self._mirror = Mirror(*self.staging)
        return self._mirror

    def _budget(self, trial_id: str, path: str, value: Any, fs: Any) -> None:
        """Keep the ``keep`` best checkpoints of the trial plus the latest; prune the others.

        Which ones to keep is decided here, as each result arrives; the files are deleted by a
        thread of the driver, in order. The trial waits for the driver's answer to every result
        before its next epoch, and a delete is about 0.5 ms on a local disk (a request or two
        on object storage). Results are written only after that thread is done
        (:meth:`on_experiment_end`)."""
        import math

        seen = self._checkpoints.setdefault(trial_id, [])
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        score = (value if self.mode == "max" else -value) if finite else -math.inf
        seen.append((score, path))
        best = sorted(seen, key=lambda sp_: sp_[0], reverse=True)[: self.keep]
        kept = {p for _, p in best} | {path}
        for _, old in list(seen):
            if old not in kept:
                self._prune_later(old, fs)
        self._checkpoints[trial_id] = [(sc, p) for sc, p in seen if p in kept]

    def _prune_later(self, path: str, fs: Any) -> None:
        if self._pruner is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pruner = ThreadPoolExecutor(1, thread_name_prefix="raytune-torch-prune")
        self._pruner.submit(_prune_or_warn, path, fs)

    def _wait_for_pruning(self) -> None:
        if self._pruner is not None:
            self._pruner.shutdown(wait=True)
            self._pruner = None

    def _end(self, trial: Any, failed: bool) -> None:
        if self.tensorboard is not None:
            self.tensorboard.end_trial(self._local_trial_dir(trial), trial.last_result or {}, failed)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, failed=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._wait_for_pruning()
        if self.tensorboard is not None:
            self.tensorboard.close()
        mirror = self.mirror()
        if mirror is not None:
            mirror.sync()


def _prune_or_warn(path: str, fs: Any) -> None:
    """A checkpoint that could not be pruned stays on disk (the budget is applied again when the
    results are written); the run goes on."""
    from ..checkpoint import prune

    try:
        prune(path, fs)
    except Exception as exc:
        log.warning("raytune-torch: could not prune checkpoint %s during the run (%s: %s); it is pruned when "
                    "the results are written", path, type(exc).__name__, exc)


def _history_epochs(path: str) -> set:
    import json

    epochs = set()
    try:
        with open(path) as fh:
            for line in fh:
                try:
                    epochs.add(json.loads(line).get("epoch"))
                except (ValueError, AttributeError):
                    continue  # a line cut short by a crash
    except FileNotFoundError:
        pass
    return epochs


_EXTRA_KEYS = ("lr", "epoch_time_s", "samples_per_s", "n_params", "trial_seed", "diverged", "early_stopped", "stop_rule",
               "device", "node_id", "gpu_peak_mib", "workers", "worker_nodes")


class ConsoleCallback(tune.Callback):
    """One line per finished trial instead of Ray's pages of logs."""

    def __init__(self, metric: str, total: int, stream: Any = None, max_epochs: int | None = None) -> None:
        self.metric = metric
        self.max_epochs = max_epochs
        self.total = total
        self.done = 0
        self.stream = stream
        self.start = time.monotonic()

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def _line(self, trial: Any, status: str) -> None:
        self.done += 1
        last = trial.last_result or {}
        value = last.get(self.metric)
        shown = f"{self.metric}={value:.4g}" if isinstance(value, (int, float)) else f"{self.metric}=-"
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted((trial.config or {}).items()))
        self._print(f"[{self.done}/{self.total} {time.monotonic() - self.start:6.1f}s] {trial.trial_id} "
                    f"{status} after {last.get('epoch', 0)} epoch(s): {shown}  ({params})")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, finish_status(trial.last_result or {}, self.max_epochs))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "ERROR")


def finish_status(last: dict[str, Any], max_epochs: int | None) -> str:
    """What ended a trial, from its last result: ``diverged``, ``target reached`` (``stop:``),
    ``done`` (every epoch trained; patience running out at the last epoch ends nothing early),
    ``early-stopped`` (patience), ``time limit`` (``train.time_limit_s``), or ``pruned`` (the
    scheduler, or the run's own rule, stopped it)."""
    if last.get("diverged"):
        return "diverged"
    if last.get("stop_rule") == "target":
        return "target reached"
    if max_epochs is not None and last.get("epoch", 0) >= max_epochs:
        return "done"
    if last.get("early_stopped"):
        return "early-stopped"
    if last.get("stop_rule") == "time_limit":
        return "time limit"
    return "pruned" if max_epochs else "done"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
