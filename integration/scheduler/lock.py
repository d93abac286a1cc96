"""A short lock per unit (SET NX PX with a token), so two runs of one unit never overlap.

The scheduler already hands a unit to one worker at a time; the lock is the second belt for
what can still meet: a claim that ran out while its worker was only slow, or an operator's
retry while the unit runs.
"""

from __future__ import annotations

import os
import time

import redis

from integration.storage import run_script

RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
EXTEND = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


class Lock:
    def __init__(self, connection: redis.Redis, name: str, seconds: float) -> None:
        self.connection, self.key, self.ms = connection, f"rb:lock:{name}", int(seconds * 1000)
        self.token = f"{os.getpid()}-{time.time():.6f}-{id(self)}"

    def acquire(self, pipe: redis.client.Pipeline | None = None) -> bool:
        """True when taken; with `pipe`, queued there (its reply says)."""
        if pipe is not None:
            pipe.set(self.key, self.token, nx=True, px=self.ms)
            return True
        return bool(self.connection.set(self.key, self.token, nx=True, px=self.ms))

    def extend(self, pipe: redis.client.Pipeline | None = None) -> None:
        """Push our own lock's lease ahead (never another holder's); with `pipe`, queued there."""
        if pipe is not None:
            pipe.eval(EXTEND, 1, self.key, self.token, self.ms)
            return
        run_script(self.connection, EXTEND, (self.key,), (self.token, self.ms))

    def release(self, pipe: redis.client.Pipeline | None = None) -> None:
        """Let go (only of our own lock); with `pipe`, as one more command of the caller's round trip."""
        if pipe is not None:
            pipe.eval(RELEASE, 1, self.key, self.token)
            return
        run_script(self.connection, RELEASE, (self.key,), (self.token,))
