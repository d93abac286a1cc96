"""Leases: the backstop that makes every unit of work survive a killed worker.

Each unit (an event to process, a dispatch to submit, an outbox to deliver) sits in a sorted set
with a deadline. The job working on it pushes the deadline forward and removes the member when
done; a worker killed with SIGKILL leaves the member behind, and when its deadline passes the
clock (jobs/clock.py) enqueues the unit again. Every job is idempotent, so a second run is safe.
The set for tracking (`rb:track`) works the same way with the next poll time as its score.
"""

from __future__ import annotations

import time

import redis

EVENT = "rb:lease:event"
SUBMIT = "rb:lease:submit"
DELIVER = "rb:lease:deliver"
TRACK = "rb:track"

CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""


def hold(connection: redis.Redis, lease: str, member: str, seconds: float) -> None:
    connection.zadd(lease, {member: time.time() + seconds})


def release(connection: redis.Redis, lease: str, member: str) -> None:
    connection.zrem(lease, member)


def claim_due(connection: redis.Redis, lease: str, hold_seconds: float, limit: int = 100) -> list[str]:
    """Members whose deadline passed, each pushed `hold_seconds` ahead in the same step."""
    now = time.time()
    due = connection.eval(CLAIM, 1, lease, now, now + hold_seconds, limit)
    return [m.decode() if isinstance(m, bytes) else m for m in due]


def has_due(connection: redis.Redis, lease: str) -> bool:
    return bool(connection.zrangebyscore(lease, "-inf", time.time(), start=0, num=1))


class Lock:
    """A short per-unit lock (SET NX PX with a token), so two runs of one unit never overlap."""

    def __init__(self, connection: redis.Redis, name: str, seconds: float) -> None:
        self.connection, self.key, self.ms = connection, f"rb:lock:{name}", int(seconds * 1000)
        self.token = f"{time.time():.6f}-{id(self)}"

    def acquire(self) -> bool:
        return bool(self.connection.set(self.key, self.token, nx=True, px=self.ms))

    def release(self) -> None:
        self.connection.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
                             "end return 0", 1, self.key, self.token)
