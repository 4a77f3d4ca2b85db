"""torch Datasets as a source, without Ray: the split, the loader, the dtypes, augmentation, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from examples import images as ex_images
from examples import text as ex_text
from raytune_torch.config import LoaderConfig, load_config
from raytune_torch.data import Splits, load_data, load_splits
from raytune_torch.datasets import DatasetSource, make_loader
from raytune_torch.exceptions import PreflightError
from raytune_torch.trainable import Trial, preflight, run_trial
from reporters import FakeReporter

BASE = {
    "name": "datasets-test",
    "seed": 0,
    "data": {"factory": "examples.text:keywords", "factory_args": {"n": 400}},
    "model": {"name": "examples.text:BagOfEmbeddings", "args": {"vocab_size": 500, "dim": 8}},
    "train": {"max_epochs": 2, "batch_size": 32, "metrics": ["accuracy"]},
    "search": {"metric": "val_accuracy"},
}


def make_config(**changes):
    raw = copy.deepcopy(BASE)
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return load_config(raw)


def load(config):
    return load_data(config.data, config.task, config.seed, import_paths=config.import_paths)


USER_DATASETS = '''
import torch
from torch.utils.data import Dataset, IterableDataset


class Pairs(Dataset):
    """n items (x float32 (4,), y int); `bad` decides how items go wrong."""

    def __init__(self, n=40, bad=None, transform=None):
        self.n, self.bad, self.transform = n, bad, transform

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = torch.full((4,), float(i))
        if self.transform is not None:
            x = self.transform(x)
        if self.bad == "triple":
            return x, i % 2, "extra"
        if self.bad == "dict":
            return {"x": x, "y": i % 2}
        if self.bad == "raise" and i % 10 == 3:
            raise ValueError("corrupt image")
        return x, i % 2


class Stream(IterableDataset):
    def __init__(self, n=40):
        self.n = n

    def __iter__(self):
        for i in range(self.n):
            yield torch.full((4,), float(i % 7)), i % 2


def one(n=40, bad=None):
    return Pairs(n, bad)


def streams():
    return {"train": Stream(48), "val": Stream(16)}


def lonely_stream():
    return Stream(10)


def lambda_transform():
    return {"train": Pairs(40, transform=lambda x: x * 2), "val": Pairs(8)}


def text():
    return "not data"


class Ragged(Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        return torch.zeros(1 + i % 3, dtype=torch.int64), i % 2


def ragged():
    return {"train": Ragged(), "val": Ragged()}


def int_arrays():
    import numpy as np
    rng = np.random.default_rng(0)
    return rng.integers(0, 50, size=(120, 6)), np.arange(120) % 3
'''


class DtypeProbe(torch.nn.Module):
    """A bag of embeddings that records the dtype of every input it sees."""

    seen: list = []

    def __init__(self, out_features, vocab_size=500, dim=8):
        super().__init__()
        self.inner = ex_text.BagOfEmbeddings(out_features, vocab_size=vocab_size, dim=dim)

    def forward(self, ids):
        DtypeProbe.seen.append(ids.dtype)
        return self.inner(ids)


@pytest.fixture
def user(write_module, tmp_path):
    return write_module(USER_DATASETS), [str(tmp_path)]


def user_config(user, fn, **data):
    name, paths = user
    return make_config(data={"factory": f"{name}:{fn}", "factory_args": {}, **data},
                       model={"name": "examples.models:MLP", "args": {"hidden": 8}}, import_paths=paths)


# --- sources -----------------------------------------------------------------------------------


def test_one_map_style_dataset_is_split_stratified_with_the_seed():
    config = make_config()
    source = load(config)
    assert isinstance(source, DatasetSource)
    assert source.sizes == {"train": 320, "val": 80}
    targets = ex_text.keywords(n=400).targets.numpy()
    train, val = source.indices["train"], source.indices["val"]
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(400))
    expected = np.bincount(targets, minlength=4) * 0.2  # stratified: each class's share, give or take a row
    assert np.abs(np.bincount(targets[val], minlength=4) - expected).max() <= 1
    again = load(config)
    assert np.array_equal(again.indices["val"], val)
    other = load(make_config(seed=1))
    assert not np.array_equal(other.indices["val"], val)
    assert source.input_shape == (24,) and source.input_dtype == "int64" and source.n_outputs == 4
    assert source.describe() == "320 train, 80 val items (map-style Dataset); input (24,) int64; 4 classes"


def test_a_dataset_without_labels_is_split_at_random(user):
    source = load(user_config(user, "one", test_fraction=0.25))
    assert source.sizes == {"train": 22, "val": 8, "test": 10}
    assert source.has_test and source.n_outputs == 2  # from one pass over the train labels


def test_a_dict_of_datasets_is_used_as_given():
    config = make_config(data={"factory": "examples.images:shapes", "factory_args": {"n": 200}},
                         model={"name": "examples.images:SmallCNN", "args": {"channels": 4}})
    source = load(config)
    assert source.indices is None
    assert source.sizes == {"train": 160, "val": 40}
    assert source.classes == ex_images.CLASSES and source.n_outputs == 4
    assert source.input_shape == (1, 16, 16) and source.n_features == 256
    built = source.open().datasets()
    assert built["train"].transform is not None and built["val"].transform is None


def test_an_iterable_dataset_dict_trains_and_counts_its_rows(user):
    config = user_config(user, "streams", num_classes=2)
    source = load(config)
    assert source.sizes == {"train": None, "val": None} and source.kinds == {"train": "iterable", "val": "iterable"}
    preflight(config, source, {})
    reporter = FakeReporter()
    trial = run_trial({}, config, source, reporter)
    assert [m["epoch"] for m in reporter.metrics] == [1, 2]
    assert trial.n_train == 48


def test_the_datasets_are_built_in_each_trial_not_pickled():
    import pickle

    source = load(make_config())
    clone = pickle.loads(pickle.dumps(source))
    assert clone._built is None and len(pickle.dumps(source)) < 20_000
    assert len(clone.open().datasets()["train"]) == 320


def test_token_ids_stay_int64_to_the_model():
    DtypeProbe.seen.clear()
    config = make_config(model={"name": f"{__name__}:DtypeProbe", "args": {"vocab_size": 500}})
    run_trial({}, config, load(config), FakeReporter())
    assert DtypeProbe.seen and set(DtypeProbe.seen) == {torch.int64}


def test_integer_arrays_stay_integers_on_the_fast_path(user):
    name, paths = user
    DtypeProbe.seen.clear()
    config = make_config(data={"factory": f"{name}:int_arrays", "factory_args": {}}, import_paths=paths,
                         model={"name": f"{__name__}:DtypeProbe", "args": {"vocab_size": 50}})
    splits = load(config)
    assert isinstance(splits, Splits) and splits.X_train.dtype == np.int64
    run_trial({}, config, splits, FakeReporter())
    assert set(DtypeProbe.seen) == {torch.int64}


def test_float_arrays_are_unchanged():
    config = load_config({"name": "x", "data": {"dataset": "digits"}, "model": {"name": "examples.models:MLP"}})
    data = load(config)
    reference = load_splits(config.data, config.task, config.seed)
    assert isinstance(data, Splits) and data.X_train.dtype == np.float32
    assert np.array_equal(data.X_train, reference.X_train) and np.array_equal(data.y_val, reference.y_val)


# --- the DataLoader -----------------------------------------------------------------------------


def test_loader_options_reach_the_dataloader():
    dataset = ex_text.keywords(n=50)
    options = LoaderConfig(num_workers=2, pin_memory=True, persistent_workers=True, prefetch_factor=3,
                           drop_last=True)
    gen = torch.Generator()
    loader = make_loader(dataset, options, batch_size=16, shuffle=True, generator=gen, device=torch.device("cpu"))
    assert (loader.batch_size, loader.num_workers, loader.persistent_workers, loader.prefetch_factor,
            loader.drop_last) == (16, 2, True, 3, True)
    assert loader.pin_memory is False  # pinned only for a GPU
    assert loader.generator is gen and isinstance(loader.sampler, torch.utils.data.RandomSampler)
    val = make_loader(dataset, options, batch_size=16, shuffle=False, generator=None,
                      device=torch.device("cpu"), train=False)
    assert val.drop_last is False and isinstance(val.sampler, torch.utils.data.SequentialSampler)


def test_loader_options_from_the_file_reach_the_trial():
    config = make_config(data={"loader": {"drop_last": True}}, train={"batch_size": 96})
    trial = Trial(config, {}, load(config), FakeReporter())
    batches = list(trial.train_batches())
    assert len(batches) == 3 and all(len(xb) == 96 for xb, _ in batches)  # 320 items: the last 32 dropped
    assert sum(len(xb) for xb, _ in trial.val_batches()) == 80  # validation keeps every item


def _first_batches(config, source, epochs=2):
    trial = Trial(config, {}, source, FakeReporter())
    return [next(iter(trial.train_batches()))[0].clone() for _ in range(epochs)]


def test_augmentation_differs_between_epochs_and_repeats_for_a_seed():
    config = make_config(data={"factory": "examples.images:shapes", "factory_args": {"n": 120}},
                         model={"name": "examples.images:SmallCNN", "args": {"channels": 4}})
    source = load(config)
    first, second = _first_batches(config, source)
    assert not torch.equal(first, second)
    again = _first_batches(config, source)
    assert torch.equal(again[0], first) and torch.equal(again[1], second)
    # without augmentation the shuffled order alone still repeats
    plain = make_config(data={"factory": "examples.images:shapes", "factory_args": {"n": 120, "augment": False}},
                        model={"name": "examples.images:SmallCNN", "args": {"channels": 4}})
    a, b = _first_batches(plain, load(plain)), _first_batches(plain, load(plain))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_trial_on_a_dataset_source_learns():
    config = make_config(train={"max_epochs": 3})
    reporter = FakeReporter()
    run_trial({"optimizer__lr": 0.03}, config, load(config), reporter)
    assert reporter.metrics[-1]["val_accuracy"] > 0.6


# --- bad input ----------------------------------------------------------------------------------


def test_a_factory_returning_something_else_names_the_type(user):
    name, _ = user
    with pytest.raises(PreflightError) as info:
        load(user_config(user, "text"))
    assert str(info.value) == (
        f"data.factory '{name}:text' returned str; it must return (X, y) arrays, a torch.utils.data.Dataset "
        "(map-style or iterable), or a dict {'train': ..., 'val': ..., 'test': ...} of (X, y) pairs or of "
        "Datasets ('test' optional)")


def test_one_iterable_dataset_must_come_as_a_dict(user):
    with pytest.raises(PreflightError) as info:
        load(user_config(user, "lonely_stream"))
    assert str(info.value) == ("data.factory returned an iterable Dataset (Stream), which cannot be split by "
                               "index; return a dict {'train': ..., 'val': ...} of datasets (and optionally 'test')")


@pytest.mark.parametrize("bad, message", [
    ("triple", "data: item {i} of the dataset is a tuple of 3 items, not an (x, y) pair; make the dataset "
               "return (features, label) from __getitem__ (or __iter__)"),
    ("dict", "data: item {i} of the dataset is a dict, not an (x, y) pair; make the dataset return "
             "(features, label) from __getitem__ (or __iter__)"),
])
def test_items_that_are_not_pairs_fail_before_any_trial(user, bad, message):
    config = user_config(user, "one", factory_args={"bad": bad})
    with pytest.raises(PreflightError) as info:
        preflight(config, load(config), {})
    first = int(str(info.value).split("item ")[1].split(" ")[0])
    assert str(info.value) == message.format(i=first)


def test_a_transform_that_raises_is_named_with_its_index(user):
    config = user_config(user, "one", factory_args={"bad": "raise"}, val_fraction=0.5)
    with pytest.raises(PreflightError) as info:
        preflight(config, load(config), {})
    train = load(user_config(user, "one", val_fraction=0.5)).indices["train"].tolist()
    index = next(i for i in train if i % 10 == 3)  # the first bad item of the training split
    assert str(info.value) == (f"data: reading item {index} of the dataset raised ValueError: corrupt image (in "
                               f"the dataset's __getitem__ or one of its transforms)")


def test_items_of_different_shapes_cannot_be_batched(user):
    config = user_config(user, "ragged", num_classes=2)
    with pytest.raises(PreflightError) as info:
        preflight(config, load(config), {})
    message = str(info.value)
    assert message.startswith("data: the first 20 items of the train dataset cannot be batched together: "
                              "RuntimeError: ")
    assert message.endswith("; every x must be a tensor or array of one shape (pad token ids to one length), and "
                            "every y a number or an array of one shape")


def test_workers_need_a_picklable_dataset(user):
    config = user_config(user, "lambda_transform", loader={"num_workers": 2})
    source = load(config)
    with pytest.raises(PreflightError) as info:
        preflight(config, source, {})
    message = str(info.value)
    assert message.startswith("data.loader.num_workers is 2 but the train dataset (Pairs) cannot be pickled: ")
    assert message.endswith("; set data.loader.num_workers: 0, or make the dataset picklable (module-level "
                            "classes and functions, no lambdas or open files)")
    preflight(user_config(user, "lambda_transform"), load(user_config(user, "lambda_transform")), {})


def test_labels_must_be_class_indices(user):
    config = user_config(user, "one", num_classes=2)
    preflight(config, load(config), {})
    with pytest.raises(PreflightError, match=r"class indices 0\.\.0, got 1 in the first batch"):
        bad = user_config(user, "one", num_classes=2)
        source = load(bad)
        source.n_outputs = 1
        source.preflight_batch(8)


def test_standardize_is_refused_for_datasets():
    with pytest.raises(PreflightError) as info:
        load(make_config(data={"standardize": True}))
    assert str(info.value) == ("data.standardize: applies to arrays; a Dataset normalises its inputs in its own "
                               "transform (remove standardize)")


def test_a_loader_for_arrays_is_refused(user):
    name, paths = user
    config = make_config(data={"factory": f"{name}:int_arrays", "factory_args": {}, "loader": {"num_workers": 1}},
                         import_paths=paths)
    with pytest.raises(PreflightError) as info:
        load(config)
    assert str(info.value) == ("data.loader: the factory returned arrays, which are batched in memory without a "
                               "DataLoader; remove data.loader (it applies to a factory that returns Datasets)")


def test_nothing_is_written_when_the_data_is_bad(user, tmp_path):
    from raytune_torch.tuner import prepare

    name, paths = user
    raw = copy.deepcopy(BASE)
    raw.update(data={"factory": f"{name}:one", "factory_args": {"bad": "dict"}}, import_paths=paths,
               model={"name": "examples.models:MLP"}, storage=str(tmp_path / "runs"))
    with pytest.raises(PreflightError):
        prepare(raw)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_checkpoint_sees_the_same_augmented_batches(tmp_path, workers):
    config = make_config(data={"factory": "examples.images:shapes", "factory_args": {"n": 160},
                               "loader": {"num_workers": workers}},
                         model={"name": "examples.images:SmallCNN", "args": {"channels": 4}},
                         train={"max_epochs": 3})
    source = load(config)
    whole = FakeReporter(tmp_path / "whole")
    run_trial({}, config, source, whole)
    torch.manual_seed(999)  # the resuming process has RNG state of its own
    resumed = FakeReporter(tmp_path / "resumed", resume_from=whole.checkpoints[1])
    run_trial({}, config, source, resumed)
    timing = {"epoch_time_s", "samples_per_s"}
    assert [{k: v for k, v in m.items() if k not in timing} for m in resumed.metrics] == \
        [{k: v for k, v in m.items() if k not in timing} for m in whole.metrics[1:]]
