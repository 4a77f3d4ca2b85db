"""``submit`` and ``jobs``: experiments as Ray Jobs, from a laptop to a cluster's Jobs API.

``submit`` validates the experiment here (a config error fails before anything is uploaded),
checks that the cluster answers and accepts the token, uploads the working directory (the
user's model code and the experiment file) as the job's runtime environment, and runs
``python -m raytune_torch.cli run EXPERIMENT --address auto`` on the head node. It then streams
the job's logs until the job ends and returns the job's exit status (or, with ``wait=False``,
returns the job id at once).

Uses Ray's Jobs SDK (``ray.job_submission``), imported only here and only when called.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from .auth import auth_headers, check_dashboard, client_env
from .exceptions import ClusterError, ConfigError

__all__ = ["submit", "submit_with_retry", "job_status", "job_logs", "stop_job", "list_jobs", "EXCLUDES"]

# Never uploaded with the working directory.
EXCLUDES = [".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", ".cluster", "runs", "*.egg-info",
            "auth_token"]


def _client(address: str, token_file: str | None, out: TextIO | None = None) -> Any:
    """The Jobs SDK's client for the dashboard at ``address``, after asking it (with the token)
    for its version; with ``out``, a line there when the cluster runs another Ray version."""
    token = client_env(token_file)
    answer = check_dashboard(address, token)
    from ray.job_submission import JobSubmissionClient

    from ._ray.version import job_version_note

    note = job_version_note(address, answer.get("ray_version"))
    if note and out is not None:
        print(f"raytune-torch: {note}", file=out, flush=True)
    try:
        return JobSubmissionClient(address.rstrip("/"), headers=auth_headers(token))
    except Exception as exc:  # the SDK's own connection errors
        raise ClusterError(f"cannot use the Jobs API at {address}: {type(exc).__name__}: {exc}") from None


def remote_command(experiment: str, working_dir: str, extra_args: list[str]) -> tuple[str, str]:
    """``(entrypoint, experiment path relative to the working directory)``."""
    import shlex

    exp = os.path.abspath(experiment)
    wd = os.path.abspath(working_dir)
    rel = os.path.relpath(exp, wd)
    if rel.startswith(".."):
        raise ConfigError(f"the experiment file {experiment!r} is outside the working directory {working_dir!r} that "
                          f"is uploaded: move it there or pass --working-dir (a folder holding the file and your "
                          f"model code)")
    args = ["python", "-m", "raytune_torch.cli", "run", rel, "--address", "auto", *extra_args]
    return " ".join(shlex.quote(a) for a in args), rel


def submit(experiment: str, address: str, *, working_dir: str | None = None, wait: bool = True,
           token_file: str | None = None, extra_args: list[str] | None = None, overrides: dict | None = None,
           out: TextIO | None = None, job_id: str | None = None) -> tuple[str, int]:
    """Submit the experiment as a Ray Job; returns ``(job_id, exit_status)``.

    ``exit_status`` is 0 when the job succeeded (or was only submitted, ``wait=False``), 1 when it
    failed or was stopped.

    Raises:
        ConfigError: the experiment is invalid, its storage or a tracker's files would be lost on
            the cluster, or it lies outside the working directory. Nothing was uploaded.
        ClusterError: the cluster does not answer or refuses the token.
    """
    from .config import load_config
    from .storage import is_uri

    out = out or sys.stdout
    working_dir = working_dir or os.getcwd()
    config = load_config(experiment, **(overrides or {}))  # every problem, before anything is uploaded
    if not is_uri(config.storage) and not os.path.isabs(os.path.expanduser(config.storage)):
        raise ConfigError(f"storage: {config.storage!r} is a relative path; on the cluster it would land in the "
                          f"job's temporary working directory and be lost. Set storage to a path every node mounts "
                          f"(/mnt/shared/runs) or an object-store URI (s3://bucket/runs), in the file or with --storage")
    from .trackers import job_env, job_problems

    trackers = job_problems(config)
    if trackers:
        raise ConfigError(trackers)
    entrypoint, _ = remote_command(experiment, working_dir, extra_args or [])
    client = _client(address, token_file, out)
    runtime_env: dict[str, Any] = {"working_dir": os.path.abspath(working_dir), "excludes": EXCLUDES}
    tracker_env = job_env(config)  # the file's loggers travel with it; their non-secret variables here too
    if tracker_env:
        runtime_env["env_vars"] = tracker_env
    submission_id = job_id or f"raytune-{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    job = submit_with_retry(client, address, entrypoint=entrypoint, runtime_env=runtime_env,
                            submission_id=submission_id)
    print(f"raytune-torch: submitted job {job} to {address} (experiment {config.name}: {entrypoint})", file=out,
          flush=True)
    if not wait:
        print(f"raytune-torch: follow it with `raytune-torch jobs logs {job} --follow --address {address}`",
              file=out, flush=True)
        return job, 0
    return job, follow(client, job, out)


#: what the Jobs API answers while the head node's job agent is not up yet (a cluster just started)
AGENT_NOT_READY = "No available agent to submit job"


def submit_with_retry(client: Any, address: str, *, timeout_s: float = 60.0, interval_s: float = 1.0,
                      **job: Any) -> str:
    """``client.submit_job(**job)``, retried for at most ``timeout_s`` while the cluster says its
    job agent is not ready; returns the job id.

    Raises:
        ClusterError: the Jobs API refused the job, or its agent was not ready in ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**job)
        except Exception as exc:
            if AGENT_NOT_READY in str(exc) and time.monotonic() + interval_s < deadline:
                time.sleep(interval_s)
                continue
            waited = f" (its job agent was still not ready after {timeout_s:g}s; try again)" \
                if AGENT_NOT_READY in str(exc) else ""
            raise ClusterError(f"the Jobs API at {address} refused the job{waited}: {type(exc).__name__}: "
                               f"{exc}") from None


def follow(client: Any, job: str, out: TextIO) -> int:
    """Stream the job's logs until it ends; 0 if it succeeded, else 1."""
    import asyncio
    import logging

    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)  # no websocket chatter

    async def tail() -> None:
        async for lines in client.tail_job_logs(job):
            out.write(lines)
            out.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nraytune-torch: stopped following; job {job} keeps running (`raytune-torch jobs stop {job}`)",
              file=out, flush=True)
        return 130
    info = _wait_final(client, job)
    status = str(info.status.value if hasattr(info.status, "value") else info.status)
    message = f": {info.message}" if info.message and status != "SUCCEEDED" else ""
    print(f"raytune-torch: job {job} {status}{message}", file=out, flush=True)
    return 0 if status == "SUCCEEDED" else 1


def _wait_final(client: Any, job: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(job)
        if info.status.is_terminal() or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def _known(client: Any, job: str, address: str) -> Any:
    try:
        info = client.get_job_info(job)
    except RuntimeError as exc:
        raise ClusterError(f"no job {job!r} at {address}: {exc}") from None
    if not info.submission_id:
        raise ClusterError(f"{job!r} at {address} is a driver that connected to the cluster, not a submitted job; "
                           f"see `raytune-torch jobs list`")
    return info


def job_status(job: str, address: str, token_file: str | None = None) -> dict[str, Any]:
    client = _client(address, token_file)
    info = _known(client, job, address)
    return {"job_id": job, "status": str(info.status.value), "message": info.message, "entrypoint": info.entrypoint,
            "start_time": info.start_time, "end_time": info.end_time}


def job_logs(job: str, address: str, token_file: str | None = None, follow_: bool = False,
             out: TextIO | None = None) -> int:
    out = out or sys.stdout
    client = _client(address, token_file)
    _known(client, job, address)
    if follow_:
        return follow(client, job, out)
    out.write(client.get_job_logs(job))
    out.flush()
    return 0


def stop_job(job: str, address: str, token_file: str | None = None) -> str:
    client = _client(address, token_file)
    _known(client, job, address)
    client.stop_job(job)
    info = _wait_final(client, job, timeout_s=30)
    return str(info.status.value)


def list_jobs(address: str, token_file: str | None = None) -> list[dict[str, Any]]:
    client = _client(address, token_file)
    return [{"job_id": j.submission_id, "status": str(j.status.value), "entrypoint": j.entrypoint}
            for j in client.list_jobs() if j.submission_id]  # submitted jobs, not drivers that connected
