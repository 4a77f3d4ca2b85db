"""The experiment file: frozen dataclasses, loading, overrides and whole-file validation.

:func:`load_config` reads a YAML file (or a dict) and returns an :class:`ExperimentConfig`, or
raises one :class:`~raytune_torch.exceptions.ConfigError` listing *every* problem found, before
anything expensive (Ray, data, torch) starts.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import space as sp
from .exceptions import ConfigError

__all__ = [
    "ExperimentConfig",
    "DataConfig",
    "ComponentConfig",
    "TrainConfig",
    "SearchConfig",
    "SchedulerConfig",
    "ResourcesConfig",
    "CheckpointConfig",
    "load_config",
    "config_to_dict",
    "OVERRIDES",
    "TASKS",
    "METRICS",
    "SCHEDULERS",
    "BUNDLED_DATASETS",
]

TASKS = ("classification", "regression")
METRICS = {
    "classification": ("accuracy", "f1", "roc_auc"),
    "regression": ("mse", "mae", "r2"),
}
HIGHER_IS_BETTER = {"accuracy", "f1", "roc_auc", "r2"}
BUNDLED_DATASETS = {
    "digits": "classification",
    "breast_cancer": "classification",
    "iris": "classification",
    "wine": "classification",
    "diabetes": "regression",
}
_RF = (float, 3.0, 1.0, None, True)  # reduction factor: > 1
SCHEDULERS = {
    # name: {option: (type, default, minimum, maximum, minimum is exclusive)}
    "fifo": {},
    "asha": {"grace_period": (int, 1, 1, None, False), "reduction_factor": _RF, "brackets": (int, 1, 1, None, False)},
    "hyperband": {"reduction_factor": _RF},
    "median": {"grace_period": (int, 1, 1, None, False), "min_samples_required": (int, 3, 1, None, False)},
    "pbt": {"perturbation_interval": (int, 2, 1, None, False), "quantile_fraction": (float, 0.25, 0.0, 0.5, True),
            "resample_probability": (float, 0.25, 0.0, 1.0, False)},
}
# Trial parameters that are not routed by a prefix.
PLAIN_PARAMS = ("batch_size", "lr", "optimizer", "seed")
PREFIXES = ("module__", "optimizer__", "loss__", "lr_scheduler__")

# CLI/keyword override name -> path in the experiment file.
OVERRIDES = {
    "name": ("name",),
    "seed": ("seed",),
    "storage": ("storage",),
    "search": ("search", "algorithm"),
    "num_samples": ("search", "num_samples"),
    "max_concurrent": ("search", "max_concurrent"),
    "metric": ("search", "metric"),
    "mode": ("search", "mode"),
    "scheduler": ("scheduler", "name"),
    "max_failures": ("max_failures",),
    "max_epochs": ("train", "max_epochs"),
    "cpus_per_trial": ("resources", "cpu"),
    "gpus_per_trial": ("resources", "gpu"),
}


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is split (once, with the experiment's seed).

    Exactly one of ``dataset`` (bundled: digits, breast_cancer, iris, wine, diabetes),
    ``factory`` (``pkg.mod:fn`` returning ``(X, y)``) or ``parquet`` (a file or directory) is set.
    """

    dataset: str | None = None
    factory: str | None = None
    factory_args: Mapping[str, Any] = field(default_factory=dict)
    parquet: str | None = None
    features: tuple[str, ...] | None = None
    label: str | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    standardize: bool = False


@dataclass(frozen=True)
class ComponentConfig:
    """A model, optimizer, loss or LR scheduler: a name or ``pkg.mod:Name`` plus fixed arguments."""

    name: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """The training loop. One epoch is one Tune iteration."""

    max_epochs: int = 10
    batch_size: int = 64
    metrics: tuple[str, ...] = ()
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    step: str | None = None
    loop: str | None = None


@dataclass(frozen=True)
class SearchConfig:
    algorithm: str = "random"
    num_samples: int = 1
    metric: str = "val_loss"
    mode: str = "min"
    max_concurrent: int | None = None


@dataclass(frozen=True)
class SchedulerConfig:
    name: str = "fifo"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-trial resources: CPUs (threads for torch) and a GPU share (0 < gpu <= 1, or whole GPUs)."""

    cpu: float = 1.0
    gpu: float = 0.0
    cpu_fallback: bool = False  # a trial given a GPU share where CUDA is unusable runs on the CPU


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoint every ``every`` epochs (and at the end). Per trial, keep the ``keep`` best
    checkpoints by the experiment's metric plus the latest; a trial stopped early keeps its best only."""

    every: int = 1
    keep: int = 1


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: what to train, on which data, over which space, with which search."""

    name: str
    model: ComponentConfig
    data: DataConfig
    task: str = "classification"
    seed: int = 0
    storage: str = "runs"
    optimizer: ComponentConfig = ComponentConfig("adam")
    loss: ComponentConfig | None = None
    lr_scheduler: ComponentConfig | None = None
    train: TrainConfig = TrainConfig()
    space: Mapping[str, Any] = field(default_factory=dict)
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: ResourcesConfig = ResourcesConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    max_failures: int = 2
    tensorboard: bool = True
    import_paths: tuple[str, ...] = ()

    @property
    def run_dir(self) -> str:
        """Where this experiment's results go: ``STORAGE/NAME``."""
        return os.path.join(self.storage, self.name)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every metric a trial reports each epoch."""
        return ("train_loss", "val_loss", *(f"val_{m}" for m in self.train.metrics))

    def with_overrides(self, **overrides: Any) -> ExperimentConfig:
        """A copy with CLI-style overrides applied and the result validated again."""
        return load_config(config_to_dict(self), **overrides)


# ---------------------------------------------------------------------------------------------
# Parsing: each section helper appends to `problems` and returns what it could build.


def _suggest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _section(raw: Mapping, key: str, problems: list[str]) -> dict:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{key}: must be a mapping, got {value!r}")
        return {}
    return dict(value)


def _unknown(where: str, got: Mapping, allowed: list[str], problems: list[str]) -> None:
    for key in got:
        if key not in allowed:
            problems.append(
                f"{where}: unknown key {key!r}{_suggest(str(key), allowed)} "
                f"(allowed: {', '.join(allowed)})"
            )


def _typed(where: str, value: Any, kind: type, problems: list[str], *, minimum=None,
           maximum=None, exclusive_min=False) -> Any:
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if kind is float and isinstance(value, str):
        try:
            value, ok = float(value), True
        except ValueError:
            pass
    if not ok:
        problems.append(f"{where}: must be {'an integer' if kind is int else 'a number' if kind is float else kind.__name__}, got {value!r}")
        return None
    if minimum is not None and (value <= minimum if exclusive_min else value < minimum):
        problems.append(f"{where}: must be {'>' if exclusive_min else '>='} {minimum}, got {value!r}")
        return None
    if maximum is not None and value > maximum:
        problems.append(f"{where}: must be <= {maximum}, got {value!r}")
        return None
    return value


def _component(raw: Any, where: str, problems: list[str], *, required: bool) -> ComponentConfig | None:
    if raw is None:
        if required:
            problems.append(f"{where}: missing; give e.g. `{where}: {{name: pkg.module:Name}}`")
        return None
    if isinstance(raw, str):
        return ComponentConfig(raw, {})
    if callable(raw):
        return ComponentConfig(raw, {})  # Python API: a class or factory object
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a name or a mapping with `name` and `args`, got {raw!r}")
        return None
    _unknown(where, raw, ["name", "args"], problems)
    name = raw.get("name")
    if name is None or not (isinstance(name, str) or callable(name)):
        problems.append(f"{where}.name: must be a name or an import path like `pkg.module:Name`, got {name!r}")
    args = raw.get("args") or {}
    if not isinstance(args, Mapping):
        problems.append(f"{where}.args: must be a mapping of keyword arguments, got {args!r}")
        args = {}
    return ComponentConfig(name, dict(args))


def _check_import_path(where: str, value: Any, problems: list[str]) -> None:
    if isinstance(value, str) and ":" in value:
        module, _, attr = value.partition(":")
        if not module or not attr:
            problems.append(f"{where}: {value!r} is not an import path; write `package.module:Name`")


def _parse_data(raw: Mapping, problems: list[str]) -> DataConfig:
    data = _section(raw, "data", problems)
    allowed = [f.name for f in DataConfig.__dataclass_fields__.values()]
    _unknown("data", data, allowed, problems)
    sources = [k for k in ("dataset", "factory", "parquet") if data.get(k) is not None]
    if len(sources) != 1:
        problems.append(
            "data: set exactly one of `dataset` (bundled: "
            f"{', '.join(BUNDLED_DATASETS)}), `factory` (pkg.module:function returning (X, y)) or "
            f"`parquet` (a file or directory), got {sources or 'none'}"
        )
    if data.get("dataset") is not None and data["dataset"] not in BUNDLED_DATASETS:
        problems.append(
            f"data.dataset: unknown bundled dataset {data['dataset']!r}"
            f"{_suggest(str(data['dataset']), list(BUNDLED_DATASETS))} "
            f"(bundled: {', '.join(BUNDLED_DATASETS)})"
        )
    if data.get("factory") is not None:
        if isinstance(data["factory"], str):
            if ":" not in data["factory"]:
                problems.append(f"data.factory: {data['factory']!r} is not an import path; write `package.module:function`")
            _check_import_path("data.factory", data["factory"], problems)
        elif not callable(data["factory"]):
            problems.append(f"data.factory: must be an import path or a callable, got {data['factory']!r}")
    if data.get("parquet") is not None:
        if not data.get("label"):
            problems.append("data.label: a parquet source needs `label` (the target column)")
    features = data.get("features")
    if features is not None and (not isinstance(features, (list, tuple)) or not all(isinstance(f, str) for f in features)):
        problems.append(f"data.features: must be a list of column names, got {features!r}")
        features = None
    val = _typed("data.val_fraction", data.get("val_fraction", 0.2), float, problems, minimum=0.0, maximum=0.9, exclusive_min=True)
    test = _typed("data.test_fraction", data.get("test_fraction", 0.0), float, problems, minimum=0.0, maximum=0.9)
    if val is not None and test is not None and val + test >= 0.95:
        problems.append(f"data: val_fraction + test_fraction must leave data to train on, got {val} + {test}")
    standardize = data.get("standardize", False)
    if not isinstance(standardize, bool):
        problems.append(f"data.standardize: must be true or false, got {standardize!r}")
    factory_args = data.get("factory_args") or {}
    if not isinstance(factory_args, Mapping):
        problems.append(f"data.factory_args: must be a mapping, got {factory_args!r}")
        factory_args = {}
    return DataConfig(
        dataset=data.get("dataset"), factory=data.get("factory"), factory_args=dict(factory_args),
        parquet=None if data.get("parquet") is None else str(data["parquet"]),
        features=tuple(features) if features else None, label=data.get("label"),
        val_fraction=val if val is not None else 0.2, test_fraction=test if test is not None else 0.0,
        standardize=bool(standardize),
    )


def _parse_train(raw: Mapping, task: str, problems: list[str]) -> TrainConfig:
    train = _section(raw, "train", problems)
    allowed = ["max_epochs", "batch_size", "metrics", "early_stopping", "step", "loop"]
    _unknown("train", train, allowed, problems)
    max_epochs = _typed("train.max_epochs", train.get("max_epochs", 10), int, problems, minimum=1)
    batch_size = _typed("train.batch_size", train.get("batch_size", 64), int, problems, minimum=1)
    metrics = train.get("metrics")
    known = METRICS.get(task, ())
    if metrics is None:
        metrics = list(known[:1])
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)):
        problems.append(f"train.metrics: must be a list of metric names, got {metrics!r}")
        metrics = []
    for m in metrics:
        if m not in known:
            problems.append(
                f"train.metrics: {m!r} is not a {task} metric{_suggest(str(m), list(known))} "
                f"(choose from {', '.join(known)})"
            )
    patience, min_delta = None, 0.0
    es = train.get("early_stopping")
    if es is not None:
        if not isinstance(es, Mapping):
            problems.append(f"train.early_stopping: must be a mapping like {{patience: 3}}, got {es!r}")
        else:
            _unknown("train.early_stopping", es, ["patience", "min_delta"], problems)
            patience = _typed("train.early_stopping.patience", es.get("patience"), int, problems, minimum=1)
            min_delta = _typed("train.early_stopping.min_delta", es.get("min_delta", 0.0), float, problems, minimum=0.0) or 0.0
    for key in ("step", "loop"):
        value = train.get(key)
        if value is not None and not callable(value):
            if not isinstance(value, str) or ":" not in value:
                problems.append(f"train.{key}: must be an import path `package.module:function`, got {value!r}")
    if train.get("step") is not None and train.get("loop") is not None:
        problems.append("train: set `step` (your per-batch step) or `loop` (your whole loop), not both")
    return TrainConfig(
        max_epochs=max_epochs or 10, batch_size=batch_size or 64,
        metrics=tuple(m for m in metrics if m in known), early_stopping_patience=patience,
        early_stopping_min_delta=min_delta, step=train.get("step"), loop=train.get("loop"),
    )


def _parse_search(raw: Mapping, task_metrics: tuple[str, ...], problems: list[str]) -> SearchConfig:
    search = _section(raw, "search", problems)
    _unknown("search", search, ["algorithm", "num_samples", "metric", "mode", "max_concurrent"], problems)
    algorithm = search.get("algorithm", "random")
    if algorithm not in sp.SEARCHERS:
        problems.append(
            f"search.algorithm: unknown searcher {algorithm!r}{_suggest(str(algorithm), list(sp.SEARCHERS))} "
            f"(choose from {', '.join(sp.SEARCHERS)})"
        )
    num_samples = _typed("search.num_samples", search.get("num_samples", 1), int, problems, minimum=1)
    metric = search.get("metric", "val_loss")
    reported = ["train_loss", "val_loss", *(f"val_{m}" for m in task_metrics)]
    if metric not in reported:
        problems.append(
            f"search.metric: {metric!r} is not reported{_suggest(str(metric), reported)}; trials report "
            f"{', '.join(reported)} (add the metric to train.metrics)"
        )
    default_mode = "max" if str(metric).removeprefix("val_") in HIGHER_IS_BETTER else "min"
    mode = search.get("mode", default_mode)
    if mode not in ("min", "max"):
        problems.append(f"search.mode: must be 'min' or 'max', got {mode!r}")
    max_concurrent = search.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = _typed("search.max_concurrent", max_concurrent, int, problems, minimum=1)
    return SearchConfig(algorithm=algorithm, num_samples=num_samples or 1, metric=metric,
                        mode=mode if mode in ("min", "max") else "min", max_concurrent=max_concurrent)


def _parse_scheduler(raw: Mapping, max_epochs: int, problems: list[str]) -> SchedulerConfig:
    value = raw.get("scheduler")
    if value is None:
        return SchedulerConfig()
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        problems.append(f"scheduler: must be a name or a mapping with `name`, got {value!r}")
        return SchedulerConfig()
    name = value.get("name", "fifo")
    if name not in SCHEDULERS:
        problems.append(
            f"scheduler.name: unknown scheduler {name!r}{_suggest(str(name), list(SCHEDULERS))} "
            f"(choose from {', '.join(SCHEDULERS)})"
        )
        return SchedulerConfig()
    spec = SCHEDULERS[name]
    options = {k: v for k, v in value.items() if k != "name"}
    _unknown(f"scheduler ({name})", options, list(spec), problems)
    parsed = {}
    for key, (kind, default, minimum, maximum, exclusive) in spec.items():
        got = _typed(f"scheduler.{key}", options.get(key, default), kind, problems, minimum=minimum,
                     maximum=maximum, exclusive_min=exclusive)
        parsed[key] = got if got is not None else default
    if "grace_period" in parsed and parsed["grace_period"] > max_epochs:
        problems.append(
            f"scheduler.grace_period: {parsed['grace_period']} is more than train.max_epochs "
            f"({max_epochs}); lower it or train longer"
        )
    return SchedulerConfig(name=name, options=parsed)


def _check_param_names(space: Mapping[str, Any], problems: list[str]) -> None:
    targets = [*PLAIN_PARAMS, *(p + "<name>" for p in PREFIXES)]
    for name in space:
        if name in PLAIN_PARAMS or any(name.startswith(p) and len(name) > len(p) for p in PREFIXES):
            continue
        hint = ""
        for prefix in PREFIXES:
            single = prefix[:-1]
            if name.startswith(single) and not name.startswith(prefix):
                hint = f"; did you mean {prefix + name[len(single):].lstrip('_')!r}?"
                break
        if not hint:
            hint = _suggest(name, list(PLAIN_PARAMS)) or "."
        problems.append(
            f"space.{name}: unknown trial parameter{hint} A trial parameter is one of "
            f"{', '.join(targets)}"
        )


def _check_pbt(space: Mapping[str, Any], search: SearchConfig, scheduler: SchedulerConfig, every: int | None,
               problems: list[str]) -> None:
    if search.algorithm not in ("random", "grid"):
        problems.append(f"scheduler: pbt starts its population from search: random (or grid), not {search.algorithm!r}")
    searched = sp.searched(space)
    structural = sorted(k for k in searched if k.startswith("module__"))
    if structural:
        problems.append(
            f"space: pbt copies weights between trials, so the model's shape must not change; make "
            f"{structural} constants (pbt mutates optimizer, loss and batch-size parameters)")
    if not searched:
        problems.append("space: pbt needs at least one searched parameter to mutate")
    interval = scheduler.options.get("perturbation_interval", 1)
    if every and interval % every:
        problems.append(
            f"checkpoint.every: pbt perturbs every {interval} epoch(s) and needs a checkpoint then; make "
            f"checkpoint.every a divisor of scheduler.perturbation_interval")


def _parse(raw: Mapping, source: str | None) -> ExperimentConfig:
    problems: list[str] = []
    allowed = ["name", "seed", "storage", "task", "data", "model", "optimizer", "loss", "lr_scheduler",
               "train", "space", "search", "scheduler", "resources", "checkpoint", "max_failures", "tensorboard",
               "import_paths"]
    _unknown("experiment", raw, allowed, problems)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or "/" in name or name in (".", ".."):
        problems.append(f"name: must be a non-empty name without '/', got {name!r}")
        name = "experiment"
    seed = _typed("seed", raw.get("seed", 0), int, problems, minimum=0)
    storage = raw.get("storage", "runs")
    if not isinstance(storage, (str, os.PathLike)) or not str(storage):
        problems.append(f"storage: must be a directory path, got {storage!r}")
        storage = "runs"
    task = raw.get("task")
    data = _parse_data(raw, problems)
    if task is None:
        task = BUNDLED_DATASETS.get(data.dataset or "", "classification")
    if task not in TASKS:
        problems.append(f"task: must be one of {', '.join(TASKS)}, got {task!r}")
        task = "classification"
    elif data.dataset in BUNDLED_DATASETS and BUNDLED_DATASETS[data.dataset] != task:
        problems.append(f"task: the bundled dataset {data.dataset!r} is for {BUNDLED_DATASETS[data.dataset]}, not {task}")
    model = _component(raw.get("model"), "model", problems, required=True)
    if model is not None and isinstance(model.name, str):
        if ":" not in model.name:
            problems.append(f"model.name: {model.name!r} is not an import path; write `package.module:ClassName`")
        _check_import_path("model.name", model.name, problems)
    optimizer = _component(raw.get("optimizer", "adam"), "optimizer", problems, required=True)
    loss = _component(raw.get("loss"), "loss", problems, required=False)
    lr_scheduler = _component(raw.get("lr_scheduler"), "lr_scheduler", problems, required=False)
    if loss is not None and isinstance(loss.name, str):
        mismatch = {"classification": ("mse", "l1", "huber", "smooth_l1"), "regression": ("cross_entropy", "nll")}
        if loss.name.lower() in mismatch.get(task, ()):
            fit = "cross_entropy" if task == "classification" else "mse"
            problems.append(f"loss: {loss.name!r} is a {'regression' if task == 'classification' else 'classification'} "
                            f"loss but the task is {task}; use e.g. `loss: {fit}` (or set `task:`)")
    train = _parse_train(raw, task, problems)
    space, space_problems = sp.parse_space(raw.get("space"))
    problems.extend(space_problems)
    raw_space = raw.get("space")
    _check_param_names(raw_space if isinstance(raw_space, Mapping) else space, problems)
    search = _parse_search(raw, train.metrics, problems)
    if search.algorithm in sp.SEARCHERS:
        problems.extend(sp.check_searcher(space, search.algorithm))
    scheduler = _parse_scheduler(raw, train.max_epochs, problems)
    if scheduler.name == "hyperband" and search.max_concurrent is not None:
        problems.append(
            "search.max_concurrent: hyperband assigns trials to its brackets as they are created, and a "
            "concurrency limit starves the brackets (no trial is ever halved); remove max_concurrent "
            "(per-trial resources already bound how many run at once) or use scheduler: asha")
    res = _section(raw, "resources", problems)
    _unknown("resources", res, ["cpu", "gpu", "cpu_fallback"], problems)
    cpu_fallback = res.get("cpu_fallback", False)
    if not isinstance(cpu_fallback, bool):
        problems.append(f"resources.cpu_fallback: must be true or false, got {cpu_fallback!r}")
    cpu = _typed("resources.cpu", res.get("cpu", 1), float, problems, minimum=0.0, exclusive_min=True)
    gpu = _typed("resources.gpu", res.get("gpu", 0), float, problems, minimum=0.0)
    if gpu is not None and gpu > 1 and gpu != int(gpu):
        problems.append(f"resources.gpu: a share above 1 must be a whole number of GPUs, got {gpu}")
    ckpt = _section(raw, "checkpoint", problems)
    _unknown("checkpoint", ckpt, ["every", "keep"], problems)
    every = _typed("checkpoint.every", ckpt.get("every", 1), int, problems, minimum=1)
    keep = _typed("checkpoint.keep", ckpt.get("keep", 1), int, problems, minimum=1)
    max_failures = _typed("max_failures", raw.get("max_failures", 2), int, problems, minimum=0)
    if scheduler.name == "pbt":
        _check_pbt(space, search, scheduler, every, problems)
    import_paths = raw.get("import_paths") or ()
    if isinstance(import_paths, str) or not isinstance(import_paths, (list, tuple)):
        problems.append(f"import_paths: must be a list of directories, got {import_paths!r}")
        import_paths = ()
    tensorboard = raw.get("tensorboard", True)
    if not isinstance(tensorboard, bool):
        problems.append(f"tensorboard: must be true or false, got {tensorboard!r}")
    if problems:
        raise ConfigError(problems, source=source)
    return ExperimentConfig(
        name=name, seed=seed, storage=str(storage), task=task, data=data, model=model,
        optimizer=optimizer, loss=loss, lr_scheduler=lr_scheduler, train=train, space=space,
        search=search, scheduler=scheduler,
        resources=ResourcesConfig(cpu=cpu, gpu=gpu, cpu_fallback=cpu_fallback is True), checkpoint=CheckpointConfig(every=every, keep=keep),
        max_failures=max_failures if max_failures is not None else 2, tensorboard=tensorboard,
        import_paths=tuple(str(p) for p in import_paths),
    )


def _apply_overrides(raw: dict, overrides: Mapping[str, Any]) -> dict:
    raw = copy.deepcopy(raw)
    unknown = [k for k in overrides if k not in OVERRIDES]
    if unknown:
        raise ConfigError([f"override {k!r} is not known{_suggest(k, list(OVERRIDES))} (known: {', '.join(OVERRIDES)})" for k in unknown])
    for key, value in overrides.items():
        if value is None:
            continue
        path = OVERRIDES[key]
        if key == "scheduler":
            current = raw.get("scheduler")
            current = {"name": current} if isinstance(current, str) else dict(current or {})
            if current.get("name") != value:
                # Keep only the options the new scheduler understands.
                spec = SCHEDULERS.get(value, {})
                current = {k: v for k, v in current.items() if k in spec}
            current["name"] = value
            raw["scheduler"] = current
            continue
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, Mapping) else {}
            node = node[part]
        node[path[-1]] = value
        if key == "metric" and "mode" not in overrides:
            node.pop("mode", None)  # re-derive the mode from the new metric
    return raw


def load_config(source: str | os.PathLike | Mapping[str, Any] | ExperimentConfig,
                **overrides: Any) -> ExperimentConfig:
    """Read and validate an experiment; raises :class:`ConfigError` listing every problem.

    Args:
        source: a YAML file path, a mapping of the same shape, or an :class:`ExperimentConfig`.
        overrides: names from :data:`OVERRIDES` (``search``, ``num_samples``, ``max_epochs`` ...).
    """
    where = None
    if isinstance(source, ExperimentConfig):
        raw = config_to_dict(source)
    elif isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise ConfigError([f"experiment file {str(path)!r} does not exist; check the path"])
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source=where) from None
        if not isinstance(raw, Mapping):
            raise ConfigError(["the file must hold a mapping (name:, model:, data:, ...)"], source=where)
        raw = dict(raw)
        base = str(path.resolve().parent)
        raw["import_paths"] = [*list(raw.get("import_paths") or []), base] if isinstance(raw.get("import_paths") or [], list) else raw.get("import_paths")
    raw = _apply_overrides(raw, overrides)
    return _parse(raw, where)


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The experiment as plain data in the file's layout (the inverse of :func:`load_config`)."""
    out: dict[str, Any] = {
        "name": config.name, "seed": config.seed, "storage": config.storage, "task": config.task,
    }
    data = {k: v for k, v in asdict(config.data).items() if v is not None}
    if data.get("features") is not None:
        data["features"] = list(data["features"])
    if not data.get("factory_args"):
        data.pop("factory_args", None)
    out["data"] = data
    for key in ("model", "optimizer", "loss", "lr_scheduler"):
        comp = getattr(config, key)
        if comp is not None:
            out[key] = {"name": comp.name, "args": dict(comp.args)}
    train: dict[str, Any] = {
        "max_epochs": config.train.max_epochs, "batch_size": config.train.batch_size,
        "metrics": list(config.train.metrics),
    }
    if config.train.early_stopping_patience is not None:
        train["early_stopping"] = {"patience": config.train.early_stopping_patience,
                                   "min_delta": config.train.early_stopping_min_delta}
    for key in ("step", "loop"):
        if getattr(config.train, key) is not None:
            train[key] = getattr(config.train, key)
    out["train"] = train
    out["space"] = sp.space_to_dict(config.space)
    out["search"] = {k: v for k, v in asdict(config.search).items() if v is not None}
    out["scheduler"] = {"name": config.scheduler.name, **dict(config.scheduler.options)}
    out["resources"] = asdict(config.resources)
    out["checkpoint"] = asdict(config.checkpoint)
    out["max_failures"] = config.max_failures
    out["tensorboard"] = config.tensorboard
    if config.import_paths:
        out["import_paths"] = list(config.import_paths)
    return out
