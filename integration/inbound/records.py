"""An event's processing record: attempts counted in Redis, the outcome index, an operator's retry.

A poison event (one whose processing raises something the bridge does not expect: a CRM answer
of an odd shape, a bug) must not run forever. Each run of the event's processing first adds one
to the event's `attempts` field in Redis, before any work, so a run killed with SIGKILL still
counts. After
MAX_ATTEMPTS the event ends `failed` with the error's type and message; an operator retries it
with `POST /api/v1/events/<source>/<id>/retry` or `revor-bridge events retry`, which resets the
count. Processing again is safe: dispatch ids are derived from the event, so an event processed
twice never sends twice.

Final outcomes are indexed per status (`rb:events:status:<status>`, scored by time), so failed
events can be listed without scanning every key; the event hashes expire after their TTL and
the listing drops what expired.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import fields as dataclass_fields
from typing import Any

import redis

from integration.imports import runs
from integration.scheduler import units
from integration.settings import Secret, Settings

MAX_ATTEMPTS = 5
STATUS_INDEX = "rb:events:status:"
FINAL = ("processed", "failed", "skipped")
RECEIVED = STATUS_INDEX + "received"  # events stored and not yet processed (the web adds them)
LISTABLE = ("received", *FINAL)
MAX_MESSAGE = 300


def begin_attempt(connection: redis.Redis, key: str) -> int:
    """Count one more run of this event (before it does anything) and return the count."""
    return int(connection.hincrby(key, "attempts", 1))


def undo_attempt(connection: redis.Redis, key: str) -> None:
    """A run that stopped for an expected reason (a retryable CRM error, a shutdown) is not held
    against the event. Best effort: with Redis gone the count stays, which only brings the limit
    one run closer."""
    try:
        connection.hincrby(key, "attempts", -1)
    except redis.RedisError:
        pass


def secret_values(settings: Settings | None) -> list[str]:
    """Every configured secret's value (4+ characters): blanked out of stored errors and log lines."""
    if settings is None:
        return []
    found: list[str] = []
    for item in dataclass_fields(settings):
        value = getattr(settings, item.name)
        values: Iterable[Any] = value.values() if isinstance(value, Mapping) else (value,)
        found += [v.get() for v in values if isinstance(v, Secret) and len(v.get()) >= 4]
    return found


def describe(error: BaseException, settings: Settings | None = None) -> dict[str, str]:
    """The error as stored with the event: its type and a short message with any configured
    secret blanked out (the message of an unexpected error is not under the bridge's control)."""
    message = str(error)
    for secret in secret_values(settings):
        message = message.replace(secret, "[redacted]")
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    return {"type": type(error).__name__, "message": message}


def record_error(connection: redis.Redis, key: str, error: dict[str, str]) -> None:
    connection.hset(key, "error", json.dumps(error))


def last_error(stored: dict[bytes, bytes]) -> dict[str, str] | None:
    raw = stored.get(b"error")
    return json.loads(raw) if raw else None


def index_outcome(pipe: Any, key: str, status: str, now: float) -> None:
    """Move the event from `received` to its outcome's index (inside the caller's pipeline). An
    event ends once, or again after an operator's retry of a failed one; what expired is trimmed
    by the retention sweep (dispatches/retention.py)."""
    pipe.zrem(RECEIVED, key)
    if status != "failed":
        pipe.zrem(STATUS_INDEX + "failed", key)
    pipe.zadd(STATUS_INDEX + status, {key: now})


def summary(connection: redis.Redis, key: str) -> dict[str, Any] | None:
    """One event for a listing: who sent it, where it stands and why; None once expired."""
    return _summary_of(connection.hgetall(key))


def summaries(connection: redis.Redis, keys: list[str]) -> list[dict[str, Any] | None]:
    """`summary` of each key in one round trip (a listing page)."""
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        return [_summary_of(stored) for stored in pipe.execute()]


def _summary_of(stored: dict[bytes, bytes]) -> dict[str, Any] | None:
    if not stored or b"event" not in stored:  # gone (or only a count left behind)
        return None
    text = {k.decode(): v.decode() for k, v in stored.items() if k != b"error"}
    event = json.loads(text["event"])
    return {
        "source": event.get("source"), "event_id": event.get("event_id"), "type": event.get("type"),
        "object": event.get("object"), "status": text.get("status"), "reason": text.get("reason"),
        "error": last_error(stored), "attempts": int(text.get("attempts") or 0),
        "received_at": float(text["received_at"]) if text.get("received_at") else None,
        "processed_at": float(text["processed_at"]) if text.get("processed_at") else None,
        "dispatches": json.loads(text["dispatches"]) if text.get("dispatches") else [],
    }


def list_events(connection: redis.Redis, status: str, limit: int = 100) -> list[dict[str, Any]]:
    """Newest first. `received` lists the events not yet processed (due, or running now)."""
    index = STATUS_INDEX + status
    items = []
    for raw in connection.zrevrange(index, 0, limit * 2 - 1):
        key = raw.decode()
        found = summary(connection, key)
        if found is None:
            connection.zrem(index, key)
            continue
        if found["status"] == status:
            items.append(found)
        if len(items) >= limit:
            break
    return items


class NotRetryable(Exception):
    """Only a `failed` event can be retried; the message says what it is instead."""


def retry(connection: redis.Redis, key: str, now: float | None = None) -> None:
    """Put a failed event back: status `received`, attempts 0, due at once (the clock wakes a worker).

    The event's earlier dispatches (if any) keep their ids, so the new run finds them and creates
    nothing twice. Raises LookupError when the event is unknown, NotRetryable when not failed.
    """
    moment = time.time() if now is None else now
    with connection.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)
                status, body = pipe.hmget(key, "status", "event")
                if status is None:
                    raise LookupError(key)
                if status != b"failed":
                    raise NotRetryable(f"the event is {status.decode()}; only a failed event can be retried")
                pipe.multi()
                runs.uncount_failed(pipe, body)  # an imported event is pending in its run again
                pipe.hset(key, mapping={"status": "received", "attempts": 0, "retried_at": f"{moment:.3f}"})
                pipe.hincrby(key, "retries", 1)
                pipe.hdel(key, "reason", "error", "processed_at")
                pipe.zrem(STATUS_INDEX + "failed", key)
                pipe.zadd(RECEIVED, {key: moment})
                units.schedule(pipe, units.event_unit(key), moment)  # due now
                pipe.execute()
                return
            except redis.WatchError:
                continue
