"""Delivering status messages into a CRM record (destinations of kind hubspot, salesforce, pipedrive).

The outbox, its order, the retry schedule, the circuit, the dead letters and replay are those of
webhook destinations (writeback/deliver.py, whose helpers this uses): a later status of one
dispatch is never written before an earlier one, because the head of the outbox leaves only once
it is written. What differs is the sending:

- **Which record, which values.** Each message is planned into a `Write` (crm/config.py). A
  message that can never be written (no associated contact, a template failed, the record was
  deleted, a property does not exist) goes to the dead letters with the reason, the vendor's own
  words where it has them; the outbox goes on with the next message.
- **Newest state change wins on a record.** Several dispatches may update one deal. Each record
  has `rb:crm:last:<destination>:<object>:<id>`: the time and message id of the newest state
  change written to it. A message is written under a short per-record lock; one whose state
  change is older than the one the record shows has its properties left out (its activity is
  still logged: activities are history, not state). So a retried, late or replayed delivery can
  never put an older status over a newer one, in whatever order the deliveries run.
- **Batches.** When other outboxes of the same destination are due, a run claims up to the
  writer's batch size of them (as the engine would claim them) and writes their heads in the
  same request (HubSpot batch update, Salesforce sObject Collections). Each one's own result
  counts for it alone; one that is not written is left to its own run.
- **Throttling is not failure.** A 429 (or our shared per-portal limiter) makes the message wait
  what the API asks, without using up an attempt or opening the circuit.
- **Activities once.** A note or Task is created once per message: the attempt record keeps that
  it was, so a retry of a failed property write does not log it again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from integration import logs, metrics
from integration.context import JobContext
from integration.dispatches.state import EXPIRE_WITH, event_log_ids, outbox_key
from integration.scheduler import units
from integration.scheduler.lock import Lock
from integration.scheduler.runner import Run
from integration.storage import run_script
from integration.writeback import destinations
from integration.writeback.crm.base import DEAD, OK, RETRY, THROTTLED, NotConfigured, Result, Write
from integration.writeback.crm.config import CrmDestination, NotWritable, plan
from integration.writeback.deliver import (
    _drop_and_next,
    _failed,
    _give_up,
    _record_failed_attempt,
    health_gate,
    interrupted,
    mark_delivered,
    open_outbox,
)

log = logging.getLogger(__name__)
# How far into `rb:due` a run looks for other outboxes of its destination to batch with.
PEER_SCAN = 500
# A throttled message without a wait from the API looks again after this.
DEFAULT_THROTTLE_WAIT = 10.0


def last_key(destination: str, object_type: str, object_id: str) -> str:
    return f"rb:crm:last:{destination}:{object_type}:{object_id}"


# KEYS: the record's last-written key. ARGV: the new stamp ("<time>|<message id>"), seconds to keep it.
# Set only when newer than what is there: whatever order two writers finish in, the stamp only moves forward.
SHOWN = """
local current = redis.call('GET', KEYS[1])
if current then
  local at, id = string.match(current, '^([^|]*)|(.*)$')
  local new_at, new_id = string.match(ARGV[1], '^([^|]*)|(.*)$')
  if tonumber(at) > tonumber(new_at) or (tonumber(at) == tonumber(new_at) and id >= new_id) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


class Heartbeat:
    """While an attempt waits on the CRM: keeps its locks (the outbox's, the records', the peers')
    and its claims from lapsing, so no other run writes the same record meanwhile (newest-wins
    depends on it). It stops after MAX_HOLD at the latest: a call that never ends must not hold a
    record for ever. A killed worker's heartbeat dies with it, and its locks lapse as they should.
    """

    MAX_HOLD = 300.0

    def __init__(self, connection: Any, lease_seconds: float, locks: list[Lock], claims: list[str]) -> None:
        self.connection, self.lease, self.locks, self.claims = connection, lease_seconds, locks, claims
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="crm-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

    def _beat(self) -> None:
        ends = time.monotonic() + self.MAX_HOLD
        while not self.stopped.wait(max(0.2, self.lease / 3)) and time.monotonic() < ends:
            try:
                with self.connection.pipeline(transaction=False) as pipe:
                    for lock in self.locks:
                        lock.extend(pipe)
                    units.extend(pipe, self.claims, self.lease)
                    pipe.execute()
            except Exception:  # noqa: BLE001 - Redis away for a moment: the next beat tries again
                log.debug("crm heartbeat: could not extend the locks", exc_info=True)


@dataclass
class _Item:
    """One outbox's head in this run: its message, its write, and the locks held for it."""

    unit: str
    claim: int | None
    outbox: str
    message_key: str
    message: dict[str, Any]
    write: Write
    lock: Lock
    record_lock: Lock | None = None
    superseded: bool = False
    activity_error: str = ""  # the activity could not be rendered: a dead letter once the properties are written


def _stamp(message: dict[str, Any]) -> tuple[float, str]:
    """When the message's state change happened, and its id (which decides a tie)."""
    return float(message.get("created_at") or 0), str(message["id"])


def _stamp_text(message: dict[str, Any]) -> str:
    at, message_id = _stamp(message)
    return f"{at:.6f}|{message_id}"


def _older(stamp: tuple[float, str], shown: bytes | None) -> bool:
    """True when the record already shows a newer state change than `stamp`."""
    if not shown:
        return False
    at, _, message_id = shown.decode().partition("|")
    return (float(at), message_id) > stamp


@logs.scoped
def deliver_crm(ctx: JobContext, run: Run, destination: CrmDestination) -> str:
    """One delivery run for a CRM destination's outbox; returns what happened (for tests)."""
    connection, settings = ctx.redis, ctx.settings
    dispatch_id, _, name = run.unit.ref.partition("|")
    claim, unit = run.attempt, run.unit.id
    outbox = outbox_key(dispatch_id, name)
    lock, locked, not_before, head = open_outbox(connection, dispatch_id, name, settings.lease_seconds)
    if not locked:
        units.again(connection, unit, time.time() + 1.0, counted=False, attempt=claim)
        return "busy"
    outcome = "empty"
    try:
        if not_before > time.time():
            units.again(connection, unit, not_before, counted=False, attempt=claim)
            outcome = "waiting"
            return outcome
        started = time.monotonic()
        while head is not None:
            if time.monotonic() - started > settings.writeback_timeout_seconds:
                units.again(connection, unit, time.time(), counted=False, attempt=claim)  # a fresh run goes on
                outcome = "yielded"
                return outcome
            message_key = head.decode()
            with connection.pipeline(transaction=False) as pipe:
                pipe.get(message_key)
                pipe.hgetall(f"{message_key}:attempts")
                pipe.hgetall(destinations.health_key(name))
                raw, attempts_raw, health = pipe.execute()
            if raw is None:
                head = _drop_and_next(connection, outbox, message_key)
                continue
            message = json.loads(raw)
            data = message["body"].get("data") or {}
            logs.add(revor_job_id=data.get("revor_job_id"), **event_log_ids(data))
            verdict, probing = health_gate(connection, name, health, outbox, message_key, unit, claim, unit,
                                           settings.writeback_timeout_seconds + 5)
            if verdict == "next":
                head = connection.lindex(outbox, 0)
                continue
            if verdict is not None:
                outcome = verdict
                return outcome
            activity_errors: list[str] = []
            try:
                write = plan(destination, message, activity_errors)
            except NotWritable as exc:
                _give_up(connection, outbox, name, message_key, str(exc))
                head = connection.lindex(outbox, 0)
                continue
            done = {k.decode(): v.decode() for k, v in attempts_raw.items()}
            if done.get("properties_done") == "1":
                write = replace(write, properties={})
            if done.get("activity_done") == "1":
                write = replace(write, activity=None)
            attempts_key = f"{message_key}:attempts"
            if done.get("sending") == "1":
                outcome = interrupted(connection, outbox, name, unit, message, message_key,
                                      int(done.get("count") or 1), settings.writeback_retry_scale, claim)
                return outcome
            own = _Item(unit, claim, outbox, message_key, message, write, lock,
                        activity_error=" ".join(activity_errors))
            try:
                writer = ctx.crm_writer(destination.kind)
            except NotConfigured as exc:
                attempts = _start_attempt(connection, attempts_key, message_key, lock, unit, settings.lease_seconds)
                _record_failed_attempt(connection, attempts_key, str(exc), name, None, attempts)
                outcome = _failed(connection, outbox, name, unit, message, message_key, attempts, None, None,
                                  str(exc), settings.writeback_retry_scale, claim)
                return outcome
            peers = _peers(ctx, destination, own, writer.batch_size) if write.properties and not probing else []
            try:
                attempted = _attempt(ctx, destination, writer, own, peers, probing)
            finally:
                _release(connection, [own, *peers], own)
            if attempted != "written":
                outcome = attempted
                return outcome
            head = connection.lindex(outbox, 0)
        return outcome
    finally:
        with connection.pipeline(transaction=False) as pipe:
            lock.release(pipe)
            if outcome == "empty":
                units.finish(pipe, unit, claim)
            pipe.execute()


def _start_attempt(connection: Any, attempts_key: str, message_key: str, lock: Lock, unit: str,
                   lease_seconds: float) -> int:
    """Counted before the first byte leaves, with the lock and the claim pushed ahead (as webhooks)."""
    with connection.pipeline(transaction=False) as pipe:
        lock.extend(pipe)
        units.extend(pipe, [unit], lease_seconds)
        pipe.hincrby(attempts_key, "count", 1)
        pipe.hset(attempts_key, mapping={"last": "sending", "at": f"{time.time():.3f}", "sending": 1})
        pipe.eval(EXPIRE_WITH, 2, attempts_key, message_key)
        return int(pipe.execute()[2])


def _record_lock(ctx: JobContext, destination: str, write: Write) -> Lock | None:
    """The record's lock, or None when another run is writing to the record right now."""
    record = Lock(ctx.redis, f"crmrec:{destination}:{write.object}:{write.object_id}", ctx.settings.lease_seconds)
    return record if record.acquire() else None


def _peers(ctx: JobContext, destination: CrmDestination, own: _Item, size: int) -> list[_Item]:
    """Other outboxes of this destination that are due now, claimed and locked, whose heads are
    plain property writes: written in the same request as this run's own message."""
    if size <= 1:
        return []
    connection, name = ctx.redis, destination.name
    suffix = f"|{name}"
    due = [u.decode() for u in connection.zrangebyscore(units.DUE, "-inf", time.time(), start=0, num=PEER_SCAN)]
    wanted = [u for u in due if u.startswith(f"{units.DELIVER}|") and u.endswith(suffix) and u != own.unit]
    if not wanted:
        return []
    found: list[_Item] = []
    for unit, claim in units.claim(connection, size - 1, ctx.settings.lease_seconds, units=wanted[: size - 1]):
        dispatch_id = unit.split("|")[1]
        outbox = outbox_key(dispatch_id, name)
        lock, locked, not_before, head = open_outbox(connection, dispatch_id, name, ctx.settings.lease_seconds)
        item = None
        if locked and not not_before > time.time() and head is not None:
            key = head.decode()
            with connection.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.hlen(f"{key}:attempts")
                raw, tried = pipe.execute()
            if raw is not None and not tried:  # a message with attempts behind it goes its own way
                message = json.loads(raw)
                try:
                    write = plan(destination, message)
                except NotWritable:
                    write = None
                if write is not None and write.properties and write.activity is None:
                    item = _Item(unit, claim, outbox, key, message, write, lock)
        if item is None:
            if locked:
                lock.release()
            units.again(connection, unit, time.time(), counted=False, attempt=claim)  # its own run does it
            continue
        found.append(item)
    return found


def _attempt(ctx: JobContext, destination: CrmDestination, writer: Any, own: _Item, peers: list[_Item],
             probing: bool) -> str:
    """Write this run's message (and its peers'); "written" when the outbox may go on."""
    connection, settings, name = ctx.redis, ctx.settings, destination.name
    items = [own]
    for peer in peers:  # one write per record in a request; a record busy elsewhere waits its turn
        if any(p.write.object == peer.write.object and p.write.object_id == peer.write.object_id for p in items):
            _put_back(connection, peer)
            continue
        items.append(peer)
    writable: list[_Item] = []
    for item in items:
        if not item.write.properties:
            continue
        record_lock = _record_lock(ctx, name, item.write)
        if record_lock is None:
            if item is own:
                units.again(connection, own.unit, time.time() + 1.0, counted=False, attempt=own.claim)
                for peer in items[1:]:
                    _put_back(connection, peer)
                return "record_busy"
            _put_back(connection, item)
            continue
        item.record_lock = record_lock
        writable.append(item)
    shown = connection.mget([last_key(name, i.write.object, i.write.object_id) for i in writable]) if writable else []
    for item, value in zip(writable, shown, strict=True):
        item.superseded = _older(_stamp(item.message), value)
    attempts_key = f"{own.message_key}:attempts"
    attempts = _start_attempt(connection, attempts_key, own.message_key, own.lock, own.unit, settings.lease_seconds)
    sending = [i for i in writable if not i.superseded]
    locks = [own.lock, *(p.lock for p in items[1:]), *(i.record_lock for i in writable if i.record_lock)]
    with Heartbeat(connection, settings.lease_seconds, locks, [i.unit for i in items]):
        results = _safely(destination.kind, lambda: writer.update([i.write for i in sending]), len(sending))
        by_item = dict(zip([id(i) for i in sending], results, strict=True))
        for peer in [p for p in items[1:] if p in writable]:
            _finish_peer(ctx, destination, peer, by_item.get(id(peer), Result(OK)))
        own_result = by_item.get(id(own), Result(OK))
        if own_result.outcome == OK and own in writable:
            _shown(ctx, destination, own)
            connection.hset(attempts_key, "properties_done", 1)
        if own_result.outcome == OK and own.write.activity is not None:
            [own_result] = _safely(destination.kind, lambda: [writer.log_activity(own.write)], 1)
            if own_result.outcome == OK:
                connection.hset(attempts_key, "activity_done", 1)
        if own_result.outcome == OK and own.activity_error:
            written = " (the properties were written)" if own in writable else ""
            own_result = Result(DEAD, own.activity_error + written)
    return _settle(ctx, destination, own, own_result, attempts, probing)


def _safely(kind: str, call: Any, count: int) -> list[Result]:
    """A writer's results; an answer it could not make sense of (it raised) is a retry, not a crash."""
    if not count:
        return []
    try:
        results = call()
    except Exception as exc:  # noqa: BLE001 - one odd answer must not cost the worker thread its run
        log.warning("write-back to %s: unexpected answer (%s)", kind, type(exc).__name__)
        return [Result(RETRY, f"unexpected answer from {kind} ({type(exc).__name__})")] * count
    if len(results) != count:
        return [Result(RETRY, f"{kind}: {len(results)} results for {count} writes")] * count
    return results


def _shown(ctx: JobContext, destination: CrmDestination, item: _Item) -> None:
    """The record now shows this state change (kept as long as a dispatch is)."""
    if item.superseded:
        return
    run_script(ctx.redis, SHOWN, (last_key(destination.name, item.write.object, item.write.object_id),),
               (_stamp_text(item.message), ctx.settings.dispatch_retention_seconds))


def _finish_peer(ctx: JobContext, destination: CrmDestination, peer: _Item, result: Result) -> None:
    connection, name = ctx.redis, destination.name
    if result.outcome == OK:
        _shown(ctx, destination, peer)
        _delivered(connection, name, peer, "superseded" if peer.superseded else "delivered")
    elif result.outcome == DEAD:
        _give_up(connection, peer.outbox, name, peer.message_key,
                 f"{peer.write.object} {peer.write.object_id}: {result.reason or 'refused'}")
        units.again(connection, peer.unit, time.time(), counted=False, attempt=peer.claim)
    else:  # not written now: its own run tries, with its own attempts and schedule
        units.again(connection, peer.unit, time.time() + (result.wait or 1.0), counted=False, attempt=peer.claim)


def _put_back(connection: Any, item: _Item) -> None:
    units.again(connection, item.unit, time.time() + 0.5, counted=False, attempt=item.claim)


def _delivered(connection: Any, name: str, item: _Item, outcome: str) -> None:
    """Written (or left out as superseded): the message and its attempts go, the next is due."""
    with connection.pipeline(transaction=True) as pipe:
        mark_delivered(pipe, name, item.outbox, item.message_key, outcome)
        pipe.llen(item.outbox)
        left = pipe.execute()[-1]
    if left:  # its own run goes on with the next message
        units.again(connection, item.unit, time.time(), counted=False, attempt=item.claim)
    else:
        units.finish(connection, item.unit, item.claim)


def _settle(ctx: JobContext, destination: CrmDestination, own: _Item, result: Result, attempts: int,
            probing: bool) -> str:
    connection, settings, name = ctx.redis, ctx.settings, destination.name
    attempts_key = f"{own.message_key}:attempts"
    if result.outcome == OK:
        with connection.pipeline(transaction=True) as pipe:
            mark_delivered(pipe, name, own.outbox, own.message_key, "superseded" if own.superseded else "delivered")
            pipe.execute()
        if own.superseded:
            log.info("write-back %s to %s: the record shows a newer state change; properties left out",
                     own.message["id"], name)
        return "written"
    if probing:
        connection.delete(destinations.probe_key(name))
    if result.outcome == DEAD:
        reason = f"{own.write.object} {own.write.object_id}: {result.reason or 'refused'}"
        with connection.pipeline(transaction=False) as pipe:
            pipe.hset(attempts_key, mapping={"last": reason, "sending": 0})
            metrics.count(pipe, metrics.writeback_field(name, "dead"))
            pipe.execute()
        _give_up(connection, own.outbox, name, own.message_key, reason)
        return "written"  # the outbox goes on with the next message
    if result.outcome == THROTTLED:
        wait = result.wait if result.wait is not None else DEFAULT_THROTTLE_WAIT
        until = time.time() + wait
        with connection.pipeline(transaction=False) as pipe:
            pipe.hincrby(attempts_key, "count", -1)  # throttling is not a failed attempt
            pipe.hset(attempts_key, mapping={"last": result.reason or "throttled", "sending": 0})
            pipe.set(f"{own.outbox}:not_before", f"{until:.3f}", ex=int(wait) + 86400)
            metrics.count(pipe, metrics.writeback_field(name, "throttled"))
            pipe.execute()
        units.again(connection, own.unit, until, counted=False, attempt=own.claim)
        log.info("write-back %s to %s: throttled; next in %.1f s", own.message["id"], name, wait)
        return "throttled"
    outcome = result.reason or RETRY
    if result.status in (401, 403):  # the credentials: nothing will be written until someone acts
        log.error("write-back to %s: %s refused the credentials: %s", name, destination.kind, outcome)
    _record_failed_attempt(connection, attempts_key, outcome, name, result.status, attempts)
    return _failed(connection, own.outbox, name, own.unit, own.message, own.message_key, attempts, result.status,
                   result.wait, outcome, settings.writeback_retry_scale, own.claim, honour_wait=True)


def _release(connection: Any, items: list[_Item], own: _Item) -> None:
    """Every lock this run took for the peers and the records (its own outbox lock is the caller's)."""
    with connection.pipeline(transaction=False) as pipe:
        for item in items:
            if item.record_lock is not None:
                item.record_lock.release(pipe)
            if item is not own:
                item.lock.release(pipe)
        pipe.execute()

