"""The only package that imports Ray, one module per concern.

Ray's reporting and checkpoint APIs have changed several times; keeping every Ray call here keeps
the next change in one place. Only Ray's public API is used, except in :mod:`.internals` (guarded,
scoped to this library's own instance and trainables, undone at shutdown). Importing this package
checks that the installed Ray is in the tested range (:mod:`.version`).

* :mod:`.local` — the private local instance (start, shutdown)
* :mod:`.cluster` — joining a cluster; the checks before a run (versions, resources, storage)
* :mod:`.search` — the parameter space, searchers and schedulers
* :mod:`.trial` — the trainable, the reporter a trial talks to, the shared data
* :mod:`.callbacks` — history, TensorBoard and console callbacks in the driver
* :mod:`.loggers` — Ray's MLflow and W&B callbacks for the experiment's ``loggers:``
* :mod:`.run` — building, fitting and restoring the Tuner
* :mod:`.stop` — the run's own stop rules (time budget, ``stop_all_at``)
"""

from __future__ import annotations

import ray

from .version import check as _check_version

_check_version(ray.__version__)

from .callbacks import HISTORY_FILE, ConsoleCallback, HistoryCallback, finish_status, trial_dirname  # noqa: E402
from .cluster import check_resources, check_storage, connect  # noqa: E402
from .loggers import logger_callbacks  # noqa: E402
from .local import is_running, shutdown, start_local  # noqa: E402
from .run import can_restore, restore_tuner, run_stop, run_tuner  # noqa: E402
from .search import SearchPlan, build_scheduler, build_search, param_space, tune_objective  # noqa: E402
from .trial import RayReporter, SharedData, share  # noqa: E402

__all__ = [
    "start_local",
    "shutdown",
    "is_running",
    "connect",
    "check_resources",
    "check_storage",
    "param_space",
    "build_search",
    "build_scheduler",
    "SearchPlan",
    "tune_objective",
    "RayReporter",
    "SharedData",
    "share",
    "run_tuner",
    "restore_tuner",
    "run_stop",
    "can_restore",
    "HistoryCallback",
    "ConsoleCallback",
    "logger_callbacks",
    "HISTORY_FILE",
    "finish_status",
    "trial_dirname",
]
