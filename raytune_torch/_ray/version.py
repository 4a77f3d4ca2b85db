"""The Ray versions this library is tested with, checked when :mod:`raytune_torch._ray` is imported."""

from __future__ import annotations

import os

#: inclusive (major, minor) bounds; CI runs the suite on the newest and the Ray-marked tests on the oldest
OLDEST = (2, 41)
NEWEST = (2, 60)
SUPPORTED = f"{OLDEST[0]}.{OLDEST[1]} to {NEWEST[0]}.{NEWEST[1]}"
#: set to 1 to run with a Ray outside the tested range anyway
ANY_RAY_ENV = "RAYTUNE_TORCH_ANY_RAY"


def parse(version: str) -> tuple[int, int]:
    parts = (version.split(".") + ["0", "0"])[:2]
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def check(version: str) -> None:
    """Raise :class:`~raytune_torch.exceptions.RayVersionError` for a Ray outside the tested range."""
    from ..exceptions import RayVersionError

    if supported(version) or os.environ.get(ANY_RAY_ENV) == "1":
        return
    raise RayVersionError(
        f"raytune-torch is tested with Ray {SUPPORTED}; this environment has ray {version}. Install a tested "
        f"release (pip install 'ray[tune]>={OLDEST[0]}.{OLDEST[1]},<{NEWEST[0]}.{NEWEST[1] + 1}'), or set "
        f"{ANY_RAY_ENV}=1 to try this one anyway")


def supported(version: str) -> bool:
    return OLDEST <= parse(version) <= NEWEST


def job_version_note(address: str, cluster: str | None) -> str | None:
    """What to tell a user whose job goes to a cluster running another Ray than this machine's
    (a job runs on the cluster's own Ray; the Jobs API works across versions), or None.

    Raises:
        ClusterError: the cluster's Ray is outside the range this library supports (the job
            would fail there).
    """
    import ray

    from ..exceptions import ClusterError

    if not cluster or cluster == ray.__version__:
        return None
    if not supported(cluster) and os.environ.get(ANY_RAY_ENV) != "1":
        raise ClusterError(f"the Ray cluster at {address} runs Ray {cluster}, outside the range raytune-torch "
                           f"supports (Ray {SUPPORTED}): upgrade the cluster's Ray, or submit from an environment "
                           f"of a raytune-torch release that supports Ray {cluster}")
    return (f"the cluster at {address} runs Ray {cluster} and this machine Ray {ray.__version__}; the job runs on "
            f"the cluster's own Ray (both are in the range raytune-torch supports, Ray {SUPPORTED})")


def driver_version_error(address: str, cluster: str | None) -> Exception | None:
    """The error for a driver about to join a cluster of another Ray version (Ray refuses such a
    driver after its own retries, in its own words), or None."""
    import ray

    from ..exceptions import ClusterError

    if not cluster or cluster == ray.__version__:
        return None
    return ClusterError(
        f"the Ray cluster at {address} runs Ray {cluster} and this machine Ray {ray.__version__}; a driver that "
        f"joins a cluster must run the cluster's version: pip install 'ray[tune]=={cluster}' here (raytune-torch "
        f"supports Ray {SUPPORTED}), or submit the experiment as a job (`raytune-torch submit`), which runs on "
        f"the cluster's own Ray")
