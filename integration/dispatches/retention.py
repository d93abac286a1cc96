"""Bounded storage: finished dispatches go after DISPATCH_RETENTION_DAYS, and nothing names them after.

What expires by itself: a dispatch that reaches a final state (succeeded, failed, cancelled,
rejected, invalid, skipped) gets an expiry on every key it owns, in the same script that records
the state (state.py): its hash (with the Revor body, stored there once), its timeline, its
outboxes and every status message with its attempt and dead-letter records. A status message is
deleted as soon as it is delivered; one still waiting expires with its dispatch, never before.
An operator's retry takes the expiry off again. Events and their dedupe keys expire after 7
days (inbound/store.py), `once_per` claims after the rule's `once_per_days`, locks after their
lease; RQ keeps nothing of a finished `run_due` job (result_ttl=0) and a failed one for a day.

What the sweep does, once an hour, as the scheduler unit `sweep|retention` (so it runs, retries
and recovers like any other unit, on the one scheduler): index entries cannot expire, so it
removes those whose record is gone (each check and removal is one script, so a record made
again meanwhile keeps its entry):

- `rb:dispatches:status:<final state>`: entries older than the retention (their score is the
  moment the dispatch entered that state, the moment its expiry was set from);
- `rb:dispatches:all` and `rb:dispatches:rule:<rule>` (scored by creation): entries older than
  the retention whose dispatch is gone;
- `rb:events:status:<status>`: entries older than the events' lifetime, and younger ones whose
  event is gone;
- `rb:dead:<destination>`: dead letters whose message is gone;
- the lookup buckets (`rb:find:d:*`, `rb:find:e:*`, integration/lookup.py), like the indexes of
  their records: dispatches' entries older than the retention whose dispatch is gone, events'
  as the events' index above;
- `rb:due`: units whose dispatch or event is gone (with their attempt counts, and a delivery's
  outbox); `rb:attempts`: counts of units that are neither due nor claimed.

It also keeps the suppression list's sorted mirror whole (rules/guards.py `ensure_sorted`): built
if missing, rebuilt when its size differs from the list's, in bounded batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from integration import lookup
from integration.dispatches import state
from integration.inbound import records
from integration.inbound.store import TTL_SECONDS as EVENT_TTL_SECONDS
from integration.rules import guards
from integration.scheduler import units
from integration.scheduler.runner import Next, Run, again
from integration.storage import trim_gone

log = logging.getLogger(__name__)

SWEEP = units.SWEEP
SWEEP_UNIT = units.SWEEP_UNIT
INTERVAL = 3600.0
BATCH = 500
# Event index entries this much younger than the events' lifetime are checked too: an event
# processed (or retried) up to a day after it arrived expires before its entry's score says.
EVENT_SLACK = 86400.0

# KEYS: due, attempts, the unit's record (dispatch or event), then keys to delete with the unit
# (a delivery's outbox and its retry wait). ARGV: the unit. Drops a unit whose record is gone.
DROP_UNIT = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""

# KEYS: attempts, due, claimed. ARGV: units. Drops the counts of units neither due nor claimed.
DROP_ATTEMPTS = """
local removed = 0
for _, unit in ipairs(ARGV) do
  if not redis.call('ZSCORE', KEYS[2], unit) and not redis.call('ZSCORE', KEYS[3], unit) then
    removed = removed + redis.call('HDEL', KEYS[1], unit)
  end
end
return removed
"""

def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def ensure_scheduled(connection: redis.Redis, now: float | None = None) -> bool:
    """Make the hourly sweep due now if it is nowhere (first start, or lost); True if it was."""
    return units.ensure(connection, SWEEP_UNIT, now)


def trim_index(connection: redis.Redis, index: str, older_than: float, record_key: Callable[[str], str]) -> int:
    """Remove the entries of `index` scored up to `older_than` whose record (`record_key(member)`)
    no longer exists; returns how many went."""
    removed, offset = 0, 0
    while True:
        members = [_text(m) for m in connection.zrangebyscore(index, "-inf", older_than, start=offset, num=BATCH)]
        if not members:
            return removed
        gone = trim_gone(connection, index, members, [record_key(m) for m in members])
        removed += gone
        if len(members) < BATCH:
            return removed
        offset += len(members) - gone


def _unit_record(unit_id: str) -> tuple[str, list[str]] | None:
    """The record a unit works on and the keys that go with it; None for units of other kinds."""
    unit = units.Unit.parse(unit_id)
    if unit.kind == units.EVENT:
        return unit.ref, []
    if unit.kind in (units.SUBMIT, units.POLL):
        return state.key_for(unit.ref), []
    if unit.kind == units.DELIVER:
        dispatch_id, _, destination = unit.ref.partition("|")
        outbox = state.outbox_key(dispatch_id, destination)
        return state.key_for(dispatch_id), [outbox, outbox + ":not_before"]
    return None


def drop_orphan_units(connection: redis.Redis) -> int:
    """Units due for a dispatch or event that is gone (it expired): nothing left to do for them."""
    dropped = 0
    for member, _ in connection.zscan_iter(units.DUE, count=BATCH):
        unit_id = _text(member)
        found = _unit_record(unit_id)
        if found is None:
            continue
        record, extra = found
        dropped += int(connection.eval(DROP_UNIT, 3 + len(extra), units.DUE, units.ATTEMPTS, record, *extra,
                                       unit_id))
    counted = [_text(u) for u, _ in connection.hscan_iter(units.ATTEMPTS, count=BATCH)]
    for start in range(0, len(counted), BATCH):
        chunk = counted[start:start + BATCH]
        dropped += int(connection.eval(DROP_ATTEMPTS, 3, units.ATTEMPTS, units.DUE, units.CLAIMED, *chunk))
    return dropped


def sweep(connection: redis.Redis, retention: float, now: float | None = None,
          event_ttl: float = EVENT_TTL_SECONDS) -> dict[str, int]:
    """One pass (see the module's docstring); how many entries went, per kind."""
    moment = time.time() if now is None else now
    horizon = moment - retention
    removed = {"dispatch_index": 0, "event_index": 0, "dead_letters": 0, "units": 0}
    for status in sorted(state.TERMINAL):
        removed["dispatch_index"] += int(connection.zremrangebyscore(state.STATUS_INDEX + status, "-inf", horizon))
    by_creation = [state.ALL_INDEX] + [_text(k) for k in connection.scan_iter(match=state.RULE_INDEX + "*",
                                                                               count=1000, _type="zset")]
    for index in by_creation:
        removed["dispatch_index"] += trim_index(connection, index, horizon, state.key_for)
    for status in records.LISTABLE:
        index = records.STATUS_INDEX + status
        removed["event_index"] += int(connection.zremrangebyscore(index, "-inf", moment - event_ttl))
        removed["event_index"] += trim_index(connection, index, moment - event_ttl + EVENT_SLACK, lambda key: key)
    removed["dispatch_index"] += lookup.sweep(connection, lookup.DISPATCHES, horizon)
    removed["event_index"] += lookup.sweep(connection, lookup.EVENTS, moment - event_ttl + EVENT_SLACK,
                                           expired_before=moment - event_ttl)
    for name in connection.scan_iter(match="rb:dead:*", count=1000, _type="zset"):
        removed["dead_letters"] += trim_index(connection, _text(name), moment, lambda m: "rb:msg:" + m)
    removed["units"] = drop_orphan_units(connection)
    guards.ensure_sorted(connection, check_counts=True)
    return removed


def run_sweep(connection: redis.Redis, retention: float) -> Next:
    """The engine's handler for `sweep|retention`: one pass, then the next in an hour (a wait, not
    an attempt: the unit's attempt count stays at nought)."""
    removed = sweep(connection, retention)
    if any(removed.values()):
        log.info("retention sweep: removed %s", ", ".join(f"{n} {kind}" for kind, n in removed.items() if n))
    return again(time.time() + INTERVAL, counted=False)


def handler(connection: redis.Redis, retention: float) -> Callable[[Run], Next]:
    return lambda run: run_sweep(connection, retention)
