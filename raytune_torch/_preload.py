"""Imported by every Ray worker of a local instance before it accepts work.

Ray starts one worker process per CPU when the instance starts (``num_prestart_python_workers``)
and reuses them for trials. Importing here what the first trial of each worker would otherwise
import (torch and its compiler stack, which ``torch.optim`` loads on the first optimizer, Ray
Tune's function trainable and this package's trial code) moves about a second per worker off the
critical path: it runs while the driver loads the data and sets up the Tuner.

A worker that is done says so with a file named after its PID in the directory the driver gave
(``_ray.local._WorkersReady``); the driver starts the Tuner when every worker is ready.
"""

import os


def _ready() -> None:
    directory = os.environ.get("RAYTUNE_TORCH_WORKERS_READY_DIR")
    if directory and os.path.isdir(directory):
        try:
            open(os.path.join(directory, str(os.getpid())), "w").close()
        except OSError:  # the driver then waits its timeout out, and the run goes on
            pass


try:  # a failed import is logged by Ray ("Failed to preload"); the worker is ready all the same
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (torch.optim.Optimizer.__init__ imports it)
    import ray.tune.trainable.function_trainable  # noqa: F401

    import raytune_torch._ray  # noqa: F401
    import raytune_torch.trainable  # noqa: F401
finally:
    _ready()
