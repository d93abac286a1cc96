"""Destination health (the circuit breaker, disabling on 410) and the dead-letter lists.

Health, per destination, in `rb:destination:<name>`: consecutive failures (an error status, no
answer, or no whole answer within the attempt's deadline); after FAILURES_TO_OPEN of them the
circuit opens and nothing is sent to it until `open_until`, when one delivery probes it (a
success closes the circuit, a failure reopens it for twice as long, up to MAX_COOLDOWN). A 410
Gone disables the destination until an operator enables it again.

Dead letters, per destination, in `rb:dead:<name>` (scored by time): messages that used up the
retry schedule, that could not be rendered, or that were meant for a disabled destination. A
replay puts the message back into its outbox with its `webhook-id` unchanged.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from integration.dispatches.state import expire_with, outbox_key
from integration.scheduler import units

FAILURES_TO_OPEN = 5
BASE_COOLDOWN = 60.0
MAX_COOLDOWN = 1800.0


def health_key(destination: str) -> str:
    return f"rb:destination:{destination}"


def probe_key(destination: str) -> str:
    """Held by the one delivery that tries a destination whose circuit has just closed again."""
    return f"rb:destination:{destination}:probe"


def dead_key(destination: str) -> str:
    return f"rb:dead:{destination}"


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def health(connection: redis.Redis, destination: str) -> dict[str, Any]:
    raw = _text(connection.hgetall(health_key(destination)))
    open_until = float(raw.get("open_until") or 0)
    return {"destination": destination, "disabled": raw.get("disabled") == "1",
            "disabled_reason": raw.get("disabled_reason") or None,
            "consecutive_failures": int(raw.get("failures") or 0),
            "circuit": "open" if open_until > time.time() else "closed", "open_until": open_until or None,
            "last_error": raw.get("last_error") or None,
            "last_success_at": float(raw["last_success_at"]) if raw.get("last_success_at") else None,
            "dead_letters": connection.zcard(dead_key(destination))}


def record_success(connection: redis.Redis, destination: str) -> None:
    connection.hset(health_key(destination), mapping={"failures": 0, "opens": 0, "open_until": 0,
                                                      "last_success_at": f"{time.time():.3f}"})


def record_failure(connection: redis.Redis, destination: str, outcome: str, scale: float = 1.0) -> float:
    """Count a failure; returns until when the circuit is open (0 when it stays closed)."""
    key = health_key(destination)
    failures = connection.hincrby(key, "failures", 1)
    connection.hset(key, "last_error", outcome)
    if failures < FAILURES_TO_OPEN:
        return 0.0
    open_until = float(connection.hget(key, "open_until") or 0)
    if open_until > time.time():  # open already: an attempt that was in flight when it opened
        return open_until
    opens = connection.hincrby(key, "opens", 1)
    cooldown = min(MAX_COOLDOWN, BASE_COOLDOWN * 2 ** (opens - 1)) * scale
    until = time.time() + cooldown
    connection.hset(key, "open_until", f"{until:.3f}")
    return until


def disable(connection: redis.Redis, destination: str, reason: str) -> None:
    connection.hset(health_key(destination), mapping={"disabled": 1, "disabled_reason": reason})


def enable(connection: redis.Redis, destination: str) -> None:
    connection.hset(health_key(destination), mapping={"disabled": 0, "disabled_reason": "", "failures": 0,
                                                      "opens": 0, "open_until": 0})


def dead_letter(connection: redis.Redis, destination: str, message_key: str, reason: str) -> None:
    message_id = message_key.removeprefix("rb:msg:")
    with connection.pipeline(transaction=True) as pipe:
        pipe.hset(f"{message_key}:dead", mapping={"reason": reason, "at": f"{time.time():.3f}"})
        expire_with(pipe, f"{message_key}:dead", message_key)  # it goes with its message
        pipe.zadd(dead_key(destination), {message_id: time.time()})
        pipe.execute()


def dead_letters(connection: redis.Redis, destination: str | None = None, since: float | None = None,
                 destinations: list[str] | None = None, limit: int = 100) -> list[dict[str, Any]]:
    names = [destination] if destination else (destinations or [])
    found: list[dict[str, Any]] = []
    for name in names:
        for message_id, at in connection.zrangebyscore(dead_key(name), since if since is not None else "-inf",
                                                        "+inf", start=0, num=limit, withscores=True):
            found.append(summary(connection, message_id.decode()) | {"dead_at": at})
    return sorted(found, key=lambda m: m["dead_at"])[:limit]


def dead_letter_page(connection: redis.Redis, names: list[str], page: int,
                     size: int) -> tuple[list[dict[str, Any]], int]:
    """One page of dead letters across `names`, newest first, and how many there are in all (the dashboard).

    One destination: its page straight from the sorted set. Several: the newest page*size of each, merged.
    """
    start = (page - 1) * size
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zrevrange(dead_key(name), start if len(names) == 1 else 0, start + size - 1, withscores=True)
            pipe.zcard(dead_key(name))
        replies = pipe.execute()
    merged = sorted(((at, member.decode()) for reply in replies[0::2] for member, at in reply), reverse=True)
    chosen = merged if len(names) == 1 else merged[start:start + size]
    return [summary(connection, message_id) | {"dead_at": at} for at, message_id in chosen], sum(replies[1::2])


def summary(connection: redis.Redis, message_id: str) -> dict[str, Any]:
    key = f"rb:msg:{message_id}"
    raw = connection.get(key)
    if raw is None:
        return {"id": message_id, "missing": True}
    message = json.loads(raw)
    attempts = _text(connection.hgetall(f"{key}:attempts"))
    dead = _text(connection.hgetall(f"{key}:dead"))
    return {"id": message_id, "destination": message["destination"], "dispatch_id": message["dispatch_id"],
            "sequence": message["sequence"], "type": message["body"].get("type"),
            "attempts": int(attempts.get("count") or 0), "last_outcome": attempts.get("last") or None,
            # Recorded when the attempt started (before sending), so a killed attempt is on record too.
            "last_attempt_at": float(attempts["at"]) if attempts.get("at") else None,
            "dead": bool(dead), "dead_reason": dead.get("reason") or None, "body": message["body"]}


def replay(connection: redis.Redis, message_id: str) -> dict[str, Any]:
    """Put a dead letter back into its outbox, due now; its webhook-id stays the same."""
    key = f"rb:msg:{message_id}"
    raw = connection.get(key)
    if raw is None:
        raise LookupError(f"no message {message_id!r}")
    message = json.loads(raw)
    destination = message["destination"]
    if connection.zscore(dead_key(destination), message_id) is None:
        raise LookupError(f"message {message_id!r} is not in the dead letters of {destination!r}")
    if health(connection, destination)["disabled"]:
        raise PermissionError(f"destination {destination!r} is disabled (410 Gone); enable it first")
    with connection.pipeline(transaction=True) as pipe:
        pipe.zrem(dead_key(destination), message_id)
        pipe.delete(f"{key}:dead", f"{key}:attempts")
        pipe.rpush(outbox_key(message["dispatch_id"], destination), key)
        units.schedule(pipe, units.deliver_unit(message["dispatch_id"], destination))  # due now
        pipe.execute()
    return summary(connection, message_id)
