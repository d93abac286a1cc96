"""Riding out a Redis outage: wait with back-off, one log line when it starts, one when it ends.

The worker, its RQ scheduler and the clock all need Redis for everything they do. When it goes
away (a restart, a failover, a network cut) they must neither exit nor print a traceback every
second: each waits, probing with growing pauses, and carries on by itself once Redis answers.
redis-py already retries one command a few times within about five seconds; this is for longer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

# What "Redis is not there" looks like; any other error is a bug and is raised as usual.
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def describe(error: BaseException) -> str:
    """One short line (no URL is in redis-py's messages, only host and port)."""
    text = " ".join(str(error).split())[:160]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Outage:
    """One process's view of Redis: logs once per outage and says how long to wait between probes."""

    def __init__(self, log: logging.Logger, who: str, first: float = 0.5, cap: float = 10.0,
                 level: int = logging.WARNING) -> None:
        self.log, self.who, self.first, self.cap, self.level = log, who, first, cap, level
        self.since: float | None = None
        self.delay = first

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def down(self, error: BaseException) -> float:
        """Note a failed call or probe; returns the pause before the next probe."""
        if self.since is None:
            self.since, self.delay = time.monotonic(), self.first
            self.log.log(self.level, "%s: Redis unreachable (%s); waiting for it, with back-off", self.who,
                         describe(error))
        else:
            self.delay = min(self.cap, self.delay * 2)
        return self.delay

    def up(self) -> None:
        """Redis answered: end the outage (logged once) and reset the back-off."""
        if self.since is not None:
            self.log.log(self.level, "%s: Redis is back after %.1f s; carrying on", self.who,
                         time.monotonic() - self.since)
            self.since, self.delay = None, self.first

    def wait(self, error: BaseException, ping: Callable[[], object], stopping: Callable[[], bool],
             sleep: Callable[[float], None] = time.sleep) -> bool:
        """Block until `ping()` succeeds (True) or `stopping()` says to give up (False)."""
        pause = self.down(error)
        while not stopping():
            until = time.monotonic() + pause
            while not stopping() and time.monotonic() < until:  # in slices: a stop is noticed at once
                sleep(max(0.0, min(0.2, until - time.monotonic())))
            if stopping():
                break
            try:
                ping()
            except REDIS_DOWN as again:
                pause = self.down(again)
                continue
            self.up()
            return True
        return False
