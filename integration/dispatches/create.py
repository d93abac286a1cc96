"""Processing a stored event: hydrate it, run the rules, create its dispatches.

Each matched rule becomes a dispatch record: `pending` with its Revor body rendered and stored
once (and its submit unit due at once, in the same script), or straight to `invalid`/`skipped`
with the reason, written back like any other state. The engine then submits the new dispatches
right away on the same thread (the happy path needs no second job).

Processing is idempotent: an event already processed is left alone, dispatch ids are derived
from rule, source, event id and recipient, so an event processed twice finds its dispatches and
creates nothing twice. A poison event (processing raises something unexpected) is counted in its
record (inbound/records.py) and ends `failed` after MAX_ATTEMPTS instead of running for ever.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from integration import lookup, metrics
from integration.context import JobContext
from integration.dispatches import state
from integration.dispatches.limits import Limiter
from integration.hydrate.context import hydrate_hubspot, with_rate_limit_waits
from integration.hydrate.hubspot import HubSpotError
from integration.imports import runs
from integration.inbound import records
from integration.rules.build import Plan, plan_event
from integration.rules.guards import claim_once, is_suppressed
from integration.scheduler import units
from integration.scheduler.runner import HANDLED, Next, Run, again, backoff

log = logging.getLogger(__name__)

DONE_STATUSES = {"processed", "failed", "skipped"}
IMPORTED_PREFIX = "rb:event:csv:"  # the events of `revor-bridge import` (source csv:<name>)
# A CRM that answers "later" (5xx, 429 beyond a short wait): 5 s, 30 s, 1 min, 5 min, 15 min, then hourly.
HYDRATION_BACKOFF = [5, 30, 60, 300, 900, 3600]


def process_event(ctx: JobContext, run: Run) -> Next:
    """No lock of its own: the scheduler hands the unit to one worker at a time, and should a claim
    lapse while its worker still runs (a frozen process), a second run creates nothing twice."""
    key = run.unit.ref
    imported = key.startswith(IMPORTED_PREFIX)  # an import's source: is its run cancelled?
    with ctx.redis.pipeline(transaction=False) as pipe:  # one round trip: the event, and this run counted
        pipe.hgetall(key)
        pipe.hincrby(key, "attempts", 1)  # counted before any work: a run killed midway still counts
        if imported:
            runs.read_cancelled(pipe)
        stored, attempts, *cancelled = pipe.execute()
    attempts = int(attempts)
    if not stored or stored.get(b"status", b"").decode() in DONE_STATUSES:
        with ctx.redis.pipeline(transaction=False) as pipe:
            if stored:
                records.undo_attempt(pipe, key)  # not a run: nothing was left to do
            else:  # expired: drop what the count just created, and its index entry
                pipe.delete(key)
                pipe.zrem(records.STATUS_INDEX + "received", key)
                log.warning("event %s expired before it was processed", key)
            units.finish(pipe, run.unit.id, run.attempt)
            pipe.execute()
        return HANDLED
    if attempts > records.MAX_ATTEMPTS:  # every earlier run died before it could record anything
        error = records.last_error(stored)
        why = f"{error['type']}: {error['message']}" if error else \
            "each run stopped before it finished (the worker was killed or ran out of memory)"
        return _finish(ctx, run, key, "failed", reason=f"gave up after {records.MAX_ATTEMPTS} attempts: {why}",
                       event=_stored_event(stored))
    try:
        return _run(ctx, run, key, stored, runs.cancelled_runs(cancelled[0]) if cancelled else set())
    except Exception as exc:
        if _expected(exc):
            records.undo_attempt(ctx.redis, key)
            wait = getattr(exc, "wait", None) or backoff(HYDRATION_BACKOFF, run.attempt)
            log.warning("event %s: %s; next attempt in %.0f s", key, exc, wait)
            return again(time.time() + wait)
        error = records.describe(exc, ctx.settings)
        log.error("event %s: attempt %d of %d failed", key, attempts, records.MAX_ATTEMPTS, exc_info=True)
        if attempts >= records.MAX_ATTEMPTS:
            return _finish(ctx, run, key, "failed", error=error, event=_stored_event(stored),
                           reason=f"processing failed {attempts} times: {error['type']}: {error['message']}")
        records.record_error(ctx.redis, key, error)
        return again(time.time() + ctx.settings.lease_seconds)
    except BaseException:  # a shutdown: not the event's fault
        records.undo_attempt(ctx.redis, key)
        raise


def _stored_event(stored: dict[bytes, bytes]) -> dict[str, Any] | None:
    """The stored event, for its lookup entries; None when it cannot be read (a poison event)."""
    try:
        event = json.loads(stored[b"event"])
    except (KeyError, ValueError):
        return None
    return event if isinstance(event, dict) else None


def _expected(error: Exception) -> bool:
    """Errors that say nothing about the event itself, retried on schedule without counting
    against it: a retryable CRM answer, or Redis away for a moment."""
    if isinstance(error, HubSpotError):
        return error.retryable
    return isinstance(error, redis.ConnectionError | redis.TimeoutError)


def _run(ctx: JobContext, run: Run, key: str, stored: dict[bytes, bytes], cancelled: set[str]) -> Next:
    event = json.loads(stored[b"event"])
    imported = runs.import_of(event)
    if imported is not None and imported[0] in cancelled:
        return _finish(ctx, run, key, "skipped", reason=runs.CANCELLED_REASON, event=event, cancelled=True)
    if stored.get(b"stale") == b"1":
        return _finish(ctx, run, key, "skipped", reason="stale: a newer event for this object was already received",
                       event=event)
    context: dict[str, Any] | None = None
    reason = None
    if event["source"] == "hubspot" and event.get("hydrate"):
        hubspot = ctx.hubspot
        if hubspot is None:
            reason = "not hydrated: HUBSPOT_ACCESS_TOKEN is unset"
        else:
            limiter = Limiter(ctx.redis, f"hubspot:{event.get('account') or 'default'}", ctx.settings.hubspot_max_rps)
            try:
                context = with_rate_limit_waits(lambda: hydrate_hubspot(hubspot, event, limiter), limiter)
            except HubSpotError as error:
                if error.retryable:
                    raise
                return _finish(ctx, run, key, "failed", reason=f"hydration failed: {error}", event=event)
    statuses: dict[str, str] = {}
    dispatches = create_dispatches(ctx, key, {k: v for k, v in event.items() if k != "_extra"}, context, run,
                                   statuses=statuses, import_run=imported[0] if imported else None,
                                   sobject=(event.get("_extra") or {}).get("sobject_type"))
    if ctx.rules is None:
        reason = (reason + "; " if reason else "") + "no rules loaded (RULES_FILE is unset)"
    return _finish(ctx, run, key, "processed", reason=reason, context=context, dispatches=dispatches, event=event,
                   statuses=statuses)


def _finish(ctx: JobContext, run: Run, key: str, status: str, reason: str | None = None,
            context: dict[str, Any] | None = None, dispatches: list[str] | None = None,
            error: dict[str, str] | None = None, event: dict[str, Any] | None = None,
            statuses: dict[str, str] | None = None, cancelled: bool = False) -> Next:
    """The event's outcome, its index, its lookup entries (object id, emails: integration/lookup.py),
    an imported event's run counters (integration/imports/runs.py; `statuses`: dispatch id ->
    the status it was created in) and the end of its unit, in one transaction."""
    now = time.time()
    fields: dict[str, Any] = {"status": status, "processed_at": f"{now:.3f}"}
    if reason:
        fields["reason"] = reason
    if context is not None:
        fields["context"] = json.dumps(context)
    if dispatches is not None:
        fields["dispatches"] = json.dumps(dispatches)
    if error is not None:
        fields["error"] = json.dumps(error)
    with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=fields)
        if status != "failed":
            pipe.hdel(key, "error")  # an earlier attempt's error, now overcome
        records.index_outcome(pipe, key, status, now)
        if event is not None:
            lookup.add(pipe, lookup.event_entries(key, event, context), now)
        metrics.count(pipe, metrics.event_field(metrics.source_of(key), status))
        runs.count_outcome(pipe, event, status, statuses, cancelled=cancelled)
        units.finish(pipe, run.unit.id, run.attempt)
        pipe.execute()
    return HANDLED


# ---- from a matched event to dispatches -------------------------------------------------------------


def create_dispatches(ctx: JobContext, event_key: str, event: dict[str, Any], context: dict[str, Any] | None,
                      run: Run | None = None, statuses: dict[str, str] | None = None,
                      import_run: str | None = None, sobject: str | None = None) -> list[str]:
    """The dispatch ids of every matched rule. With `run` (the engine's), the new dispatches'
    submits and status deliveries are claimed for that run's thread, which runs them next.
    `statuses` collects each dispatch's status as created (pending, invalid or skipped).
    `import_run`: the import the event came from, kept on its dispatches (their submit ends them
    `cancelled` once that import is cancelled: dispatches/submit.py)."""
    if ctx.rules is None:
        return []
    ids = []
    links = record_links(event, context, sobject) if ctx.rules.crm_destinations else None
    for plan in plan_event(ctx.rules, event, context):
        if not plan.matched or plan.dispatch_id is None:
            continue
        ids.append(plan.dispatch_id)
        status = _create(ctx, plan, event_key, event, run, import_run, links)
        if statuses is not None:
            statuses[plan.dispatch_id] = status
    return ids


def record_links(event: dict[str, Any], context: dict[str, Any] | None, sobject: str | None) -> dict[str, str]:
    """The records around the event that a CRM destination may update instead of the event's own
    (`record: contact` or `deal`), and Salesforce's sObject name: kept on the dispatch, because the
    status messages that need them are written long after the event's context is gone."""
    links = {}
    for name in ("contact", "deal"):
        found = (context or {}).get(name) or event.get(name)
        if isinstance(found, dict) and found.get("id") not in (None, ""):
            links[name] = str(found["id"])
    if sobject:
        links["sobject"] = str(sobject)
    return links


def _create(ctx: JobContext, plan: Plan, event_key: str, event: dict[str, Any], run: Run | None,
            import_run: str | None = None, links: dict[str, str] | None = None) -> str:
    """Create the plan's dispatch; returns the status it was created in (or would have been, when
    it exists already: the event is processed again)."""
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
    if import_run:
        create["import_run"] = import_run
    if links and any(name in ctx.rules.crm_destinations for name in plan.writeback or ()):
        create["links"] = links
    submit = units.submit_unit(plan.dispatch_id)
    # The engine's run claims the follow-up units for its thread; without one they are just due.
    claim: dict[str, Any] = {"claim_for": ctx.settings.lease_seconds, "claimed": run.claimed} if run else {}
    if status == "ready":
        created = state.transition(ctx.redis, plan.dispatch_id, "pending", create=create,
                                   destinations=ctx.destinations(), then=(submit, time.time()), **claim)
    else:
        created = state.transition(ctx.redis, plan.dispatch_id, status or "invalid", create=create, reason=reason,
                                   destinations=ctx.destinations(), retention=ctx.settings.dispatch_retention_seconds,
                                   **claim)
    created_as = "pending" if status == "ready" else status or "invalid"
    if created is not None:
        return created_as
    # It exists: the event is being processed again, and never makes a second dispatch. A pending
    # one may have lost its submit with a crash: make sure it has one.
    existing = state.load(ctx.redis, plan.dispatch_id)
    if existing is not None and existing["status"] == "pending":
        units.schedule(ctx.redis, submit, keep_earlier=True)
        if run is not None:
            run.follow.append(submit)
    return existing["status"] if existing is not None else created_as
