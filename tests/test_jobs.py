"""Submitting a job right after a cluster starts: Ray's Jobs API answers HTTP 500 "No available
agent to submit job, please try again later" until the head node's job agent is up."""

from __future__ import annotations

import pytest

from raytune_torch.exceptions import ClusterError
from raytune_torch.jobs import submit_with_retry

NOT_READY = ("Request failed with status code 500: No available agent to submit job, please try again later.")


class _JobsAPI:
    """A Jobs API whose agent comes up after ``busy`` refusals (or never, with None)."""

    def __init__(self, busy: int | None, error: str = NOT_READY) -> None:
        self.busy, self.error, self.calls = busy, error, []

    def submit_job(self, **job):
        self.calls.append(job)
        if self.busy is None or len(self.calls) <= self.busy:
            raise RuntimeError(self.error)
        return job["submission_id"]


def test_submit_waits_for_the_job_agent():
    api = _JobsAPI(busy=2)
    job = submit_with_retry(api, "http://127.0.0.1:8265", interval_s=0.01, entrypoint="python -V",
                            submission_id="rt-1")
    assert job == "rt-1" and len(api.calls) == 3


def test_submit_gives_up_after_its_time_limit():
    api = _JobsAPI(busy=None)
    with pytest.raises(ClusterError) as err:
        submit_with_retry(api, "http://127.0.0.1:8265", timeout_s=0.2, interval_s=0.05, entrypoint="python -V",
                          submission_id="rt-2")
    assert str(err.value) == (f"the Jobs API at http://127.0.0.1:8265 refused the job (its job agent was still not "
                              f"ready after 0.2s; try again): RuntimeError: {NOT_READY}")
    assert 2 <= len(api.calls) <= 5


def test_other_refusals_are_not_retried():
    api = _JobsAPI(busy=None, error="Request failed with status code 400: bad runtime_env")
    with pytest.raises(ClusterError, match="refused the job: RuntimeError: Request failed with status code 400"):
        submit_with_retry(api, "http://127.0.0.1:8265", interval_s=0.01, entrypoint="python -V", submission_id="x")
    assert len(api.calls) == 1
