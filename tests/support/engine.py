"""Admitting tees to a CanaryPool the way the request path does (`RequestTees`)."""

from __future__ import annotations

from sidecar.shadow.pool import CanaryPool
from sidecar.shadow.types import Job, Outcome


def admit(pool: CanaryPool, job: Job) -> Outcome:
    """Admit `job` or drop it, without awaiting; returns (and counts) the outcome."""
    refused = pool.refusal()
    if refused is not None:
        return pool.record(refused, job.rule)
    return pool.dispatch(job)
