"""One trial: build, restore, train epoch by epoch, report, checkpoint.

The trial talks to a small :class:`Reporter` protocol instead of Ray, so it runs (and is tested)
without Ray; ``_ray.trial.RayReporter`` is the Ray implementation.

Bring your own code at two depths:

* ``train.step: pkg.mod:step`` — ``step(ctx, xb, yb) -> loss`` replaces the per-batch step
  (``ctx`` is a :class:`~raytune_torch.loop.StepContext`: model, optimizer, loss_fn, device,
  precision, and ``ctx.autocast()`` and ``ctx.scaler`` to train at ``train.precision``).
* ``train.loop: pkg.mod:loop`` — ``loop(trial)`` replaces the whole loop; ``trial`` is a
  :class:`Trial`. Iterate ``trial.epochs()``, train as you like on ``trial.train_batches()``,
  and call ``trial.end_epoch(train_loss)`` once per epoch: it evaluates, reports, checkpoints,
  and returns True when early stopping says to stop.

With ``resources.workers`` > 1 the trial runs in every worker of a group (``trial.group``: rank and
world size): ``trial.train_batches()`` gives each rank its rows of each global batch,
``trial.step_ctx.model`` is the model wrapped in DistributedDataParallel (``trial.model`` is the
bare module, what checkpoints hold), and ``trial.end_epoch`` reduces the loss and gathers the
validation outputs of every rank before it reports. A custom loop that trains through those three
declares it with ``loop.distributed = True``; one that does not is refused (it would train N
independent copies). See :mod:`raytune_torch.distributed`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

from . import checkpoint as ckpt
from . import components as comp
from .config.stop import reached, target_modes
from .data import Splits, as_tensors
from .device_data import CachePlan, device_batches, pinned, place, plan_cache, tensor_bytes, trial_gpu_memory
from .distributed import BatchShare, Group, check_ddp_model, gather, rank_seed, wrap
from .loop import (CHECK_EVERY, StepContext, default_step, evaluate_parts, make_scaler, metrics_from_parts,
                   train_epoch)
from .metrics import resolve_metrics
from .space import active_params

__all__ = ["Reporter", "Trial", "run_trial", "experiment_trial", "derive_seed", "build_components", "preflight", "model_size"]


class Reporter(Protocol):
    """Where a trial sends its per-epoch metrics and checkpoints."""

    trial_id: str
    trial_index: int

    #: set by :meth:`checkpoint_dir` when the checkpoint it gives is newer than the reporter's
    #: own records: the epochs after this one are reported again after the restore
    replay_after: int | None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Hand over one epoch's metrics, and the checkpoint saved with them (a directory the
        reporter copies before it returns)."""

    def checkpoint_dir(self) -> contextlib.AbstractContextManager[str | None]:
        """A local directory holding the checkpoint to resume from (None to start fresh)."""


def derive_seed(seed: int, trial_index: int, params: dict[str, Any]) -> int:
    """A trial's seed: a hash of the experiment seed, the trial's index and its parameters."""
    text = json.dumps({"seed": seed, "index": trial_index, "params": params}, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def _seed_globals(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_everything(seed: int) -> torch.Generator:
    _seed_globals(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(gpu_share: float, cpu_fallback: bool = False) -> torch.device:
    """CUDA when the trial was given a GPU share and CUDA is usable here; CPU when it was given
    none. A GPU share without usable CUDA is an error (not a silent slowdown) unless
    ``cpu_fallback`` allows the CPU."""
    if gpu_share <= 0:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if cpu_fallback:
        return torch.device("cpu")
    from .exceptions import ResourceError

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    raise ResourceError(
        f"the trial was given a GPU share of {gpu_share:g} (CUDA_VISIBLE_DEVICES={visible!r}) but CUDA is not "
        f"usable in its process (torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}); "
        f"install a CUDA build of torch on the GPU nodes, set resources.gpu: 0, or set "
        f"resources.cpu_fallback: true to train on the CPU anyway")


def build_components(config: Any, params: dict[str, Any], n_features: int, n_outputs: int,
                     device: torch.device):
    """Model (on ``device``), optimizer, loss and LR scheduler for one trial's parameters."""
    paths = config.import_paths
    model = comp.build_model(config.model.name, config.model.args, params, in_features=n_features,
                             out_features=n_outputs, import_paths=paths).to(device)
    optimizer = comp.build_optimizer(config.optimizer.name, config.optimizer.args, params, model, import_paths=paths)
    loss_cfg = config.loss
    loss_fn = comp.build_loss(loss_cfg.name if loss_cfg else None, loss_cfg.args if loss_cfg else {}, params,
                              config.task, import_paths=paths).to(device)
    sched_cfg = config.lr_scheduler
    lr_scheduler = comp.build_lr_scheduler(sched_cfg.name if sched_cfg else None, sched_cfg.args if sched_cfg else {},
                                           params, optimizer, import_paths=paths)
    return model, optimizer, loss_fn, lr_scheduler


def model_size(config: Any, params: dict[str, Any], data: Any) -> int | None:
    """The number of parameters of the model for ``params``, built on torch's meta device (no
    memory, no initialisation). None when the model cannot be built there."""
    try:
        with torch.device("meta"):
            model = comp.build_model(config.model.name, config.model.args, params, in_features=data.n_features,
                                     out_features=data.n_outputs, import_paths=config.import_paths)
        return int(sum(p.numel() for p in model.parameters()))
    except Exception:
        return None


class Trial:
    """The running trial, as a custom ``train.loop`` sees it."""

    def __init__(self, config: Any, params: dict[str, Any], data: Any, reporter: Reporter, *,
                 cpus: float = 1.0, gpu_share: float = 0.0, group: Group | None = None) -> None:
        self.config = config
        #: this worker's rank and the group's size when several workers train the trial, else None
        self.group = group if group is not None and group.world > 1 else None
        # A conditional parameter that is inactive for these values never reaches a component; a
        # searcher may propose NumPy scalars (BOHB's ConfigSpace does): the checkpoint loads only plain values.
        self.params = {k: v.item() if isinstance(v, np.generic) else v for k, v in active_params(config.space, params).items()}
        self.reporter = reporter
        self.task = config.task
        self.metric = config.search.primary_metric  # early stopping watches the first of several objectives
        self.mode = config.search.primary_mode
        self.max_epochs = config.train.max_epochs
        self.batch_size = int(params.get("batch_size", config.train.batch_size))
        self.device = pick_device(gpu_share, getattr(config.resources, "cpu_fallback", False))
        self.seed = derive_seed(config.seed, reporter.trial_index, self.params)
        self.shuffle = seed_everything(self.seed)
        self.model, self.optimizer, self.loss_fn, self.lr_scheduler = build_components(
            config, self.params, data.n_features, data.n_outputs, self.device)
        if self.group is not None and self.group.rank > 0:
            # The model was built alike on every rank (DDP broadcasts rank 0's anyway); from here on
            # each rank has random streams of its own (dropout, augmentation). The shuffle generator
            # stays replicated: every rank draws the same permutation.
            _seed_globals(rank_seed(self.seed, self.group.rank))
        self._share = BatchShare(self.group.world) if self.group is not None else None
        #: the running loss sum is checked for NaN every this many batches (never across a group:
        #: a rank that stopped early would leave the others waiting for its gradients)
        self.check_every = CHECK_EVERY if self.group is None else 2**62
        self._rows = 0  # training rows this rank handed out in the current epoch
        #: the model's parameter count, reported every epoch (model size as a search objective)
        self.n_params = int(sum(p.numel() for p in self.model.parameters()))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)  # a reused worker starts each trial's peak anew
        self.precision = config.train.precision
        self.scaler = make_scaler(self.device, self.precision)
        self.step_ctx = StepContext(self.model, self.optimizer, self.loss_fn, self.device,
                                    precision=self.precision, scaler=self.scaler)
        self.metrics = resolve_metrics(self.task, config.train.metrics, import_paths=config.import_paths)
        # Arrays (Splits) are indexed in memory; a Dataset source or a streamed table (the others
        # data.load_data returns) is read batch by batch by this trial itself.
        self._source: Any = None
        setting = config.data.device_cache
        if isinstance(data, Splits):
            X_tr, y_tr, X_va, y_va = as_tensors(data.X_train, data.y_train, data.X_val, data.y_val)
            splits = {"train": (X_tr, y_tr), "val": (X_va, y_va)}
            memory = trial_gpu_memory(self.device, gpu_share) if self.device.type == "cuda" else None
            self.cache_plan = plan_cache(setting, {k: tensor_bytes(*v) for k, v in splits.items()}, self.device,
                                         memory)
            for split in self.cache_plan.cached:
                splits[split] = place(splits[split], self.device, split)
            self._train, self._val = splits["train"], splits["val"]
            self.n_train = len(X_tr)
        else:
            if setting is True:
                from .exceptions import PreflightError

                raise PreflightError(
                    f"data.device_cache: true caches in-memory arrays on the GPU, but the data is {data.describe()}, "
                    f"read batch by batch each epoch; set data.device_cache: auto or false")
            self._source = data.open()
            pin = " and go to the device from pinned memory" if config.data.loader.pin_memory else ""
            self.cache_plan = CachePlan((), "batches are read each epoch" + (pin if self.device.type == "cuda" else ""))
            self.n_train = data.n_train or 0  # an iterable dataset's is counted in its first epoch
        self.epoch = 0  # epochs completed
        self.best: float | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        # What else ended the trial: "target" (a `stop:` target reached) or "time_limit"
        # (train.time_limit_s); "" while it runs. `time_s` sums its epochs' wall time, across resumes.
        self.stop_rule = ""
        self.time_s = 0.0
        self._targets = target_modes(config, config.stop)
        self.history: list[dict[str, Any]] = []  # every epoch's reported metrics
        self._epoch_start = time.perf_counter()
        self._restore()
        if self.group is not None:  # after the restore: every rank holds the checkpoint's weights
            self.step_ctx.model = wrap(self.model, self.device, self._share)

    # -- state ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": ckpt.FORMAT,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "early_stopping": {"best": self.best, "bad_epochs": self.bad_epochs, "stopped": self.stopped_early},
            "stop": {"rule": self.stop_rule, "time_s": self.time_s},
            "rng": self._rng_states(),
            "params": self.params,
            "trial_seed": self.seed,
            "history": self.history,
        }

    def _restore(self) -> None:
        with self.reporter.checkpoint_dir() as directory:
            if directory is None:
                return
            state = ckpt.load_state(directory, map_location=self.device)
        ckpt.load_model_state(self.model, state, str(directory))
        self.optimizer.load_state_dict(state["optimizer"])
        if state["params"] != self.params:
            self._apply_optimizer_params()  # PBT may have mutated them since the checkpoint
        if self.lr_scheduler is not None and state["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler.is_enabled() and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.best = state["early_stopping"]["best"]
        self.bad_epochs = int(state["early_stopping"]["bad_epochs"])
        self.stopped_early = bool(state["early_stopping"].get("stopped", False))
        stop = state.get("stop") or {}  # checkpoints written before stop rules existed have none
        self.stop_rule, self.time_s = str(stop.get("rule", "")), float(stop.get("time_s", 0.0))
        self.history = list(state["history"])
        ckpt.restore_rng(self._own_rng(state["rng"], str(directory)), self.shuffle)
        # Restored from a checkpoint newer than the one the reporter was handed (its records lag):
        # report the epochs it has not seen again, so no epoch is missing from the results.
        replay_after = self.reporter.replay_after
        if replay_after is not None:
            for row in self.history:
                if row["epoch"] > replay_after:
                    self.reporter.report(dict(row), None)

    def _rng_states(self) -> Any:
        """The RNG states to checkpoint: this process's, or every rank's in rank order (a collective
        call: every rank of a group calls it)."""
        mine = ckpt.capture_rng(self.shuffle)
        return mine if self.group is None else gather(mine, self.group)

    def _own_rng(self, saved: Any, where: str) -> dict[str, Any]:
        """This rank's RNG states from a checkpoint's (one dict, or one per rank)."""
        if isinstance(saved, dict):
            if self.group is None or self.group.rank == 0:
                return saved
            return ckpt.capture_rng(self.shuffle) | {"shuffle": saved.get("shuffle")}  # its own streams, shared order
        world = self.group.world if self.group is not None else 1
        if len(saved) != world:
            from .exceptions import CheckpointError

            raise CheckpointError(f"the checkpoint {where} was written by a trial of {len(saved)} workers, but this "
                                  f"trial has {world}; resume it with resources.workers: {len(saved)}")
        return saved[self.group.rank if self.group is not None else 0]

    def _apply_optimizer_params(self) -> None:
        settings = comp.params_for("optimizer", self.params)
        if "lr" in self.params:
            settings["lr"] = self.params["lr"]
        for group in self.optimizer.param_groups:
            for key, value in settings.items():
                if key in group:
                    group[key] = value

    # -- what a loop uses -------------------------------------------------------------------------
    def epochs(self) -> Iterator[int]:
        """Epoch numbers still to run (1-based), resuming after the checkpointed one."""
        while self.epoch < self.max_epochs and not self.stopped_early and not self.stop_rule:
            self._epoch_start = time.perf_counter()
            yield self.epoch + 1

    def train_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's training batches on the trial's device, shuffled with the trial's generator
        (in a group: this rank's rows of each global batch)."""
        if self._source is not None:
            return self._counted(pinned(
                self._source.batches("train", self.batch_size, self.device, generator=self.shuffle, group=self.group,
                                     share=self._share), self.device,
                pin=self.config.data.loader.pin_memory), whole_pass=True)
        X, y = self._train
        return self._counted(device_batches(X, y, self.batch_size, self.device, shuffle=True, generator=self.shuffle,
                                            group=self.group, share=self._share))

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The validation batches on the trial's device, in order (in a group: this rank's shard)."""
        if self._source is not None:
            return pinned(self._source.batches("val", max(self.batch_size, self._source.eval_batch_size),
                                               self.device, group=self.group), self.device,
                          pin=self.config.data.loader.pin_memory)
        X, y = self._val
        return device_batches(X, y, max(self.batch_size, 1024), self.device, shuffle=False, group=self.group)

    def _counted(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], *,
                 whole_pass: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches, counting this rank's rows; with ``whole_pass`` a whole pass sets ``n_train``
        (samples_per_s of a source whose size is only known once read)."""
        self._rows = 0
        for xb, yb in batches:
            self._rows += len(xb)
            yield xb, yb
        if whole_pass and self.group is None:
            self.n_train = self._rows

    def evaluate(self) -> dict[str, float]:
        """Validation loss and metrics (in a group: over every rank's shard, the same on every rank)."""
        parts = evaluate_parts(self.model, self.val_batches(), self.loss_fn, self.device,
                               keep_outputs=bool(self.metrics), precision=self.precision)
        if self.group is not None:
            every = gather(parts, self.group)
            total, count = sum(p[0] for p in every), sum(p[1] for p in every)
            outs = [p[2] for p in every if p[2] is not None]
            ys = [p[3] for p in every if p[3] is not None]
            parts = (total, count, torch.cat(outs) if outs else None, torch.cat(ys) if ys else None)
        return metrics_from_parts(self.task, self.metrics, *parts)

    def _reduce_epoch(self, train_loss: float, elapsed: float) -> tuple[float, float]:
        """In a group: the training loss over every rank's rows, the slowest rank's epoch time, and
        the epoch's rows (``n_train``), the same on every rank."""
        if self.group is None:
            return train_loss, elapsed
        every = gather((train_loss * self._rows, self._rows, elapsed), self.group)
        rows = sum(e[1] for e in every)
        self.n_train = rows
        return sum(e[0] for e in every) / max(rows, 1), max(e[2] for e in every)

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        early = self.config.train.early_stopping
        delta = early.min_delta if early is not None else 0.0
        return value < self.best - delta if self.mode == "min" else value > self.best + delta

    def end_epoch(self, train_loss: float) -> bool:
        """Evaluate, step the LR scheduler, report and checkpoint. Returns True to stop."""
        self.epoch += 1
        train_loss, elapsed = self._reduce_epoch(float(train_loss), time.perf_counter() - self._epoch_start)
        diverged = not math.isfinite(train_loss)
        val = self.evaluate() if not diverged else {"loss": float("nan")}
        if not diverged and not math.isfinite(val["loss"]):
            diverged = True
        metrics: dict[str, Any] = {
            "epoch": self.epoch,
            "train_loss": float(train_loss),
            "val_loss": float(val.pop("loss")),
            **{f"val_{k}": v for k, v in val.items()},
        }
        for metric in self.metrics:
            metrics.setdefault(f"val_{metric.name}", float("nan"))
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        if self.lr_scheduler is not None and not diverged:
            if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.lr_scheduler.step(metrics["val_loss"])
            else:
                self.lr_scheduler.step()
        metrics["epoch_time_s"] = elapsed
        metrics["samples_per_s"] = self.n_train / elapsed if elapsed > 0 else float("nan")
        metrics["n_params"] = self.n_params
        metrics["trial_seed"] = self.seed
        metrics["device"] = str(self.device)
        metrics["workers"] = self.group.world if self.group is not None else 1
        if self.device.type == "cuda":  # the process's peak since the trial began (its own allocations)
            metrics["gpu_peak_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        metrics["diverged"] = int(diverged)
        early = self.config.train.early_stopping
        patience = early.patience if early is not None else None
        if not diverged:
            value = metrics.get(self.metric)
            if value is not None and math.isfinite(value) and self._improved(value):
                self.best, self.bad_epochs = float(value), 0
            else:
                self.bad_epochs += 1
            if patience is not None and self.bad_epochs >= patience:
                self.stopped_early = True
        metrics["early_stopped"] = int(self.stopped_early)
        self.time_s += elapsed
        limit = self.config.train.time_limit_s
        if not diverged and any(reached(metrics.get(m), value, mode) for m, (value, mode) in self._targets.items()):
            self.stop_rule = "target"
        elif not diverged and limit is not None and self.time_s >= limit and self.epoch < self.max_epochs:
            self.stop_rule = "time_limit"
        metrics["stop_rule"] = self.stop_rule
        self.history.append({k: v for k, v in metrics.items()})
        stop = diverged or self.stopped_early or bool(self.stop_rule)
        due = stop or self.epoch >= self.max_epochs or self.epoch % self.config.checkpoint.every == 0
        if due and not diverged:
            self._report_checkpoint(metrics)
        else:
            self.reporter.report(metrics, None)
        return stop

    def _report_checkpoint(self, metrics: dict[str, Any]) -> None:
        """Save the full state to a temporary directory and report it with ``metrics``. In a group,
        every rank's RNG states are gathered and rank 0 alone saves; the others report the metrics."""
        state = self.state()  # collective in a group (the RNG states)
        if self.group is not None and not self.group.leader:
            self.reporter.report(metrics, None)
            return
        directory = tempfile.mkdtemp(prefix="rtt-ckpt-")
        try:
            ckpt.save_state(directory, state)
            self.reporter.report(metrics, directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def default_loop(trial: Trial) -> None:
    step = default_step
    if trial.config.train.step is not None:
        step = comp.resolve(trial.config.train.step, what="train.step", import_paths=trial.config.import_paths)
    for _ in trial.epochs():
        loss = train_epoch(trial.step_ctx, trial.train_batches(), step, check_every=trial.check_every)
        if trial.end_epoch(loss):
            break


def resolve_loop(config: Any, workers: int = 1) -> Callable[[Trial], Any]:
    """The training loop: the default one, or ``train.loop``. With several workers a custom loop must
    say it can run distributed (``loop.distributed = True``).

    Raises:
        PreflightError: a custom loop without ``distributed = True`` and ``workers`` > 1.
    """
    if config.train.loop is None:
        return default_loop
    loop = comp.resolve(config.train.loop, what="train.loop", import_paths=config.import_paths)
    if workers > 1 and getattr(loop, "distributed", False) is not True:
        from .exceptions import PreflightError

        raise PreflightError(
            f"train.loop {comp.describe(config.train.loop)} runs on each of the trial's {workers} workers "
            f"(resources.workers), and a loop that does not know it would train {workers} separate copies of the "
            f"model on every row: make it train trial.step_ctx.model (the DistributedDataParallel model) on "
            f"trial.train_batches() (this rank's rows) and report through trial.end_epoch(loss) (it reduces across "
            f"ranks), then mark it with `{config.train.loop.rsplit(':', 1)[-1]}.distributed = True`; or use "
            f"resources.workers: 1")
    return loop


def run_trial(params: dict[str, Any], config: Any, data: Splits, reporter: Reporter, *,
              cpus: float = 1.0, gpu_share: float = 0.0, group: Group | None = None) -> Trial:
    """Run one trial to its end (max epochs, early stop or divergence). Returns the finished Trial.

    ``group``: this worker's place when several workers train the trial together."""
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    loop = resolve_loop(config, group.world if group is not None else 1)
    trial = Trial(config, params, data, reporter, cpus=cpus, gpu_share=gpu_share, group=group)
    # The trial states where it trains: here (the worker's log) and in every result (`device`).
    rank = f" rank {group.rank}/{group.world}" if trial.group is not None else ""
    print(f"raytune-torch trial {reporter.trial_id}{rank}: device {trial.device}, {threads} torch thread(s), "
          f"gpu share {gpu_share:g}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}; "
          f"data: {trial.cache_plan.reason}", flush=True)
    loop(trial)
    return trial


def experiment_trial(config: Any, params: dict[str, Any], data: Splits, reporter: Reporter) -> None:
    """One trial of an experiment, with the experiment's per-trial resources."""
    run_trial(params, config, data, reporter, cpus=config.resources.cpu, gpu_share=config.resources.gpu,
              group=getattr(reporter, "group", None))  # a worker of a trial of several has its place


class _NullReporter:
    trial_id = "preflight"
    trial_index = 0
    replay_after = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        pass

    @contextlib.contextmanager
    def checkpoint_dir(self):
        yield None


def _check_ddp(trial: Trial, workers: int, model_name: str, *, stepped: bool) -> None:
    from .exceptions import PreflightError

    problem = check_ddp_model(trial.model, stepped=stepped)
    if problem is not None:
        raise PreflightError(f"resources.workers: {workers} trains the model {model_name} with "
                             f"DistributedDataParallel, but {problem}")


def preflight(config: Any, data: Any, params: dict[str, Any]) -> None:
    """Build the components and run one training batch and one evaluation in this process.

    Raises :class:`~raytune_torch.exceptions.PreflightError` naming the cause (a broken import, a
    model that does not fit the data's shape, a loss that does not fit the labels, a metric that
    raises or returns a non-number) before any trial starts. The batch runs at ``train.precision``.
    """
    from .exceptions import MetricError, PreflightError

    source = None if isinstance(data, Splits) else data
    if source is not None:
        data = source.in_process()  # no DataLoader worker processes are started in the driver

    try:
        trial = Trial(config, params, data, _NullReporter())
    except PreflightError:
        raise
    except Exception as exc:
        raise PreflightError(f"building the trial's components failed with parameters {params}: "
                             f"{type(exc).__name__}: {exc}") from exc
    model_name = comp.describe(config.model.name)
    workers = getattr(config.resources, "workers", 1)
    if workers > 1:
        _check_ddp(trial, workers, model_name, stepped=False)
    if source is None:
        X, y = trial._train
        xb, yb = (t[: min(len(X), trial.batch_size)].to(trial.device) for t in (X, y))
    else:
        xb, yb = (t.to(trial.device) for t in source.preflight_batch(trial.batch_size))
    try:
        with trial.step_ctx.autocast():
            out = trial.model(xb)
    except Exception as exc:
        integer = "" if xb.is_floating_point() else (
            f"; the features are {str(xb.dtype).replace('torch.', '')} (integer inputs such as token ids keep "
            f"their dtype): a model that wants floats casts them itself, or the data gives floats")
        raise PreflightError(
            f"the model {model_name} failed on a batch of features of shape {tuple(xb.shape)} "
            f"({data.n_features} features per row): {type(exc).__name__}: {exc}. Make the model's input "
            f"size match the data (a constructor argument `in_features` is filled in for you){integer}") from exc
    if not isinstance(out, torch.Tensor):
        raise PreflightError(f"the model {model_name} returned {type(out).__name__}, not a tensor")
    if config.task == "classification":
        n_classes = data.n_outputs
        if out.ndim != 2 or out.shape[1] != n_classes:
            raise PreflightError(
                f"the model {model_name} outputs shape {tuple(out.shape)} for a batch of {len(xb)}, but the labels "
                f"hold {n_classes} classes: a classifier must output ({len(xb)}, {n_classes}) logits. Set its "
                f"output size to {n_classes} (a constructor argument `out_features` is filled in for you)")
    elif out.shape != yb.shape:
        raise PreflightError(
            f"the model {model_name} outputs shape {tuple(out.shape)} but the targets have shape "
            f"{tuple(yb.shape)}; make the output match the targets (a loss would broadcast them silently)")
    try:
        trial.optimizer.zero_grad()
        with trial.step_ctx.autocast():
            loss = trial.loss_fn(out, yb)
        loss.backward()
    except Exception as exc:
        raise PreflightError(
            f"the loss {type(trial.loss_fn).__name__} does not fit the model output {tuple(out.shape)} and the "
            f"labels {tuple(yb.shape)} ({yb.dtype}): {type(exc).__name__}: {exc}. Pick a loss for the task "
            f"({config.task}) and labels") from exc
    if workers > 1:
        _check_ddp(trial, workers, model_name, stepped=True)
        if trial.batch_size < workers:
            raise PreflightError(f"the batch size {trial.batch_size} is smaller than resources.workers ({workers}): "
                                 f"each worker trains on its share of every batch, so some would get none; use a "
                                 f"batch size of at least {workers} or fewer workers")
    if config.train.step is not None:
        step = comp.resolve(config.train.step, what="train.step", import_paths=config.import_paths)
        try:
            float(step(trial.step_ctx, xb, yb))
        except Exception as exc:
            raise PreflightError(f"train.step {comp.describe(config.train.step)} failed on one batch: "
                                 f"{type(exc).__name__}: {exc}") from exc
    resolve_loop(config, workers)
    try:
        trial.evaluate()
    except MetricError as exc:  # names the metric and what it did
        raise PreflightError(str(exc)) from exc
    except Exception as exc:
        raise PreflightError(f"evaluating the model on the validation split failed: {type(exc).__name__}: {exc}") from exc
