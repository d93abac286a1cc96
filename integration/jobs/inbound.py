"""Jobs for stored inbound events: fan a delivery out, then process (hydrate) each event.

`fan_out` runs once per delivery and gives each *new* event its own job with an id derived from
the event, so a re-run (RQ retry, a worker killed mid-way) cannot queue an event twice.
`process_event` is idempotent: it does nothing for an event already processed, and its only
writes are to the event's own record. Each run counts as an attempt in that record (see
jobs/events.py); a run that raises something unexpected is logged with its traceback and left to
the lease, and after MAX_ATTEMPTS the event ends `failed` with the error instead of running for
ever.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from rq.timeouts import BaseTimeoutException

from integration.dispatches.limits import Limiter
from integration.hydrate.hubspot import HubSpotClient, HubSpotError, association_ids, properties_of
from integration.inbound.hubspot import context_for
from integration.inbound.store import PROCESS_RETRY, job_id_for
from integration.jobs import events, leases
from integration.jobs.context import JobContext, job_context
from integration.jobs.enqueue import enqueue_once
from integration.jobs.pipeline import create_dispatches

log = logging.getLogger(__name__)

DONE = {"processed", "failed", "skipped"}
MAX_INLINE_WAIT = 10.0


def fan_out(delivery_key: str) -> int:
    ctx = job_context()
    queued = 0
    for raw_key in ctx.redis.lrange(f"{delivery_key}:new", 0, -1):
        key = raw_key.decode()
        queued += enqueue_once(ctx.queue, "integration.jobs.inbound.process_event", (key,), job_id_for(key),
                               retry=PROCESS_RETRY, timeout=None, result_ttl=3600)
    return queued


def process_event(key: str) -> str:
    ctx = job_context()
    lock = leases.Lock(ctx.redis, f"event:{job_id_for(key)}", ctx.settings.lease_seconds)
    if not lock.acquire():
        return "busy"  # another run has it; the lease brings it back if that run dies
    try:
        return _process(ctx, key)
    finally:
        lock.release()


def _process(ctx: JobContext, key: str) -> str:
    stored = ctx.redis.hgetall(key)
    if not stored:
        leases.release(ctx.redis, leases.EVENT, key)
        log.warning("event %s expired before it was processed", key)
        return "expired"
    status = stored[b"status"].decode()
    if status in DONE:
        leases.release(ctx.redis, leases.EVENT, key)
        return status
    leases.hold(ctx.redis, leases.EVENT, key, ctx.settings.lease_seconds)
    attempts = events.begin_attempt(ctx.redis, key)
    if attempts > events.MAX_ATTEMPTS:  # every earlier run died before it could record anything
        error = events.last_error(stored)
        why = f"{error['type']}: {error['message']}" if error else \
            "each run stopped before it finished (the worker was killed or ran out of memory)"
        return _finish(ctx, key, "failed", reason=f"gave up after {events.MAX_ATTEMPTS} attempts: {why}")
    try:
        return _run(ctx, key, stored)
    except Exception as exc:
        if _expected(exc):
            events.undo_attempt(ctx.redis, key)
            raise
        error = events.describe(exc, ctx.settings)
        log.error("event %s: attempt %d of %d failed", key, attempts, events.MAX_ATTEMPTS, exc_info=True)
        if attempts >= events.MAX_ATTEMPTS:
            return _finish(ctx, key, "failed", error=error,
                           reason=f"processing failed {attempts} times: {error['type']}: {error['message']}")
        events.record_error(ctx.redis, key, error)
        leases.hold(ctx.redis, leases.EVENT, key, ctx.settings.lease_seconds)  # the lease runs it again
        return "retrying"
    except BaseException:  # a shutdown (SIGTERM, Ctrl-C): not the event's fault
        events.undo_attempt(ctx.redis, key)
        raise


def _expected(error: Exception) -> bool:
    """Errors that say nothing about the event itself, retried on schedule without counting: a
    retryable CRM answer, Redis away for a moment, or RQ's job timeout (every call the job makes
    has its own timeout, so running out of time means slow services, not a poison event)."""
    if isinstance(error, HubSpotError):
        return error.retryable
    return isinstance(error, redis.ConnectionError | redis.TimeoutError | BaseTimeoutException)


def _run(ctx: JobContext, key: str, stored: dict[bytes, bytes]) -> str:
    event = json.loads(stored[b"event"])
    if stored.get(b"stale") == b"1":
        return _finish(ctx, key, "skipped", reason="stale: a newer event for this object was already received")
    context: dict[str, Any] | None = None
    reason = None
    if event["source"] == "hubspot" and event.get("hydrate"):
        if ctx.hubspot is None:
            reason = "not hydrated: HUBSPOT_ACCESS_TOKEN is unset"
        else:
            try:
                limiter = Limiter(ctx.redis, f"hubspot:{event.get('account') or 'default'}",
                                  ctx.settings.hubspot_max_rps)
                context = _with_rate_limit_waits(lambda: hydrate_hubspot(ctx.hubspot, event, limiter), limiter)
            except HubSpotError as error:
                if error.retryable:
                    # RQ retries on PROCESS_RETRY's schedule; the lease covers the wait.
                    leases.hold(ctx.redis, leases.EVENT, key, 3600)
                    raise
                return _finish(ctx, key, "failed", reason=f"hydration failed: {error}")
    dispatches = create_dispatches(ctx, key, {k: v for k, v in event.items() if k != "_extra"}, context)
    if ctx.rules is None:
        reason = (reason + "; " if reason else "") + "no rules loaded (RULES_FILE is unset)"
    return _finish(ctx, key, "processed", reason=reason, context=context, dispatches=dispatches)


def _finish(ctx: JobContext, key: str, status: str, reason: str | None = None,
            context: dict[str, Any] | None = None, dispatches: list[str] | None = None,
            error: dict[str, str] | None = None) -> str:
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
        events.index_outcome(pipe, key, status, now)
        pipe.zrem(leases.EVENT, key)
        pipe.execute()
    return status


def _with_rate_limit_waits(call: Any, limiter: Limiter, attempts: int = 3) -> Any:
    """Short 429 waits are served in the job; long ones go back to RQ's retry schedule. Either
    way the shared limiter is paused, so every worker slows down for this portal."""
    for attempt in range(attempts):
        try:
            return call()
        except HubSpotError as error:
            if error.retryable and error.status == 429:
                limiter.pause(error.wait or 10.0)
            short = error.retryable and error.wait is not None and error.wait <= MAX_INLINE_WAIT
            if not short or attempt == attempts - 1:
                raise
            time.sleep(error.wait)
    raise AssertionError("unreachable")


class _Paced:
    """A HubSpot client whose every call first takes a token from the shared per-portal limiter."""

    def __init__(self, client: HubSpotClient, limiter: Limiter | None) -> None:
        self.client, self.limiter = client, limiter

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def paced(*args: Any, **kwargs: Any) -> Any:
            if self.limiter is not None and not self.limiter.acquire(max_wait=MAX_INLINE_WAIT):
                raise HubSpotError("shared HubSpot rate limit: waiting", status=429, retryable=True,
                                   wait=self.limiter.paused_for() or 1.0)
            return method(*args, **kwargs)

        return paced


def hydrate_hubspot(client: HubSpotClient, event: dict[str, Any], limiter: Limiter | None = None) -> dict[str, Any]:
    """The deal, contact, company and owner around a HubSpot event, as flat context maps."""
    client = _Paced(client, limiter)  # type: ignore[assignment]
    object_type, object_id = event["object"]["type"], event["object"]["id"]
    context: dict[str, Any] = {}
    contact_ids: list[str] = []
    company_ids: list[str] = []
    extra = event.get("_extra") or {}
    if object_type == "deal":
        deal = client.get_deal(object_id)
        props = properties_of(deal)
        context["deal"] = context_for("deal", object_id, props)
        contact_ids = association_ids(deal, "contacts") or list(extra.get("associated_contact_ids") or [])
        company_ids = association_ids(deal, "companies") or list(extra.get("associated_company_ids") or [])
        owner_id = props.get("hubspot_owner_id")
        if owner_id:
            context["owner"] = _owner(client, str(owner_id))
    elif object_type == "contact":
        contact = client.get_contact(object_id)
        context["contact"] = context_for("contact", object_id, properties_of(contact))
        company_ids = association_ids(contact, "companies")
    elif object_type == "company":
        context["company"] = context_for("company", object_id, properties_of(client.get_company(object_id)))
    if contact_ids:
        by_id = {str(c.get("id")): c for c in client.read_contacts(contact_ids)}
        contacts = [context_for("contact", cid, properties_of(by_id[cid])) for cid in contact_ids if cid in by_id]
        if contacts:
            context["contact"] = contacts[0]
            context["contacts"] = contacts
    if company_ids and "company" not in context:
        context["company"] = context_for("company", company_ids[0],
                                         properties_of(client.get_company(company_ids[0])))
    return context


def _owner(client: HubSpotClient, owner_id: str) -> dict[str, Any] | None:
    """Owners need their own scope; a missing one leaves the owner out rather than failing."""
    try:
        owner = client.get_owner(owner_id)
    except HubSpotError as error:
        if error.retryable:
            raise
        return {"id": owner_id}
    props = {k: owner.get(k) for k in ("email", "firstName", "lastName") if owner.get(k) is not None}
    return context_for("owner", owner_id, {**props, "first_name": props.get("firstName"),
                                           "last_name": props.get("lastName")})
