"""Enqueue a job at most once per job id: the one way the bridge's jobs queue other jobs."""

from __future__ import annotations

from typing import Any

from rq import Queue, Retry
from rq.exceptions import DuplicateJobError

JOB_TIMEOUT = 25  # well inside Heroku's 30 s between SIGTERM and SIGKILL
FAILURE_TTL = 7 * 86400


def enqueue_once(queue: Queue, func: str, args: tuple[Any, ...], job_id: str, *, retry: Retry | None = None,
                 timeout: int | None = JOB_TIMEOUT, result_ttl: int = 600) -> bool:
    """True when queued; False when a job with this id already exists (RQ's `unique`)."""
    try:
        queue.enqueue_call(func, args=args, job_id=job_id, unique=True, retry=retry, timeout=timeout,
                           result_ttl=result_ttl, failure_ttl=FAILURE_TTL)
    except DuplicateJobError:
        return False
    return True
