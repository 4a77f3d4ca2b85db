"""Parquet streamed in record batches (no Ray): the split by row group, the shuffle, bounded memory."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from examples.tables import write_table
from raytune_torch import parquet_stream
from raytune_torch.config import DataConfig, load_config
from raytune_torch.data import Splits, load_data
from raytune_torch.exceptions import PreflightError
from raytune_torch.parquet_stream import ParquetStream
from raytune_torch.trainable import preflight, run_trial
from reporters import FakeReporter


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """3,000 rows in 30 row groups of 100 rows over 3 files; column `row` numbers the rows."""
    folder = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    for part in range(3):
        rows = np.arange(part * 1000, (part + 1) * 1000)
        t = pa.table({"row": rows.astype(np.float32), "x": rng.normal(size=1000).astype(np.float32),
                      "label": (rows % 3).astype(np.int64)})
        pq.write_table(t, folder / f"part-{part}.parquet", row_group_size=100)
    return str(folder)


def stream(table, **changes) -> ParquetStream:
    cfg = DataConfig(parquet=table, label="label", stream=True, **changes)
    data = load_data(cfg, "classification", 0)
    assert isinstance(data, ParquetStream)
    return data


def rows_of(batches) -> list[int]:
    return [int(v) for xb, _ in batches for v in xb[:, 0].tolist()]


def test_row_groups_are_split_with_the_seed(table):
    s = stream(table, val_fraction=0.2, test_fraction=0.1)
    assert (len(s.pieces["train"]), len(s.pieces["val"]), len(s.pieces["test"])) == (21, 6, 3)
    assert (s.rows("train"), s.rows("val"), s.rows("test")) == (2100, 600, 300)
    everything = [p for split in s.pieces.values() for p in split]
    assert len(set(everything)) == 30
    assert s.classes == [0, 1, 2] and s.n_outputs == 3 and s.n_features == 2 and s.feature_dtype == "float32"
    again = load_data(DataConfig(parquet=table, label="label", stream=True, val_fraction=0.2, test_fraction=0.1),
                      "classification", 0)
    assert again.pieces == s.pieces
    other = load_data(DataConfig(parquet=table, label="label", stream=True, val_fraction=0.2, test_fraction=0.1),
                      "classification", 1)
    assert other.pieces["val"] != s.pieces["val"]
    assert s.describe() == ("2100 train, 600 val, test 300 rows streamed from 30 row groups (0 MiB in memory); "
                            "2 features; 3 classes")


def test_an_epoch_reads_every_training_row_once_shuffled_by_the_generator(table):
    s = stream(table, shuffle_buffer=250)
    train_rows = sorted(r for f, g, n in s.pieces["train"] for r in range(n))
    gen = torch.Generator().manual_seed(7)
    first = rows_of(s.batches("train", 64, generator=gen))
    second = rows_of(s.batches("train", 64, generator=gen))
    assert len(first) == len(train_rows) == s.n_train
    assert sorted(first) == sorted(second) and len(set(first)) == len(first)
    assert first != second and first != sorted(first)
    replay = torch.Generator().manual_seed(7)
    assert rows_of(s.batches("train", 64, generator=replay)) == first  # exact on resume: the generator's state
    labels = [int(v) for _, yb in s.batches("train", 64, generator=gen) for v in yb.tolist()]
    assert set(labels) == {0, 1, 2}


def test_validation_streams_in_order(table):
    s = stream(table)
    val = rows_of(s.batches("val", 128))
    expected = []
    for path, group, n in s.pieces["val"]:
        expected += pq.ParquetFile(path).read_row_group(group).column("row").to_numpy().astype(int).tolist()
    assert val == expected
    sizes = [len(xb) for xb, _ in s.batches("val", 128)]
    assert all(n == 128 for n in sizes[:-1]) and sum(sizes) == s.rows("val")


def test_memory_stays_bounded_by_the_buffer(table):
    s = stream(table, shuffle_buffer=200)
    s.read_rows = 50
    rows_of(s.batches("train", 32, generator=torch.Generator().manual_seed(0)))
    assert 200 <= s.peak_rows <= 200 + 50  # of 2,400 training rows


def test_a_trial_trains_on_the_stream(table):
    config = load_config({
        "name": "stream", "seed": 0,
        "data": {"parquet": table, "label": "label", "stream": True, "features": ["x", "row"]},
        "model": {"name": "examples.models:MLP", "args": {"hidden": 8}},
        "train": {"max_epochs": 2, "batch_size": 128, "metrics": ["accuracy"]},
    })
    data = load_data(config.data, config.task, config.seed)
    preflight(config, data, {})
    restored = pickle.loads(pickle.dumps(data))
    reporter = FakeReporter()
    trial = run_trial({}, config, restored, reporter)
    assert [m["epoch"] for m in reporter.metrics] == [1, 2]
    assert trial.n_train == data.n_train == 2400


def test_integer_feature_columns_stay_integers(tmp_path):
    t = pa.table({"ids": np.arange(400, dtype=np.int64) % 50, "label": np.arange(400) % 2})
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=50)
    s = load_data(DataConfig(parquet=str(tmp_path / "t.parquet"), label="label", stream=True), "classification", 0)
    xb, yb = next(iter(s.batches("train", 16, generator=torch.Generator())))
    assert xb.dtype == torch.int64 and yb.dtype == torch.int64


def test_a_separate_validation_table(tmp_path):
    write_table(tmp_path / "train", rows=2000, row_group_size=500, rows_per_file=1000)
    write_table(tmp_path / "val", rows=600, row_group_size=300, seed=1)
    s = load_data(DataConfig(parquet=str(tmp_path / "train"), val_parquet=str(tmp_path / "val"), label="label",
                             stream=True), "classification", 0)
    assert (s.rows("train"), s.rows("val")) == (2000, 600)


def test_auto_streams_above_the_threshold(table, monkeypatch):
    auto = DataConfig(parquet=table, label="label")
    size = parquet_stream.estimated_size(table)
    assert size == 3000 * (4 + 4 + 8)  # two float32 columns and an int64 one
    assert isinstance(load_data(auto, "classification", 0), Splits)
    monkeypatch.setattr(parquet_stream, "STREAM_ABOVE_BYTES", size - 1)
    assert isinstance(load_data(auto, "classification", 0), ParquetStream)
    never = DataConfig(parquet=table, label="label", stream=False)
    assert isinstance(load_data(never, "classification", 0), Splits)


def test_too_few_row_groups_to_split(tmp_path):
    pq.write_table(pa.table({"x": np.arange(10.0), "label": np.arange(10) % 2}), tmp_path / "one.parquet")
    with pytest.raises(PreflightError) as info:
        load_data(DataConfig(parquet=str(tmp_path / "one.parquet"), label="label", stream=True), "classification", 0)
    assert str(info.value) == (
        "data.parquet: the table has 1 row group(s), too few to split into train and val by row group; write it "
        "with smaller row groups (pyarrow.parquet.write_table(table, path, row_group_size=...)) or give "
        "data.val_parquet")


def test_standardize_and_missing_columns_are_refused(table):
    with pytest.raises(PreflightError) as info:
        load_data(DataConfig(parquet=table, label="label", stream=True, standardize=True), "classification", 0)
    assert str(info.value).startswith("data.standardize: not available for a streamed table")
    with pytest.raises(PreflightError) as info:
        load_data(DataConfig(parquet=table, label="y", stream=True), "classification", 0)
    assert str(info.value) == f"data.label: column 'y' is not in {table!r} (columns: row, x, label)"


def test_a_column_that_is_not_numeric_fails_in_the_preflight(tmp_path):
    t = pa.table({"name": ["a", "b"] * 100, "x": np.arange(200.0), "label": np.arange(200) % 2})
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=50)
    config = load_config({"name": "s", "data": {"parquet": str(tmp_path / "t.parquet"), "label": "label",
                                                "stream": True},
                          "model": {"name": "examples.models:MLP"}})
    data = load_data(config.data, config.task, config.seed)
    with pytest.raises(PreflightError) as info:
        preflight(config, data, {})
    path, group, _ = data.pieces["train"][0]
    assert str(info.value).startswith(f"data: reading row group {group} of {path!r} as features ['name', 'x'] and "
                                      f"label 'label' failed: ValueError: ")


def test_a_relative_path_is_read_from_any_working_directory(table, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(table).parent)
    s = load_data(DataConfig(parquet=Path(table).name, label="label", stream=True), "classification", 0)
    monkeypatch.chdir(tmp_path)  # a trial's working directory
    assert sum(len(xb) for xb, _ in s.batches("val", 256)) == s.rows("val")
