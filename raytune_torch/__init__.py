"""raytune_torch: tune PyTorch models on Ray Tune from one experiment file.

    import raytune_torch as rt
    result = rt.run("examples/digits_mlp.yaml", num_samples=8)
    result.best_config, result.best_metrics, result.load_model()
"""

from __future__ import annotations

from .config import ExperimentConfig, load_config
from .exceptions import (
    CheckpointError,
    ConfigError,
    DependencyError,
    MetricError,
    PreflightError,
    RaytuneTorchError,
    ResourceError,
    ClusterError,
    RayVersionError,
    ResultsError,
)
from .space import Choice, Float, Grid, Int

__version__ = "0.1.0"

# Imported on first use (PEP 562): scikit-learn and SciPy take over a second to import, and every
# Ray worker that runs a trial imports this package; a trial never needs them.
_LAZY = {
    "run": "tuner",
    "resume": "tuner",
    "TuneResult": "results",
    "TorchSearchCV": "search_cv",
    "TorchClassifier": "sklearn",
    "TorchRegressor": "sklearn",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raytune_torch' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "run",
    "resume",
    "load_config",
    "ExperimentConfig",
    "TuneResult",
    "TorchClassifier",
    "TorchRegressor",
    "TorchSearchCV",
    "Float",
    "Int",
    "Choice",
    "Grid",
    "RaytuneTorchError",
    "ConfigError",
    "PreflightError",
    "MetricError",
    "ResourceError",
    "ClusterError",
    "RayVersionError",
    "CheckpointError",
    "ResultsError",
    "DependencyError",
    "__version__",
]
