"""The ``data:`` section: where the data comes from, how it is split, and how it is batched."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ._problems import Problems, field_names, given

__all__ = ["DataConfig", "LoaderConfig", "BUNDLED_DATASETS", "STREAM_CHOICES", "DEVICE_CACHE_CHOICES"]

# Datasets that ship with scikit-learn, and the task each one is for.
BUNDLED_DATASETS = {
    "digits": "classification",
    "breast_cancer": "classification",
    "iris": "classification",
    "wine": "classification",
    "diabetes": "regression",
}
_SOURCES = ("dataset", "factory", "parquet")
#: ``data.stream``: always, never, or when the table's in-memory size is above the threshold
STREAM_CHOICES = ("auto", True, False)
#: ``data.device_cache``: cache in-memory splits on the trial's GPU when they fit, always, or never
DEVICE_CACHE_CHOICES = ("auto", True, False)


@dataclass(frozen=True)
class LoaderConfig:
    """``data.loader``: the ``torch.utils.data.DataLoader`` options for a factory that returns Datasets.

    ``num_workers`` >= 0 (0: batches are read in the trial's own process); ``pin_memory`` pins
    batches when the trial trains on a GPU (ignored on the CPU); ``persistent_workers`` and
    ``prefetch_factor`` (>= 1) need ``num_workers`` > 0; ``drop_last`` drops the last, smaller
    training batch (validation keeps every row). ``batch_size`` is a trial parameter, not set here.
    """

    num_workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    drop_last: bool = False

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems) -> LoaderConfig:
        loader = problems.mapping("data.loader", raw)
        problems.unknown("data.loader", loader, field_names(cls))
        workers = problems.typed("data.loader.num_workers", loader.get("num_workers", cls.num_workers), int,
                                 minimum=0)
        prefetch = loader.get("prefetch_factor")
        if prefetch is not None:
            prefetch = problems.typed("data.loader.prefetch_factor", prefetch, int, minimum=1)
        persistent = problems.boolean("data.loader.persistent_workers",
                                      loader.get("persistent_workers", cls.persistent_workers))
        if not workers:  # 0, or unreadable (already reported)
            if workers == 0 and prefetch is not None:
                problems.add(f"data.loader.prefetch_factor: needs num_workers > 0 (batches prefetched by worker "
                             f"processes), got prefetch_factor {prefetch} with num_workers 0; remove it or "
                             f"set num_workers")
            if workers == 0 and persistent:
                problems.add("data.loader.persistent_workers: needs num_workers > 0 (there are no worker "
                             "processes to keep), got true with num_workers 0; remove it or set num_workers")
        return cls(**given(
            num_workers=workers, prefetch_factor=prefetch, persistent_workers=persistent,
            pin_memory=problems.boolean("data.loader.pin_memory", loader.get("pin_memory", cls.pin_memory)),
            drop_last=problems.boolean("data.loader.drop_last", loader.get("drop_last", cls.drop_last)),
        ))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from, how it is split (once, with the experiment's seed) and batched.

    Exactly one of ``dataset`` (bundled: digits, breast_cancer, iris, wine, diabetes),
    ``factory`` (``pkg.mod:fn`` returning ``(X, y)``, a torch Dataset, or a dict of splits) or
    ``parquet`` (a file or directory) is set. ``val_fraction`` is in (0, 0.9], ``test_fraction``
    in [0, 0.9], and together below 0.95. ``loader`` applies to Datasets; ``stream``,
    ``shuffle_buffer`` and ``val_parquet`` to Parquet; ``num_classes`` (>= 2) saves a pass over a
    Dataset's labels. ``device_cache`` (auto, true, false) says whether in-memory splits are cached
    on a trial's GPU (see :mod:`raytune_torch.device_data`).
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
    num_classes: int | None = None
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    stream: bool | str = "auto"
    shuffle_buffer: int = 10_000
    val_parquet: str | None = None
    device_cache: bool | str = "auto"

    @classmethod
    def from_dict(cls, raw: Any, problems: Problems) -> DataConfig:
        """Read the ``data:`` value; what is wrong goes to ``problems``."""
        data = problems.mapping("data", raw)
        problems.unknown("data", data, field_names(cls))
        sources = [k for k in _SOURCES if data.get(k) is not None]
        if len(sources) != 1:
            problems.add(
                "data: set exactly one of `dataset` (bundled: "
                f"{', '.join(BUNDLED_DATASETS)}), `factory` (pkg.module:function returning (X, y) or a "
                f"torch Dataset) or `parquet` (a file or directory), got {sources or 'none'}"
            )
        dataset, factory, parquet = (data.get(k) for k in _SOURCES)
        if dataset is not None:
            problems.one_of("data.dataset", dataset, BUNDLED_DATASETS, noun="bundled dataset", listed="bundled:")
        if factory is not None:
            problems.import_path("data.factory", factory, what="function")
        if parquet is not None and not data.get("label"):
            problems.add("data.label: a parquet source needs `label` (the target column)")
        features = data.get("features")
        if features is not None and (not isinstance(features, (list, tuple))
                                     or not all(isinstance(f, str) for f in features)):
            problems.add(f"data.features: must be a list of column names, got {features!r}")
            features = None
        val = problems.typed("data.val_fraction", data.get("val_fraction", cls.val_fraction), float,
                             minimum=0.0, maximum=0.9, exclusive_min=True)
        test = problems.typed("data.test_fraction", data.get("test_fraction", cls.test_fraction), float,
                              minimum=0.0, maximum=0.9)
        if val is not None and test is not None and val + test >= 0.95:
            problems.add(f"data: val_fraction + test_fraction must leave data to train on, got {val} + {test}")
        num_classes = data.get("num_classes")
        if num_classes is not None:
            num_classes = problems.typed("data.num_classes", num_classes, int, minimum=2)
        loader = None
        if data.get("loader") is not None:
            loader = LoaderConfig.from_dict(data["loader"], problems)
            if factory is None and (dataset is not None or parquet is not None):
                problems.add(f"data.loader: applies to a `factory` that returns torch Datasets, not to a "
                             f"{'bundled dataset' if dataset is not None else 'parquet'} source; remove it")
        stream = data.get("stream", cls.stream)
        if stream not in STREAM_CHOICES or isinstance(stream, (int, float)) and not isinstance(stream, bool):
            problems.add(f"data.stream: must be auto, true or false, got {stream!r}")
            stream = None
        shuffle_buffer = problems.typed("data.shuffle_buffer", data.get("shuffle_buffer", cls.shuffle_buffer),
                                        int, minimum=1)
        device_cache = data.get("device_cache", cls.device_cache)
        if device_cache not in DEVICE_CACHE_CHOICES or (isinstance(device_cache, (int, float))
                                                        and not isinstance(device_cache, bool)):
            problems.add(f"data.device_cache: must be auto, true or false, got {device_cache!r}")
            device_cache = None
        elif device_cache is True and parquet is not None and data.get("stream") is True:
            problems.add("data.device_cache: true caches in-memory arrays on the GPU, but data.stream: true reads "
                         "the table batch by batch; remove device_cache or set stream: false")
        val_parquet = data.get("val_parquet")
        for key, value in (("stream", data.get("stream")), ("shuffle_buffer", data.get("shuffle_buffer")),
                           ("val_parquet", val_parquet)):
            if value is not None and parquet is None and value != "auto":
                problems.add(f"data.{key}: applies to a `parquet` source only; remove it")
        if val_parquet is not None and test:
            problems.add(f"data.test_fraction: with val_parquet the validation split is given, and a test split "
                         f"is not cut from the table; remove test_fraction (got {test})")
        return cls(**given(
            dataset=dataset, factory=factory,
            factory_args=problems.mapping("data.factory_args", data.get("factory_args")),
            parquet=None if parquet is None else str(parquet),
            features=tuple(features) if features else None, label=data.get("label"),
            val_fraction=val, test_fraction=test,
            standardize=problems.boolean("data.standardize", data.get("standardize", cls.standardize)),
            num_classes=num_classes, loader=loader, stream=stream, shuffle_buffer=shuffle_buffer,
            val_parquet=None if val_parquet is None else str(val_parquet), device_cache=device_cache,
        ))

    def to_dict(self) -> dict[str, Any]:
        """The section as the file writes it: unset sources, empty ``factory_args`` and options
        left at their defaults (``loader``, ``stream``, ``shuffle_buffer``) left out."""
        data = {k: v for k, v in asdict(self).items() if v is not None}
        if self.features is not None:
            data["features"] = list(self.features)
        if not data.get("factory_args"):
            data.pop("factory_args", None)
        loader = self.loader.to_dict()
        if self.loader == LoaderConfig():
            data.pop("loader")
        else:
            data["loader"] = loader
        if self.stream == "auto":
            data.pop("stream")
        if self.shuffle_buffer == DataConfig.shuffle_buffer:
            data.pop("shuffle_buffer")
        if self.device_cache == "auto":
            data.pop("device_cache")
        return data
