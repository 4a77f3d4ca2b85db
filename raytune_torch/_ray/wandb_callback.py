"""Ray's W&B logger callback with the run's mode applied in the driver (imported only when
``loggers:`` asks for W&B)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ray.air.integrations.wandb import WandbLoggerCallback

__all__ = ["WandbCallback"]


class WandbCallback(WandbLoggerCallback):
    """Ray's W&B callback; ``mode`` (online, offline, disabled) also holds in the driver, where
    Ray asks for an API key unless ``WANDB_MODE`` says offline or disabled."""

    def setup(self, *args: Any, **kwargs: Any) -> None:
        with _env("WANDB_MODE", self.kwargs.get("mode")):
            super().setup(*args, **kwargs)


@contextlib.contextmanager
def _env(key: str, value: str | None) -> Iterator[None]:
    saved = os.environ.get(key)
    if value is not None:
        os.environ[key] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved
