"""The clock: one small loop per worker that turns due deadlines into RQ jobs.

Every second the clock that holds the leader lock (one at a time, across all workers):
- enqueues one `poll_due` job when some tracked dispatch is due (not one job per dispatch);
- re-enqueues every unit whose lease expired: an event, a dispatch to submit, or an outbox to
  deliver whose worker died, or whose retry time has come.

It runs as a child process of `revor-bridge worker`, started before the RQ worker so no thread
is forked, and exits when its parent is gone or on SIGTERM. A Redis outage pauses it (one log line)
and it goes on by itself when Redis is back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from typing import Any

from rq import Queue

from integration.jobs import leases
from integration.jobs.enqueue import enqueue_once
from integration.jobs.outage import REDIS_DOWN, Outage, describe
from integration.settings import Settings
from integration.storage import connect

log = logging.getLogger(__name__)
LEADER_KEY = "rb:clock:leader"

UNITS = (
    (leases.EVENT, "integration.jobs.inbound.process_event", lambda member: (member,)),
    (leases.SUBMIT, "integration.jobs.pipeline.submit_dispatch", lambda member: (member,)),
    (leases.DELIVER, "integration.jobs.pipeline.deliver", lambda member: tuple(member.split("|", 1))),
)


def tick(connection: Any, queue: Queue, token: str, lease_seconds: float) -> int:
    """One pass; returns how many jobs it enqueued (0 when another clock leads)."""
    if not connection.set(LEADER_KEY, token, nx=True, px=5000):
        if connection.get(LEADER_KEY) != token.encode():
            return 0
        connection.pexpire(LEADER_KEY, 5000)
    enqueued = 0
    now = time.time()
    if leases.has_due(connection, leases.TRACK):
        enqueued += enqueue_once(queue, "integration.jobs.pipeline.poll_due", (), f"poll-{int(now)}", result_ttl=60)
    for lease, func, args in UNITS:
        for member in leases.claim_due(connection, lease, hold_seconds=lease_seconds):
            digest = hashlib.sha256(member.encode()).hexdigest()[:24]
            enqueued += enqueue_once(queue, func, args(member), f"recover-{digest}-{int(now * 1000)}", result_ttl=60)
    return enqueued


def run(settings: Settings, interval: float = 1.0) -> None:
    """The loop of the clock process; a Redis outage of any length only pauses it."""
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

    while not stopping():
        try:
            tick(connection, queue, token, settings.lease_seconds)
        except REDIS_DOWN as exc:  # one line per outage, back-off, then on with the ticks
            if not outage.wait(exc, connection.ping, stopping):
                break
            continue
        except Exception as exc:  # a bug in one tick must not stop the clock
            log.warning("clock: %s", describe(exc))
        time.sleep(interval)
