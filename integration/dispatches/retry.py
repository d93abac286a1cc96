"""An operator's retry of a dispatch that ended failed, rejected or cancelled: shared by the API
(POST /api/v1/dispatches/<id>/retry) and the dashboard's Retry button."""

from __future__ import annotations

import time
from typing import Any

import redis

from integration.dispatches import state
from integration.rules import guards
from integration.scheduler import units


class NotRetryable(Exception):
    """The dispatch is in a state a retry cannot leave; the message says which and what can."""


class Suppressed(NotRetryable):
    """The recipient was put on the suppression list after the dispatch ended: a retry would send
    to someone who asked not to be contacted."""


def retry(connection: redis.Redis, dispatch_id: str, destinations: dict[str, list[str]],
          now: float | None = None) -> dict[str, Any]:
    """A new attempt: a new Revor action, so a new Idempotency-Key (`<id>-r<attempt>`), as
    docs/revor.md ("Errors") advises. Back to `pending` with its submit due now, in the same
    script (the clock wakes a worker for it within a second). Returns the record as it is now.

    Raises LookupError for an unknown dispatch and NotRetryable for one not in RETRYABLE_END.
    """
    record = state.load(connection, dispatch_id)
    if record is None:
        raise LookupError(f"no dispatch {dispatch_id!r}")
    if record["status"] not in state.RETRYABLE_END:
        raise NotRetryable(f"a {record['status']} dispatch cannot be retried; only {sorted(state.RETRYABLE_END)}")
    who = guards.stored_recipient_key(record)
    if who and guards.is_suppressed(connection, who):
        raise Suppressed(f"the recipient ({who}) is on the suppression list: remove it there to retry")
    attempt = record["attempt"] + 1
    fields = {"attempt": attempt, "idempotency_key": f"{dispatch_id}-r{attempt}", "revor_job_id": "",
              "error": "", "result": "", "scheduled_at": "", "finished_at": "", "polls": 0}
    moment = time.time() if now is None else now
    state.transition(connection, dispatch_id, "pending", fields, reason=f"retried by an operator (attempt {attempt})",
                     destinations=destinations, force=True, then=(units.submit_unit(dispatch_id), moment))
    return state.load(connection, dispatch_id) or {}
