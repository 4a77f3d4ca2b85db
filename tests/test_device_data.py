"""Batches to the trial's device: the device-cache decision (judged against a fake GPU memory budget,
so it runs on the CPU), the gather into (pinned) buffers, and data.device_cache in the file and the
trial. Tests marked `gpu` check the real CUDA path."""

from __future__ import annotations

import pytest
import torch

from raytune_torch.config import load_config
from raytune_torch.data import iterate_batches, load_data
from raytune_torch.device_data import (CACHE_SHARE, device_batches, gathered, pinned, plan_cache, tensor_bytes,
                                       trial_gpu_memory)
from raytune_torch.exceptions import ConfigError, PreflightError
from raytune_torch.trainable import Trial, preflight, run_trial
from reporters import FakeReporter

MIB = 2**20
CUDA = torch.device("cuda")  # a device object only: nothing here touches CUDA


# --- the decision -------------------------------------------------------------------------------


def test_auto_caches_both_splits_when_they_fit_in_the_share():
    plan = plan_cache("auto", {"train": 300 * MIB, "val": 100 * MIB}, CUDA, memory=1024 * MIB)
    assert plan.cached == ("train", "val")
    assert plan.reason == ("data.device_cache auto: 400 MiB of train and val cached on cuda "
                           "(budget 512 MiB: 0.5 of the trial's 1,024 MiB)")


def test_auto_caches_the_train_split_alone_when_val_would_not_fit():
    plan = plan_cache("auto", {"train": 400 * MIB, "val": 200 * MIB}, CUDA, memory=1024 * MIB)
    assert plan.cached == ("train",)
    assert plan.reason == ("data.device_cache auto: 400 MiB of train cached on cuda; val (200 MiB) from pinned "
                           "memory (budget 512 MiB: 0.5 of the trial's 1,024 MiB)")


def test_auto_caches_nothing_when_train_is_over_the_share():
    plan = plan_cache("auto", {"train": 600 * MIB, "val": 10 * MIB}, CUDA, memory=1024 * MIB)
    assert plan.cached == ()  # val alone would fit, but train is the split every batch comes from
    assert plan.reason.startswith("data.device_cache auto: nothing cached; train and val (610 MiB) from pinned")


def test_the_budget_is_a_share_of_the_trials_memory_not_of_the_card():
    # Four trials at gpu 0.25 on a 4 GiB card each judge against 1 GiB: 0.7 GiB of data is cached
    # by a trial that has the whole card, and by none of the four.
    sizes = {"train": 600 * MIB, "val": 100 * MIB}
    card = 4096 * MIB
    assert plan_cache("auto", sizes, CUDA, memory=int(card * 1.0)).cached == ("train", "val")
    assert plan_cache("auto", sizes, CUDA, memory=int(card * 0.25)).cached == ()
    assert CACHE_SHARE == 0.5


def test_true_and_false_override_the_budget():
    sizes = {"train": 900 * MIB, "val": 900 * MIB}
    assert plan_cache(True, sizes, CUDA, memory=MIB).cached == ("train", "val")
    assert plan_cache(False, {"train": 1, "val": 1}, CUDA, memory=1024 * MIB).cached == ()


def test_nothing_is_cached_on_the_cpu():
    plan = plan_cache(True, {"train": 1, "val": 1}, torch.device("cpu"), memory=None)
    assert plan.cached == ()
    assert plan.reason == "on the CPU: batches are views of the host arrays"


def test_tensor_bytes_counts_every_element():
    assert tensor_bytes(torch.zeros(10, 3), torch.zeros(10, dtype=torch.int64)) == 10 * 3 * 4 + 10 * 8


# --- the batches --------------------------------------------------------------------------------


def _arrays(n=103):
    return torch.arange(n * 3, dtype=torch.float32).reshape(n, 3), torch.arange(n)


@pytest.mark.parametrize("shuffle", [True, False])
def test_gathered_batches_are_the_indexed_ones_in_the_same_order(shuffle):
    X, y = _arrays()
    ours = list(gathered(X, y, 16, shuffle=shuffle, generator=torch.Generator().manual_seed(3)))
    reference = list(iterate_batches(X, y, 16, shuffle=shuffle, generator=torch.Generator().manual_seed(3)))
    assert len(ours) == len(reference) == 7
    for (xb, yb), (xr, yr) in zip(ours, reference):
        assert torch.equal(xb, xr) and torch.equal(yb, yr)
        assert xb.is_contiguous() and xb.data_ptr() != X.data_ptr()  # a buffer of its own, not a view


def test_gathered_leaves_the_generator_where_indexing_would():
    X, y = _arrays()
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    list(gathered(X, y, 10, shuffle=True, generator=a))
    list(iterate_batches(X, y, 10, shuffle=True, generator=b))
    assert torch.equal(a.get_state(), b.get_state())  # a resumed trial draws the same next epoch


def test_batches_on_the_cpu_are_views_and_pinned_passes_them_through():
    X, y = _arrays()
    xb, yb = next(device_batches(X, y, 8, torch.device("cpu"), shuffle=False))
    assert xb.data_ptr() == X.data_ptr()  # the host arrays, not a copy
    batch = (X[:4], y[:4])
    assert next(pinned(iter([batch]), torch.device("cpu"))) is batch


# --- data.device_cache in the file and the trial ------------------------------------------------

BASE = {
    "name": "device-cache",
    "data": {"dataset": "digits"},
    "model": {"name": "examples.models:MLP"},
    "train": {"max_epochs": 1, "batch_size": 64},
    "search": {"metric": "val_accuracy"},
}


def _config(**data):
    return load_config({**BASE, "data": {**BASE["data"], **data}})


@pytest.mark.parametrize("value", ["auto", True, False])
def test_device_cache_values_round_trip(value):
    config = _config(device_cache=value)
    assert config.data.device_cache == value
    assert ("device_cache" in config.data.to_dict()) == (value != "auto")
    assert load_config({**BASE, "data": config.data.to_dict()}).data == config.data


@pytest.mark.parametrize("value", ["yes", 1, 0.5])
def test_device_cache_must_be_auto_true_or_false(value):
    with pytest.raises(ConfigError) as info:
        _config(device_cache=value)
    assert f"data.device_cache: must be auto, true or false, got {value!r}" in str(info.value)


def test_device_cache_true_is_refused_for_a_streamed_table():
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, "data": {"parquet": "t.parquet", "label": "y", "stream": True, "device_cache": True}})
    assert ("data.device_cache: true caches in-memory arrays on the GPU, but data.stream: true reads the table "
            "batch by batch; remove device_cache or set stream: false") in str(info.value)


def test_device_cache_true_is_refused_for_datasets_before_any_trial():
    config = load_config({**BASE, "data": {"factory": "examples.text:keywords", "factory_args": {"n": 200},
                                           "device_cache": True},
                          "model": {"name": "examples.text:BagOfEmbeddings", "args": {"vocab_size": 500}}})
    data = load_data(config.data, config.task, config.seed, import_paths=config.import_paths)
    with pytest.raises(PreflightError) as info:
        preflight(config, data, {})
    assert str(info.value) == (
        f"data.device_cache: true caches in-memory arrays on the GPU, but the data is {data.describe()}, read "
        f"batch by batch each epoch; set data.device_cache: auto or false")


def test_a_cpu_trial_says_where_its_batches_come_from(capsys):
    config = _config(device_cache=True)
    data = load_data(config.data, config.task, config.seed)
    run_trial({}, config, data, FakeReporter())
    assert "data: on the CPU: batches are views of the host arrays" in capsys.readouterr().out


# --- on a real GPU ------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("setting, on_gpu", [("auto", True), (False, False)])
def test_a_gpu_trial_caches_or_pins_and_trains_the_same(setting, on_gpu):
    config = _config(device_cache=setting)
    data = load_data(config.data, config.task, config.seed)
    reporter = FakeReporter()
    trial = Trial(config, {}, data, reporter, gpu_share=0.25)
    assert (trial._train[0].device.type == "cuda") is on_gpu
    assert trial_gpu_memory(trial.device, 0.25) == torch.cuda.get_device_properties(0).total_memory // 4
    xb, yb = next(trial.train_batches())
    assert xb.device.type == yb.device.type == "cuda"
    run_trial({}, config, data, reporter, gpu_share=0.25)
    assert reporter.metrics[-1]["device"] == "cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cached_and_pinned_batches_give_the_same_results():
    results = []
    for setting in (True, False):
        config = _config(device_cache=setting)
        reporter = FakeReporter()
        run_trial({}, config, load_data(config.data, config.task, config.seed), reporter, gpu_share=1)
        results.append(reporter.metrics[-1]["val_loss"])
    assert results[0] == pytest.approx(results[1], rel=1e-5)
