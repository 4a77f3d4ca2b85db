"""torch Datasets as a data source: split once in the driver, built inside each trial.

``data.factory`` may return a map-style or iterable ``torch.utils.data.Dataset``, or a dict
``{"train": ds, "val": ds, "test": ds}`` ("test" optional; an iterable dataset must come this
way). The driver calls the factory once to look at the data (its length, first item and labels)
and to split a single map-style dataset with the experiment's seed (stratified when the labels
are cheap to read: a ``targets`` or ``labels`` attribute, torchvision style). What goes to the
trials is a :class:`DatasetSource`: the factory (an import path, or a picklable callable), its
arguments and the split's indices, never the data; each trial calls the factory itself and reads
batches through a ``DataLoader`` configured by ``data.loader``.

Transforms are the dataset's own (torchvision convention), so augmentation runs in
``__getitem__``; the validation split gets train-time augmentation only when it is cut from the
same dataset: give a dict with a ``val`` dataset built with eval transforms to avoid that.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from .exceptions import PreflightError

__all__ = ["DatasetSource", "is_dataset", "holds_datasets", "load_dataset_source", "make_loader", "fix_batch"]

_SPLITS = ("train", "val", "test")
#: the batch size of the validation and test loaders is at least this (no gradients kept)
EVAL_BATCH_SIZE = 256


def is_dataset(value: Any) -> bool:
    """A torch Dataset, map-style or iterable."""
    return isinstance(value, Dataset)


def holds_datasets(raw: Any) -> bool:
    """What a factory returned is a Dataset, or a dict whose splits are Datasets."""
    if is_dataset(raw):
        return True
    return isinstance(raw, Mapping) and any(is_dataset(v) for v in raw.values())


def _kind(dataset: Dataset) -> str:
    return "iterable" if isinstance(dataset, IterableDataset) else "map-style"


def _cheap_labels(dataset: Any) -> np.ndarray | None:
    """The labels of every item without reading the items: a ``targets`` or ``labels`` attribute
    of the dataset's length (torchvision's convention), else None."""
    for name in ("targets", "labels"):
        labels = getattr(dataset, name, None)
        if labels is None:
            continue
        if hasattr(labels, "detach"):
            labels = labels.detach().cpu().numpy()
        try:
            labels = np.asarray(labels)
            if labels.ndim == 1 and len(labels) == len(dataset):
                return labels
        except TypeError:
            return None
    return None


def _item(dataset: Any, position: int, where: str, index: int | None = None) -> tuple[Any, Any]:
    """Item ``index`` of a map-style dataset, checked to be an ``(x, y)`` pair."""
    index = position if index is None else index
    try:
        item = dataset[index]
    except Exception as exc:
        raise PreflightError(
            f"data: reading item {index} of the {where} raised {type(exc).__name__}: {exc} (in the dataset's "
            f"__getitem__ or one of its transforms)") from exc
    return _pair(item, index, where)


def _pair(item: Any, index: int, where: str) -> tuple[Any, Any]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    shape = f" of {len(item)} items" if isinstance(item, (tuple, list)) else ""
    raise PreflightError(
        f"data: item {index} of the {where} is a {type(item).__name__}{shape}, not an (x, y) pair; make the "
        f"dataset return (features, label) from __getitem__ (or __iter__)")


def _first_items(dataset: Any, count: int, where: str) -> list[tuple[Any, Any]]:
    """The first ``count`` items of an iterable dataset, each checked to be an ``(x, y)`` pair."""
    items = []
    iterator = iter(dataset)
    for position in range(count):
        try:
            item = next(iterator)
        except StopIteration:
            break
        except Exception as exc:
            raise PreflightError(
                f"data: reading item {position} of the {where} raised {type(exc).__name__}: {exc} (in the "
                f"dataset's __iter__ or one of its transforms)") from exc
        items.append(_pair(item, position, where))
    if not items:
        raise PreflightError(f"data: the {where} yields no items")
    return items


def _as_tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


@dataclass
class DatasetSource:
    """What the trials are given for a Dataset source: how to build it, not the data.

    ``factory`` and ``factory_args`` rebuild the datasets in each trial; ``indices`` (for a
    single map-style dataset) hold the split made in the driver with the experiment's seed.
    """

    task: str
    factory: Any
    factory_args: Mapping[str, Any]
    import_paths: tuple[str, ...]
    loader: Any  # config.LoaderConfig
    input_shape: tuple[int, ...]
    input_dtype: str
    n_outputs: int
    classes: list | None
    sizes: dict[str, int | None]
    indices: dict[str, np.ndarray] | None = None
    kinds: dict[str, str] = field(default_factory=dict)
    feature_mean: None = None
    feature_std: None = None
    eval_batch_size: int = EVAL_BATCH_SIZE
    _built: dict[str, Dataset] | None = field(default=None, repr=False, compare=False)
    _loaders: dict[tuple, DataLoader] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_built"] = None  # the data is built again where it is used, never pickled
        state["_loaders"] = {}
        return state

    def open(self) -> DatasetSource:
        """The datasets built in this process (the trial's: the factory runs here), with loaders of
        their own for one trial."""
        from dataclasses import replace

        self.datasets()
        return replace(self, _loaders={})

    def in_process(self) -> DatasetSource:
        """The same source read without worker processes (the driver's preflight batch)."""
        from dataclasses import replace

        loader = replace(self.loader, num_workers=0, persistent_workers=False, prefetch_factor=None)
        return replace(self, loader=loader, _loaders={})

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape)) if self.input_shape else 1

    @property
    def has_test(self) -> bool:
        return "test" in self.sizes

    @property
    def n_train(self) -> int | None:
        return self.sizes["train"]

    def describe(self) -> str:
        def size(split: str) -> str:
            n = self.sizes[split]
            return f"{n}" if n is not None else "?"

        test = f", test {size('test')}" if self.has_test else ""
        kinds = ", ".join(sorted(set(self.kinds.values())))
        outputs = f"{self.n_outputs} classes" if self.task == "classification" else f"{self.n_outputs} target(s)"
        return (f"{size('train')} train, {size('val')} val{test} items ({kinds} Dataset); input "
                f"{tuple(self.input_shape)} {self.input_dtype}; {outputs}")

    # -- building in the trial ---------------------------------------------------------------------
    def datasets(self) -> dict[str, Dataset]:
        """The split datasets, built from the factory (once per process)."""
        if self._built is None:
            from .components import resolve

            factory = resolve(self.factory, what="data.factory", import_paths=self.import_paths)
            raw = factory(**dict(self.factory_args))
            self._built = _split(raw, self.indices)
        return self._built

    def batches(self, split: str, batch_size: int, device: torch.device, *,
                generator: torch.Generator | None = None, group: Any = None,
                share: Any = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over ``split``: shuffled with ``generator`` for train (map-style), in order otherwise.

        With a ``group`` (several workers per trial), this rank's rows of each global batch of
        ``batch_size``: a map-style dataset loads only those (:class:`~raytune_torch.distributed.ShardedBatchSampler`),
        an iterable one is read whole and sliced; ``share`` follows the batches."""
        from .distributed import ShardedBatchSampler, shard, weighted

        train = split == "train"
        key = (split, batch_size, str(device))
        loader = self._loaders.get(key)  # kept: persistent_workers live as long as their loader
        dataset = self.datasets()[split]
        sharded = group is not None and not isinstance(dataset, IterableDataset)
        if loader is None:
            sampler = None
            if sharded:
                sampler = ShardedBatchSampler(len(dataset), batch_size, group, shuffle=train,
                                              generator=generator if train else None,
                                              drop_last=bool(self.loader.drop_last and train))
            loader = make_loader(dataset, self.loader, batch_size=batch_size, shuffle=train,
                                 generator=generator if train else None, device=device, train=train,
                                 batch_sampler=sampler)
            self._loaders[key] = loader
        if not train:
            loader.generator = torch.Generator().manual_seed(0)  # its seed draws leave the trial's generator alone
        fixed = (fix_batch(xb, yb, self.task) for xb, yb in loader)
        if group is None:
            return fixed
        if sharded:
            return weighted(fixed, loader.batch_sampler.global_sizes(), share) if share is not None else fixed
        return shard(fixed, group, share)

    def preflight_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first training batch, read item by item in this process: what is wrong with an item
        (not an ``(x, y)`` pair, a transform that raises) is named with its index, and a dataset that
        ``data.loader.num_workers`` > 0 would need to pickle is checked to pickle."""
        built = self.datasets()
        if self.loader.num_workers > 0:
            for split, dataset in built.items():
                _check_picklable(dataset, split, self.loader.num_workers)
        items = _read(built["train"], batch_size, "train dataset")
        _read(built["val"], 1, "val dataset")
        try:
            xb, yb = fix_batch(*torch.utils.data.default_collate(items), self.task)
        except Exception as exc:
            raise PreflightError(
                f"data: the first {len(items)} items of the train dataset cannot be batched together: "
                f"{type(exc).__name__}: {exc}; every x must be a tensor or array of one shape (pad token ids "
                f"to one length), and every y a number or an array of one shape") from exc
        if self.task == "classification":
            _check_class_indices(yb, self.n_outputs)
        return xb, yb


def _read(dataset: Dataset, count: int, where: str) -> list[tuple[Any, Any]]:
    if isinstance(dataset, IterableDataset):
        return _first_items(dataset, count, where)
    n = len(dataset)
    if n == 0:
        raise PreflightError(f"data: the {where} is empty")
    return [_at(dataset, position, where) for position in range(min(count, n))]


def _at(dataset: Dataset, position: int, where: str) -> tuple[Any, Any]:
    """Item ``position`` of a split, named by its index in the user's dataset."""
    if isinstance(dataset, Subset):  # a split the driver cut from one dataset
        return _item(dataset.dataset, position, "dataset", int(dataset.indices[position]))
    return _item(dataset, position, where)


def _check_picklable(dataset: Dataset, split: str, workers: int) -> None:
    try:
        pickle.dumps(dataset)
    except Exception as exc:
        raise PreflightError(
            f"data.loader.num_workers is {workers} but the {split} dataset ({type(dataset).__name__}) cannot be "
            f"pickled: {type(exc).__name__}: {exc}. DataLoader workers receive the dataset pickled (spawn and "
            f"forkserver start methods: macOS, Windows, Python 3.14+); set data.loader.num_workers: 0, or make "
            f"the dataset picklable (module-level classes and functions, no lambdas or open files)") from exc


def _check_class_indices(yb: torch.Tensor, n_classes: int) -> None:
    if yb.ndim != 1:
        raise PreflightError(f"data: classification labels must be one class index per item, got a batch of "
                             f"labels of shape {tuple(yb.shape)}")
    low, high = int(yb.min()), int(yb.max())
    if low < 0 or high >= n_classes:
        raise PreflightError(f"data: classification labels must be class indices 0..{n_classes - 1}, got "
                             f"{low if low < 0 else high} in the first batch; map the labels to indices in "
                             f"the dataset (or set data.num_classes)")


def fix_batch(xb: Any, yb: Any, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A collated batch as the loop expects it, like the array path: float64 features become
    float32 (integer ones, such as token ids, keep their dtype); classification labels are int64;
    regression targets float32 ``(n, k)``."""
    xb, yb = _as_tensor(xb), _as_tensor(yb)
    if xb.dtype == torch.float64:
        xb = xb.float()
    if task == "classification":
        if yb.dtype != torch.int64:
            yb = yb.long()
    else:
        yb = yb.float()
        if yb.ndim == 1:
            yb = yb.unsqueeze(1)
    return xb, yb


def make_loader(dataset: Dataset, options: Any, *, batch_size: int, shuffle: bool,
                generator: torch.Generator | None, device: torch.device, train: bool = True,
                batch_sampler: Any = None) -> DataLoader:
    """The DataLoader for one split, with ``data.loader`` options.

    A map-style training split is shuffled by a sampler drawing from ``generator`` (the trial's
    own, saved in its checkpoints); workers' seeds come from it too. ``pin_memory`` applies only
    when the trial trains on a GPU; ``drop_last`` only to training.
    """
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "num_workers": options.num_workers,
        "pin_memory": bool(options.pin_memory and device.type == "cuda"),
        "drop_last": bool(options.drop_last and train),
        "generator": generator,
    }
    if options.num_workers > 0:
        kwargs["persistent_workers"] = options.persistent_workers
        if options.prefetch_factor is not None:
            kwargs["prefetch_factor"] = options.prefetch_factor
    if batch_sampler is not None:  # several workers: the sampler batches, shuffles and drops
        for key in ("batch_size", "drop_last"):
            kwargs.pop(key)
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataset, shuffle=shuffle and not isinstance(dataset, IterableDataset), **kwargs)


def _split(raw: Any, indices: Mapping[str, np.ndarray] | None) -> dict[str, Dataset]:
    """The split datasets from what the factory returned: a dict as given, or one dataset cut by ``indices``."""
    if isinstance(raw, Mapping):
        return {k: v for k, v in raw.items() if v is not None}
    if indices is None:
        raise PreflightError("data.factory returned one Dataset in a trial where the driver got a dict of them; "
                             "the factory must return the same thing every time")
    return {split: Subset(raw, idx.tolist()) for split, idx in indices.items()}


def _split_indices(dataset: Dataset, data_cfg: Any, task: str, seed: int) -> dict[str, np.ndarray]:
    """Indices of a single map-style dataset's train/val(/test) splits, as :func:`split_arrays`
    splits arrays (the same fractions and seeds), stratified when the labels are cheap to read."""
    from sklearn.model_selection import train_test_split

    n = len(dataset)
    order = np.arange(n)
    labels = _cheap_labels(dataset) if task == "classification" else None
    try:
        test = None
        if data_cfg.test_fraction > 0:
            order, test, strat_labels = _cut(order, labels, data_cfg.test_fraction, seed, train_test_split)
            labels = strat_labels
        val_size = data_cfg.val_fraction / (1.0 - data_cfg.test_fraction)
        train, val, _ = _cut(order, labels, val_size, seed + 1, train_test_split)
    except ValueError as exc:
        raise PreflightError(f"data: cannot split the dataset: {exc}") from None
    out = {"train": np.sort(train), "val": np.sort(val)}
    if test is not None:
        out["test"] = np.sort(test)
    return out


def _cut(order: np.ndarray, labels: np.ndarray | None, size: float, seed: int, splitter: Callable):
    if labels is None:
        keep, cut = splitter(order, test_size=size, random_state=seed)
        return keep, cut, None
    keep, cut, keep_labels, _ = splitter(order, labels, test_size=size, random_state=seed, stratify=labels)
    return keep, cut, keep_labels


def _n_classes(data_cfg: Any, train: Dataset, sizes: Mapping[str, int | None]) -> tuple[int, list]:
    """The number of classes (and their names): ``data.num_classes``, a ``classes`` attribute
    (torchvision), cheap labels, or else one pass over the training split's labels."""
    base = train.dataset if isinstance(train, Subset) else train
    names = getattr(base, "classes", None)
    if data_cfg.num_classes is not None:
        n = int(data_cfg.num_classes)
    elif isinstance(names, (list, tuple)) and len(names) >= 2:
        n = len(names)
    else:
        labels = _cheap_labels(base)
        if labels is None:
            labels = np.asarray([int(_as_tensor(y)) for _, y in _all_items(train)])
        if len(labels) == 0:
            raise PreflightError("data: the train dataset is empty")
        n = int(labels.max()) + 1
    classes = list(names) if isinstance(names, (list, tuple)) and len(names) == n else list(range(n))
    return n, classes


def _all_items(dataset: Dataset) -> Iterator[tuple[Any, Any]]:
    if isinstance(dataset, IterableDataset):
        for position, item in enumerate(dataset):
            yield _pair(item, position, "train dataset")
    else:
        for position in range(len(dataset)):
            yield _at(dataset, position, "train dataset")


def load_dataset_source(raw: Any, data_cfg: Any, task: str, seed: int, *,
                        import_paths: tuple[str, ...] = ()) -> DatasetSource:
    """Look at what the factory returned once, in the driver, and describe it for the trials."""
    if data_cfg.standardize:
        raise PreflightError("data.standardize: applies to arrays; a Dataset normalises its inputs in its own "
                             "transform (remove standardize)")
    indices = None
    if isinstance(raw, Mapping):
        unknown = set(raw) - set(_SPLITS)
        if unknown or raw.get("train") is None or raw.get("val") is None:
            raise PreflightError(f"data: a dict of splits needs keys 'train' and 'val' (and optionally 'test'), "
                                 f"got {sorted(raw)}")
        not_datasets = sorted(k for k, v in raw.items() if v is not None and not is_dataset(v))
        if not_datasets:
            raise PreflightError(f"data: a dict of Datasets must hold a Dataset in every split; "
                                 f"{', '.join(not_datasets)} holds {type(raw[not_datasets[0]]).__name__}")
        built = {k: v for k, v in raw.items() if v is not None}
    else:
        if isinstance(raw, IterableDataset):
            raise PreflightError(
                f"data.factory returned an iterable Dataset ({type(raw).__name__}), which cannot be split by "
                f"index; return a dict {{'train': ..., 'val': ...}} of datasets (and optionally 'test')")
        try:
            len(raw)
        except TypeError:
            raise PreflightError(f"data.factory returned a map-style Dataset ({type(raw).__name__}) without "
                                 f"__len__; give it __len__ so it can be split, or return a dict of splits") from None
        indices = _split_indices(raw, data_cfg, task, seed)
        built = _split(raw, indices)
    sizes = {split: _len(ds) for split, ds in built.items()}
    x, y = _read(built["train"], 1, "train dataset")[0]
    x, y = _as_tensor(x), _as_tensor(y)
    if task == "classification":
        n_outputs, classes = _n_classes(data_cfg, built["train"], sizes)
    else:
        n_outputs, classes = int(y.numel()), None
    x_dtype = torch.float32 if x.dtype == torch.float64 else x.dtype
    source = DatasetSource(
        task=task, factory=data_cfg.factory, factory_args=dict(data_cfg.factory_args), import_paths=import_paths,
        loader=data_cfg.loader, input_shape=tuple(x.shape), input_dtype=str(x_dtype).replace("torch.", ""),
        n_outputs=n_outputs, classes=classes, sizes=sizes, indices=indices,
        kinds={split: _kind(ds.dataset if isinstance(ds, Subset) else ds) for split, ds in built.items()})
    source._built = built
    return source


def _len(dataset: Dataset) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None
