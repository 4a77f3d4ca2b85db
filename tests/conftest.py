"""Shared fixtures: one private local Ray instance per test session, small experiments."""

from __future__ import annotations

import copy
import os
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `examples.models:MLP` imports from the repository root
os.chdir(ROOT)  # and so does every Ray worker (Ray adds the driver's working directory)


@pytest.fixture(scope="session")
def ray_session():
    """A private local Ray instance (127.0.0.1 only) shared by the session; stopped by its handle.
    With Ray's API server where this Ray runs trials of several workers, as `run` starts it for
    them (Ray Train needs its State API); without it on older Ray, as `run` starts it there."""
    from raytune_torch import _ray
    from raytune_torch._ray.group import support_error

    started = _ray.start_local(num_cpus=2, num_gpus=0, state_api=support_error() is None)
    yield
    if started:
        _ray.shutdown()


BASE = {
    "name": "t",
    "seed": 0,
    "data": {"dataset": "digits", "standardize": True, "val_fraction": 0.25},
    "model": {"name": "examples.models:MLP", "args": {"hidden": 16}},
    "train": {"max_epochs": 2, "batch_size": 128, "metrics": ["accuracy"]},
    "space": {"optimizer__lr": {"type": "grid", "values": [0.003, 0.03]}},
    "search": {"algorithm": "grid", "metric": "val_accuracy"},
    "resources": {"cpu": 1},
}


@pytest.fixture
def experiment(tmp_path):
    """A tiny digits experiment as a dict (2-trial grid, 2 epochs) storing under tmp_path."""
    exp = copy.deepcopy(BASE)
    exp["storage"] = str(tmp_path / "runs")
    return exp


@pytest.fixture
def write_module(tmp_path, monkeypatch):
    """``write(source) -> name``: a module with a unique name in tmp_path (importable through
    ``import_paths=(str(tmp_path),)``); sys.path and sys.modules are restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    names = []

    def write(source: str) -> str:
        name = f"rtt_user_{uuid.uuid4().hex[:12]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)
