"""The dispatch pipeline: create dispatches from a matched event, submit them, track them.

- `create_dispatches` runs inside `process_event`: each matched rule becomes a dispatch record
  (`pending` with its body rendered and stored once, or straight to `invalid`/`skipped`). A rule
  whose templates fail is an `invalid` dispatch with the reason, written back like any other.
- `submit_dispatch` sends the stored body with the dispatch id as Idempotency-Key. Retryable
  errors are RQ retries on SUBMIT_RETRY; final ones end the dispatch `rejected`.
- `poll_due` follows Revor jobs in batches: one RQ job polls every dispatch whose next poll is
  due (up to POLL_BATCH), so thousands of tracked dispatches do not mean thousands of RQ jobs.

Crash safety: every unit has a lease (jobs/leases.py) that the clock re-enqueues when it expires.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from rq import Retry, get_current_job

from integration.dispatches import state
from integration.dispatches.limits import Limiter
from integration.jobs import leases
from integration.jobs.context import JobContext, job_context
from integration.jobs.enqueue import enqueue_once
from integration.revor.errors import RevorError, RevorFinalError, RevorRetryableError
from integration.revor.polling import epoch, next_poll
from integration.rules.build import Plan, plan_event
from integration.rules.guards import claim_once, is_suppressed
from integration.writeback.deliver import deliver_outbox
from schemas.revor import TERMINAL_JOB_STATUSES

log = logging.getLogger(__name__)
SUBMIT_RETRY_INTERVALS = [2, 10, 30, 120, 600]
SUBMIT_RETRY = Retry(max=len(SUBMIT_RETRY_INTERVALS), interval=SUBMIT_RETRY_INTERVALS)
POLL_BATCH = 50


class TransientError(Exception):
    """Raised to let RQ retry a job on its schedule; the message says why."""


def enqueue_submit(ctx: JobContext, dispatch_id: str) -> None:
    leases.hold(ctx.redis, leases.SUBMIT, dispatch_id, ctx.settings.lease_seconds)
    enqueue_once(ctx.queue, "integration.jobs.pipeline.submit_dispatch", (dispatch_id,), f"submit-{dispatch_id}",
                 retry=SUBMIT_RETRY)


def enqueue_delivery(ctx: JobContext, dispatch_id: str, destination: str) -> None:
    enqueue_once(ctx.queue, "integration.jobs.pipeline.deliver", (dispatch_id, destination),
                 f"deliver-{dispatch_id}-{destination}-{int(time.time() * 1000)}")


def _move(ctx: JobContext, dispatch_id: str, status: str, **kwargs: Any) -> int | None:
    """A state change plus the immediate delivery of its write-backs (the lease covers a crash)."""
    wanted = ctx.destinations()
    sequence = state.transition(ctx.redis, dispatch_id, status, destinations=wanted, **kwargs)
    if sequence is not None:
        record = state.load(ctx.redis, dispatch_id) or {}
        for destination in record.get("writeback") or []:
            if status in wanted.get(destination, []):
                enqueue_delivery(ctx, dispatch_id, destination)
    return sequence


# ---- from event to dispatches --------------------------------------------------------------------


def create_dispatches(ctx: JobContext, event_key: str, event: dict[str, Any],
                      context: dict[str, Any] | None) -> list[str]:
    if ctx.rules is None:
        return []
    ids = []
    for plan in plan_event(ctx.rules, event, context):
        if not plan.matched or plan.dispatch_id is None:
            continue
        ids.append(plan.dispatch_id)
        _create(ctx, plan, event_key, event)
    return ids


def _create(ctx: JobContext, plan: Plan, event_key: str, event: dict[str, Any]) -> None:
    existing = state.load(ctx.redis, plan.dispatch_id)
    if existing is not None:  # the event is being processed again: never a second dispatch
        if existing["status"] == "pending":
            enqueue_submit(ctx, plan.dispatch_id)
        return
    status, reason = plan.status, plan.reason
    if status == "ready" and plan.recipient_key and is_suppressed(ctx.redis, plan.recipient_key):
        status, reason = "skipped", "recipient is on the suppression list"
    if status == "ready" and plan.once_per_key:
        holder = claim_once(ctx.redis, plan.rule, plan.once_per_key, plan.dispatch_id,
                            ctx.rules.defaults["once_per_days"])
        if holder:
            status, reason = "skipped", f"once_per {plan.once_per_key!r} already used by {holder}"
    payload = plan.payload or {}
    create = {
        "rule": plan.rule, "channel": plan.channel or "", "account_id": plan.account_id or "",
        "event_key": event_key, "recipient": payload.get("recipient") or plan.recipient or {},
        "crm": {"source": event["source"], "account": event.get("account"), "object_type": event["object"]["type"],
                "object_id": event["object"]["id"], "event_id": event["event_id"]},
        "writeback": plan.writeback, "once_per": plan.once_per_key or "", "attempt": 0,
        "idempotency_key": plan.dispatch_id,
        "body": plan.body.decode("utf-8") if plan.body else "",
    }
    if status == "ready":
        if state.transition(ctx.redis, plan.dispatch_id, "pending", create=create,
                            destinations=ctx.destinations()) is not None:
            enqueue_submit(ctx, plan.dispatch_id)
    else:
        _move(ctx, plan.dispatch_id, status or "invalid", create=create, reason=reason)


# ---- submitting -------------------------------------------------------------------------------------


def _revor_limiter(ctx: JobContext) -> Limiter:
    return Limiter(ctx.redis, "revor", ctx.settings.revor_max_rps)


def _note_rate_limit(limiter: Limiter, error: RevorError | None, rate_limit: Any) -> None:
    wait = None
    if error is not None and error.status == 429:
        wait = error.retry_after or (rate_limit.suggested_wait() if rate_limit else None) or 5.0
    elif rate_limit is not None:
        wait = rate_limit.suggested_wait()
    if wait:
        limiter.pause(wait)


def submit_dispatch(dispatch_id: str) -> str:
    ctx = job_context()
    record = state.load(ctx.redis, dispatch_id)
    if record is None or record["status"] != "pending":
        if record is not None and record.get("revor_job_id") and record["status"] not in state.TERMINAL:
            # A run that died between `accepted` and tracking (Redis gone, horse killed) still holds
            # the submit lease; this recovery run makes sure the Revor job is followed (NX: a dispatch
            # already tracked keeps its poll time), and only then lets the lease go.
            ctx.redis.zadd(leases.TRACK, {dispatch_id: time.time()}, nx=True)
        leases.release(ctx.redis, leases.SUBMIT, dispatch_id)
        return record["status"] if record else "unknown"
    lock = leases.Lock(ctx.redis, f"dispatch:{dispatch_id}", ctx.settings.lease_seconds)
    if not lock.acquire():
        return "busy"  # another run is sending it; the lease brings it back if that run dies
    try:
        leases.hold(ctx.redis, leases.SUBMIT, dispatch_id, ctx.settings.lease_seconds)
        limiter = _revor_limiter(ctx)
        if not limiter.acquire(max_wait=5.0):
            return _retry_later(ctx, dispatch_id, "rate limited by the shared Revor limiter", limiter.paused_for())
        key = record.get("idempotency_key") or dispatch_id
        try:
            response = ctx.revor.create_dispatch(record["body"].encode("utf-8"), key)
        except RevorFinalError as error:
            _move(ctx, dispatch_id, "rejected", reason=_describe(error), request_id=error.request_id,
                  fields={"error": {"code": error.code, "status": error.status, "request_id": error.request_id}})
            leases.release(ctx.redis, leases.SUBMIT, dispatch_id)
            return "rejected"
        except RevorRetryableError as error:
            _note_rate_limit(limiter, error, error.rate_limit)
            return _retry_later(ctx, dispatch_id, _describe(error), error.retry_after)
        _note_rate_limit(limiter, None, response.rate_limit)
        job = response.data
        _move(ctx, dispatch_id, "accepted", request_id=response.request_id,
              fields={"revor_job_id": job["id"], "scheduled_at": job.get("scheduled_at") or "",
                      "accepted_at": state.iso_now(), "request_id": response.request_id or ""})
        ctx.redis.zadd(leases.TRACK, {dispatch_id: time.time() + next_poll(job, 0)})
        leases.release(ctx.redis, leases.SUBMIT, dispatch_id)
        return "accepted"
    finally:
        lock.release()


def _describe(error: RevorError) -> str:
    parts = [error.code or "error"]
    if error.status:
        parts.append(f"HTTP {error.status}")
    if error.request_id:
        parts.append(f"request_id {error.request_id}")
    return " ".join(parts) if error.code or error.status else str(error)


def _retry_later(ctx: JobContext, dispatch_id: str, why: str, wait: float | None) -> str:
    """RQ retries on SUBMIT_RETRY; once those are spent the lease keeps trying every few minutes."""
    job = get_current_job()
    retries_left = job.retries_left if job is not None and job.retries_left is not None else 0
    if retries_left > 0:
        position = len(SUBMIT_RETRY_INTERVALS) - retries_left
        interval = SUBMIT_RETRY_INTERVALS[max(0, position)]
        leases.hold(ctx.redis, leases.SUBMIT, dispatch_id, max(interval, wait or 0) + ctx.settings.lease_seconds)
        raise TransientError(f"dispatch {dispatch_id}: {why}; RQ retries in {interval} s")
    leases.hold(ctx.redis, leases.SUBMIT, dispatch_id, max(300.0, wait or 0))
    log.warning("dispatch %s: %s; retries spent, trying again in %.0f s", dispatch_id, why, max(300.0, wait or 0))
    return "waiting"


# ---- tracking -----------------------------------------------------------------------------------------


STATUS_MAP = {"scheduled": "scheduled", "running": "running", "succeeded": "succeeded", "failed": "failed",
              "cancelled": "cancelled"}


def poll_due() -> int:
    ctx = job_context()
    due = leases.claim_due(ctx.redis, leases.TRACK, hold_seconds=ctx.settings.lease_seconds, limit=POLL_BATCH)
    limiter = _revor_limiter(ctx)
    for dispatch_id in due:
        _poll_one(ctx, limiter, dispatch_id)
    if len(due) == POLL_BATCH:  # more are due: keep going without waiting for the clock
        enqueue_once(ctx.queue, "integration.jobs.pipeline.poll_due", (), f"poll-more-{int(time.time() * 1000)}")
    return len(due)


def _poll_one(ctx: JobContext, limiter: Limiter, dispatch_id: str) -> None:
    record = state.load(ctx.redis, dispatch_id)
    if record is None or record["status"] in state.TERMINAL or not record.get("revor_job_id"):
        ctx.redis.zrem(leases.TRACK, dispatch_id)
        return
    if not limiter.acquire(max_wait=2.0):
        ctx.redis.zadd(leases.TRACK, {dispatch_id: time.time() + max(1.0, limiter.paused_for())})
        return
    polls = ctx.redis.hincrby(state.key_for(dispatch_id), "polls", 1)
    try:
        response = ctx.revor.get_job(record["revor_job_id"])
    except RevorFinalError as error:
        _move(ctx, dispatch_id, "failed", reason=f"tracking failed: {_describe(error)}", request_id=error.request_id,
              fields={"error": {"code": error.code, "status": error.status}, "finished_at": state.iso_now()})
        ctx.redis.zrem(leases.TRACK, dispatch_id)
        return
    except RevorRetryableError as error:
        _note_rate_limit(limiter, error, error.rate_limit)
        ctx.redis.zadd(leases.TRACK, {dispatch_id: time.time() + max(error.retry_after or 0, min(60, 2 ** polls))})
        return
    _note_rate_limit(limiter, None, response.rate_limit)
    job = response.data
    fields = {"revor_status": job["status"], "scheduled_at": job.get("scheduled_at") or "",
              "started_at": job.get("started_at") or "", "finished_at": job.get("finished_at") or "",
              "attempt_count": job.get("attempt_count") or 0}
    if job.get("result"):
        fields["result"] = job["result"]
    if job.get("error"):
        fields["error"] = job["error"]
    target = STATUS_MAP.get(job["status"])
    reason = None
    if job["status"] == "failed" and job.get("error"):
        reason = f"revor job failed: {job['error'].get('code')}"
    if target:
        # A job that ran between two polls still passed through `running`: record it, in order.
        if target in ("succeeded", "failed") and job.get("started_at") and \
                state.RANK[record["status"]] < state.RANK["running"]:
            _move(ctx, dispatch_id, "running", fields=fields, request_id=response.request_id)
        _move(ctx, dispatch_id, target, fields=fields, reason=reason, request_id=response.request_id)
    else:
        ctx.redis.hset(state.key_for(dispatch_id), mapping={k: json.dumps(v) if isinstance(v, dict) else str(v)
                                                              for k, v in fields.items()})
    if job["status"] in TERMINAL_JOB_STATUSES:
        ctx.redis.zrem(leases.TRACK, dispatch_id)
        return
    start = epoch(job.get("scheduled_at")) or epoch(record.get("accepted_at")) or time.time()
    if time.time() - start > ctx.settings.tracking_horizon_seconds:
        _move(ctx, dispatch_id, "failed", reason="tracking_timeout",
              fields={"finished_at": state.iso_now(), "error": {"code": "tracking_timeout"}})
        ctx.redis.zrem(leases.TRACK, dispatch_id)
        return
    ctx.redis.zadd(leases.TRACK, {dispatch_id: time.time() + next_poll(job, polls)})


# ---- write-back -----------------------------------------------------------------------------------------


def deliver(dispatch_id: str, destination: str) -> str:
    ctx = job_context()
    config = ctx.rules.destinations.get(destination) if ctx.rules else None
    template = ctx.rules.destination_bodies.get(destination) if ctx.rules else None
    return deliver_outbox(ctx.redis, dispatch_id, destination, config, ctx.settings.lease_seconds,
                          retry_scale=ctx.settings.writeback_retry_scale, body_template=template,
                          timeout=ctx.settings.writeback_timeout_seconds)
