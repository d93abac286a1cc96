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

    def acquire(self) -> bool:
        return bool(self.connection.set(self.key, self.token, nx=True, px=self.ms))

    def extend(self) -> None:
        run_script(self.connection, EXTEND, (self.key,), (self.token, self.ms))

    def release(self) -> None:
        run_script(self.connection, RELEASE, (self.key,), (self.token,))
