"""Submitting a pending dispatch to Revor: the stored body, with the dispatch id as Idempotency-Key.

The body was rendered once when the dispatch was created; every attempt resends those exact
bytes under the same key, so however often a submit runs (a retry, a worker killed mid-call, a
replay), Revor creates one task. A retryable answer (5xx, timeout, 429) gives the unit its next
attempt on SUBMIT_BACKOFF, measured from the failure and at least Retry-After; a final one (4xx)
ends the dispatch `rejected`. Waiting for the shared limiter is not an attempt.

A dispatch of an import (its `import_run`) whose import was cancelled before Revor had it ends
`cancelled` ("import cancelled") instead of being sent; the cancelled imports are read in the
round trip that reads the dispatch, so the check costs no round trip, imported or not.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from integration import logs
from integration.context import JobContext
from integration.dispatches import state
from integration.dispatches.limits import Limiter
from integration.imports import runs
from integration.revor.errors import RevorError, RevorFinalError, RevorRetryableError
from integration.revor.polling import next_poll
from integration.rules import guards
from integration.scheduler import units
from integration.scheduler.lock import Lock
from integration.scheduler.runner import DONE, HANDLED, Next, Run, again, backoff

log = logging.getLogger(__name__)
# After attempt n fails: 2 s, 10 s, 30 s, 2 min, then every 10 min until Revor takes it.
SUBMIT_BACKOFF = [2, 10, 30, 120, 600]
LIMITER_WAIT = 2.0


def revor_limiter(ctx: JobContext) -> Limiter:
    return Limiter(ctx.redis, "revor", ctx.settings.revor_max_rps)


def note_rate_limit(limiter: Limiter, error: RevorError | None, rate_limit: Any) -> None:
    """A 429, or a window whose Remaining reached 0, pauses every worker's Revor calls."""
    wait = None
    if error is not None and error.status == 429:
        wait = error.retry_after or (rate_limit.suggested_wait() if rate_limit else None) or 5.0
    elif rate_limit is not None:
        wait = rate_limit.suggested_wait()
    if wait:
        limiter.pause(wait)


def describe(error: RevorError) -> str:
    parts = [error.code or "error"]
    if error.status:
        parts.append(f"HTTP {error.status}")
    if error.request_id:
        parts.append(f"request_id {error.request_id}")
    return " ".join(parts) if error.code or error.status else str(error)


def move(ctx: JobContext, run: Run, dispatch_id: str, status: str, **kwargs: Any) -> int | None:
    """A state change; its status messages' deliveries (and the next unit, `then`) are claimed for
    this run's thread, which runs them right after (run.claimed)."""
    return state.transition(ctx.redis, dispatch_id, status, destinations=ctx.destinations(),
                            claim_for=ctx.settings.lease_seconds, claimed=run.claimed,
                            retention=ctx.settings.dispatch_retention_seconds, **kwargs)


@logs.scoped
def submit(ctx: JobContext, run: Run) -> Next:
    dispatch_id = run.unit.ref
    lock = Lock(ctx.redis, f"dispatch:{dispatch_id}", ctx.settings.lease_seconds)
    def also(pipe: Any) -> None:
        lock.acquire(pipe)
        runs.read_cancelled(pipe)  # imports cancelled meanwhile (their pending dispatches end here)

    snapshot = state.read(ctx.redis, dispatch_id, also=also)  # one round trip: record, lock, cancelled imports
    record, locked = snapshot.record(dispatch_id), bool(snapshot.replies[0])
    if record is not None:
        logs.add(**state.event_log_ids(record))  # a retry's line leads back to its event
    if record is None or record["status"] != "pending":
        if locked:
            lock.release()
        if record is not None and record.get("revor_job_id") and record["status"] not in state.TERMINAL:
            # Accepted earlier: make sure the job is followed (an earlier poll time stays).
            units.schedule(ctx.redis, units.poll_unit(dispatch_id), keep_earlier=True)
        return DONE
    if not locked:
        return again(time.time() + 1.0, counted=False)  # another run is sending it right now
    try:
        outcome = _send(ctx, run, dispatch_id, record, snapshot)
    except BaseException:
        lock.release()
        raise
    with ctx.redis.pipeline(transaction=False) as pipe:  # one round trip: the lock and, when done, the unit
        lock.release(pipe)
        if outcome is DONE:
            units.finish(pipe, run.unit.id, run.attempt)
        pipe.execute()
    return HANDLED if outcome is DONE else outcome


def _send(ctx: JobContext, run: Run, dispatch_id: str, record: dict[str, Any], snapshot: state.Snapshot) -> Next:
    if record.get("import_run") and record["import_run"] in runs.cancelled_runs(snapshot.replies[1]):
        # Its import was cancelled (`revor-bridge import cancel`) before Revor had it: it is not sent.
        move(ctx, run, dispatch_id, "cancelled", reason=runs.CANCELLED_REASON, snapshot=snapshot)
        return DONE
    if run.attempt > 1 or int(record.get("attempt") or 0):
        # Time has passed since `create` checked the suppression list (a back-off, an operator's
        # retry): someone who asked not to be contacted meanwhile is not sent to. The first
        # attempt runs right after `create`, so it pays no extra round trip.
        who = guards.stored_recipient_key(record)
        if who and guards.is_suppressed(ctx.redis, who):
            move(ctx, run, dispatch_id, "skipped", reason="recipient is on the suppression list", snapshot=snapshot)
            return DONE
    limiter = revor_limiter(ctx)
    if not limiter.acquire(max_wait=LIMITER_WAIT):
        return again(time.time() + max(0.5, limiter.paused_for()), counted=False)
    try:
        response = ctx.revor.create_dispatch(record["body"].encode("utf-8"), record.get("idempotency_key")
                                             or dispatch_id)
    except RevorFinalError as error:
        move(ctx, run, dispatch_id, "rejected", reason=describe(error), request_id=error.request_id,
             fields={"error": {"code": error.code, "status": error.status, "request_id": error.request_id},
                     "submit_attempts": run.attempt}, snapshot=snapshot)
        return DONE
    except RevorRetryableError as error:
        note_rate_limit(limiter, error, error.rate_limit)
        if error.status == 429:  # Revor's pace, not a failure: wait out the pause, without counting it
            wait = max(0.5, error.retry_after or 0, limiter.paused_for())
            ctx.redis.hset(state.key_for(dispatch_id), "next_attempt_at", state.iso_now(time.time() + wait))
            log.warning("dispatch %s: %s; retried on schedule in %.1f s, after Revor's rate-limit pause",
                        dispatch_id, describe(error), wait)
            return again(time.time() + wait, counted=False)
        wait = max(backoff(SUBMIT_BACKOFF, run.attempt), error.retry_after or 0)
        ctx.redis.hset(state.key_for(dispatch_id), mapping={
            "submit_attempts": run.attempt,
            "last_error": describe(error)[:64],  # short: the hash stays compact (state.py)
            "next_attempt_at": state.iso_now(time.time() + wait)})
        log.warning("dispatch %s: %s; retried on schedule in %.0f s (attempt %d)", dispatch_id, describe(error),
                    wait, run.attempt)
        return again(time.time() + wait)
    note_rate_limit(limiter, None, response.rate_limit)
    job = response.data
    move(ctx, run, dispatch_id, "accepted", request_id=response.request_id,
         fields={"revor_job_id": job["id"], "scheduled_at": job.get("scheduled_at") or "",
                 "accepted_at": state.iso_now(), "request_id": response.request_id or "",
                 "submit_attempts": run.attempt},
         snapshot=snapshot, then=(units.poll_unit(dispatch_id), time.time() + next_poll(job, 0)))
    return DONE
