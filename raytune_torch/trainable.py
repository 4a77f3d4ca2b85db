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
from .loop import StepContext, default_step, evaluate, make_scaler, train_epoch
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


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
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
                 cpus: float = 1.0, gpu_share: float = 0.0) -> None:
        self.config = config
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
            "rng": ckpt.capture_rng(self.shuffle),
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
        ckpt.restore_rng(state["rng"], self.shuffle)
        # Restored from a checkpoint newer than the one the reporter was handed (its records lag):
        # report the epochs it has not seen again, so no epoch is missing from the results.
        replay_after = self.reporter.replay_after
        if replay_after is not None:
            for row in self.history:
                if row["epoch"] > replay_after:
                    self.reporter.report(dict(row), None)

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
        """This epoch's training batches on the trial's device, shuffled with the trial's generator."""
        if self._source is not None:
            return self._counted(pinned(
                self._source.batches("train", self.batch_size, self.device, generator=self.shuffle), self.device,
                pin=self.config.data.loader.pin_memory))
        X, y = self._train
        return device_batches(X, y, self.batch_size, self.device, shuffle=True, generator=self.shuffle)

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The validation batches on the trial's device, in order."""
        if self._source is not None:
            return pinned(self._source.batches("val", max(self.batch_size, self._source.eval_batch_size),
                                               self.device), self.device, pin=self.config.data.loader.pin_memory)
        X, y = self._val
        return device_batches(X, y, max(self.batch_size, 1024), self.device, shuffle=False)

    def _counted(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches, counting their rows: a whole pass sets ``n_train`` (samples_per_s)."""
        rows = 0
        for xb, yb in batches:
            rows += len(xb)
            yield xb, yb
        self.n_train = rows

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.model, self.val_batches(), self.loss_fn, self.device, self.task, self.metrics,
                        precision=self.precision)

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        early = self.config.train.early_stopping
        delta = early.min_delta if early is not None else 0.0
        return value < self.best - delta if self.mode == "min" else value > self.best + delta

    def end_epoch(self, train_loss: float) -> bool:
        """Evaluate, step the LR scheduler, report and checkpoint. Returns True to stop."""
        self.epoch += 1
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
        elapsed = time.perf_counter() - self._epoch_start
        metrics["epoch_time_s"] = elapsed
        metrics["samples_per_s"] = self.n_train / elapsed if elapsed > 0 else float("nan")
        metrics["n_params"] = self.n_params
        metrics["trial_seed"] = self.seed
        metrics["device"] = str(self.device)
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
        """Save the full state to a temporary directory and report it with ``metrics``."""
        directory = tempfile.mkdtemp(prefix="rtt-ckpt-")
        try:
            ckpt.save_state(directory, self.state())
            self.reporter.report(metrics, directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def default_loop(trial: Trial) -> None:
    step = default_step
    if trial.config.train.step is not None:
        step = comp.resolve(trial.config.train.step, what="train.step", import_paths=trial.config.import_paths)
    for _ in trial.epochs():
        loss = train_epoch(trial.step_ctx, trial.train_batches(), step)
        if trial.end_epoch(loss):
            break


def run_trial(params: dict[str, Any], config: Any, data: Splits, reporter: Reporter, *,
              cpus: float = 1.0, gpu_share: float = 0.0) -> Trial:
    """Run one trial to its end (max epochs, early stop or divergence). Returns the finished Trial."""
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    trial = Trial(config, params, data, reporter, cpus=cpus, gpu_share=gpu_share)
    # The trial states where it trains: here (the worker's log) and in every result (`device`).
    print(f"raytune-torch trial {reporter.trial_id}: device {trial.device}, {threads} torch thread(s), "
          f"gpu share {gpu_share:g}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}; "
          f"data: {trial.cache_plan.reason}", flush=True)
    loop: Callable[[Trial], Any] = default_loop
    if config.train.loop is not None:
        loop = comp.resolve(config.train.loop, what="train.loop", import_paths=config.import_paths)
    loop(trial)
    return trial


def experiment_trial(config: Any, params: dict[str, Any], data: Splits, reporter: Reporter) -> None:
    """One trial of an experiment, with the experiment's per-trial resources."""
    run_trial(params, config, data, reporter, cpus=config.resources.cpu, gpu_share=config.resources.gpu)


class _NullReporter:
    trial_id = "preflight"
    trial_index = 0
    replay_after = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        pass

    @contextlib.contextmanager
    def checkpoint_dir(self):
        yield None


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
    if source is None:
        X, y = trial._train
        xb, yb = (t[: min(len(X), trial.batch_size)].to(trial.device) for t in (X, y))
    else:
        xb, yb = (t.to(trial.device) for t in source.preflight_batch(trial.batch_size))
    model_name = comp.describe(config.model.name)
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
    if config.train.step is not None:
        step = comp.resolve(config.train.step, what="train.step", import_paths=config.import_paths)
        try:
            float(step(trial.step_ctx, xb, yb))
        except Exception as exc:
            raise PreflightError(f"train.step {comp.describe(config.train.step)} failed on one batch: "
                                 f"{type(exc).__name__}: {exc}") from exc
    if config.train.loop is not None:
        comp.resolve(config.train.loop, what="train.loop", import_paths=config.import_paths)
    try:
        trial.evaluate()
    except MetricError as exc:  # names the metric and what it did
        raise PreflightError(str(exc)) from exc
    except Exception as exc:
        raise PreflightError(f"evaluating the model on the validation split failed: {type(exc).__name__}: {exc}") from exc
