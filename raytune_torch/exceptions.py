"""The errors raytune_torch raises.

Exception tree::

    RaytuneTorchError             base of everything below; catch this to catch ours
    ├── ConfigError               the experiment (file, search space, overrides) is invalid;
    │                             ``.problems`` lists every problem found, not just the first
    ├── PreflightError            a trial cannot work: the model, loss, or data fail on one batch
    │                             in the driver, before Ray starts any trial
    ├── MetricError               a metric of ``train.metrics`` raised, or returned something that
    │                             is not a number (the preflight reports it as a PreflightError)
    ├── ResourceError             no node of the cluster can satisfy one trial's resources
    ├── ClusterError              a Ray cluster cannot be reached or refuses us (address, token)
    ├── RayVersionError           the installed Ray is outside the range this library is tested with
    ├── CheckpointError           a checkpoint file is missing, truncated, or does not match
    ├── ResultsError              a run directory is missing or is not a raytune_torch run
    └── DependencyError           an optional package a feature needs is not installed; the
                                  message gives the pip command
"""

from __future__ import annotations

__all__ = [
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
]


class RaytuneTorchError(Exception):
    """Base class of every error raised by raytune_torch."""


class ConfigError(RaytuneTorchError, ValueError):
    """An invalid experiment. ``problems`` holds one line per problem found."""

    def __init__(self, problems: list[str] | str, *, source: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''}{where}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class PreflightError(RaytuneTorchError):
    """A trial would fail: found by running one batch in the driver before launch."""


class MetricError(RaytuneTorchError, ValueError):
    """A metric function failed or returned a non-number; the message names the metric."""


class ResourceError(RaytuneTorchError):
    """A trial asks for more CPUs or GPUs than any node of the cluster has."""


class ClusterError(RaytuneTorchError):
    """A Ray cluster (GCS or dashboard/Jobs API) cannot be reached, or refuses the token."""


class RayVersionError(RaytuneTorchError, ImportError):
    """The installed Ray is outside the tested range (the message names the range and the fix)."""


class CheckpointError(RaytuneTorchError):
    """A checkpoint cannot be read, or its contents do not match what was expected."""


class ResultsError(RaytuneTorchError):
    """A run directory cannot be read as raytune_torch results."""


class DependencyError(RaytuneTorchError, ImportError):
    """An optional package (an extra of raytune-torch) is missing; the message names the install command."""
