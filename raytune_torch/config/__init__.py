"""The experiment file: frozen dataclasses, loading, overrides and whole-file validation.

:func:`load_config` reads a YAML file (or a dict) and returns an :class:`ExperimentConfig`, or
raises one :class:`~raytune_torch.exceptions.ConfigError` listing *every* problem found, before
anything expensive (Ray, data, torch) starts.

Each section of the file is a module with a frozen dataclass shaped like its YAML
(``from_dict(raw, problems)``, ``to_dict()``); :data:`SECTIONS` lists the top-level keys and
:data:`RULES` the checks that span sections.
"""

from ._problems import Problems
from .checkpoint import CheckpointConfig
from .components import ComponentConfig
from .data import BUNDLED_DATASETS, DataConfig, LoaderConfig
from .experiment import SECTIONS, ExperimentConfig, Section
from .loggers import LOGGERS, MLflowLogger, WandbLogger
from .load import OVERRIDES, config_to_dict, load_config
from .params import PLAIN_PARAMS, PREFIXES, check_param_names
from .resources import ResourcesConfig
from .rules import RULES
from .scheduler import SCHEDULERS, SchedulerConfig, check_grace_period, parse_scheduler
from .search import SAMPLERS, SearchConfig
from .train import HIGHER_IS_BETTER, METRICS, TASKS, EarlyStoppingConfig, TrainConfig

__all__ = [
    "ExperimentConfig",
    "DataConfig",
    "LoaderConfig",
    "ComponentConfig",
    "TrainConfig",
    "EarlyStoppingConfig",
    "SearchConfig",
    "SchedulerConfig",
    "ResourcesConfig",
    "CheckpointConfig",
    "MLflowLogger",
    "WandbLogger",
    "LOGGERS",
    "Problems",
    "Section",
    "SECTIONS",
    "RULES",
    "load_config",
    "config_to_dict",
    "parse_scheduler",
    "check_grace_period",
    "check_param_names",
    "OVERRIDES",
    "TASKS",
    "METRICS",
    "HIGHER_IS_BETTER",
    "SCHEDULERS",
    "SAMPLERS",
    "BUNDLED_DATASETS",
    "PLAIN_PARAMS",
    "PREFIXES",
]
