"""Following a Revor job until it ends: one poll per unit, its next poll time per docs/revor.md.

Each poll maps Revor's job status onto the dispatch (a job that ran between two polls still
passes through `running`, in order), and the unit's next attempt is the next poll time: no
earlier than Revor's `next_attempt_at`/`scheduled_at`, every second while running, backing off
while queued. A job tracked beyond TRACKING_HORIZON_SECONDS ends `failed` (tracking_timeout).
"""

from __future__ import annotations

import json
import time

from integration import logs
from integration.context import JobContext
from integration.dispatches import state
from integration.dispatches.submit import describe, move, note_rate_limit, revor_limiter
from integration.revor.errors import RevorFinalError, RevorRetryableError
from integration.revor.polling import epoch, next_poll
from integration.scheduler.runner import DONE, Next, Run, again
from schemas.revor import TERMINAL_JOB_STATUSES

STATUS_MAP = {"scheduled": "scheduled", "running": "running", "succeeded": "succeeded", "failed": "failed",
              "cancelled": "cancelled"}
LIMITER_WAIT = 2.0


@logs.scoped
def poll(ctx: JobContext, run: Run) -> Next:
    dispatch_id = run.unit.ref
    snapshot = state.read(ctx.redis, dispatch_id)  # handed to the first state change: no second read
    record = snapshot.record(dispatch_id)
    if record is None or record["status"] in state.TERMINAL or not record.get("revor_job_id"):
        return DONE
    # On this poll's lines (the Revor client's too), with the event the dispatch came from.
    logs.add(revor_job_id=record["revor_job_id"], **state.event_log_ids(record))
    limiter = revor_limiter(ctx)
    if not limiter.acquire(max_wait=LIMITER_WAIT):
        return again(time.time() + max(1.0, limiter.paused_for()), counted=False)
    polls = int(record.get("polls") or 0) + 1  # written with what the poll finds
    try:
        response = ctx.revor.get_job(record["revor_job_id"])
    except RevorFinalError as error:
        move(ctx, run, dispatch_id, "failed", reason=f"tracking failed: {describe(error)}",
             request_id=error.request_id, snapshot=snapshot,
             fields={"error": {"code": error.code, "status": error.status}, "finished_at": state.iso_now(),
                     "polls": polls})
        return DONE
    except RevorRetryableError as error:
        ctx.redis.hset(state.key_for(dispatch_id), "polls", polls)
        note_rate_limit(limiter, error, error.rate_limit)
        return again(time.time() + max(error.retry_after or 0, min(60, 2 ** min(polls, 6))), counted=False)
    note_rate_limit(limiter, None, response.rate_limit)
    job = response.data
    fields = {"revor_status": job["status"], "scheduled_at": job.get("scheduled_at") or "",
              "started_at": job.get("started_at") or "", "finished_at": job.get("finished_at") or "",
              "attempt_count": job.get("attempt_count") or 0, "polls": polls}
    if job.get("result"):
        fields["result"] = job["result"]
    if job.get("error"):
        fields["error"] = job["error"]
    target = STATUS_MAP.get(job["status"])
    reason = None
    if job["status"] == "failed" and job.get("error"):
        reason = f"revor job failed: {job['error'].get('code')}"
    moved = None
    if target:
        first: state.Snapshot | None = snapshot
        if target in ("succeeded", "failed") and job.get("started_at") and \
                state.RANK[record["status"]] < state.RANK["running"]:
            move(ctx, run, dispatch_id, "running", fields=fields, request_id=response.request_id, snapshot=first)
            first = None  # the record changed: the next move reads it afresh
        moved = move(ctx, run, dispatch_id, target, fields=fields, reason=reason, request_id=response.request_id,
                     snapshot=first)
    if not target or moved is None:  # no state change (still queued, or the same state): the fields alone
        ctx.redis.hset(state.key_for(dispatch_id), mapping={k: json.dumps(v) if isinstance(v, dict) else str(v)
                                                              for k, v in fields.items()})
    if job["status"] in TERMINAL_JOB_STATUSES:
        return DONE
    start = epoch(job.get("scheduled_at")) or epoch(record.get("accepted_at")) or time.time()
    if time.time() - start > ctx.settings.tracking_horizon_seconds:
        move(ctx, run, dispatch_id, "failed", reason="tracking_timeout",
             fields={"finished_at": state.iso_now(), "error": {"code": "tracking_timeout"}})
        return DONE
    return again(time.time() + next_poll(job, polls), counted=False)
