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
    PreflightError,
    RaytuneTorchError,
    ResourceError,
    ClusterError,
    ResultsError,
)
from .results import TuneResult
from .search_cv import TorchSearchCV
from .sklearn import TorchClassifier, TorchRegressor
from .space import Choice, Float, Grid, Int
from .tuner import resume, run

__version__ = "0.1.0"

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
    "ResourceError",
    "ClusterError",
    "CheckpointError",
    "ResultsError",
    "__version__",
]
