"""The clock: one small loop per worker that hands back lapsed claims and wakes the workers when a
timed unit falls due.

Every quarter second the clock that holds the leader lock (one at a time, across all workers):
- makes every unit whose claim ran out due again (its worker died or hung), keeping its attempt
  count, so it goes on with its schedule;
- queues one `run_due` job when some unit is due: a retry whose wait is over, a poll, a
  write-back. At most one such job per second: a job takes every due unit it can, in batches.

Events need no clock: the web queues a job when it stores new ones (one until a worker starts
it, see inbound/store.py); the clock is the safety net should that job be lost. No correctness
depends on RQ's own scheduler (the worker runs without it).

It runs as a child process of `revor-bridge worker`, started before anything else so no thread
is forked, and exits when its parent is gone or on SIGTERM. A Redis outage pauses it (one log
line) and it goes on by itself when Redis is back.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from typing import Any

from rq import Queue

from integration import logs
from integration.scheduler import units
from integration.scheduler.outage import REDIS_DOWN, Outage, describe
from integration.settings import Settings
from integration.storage import connect

log = logging.getLogger(__name__)
LEADER_KEY = "rb:clock:leader"
WOKEN_KEY = "rb:clock:woken"
INTERVAL = 0.25


def tick(connection: Any, queue: Queue, token: str) -> int:
    """One pass; returns how many jobs it queued (0 also when another clock leads)."""
    if not connection.set(LEADER_KEY, token, nx=True, px=5000):
        if connection.get(LEADER_KEY) != token.encode():
            return 0
        connection.pexpire(LEADER_KEY, 5000)
    now = time.time()
    recovered = units.recover(connection, now)
    if recovered:
        log.warning("clock: %d claim(s) ran out (a worker died or hung); due again: %s", len(recovered),
                    ", ".join(recovered[:5]) + (" ..." if len(recovered) > 5 else ""))
    first = units.next_due(connection)
    if first is None or first > now or not connection.set(WOKEN_KEY, "1", nx=True, px=1000):
        return 0
    units.wake(queue, f"clock-{uuid.uuid4().hex}")
    return 1


def run(settings: Settings, interval: float = INTERVAL) -> None:
    """The loop of the clock process; a Redis outage of any length only pauses it."""
    logs.set_process("clock")  # forked from the worker: its log lines, its name
    parent = os.getppid()
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides about Ctrl-C
    connection = connect(settings.redis_url or "")
    queue = Queue("default", connection=connection, serializer="json")
    token = f"{os.getpid()}-{time.time():.6f}"
    outage = Outage(log, "clock")

    def stopping() -> bool:
        return stop["now"] or os.getppid() != parent

    swept = False
    while not stopping():
        try:
            if not swept:  # the hourly retention sweep, if no worker scheduled it yet (it then keeps itself)
                units.ensure(connection, units.SWEEP_UNIT)
                swept = True
            tick(connection, queue, token)
        except REDIS_DOWN as exc:  # one line per outage, back-off, then on with the ticks
            if not outage.wait(exc, connection.ping, stopping):
                break
            continue
        except Exception as exc:  # a bug in one tick must not stop the clock
            log.warning("clock: %s", describe(exc))
        time.sleep(interval)
