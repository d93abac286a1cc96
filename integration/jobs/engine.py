"""The one RQ job the bridge runs: `run_due`, which runs whatever units of work are due.

The web queues one when it stores new events and none is pending yet, the clock one when a
timed unit (a retry, a poll, a write-back) falls due, and a run that stopped at its time budget
one for what is left. Any of them may find that another job took the work already: it then ends at once.
"""

from __future__ import annotations

import logging
import threading
import uuid

import redis

from integration.context import JobContext, job_context
from integration.dispatches import retention
from integration.dispatches.create import process_event
from integration.dispatches.submit import submit
from integration.dispatches.track import poll
from integration.inbound.store import WAKE_PENDING_KEY
from integration.metrics import process_tally
from integration.scheduler import units
from integration.scheduler.outage import describe
from integration.scheduler.runner import Engine, Handler
from integration.writeback.deliver import deliver

log = logging.getLogger(__name__)
_engine: Engine | None = None
_built = threading.Lock()
stop_requested = threading.Event()  # set by the worker on SIGTERM: finish the batch, claim no more


def handlers(ctx: JobContext) -> dict[str, Handler]:
    """The handler of each kind of unit (a function, so tests can run the engine in-process)."""
    return {
        units.EVENT: lambda run: process_event(ctx, run),
        units.SUBMIT: lambda run: submit(ctx, run),
        units.POLL: lambda run: poll(ctx, run),
        units.DELIVER: lambda run: deliver(ctx, run),
        retention.SWEEP: retention.handler(ctx.redis, ctx.settings.dispatch_retention_seconds),
    }


def engine_for(ctx: JobContext) -> Engine:
    """One engine (and thread pool) per worker process, built on its first job."""
    global _engine
    with _built:
        if _engine is None:
            _engine = Engine(ctx.redis, handlers(ctx), hold_seconds=ctx.settings.lease_seconds,
                             threads=ctx.settings.worker_threads, stopping=stop_requested.is_set)
        return _engine


def flush_metrics(ctx: JobContext) -> None:
    """The Revor calls this run tallied, into Redis in one round trip (integration/metrics.py);
    with Redis away they wait for the next run."""
    try:
        process_tally().flush(ctx.redis)
    except redis.RedisError as error:
        log.warning("metrics: could not record this run's Revor calls yet (%s)", describe(error))


def run_due() -> int:
    ctx = job_context()
    # Before any claim: an event stored from now on queues the next job (inbound/store.py), one
    # stored before is due for this run. Either way none waits for a job that already started.
    ctx.redis.delete(WAKE_PENDING_KEY)
    try:
        ran, more = engine_for(ctx).drain()
    finally:
        flush_metrics(ctx)
    if more and not stop_requested.is_set():
        units.wake(ctx.queue, f"more-{uuid.uuid4().hex}")
    return ran
