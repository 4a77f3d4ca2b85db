"""Each new data source end to end on a real local Ray instance: 2 trials x 2 epochs each."""

from __future__ import annotations

import pytest

import raytune_torch as rt
from examples.tables import write_table

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]


def _experiment(tmp_path, name, data, model, **train):
    return {
        "name": name, "seed": 0, "storage": str(tmp_path / "runs"),
        "data": data, "model": model,
        "train": {"max_epochs": 2, "batch_size": 64, "metrics": ["accuracy"], **train},
        "space": {"optimizer__lr": {"type": "grid", "values": [0.003, 0.03]}},
        "search": {"algorithm": "grid", "metric": "val_accuracy"},
        "resources": {"cpu": 1},
    }


def _check(result, epochs=2):
    table = result.table
    assert table["trial_id"].nunique() == 2
    assert table.groupby("trial_id")["epoch"].apply(list).map(lambda e: e == list(range(1, epochs + 1))).all()
    assert table["val_accuracy"].notna().all()


def test_one_map_style_dataset_split_by_the_driver(tmp_path):
    exp = _experiment(tmp_path, "tokens", {"factory": "examples.text:keywords", "factory_args": {"n": 600},
                                           "test_fraction": 0.2},
                      {"name": "examples.text:BagOfEmbeddings", "args": {"dim": 8}})
    result = rt.run(exp, quiet=True)
    _check(result)
    assert "test_accuracy" in result.best_metrics  # the test split scored through the Dataset source


def test_a_dict_of_augmented_datasets(tmp_path):
    exp = _experiment(tmp_path, "images", {"factory": "examples.images:shapes", "factory_args": {"n": 300}},
                      {"name": "examples.images:SmallCNN", "args": {"channels": 4}})
    _check(rt.run(exp, quiet=True))


def test_a_streamed_parquet_table(tmp_path):
    write_table(tmp_path / "table", rows=6000, row_group_size=500, rows_per_file=3000)
    exp = _experiment(tmp_path, "stream", {"parquet": str(tmp_path / "table"), "label": "label", "stream": True,
                                           "shuffle_buffer": 1000},
                      {"name": "examples.models:MLP", "args": {"hidden": 8}})
    _check(rt.run(exp, quiet=True))


def test_a_dict_of_iterable_datasets(tmp_path):
    exp = _experiment(tmp_path, "iterable", {"factory": "examples.text:keyword_streams", "factory_args": {"n": 600},
                                             "num_classes": 4},
                      {"name": "examples.text:BagOfEmbeddings", "args": {"dim": 8}})
    _check(rt.run(exp, quiet=True))
