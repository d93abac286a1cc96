"""The engine: claim what is due in batches, run each unit on a small thread pool, schedule its next
attempt.

One RQ job (jobs/engine.py) runs `Engine.drain`: it claims up to `batch` due units at once, in
the order they fell due, and runs them `threads` at a time, so a HubSpot batch of 100 events is
one job and the Revor calls of many units overlap (each still waits for a token from the shared
limiter). A stage may name units that its run just made due (a dispatch to submit after it was
built, status messages to deliver after a state change): they are claimed and run right after,
on the same thread, without waiting for another job.

What each unit does is the stages' business: a handler per kind returns what comes next for
the unit (done, or its next attempt time), and the engine records it. A handler that raises is
a bug or an outage: logged, and the unit is tried again on a back-off; the worker never dies of it.

Why it is safe to run many units in one non-forking process: a unit is claimed in Redis before
it runs, with a deadline that the engine pushes ahead while the unit runs. If the process dies
(SIGKILL, out of memory), the claims run out and the clock makes those units due again, with
their attempt counts; every stage is idempotent (dispatch ids are Revor's Idempotency-Key, state
changes check their sequence), so running a unit again never sends twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import redis

from integration import logs
from integration.scheduler import units
from integration.scheduler.outage import REDIS_DOWN, describe
from schemas.events import split_event_ref

log = logging.getLogger(__name__)

# After a handler raised (a bug, a dependency away): 1 s, 5 s, 30 s, 2 min, then every 10 min.
FAILURE_BACKOFF = [1, 5, 30, 120, 600]


@dataclass(frozen=True)
class Next:
    """What comes after a run: `at` None = the unit is done; else its next attempt time.
    `counted=False` gives back the attempt (a wait that is nobody's fault). `handled`: the stage
    recorded it itself."""

    at: float | None = None
    counted: bool = True
    handled: bool = False


DONE = Next()
HANDLED = Next(handled=True)


def again(at: float, counted: bool = True) -> Next:
    return Next(at=at, counted=counted)


def backoff(schedule: list[float], attempt: int) -> float:
    """The wait after the `attempt`-th attempt failed: the schedule's entry, its last one after."""
    return float(schedule[min(max(attempt, 1), len(schedule)) - 1])


def log_ids(unit: units.Unit) -> dict[str, str]:
    """The ids a unit's log lines carry (logs.py): its event's, or its dispatch's and destination."""
    if unit.kind == units.EVENT:  # rb:event:<source>:<event id>; generic:<hook> and csv:<name> named
        source, event_id = split_event_ref(unit.ref.removeprefix("rb:event:"))
        return {"source": source, "event_id": event_id}
    if unit.kind in (units.SUBMIT, units.POLL):
        return {"dispatch_id": unit.ref}
    if unit.kind == units.DELIVER:
        dispatch_id, _, destination = unit.ref.partition("|")
        return {"dispatch_id": dispatch_id, "destination": destination}
    return {}


@dataclass
class Run:
    unit: units.Unit
    attempt: int
    follow: list[str] = field(default_factory=list)  # due units to claim and run right after this one
    claimed: list[tuple[str, int]] = field(default_factory=list)  # claimed for this thread already (unit, attempt)


Handler = Callable[[Run], Next]


class Engine:
    def __init__(self, connection: redis.Redis, handlers: dict[str, Handler], *, hold_seconds: float,
                 threads: int = 8, batch: int = 100, budget: float = 10.0,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.connection, self.handlers = connection, handlers
        self.hold, self.threads, self.batch, self.budget, self.stopping = hold_seconds, threads, batch, budget, stopping
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="unit")
        self.in_flight: set[str] = set()  # claimed by this process and not yet recorded
        self.guard = threading.Lock()

    def drain(self) -> tuple[int, bool]:
        """Run due units until none is due, the budget is spent or a stop is asked for.

        Units flow rather than march in batches: whenever half the threads are free, the engine
        claims as many due units as there is room for (up to `batch`), so one slow unit (a
        receiver that takes its 15 s) never holds up the others. Claims of everything this
        process holds, running or queued for a thread, are pushed ahead every third of the hold.

        Returns (units run, whether to queue another job: the budget ran out with work left, so
        other jobs get their turn)."""
        started = last_extend = time.monotonic()
        ran, pending, exhausted = 0, set(), False
        queued: dict[Future, tuple[str, int]] = {}
        room = self.threads * 2
        while True:
            now = time.monotonic()
            open_for_more = not self.stopping() and now - started <= self.budget
            if open_for_more and not exhausted and (not pending or room - len(pending) >= self.threads):
                claimed = units.claim(self.connection, min(self.batch, room - len(pending)), self.hold)
                exhausted = not claimed
                if claimed:
                    with self.guard:  # held from now on, also while queued for a thread
                        self.in_flight.update(unit for unit, _ in claimed)
                    for unit, attempt in claimed:
                        future = self.pool.submit(self._run_chain, unit, attempt)
                        queued[future] = (unit, attempt)
                        pending.add(future)
            if self.stopping():  # SIGTERM: what has not started goes back, due now, for another worker
                for future in [f for f in pending if f.cancel()]:
                    pending.discard(future)
                    self._hand_back([queued.pop(future)])
            if not pending:
                return ran, not open_for_more and not self.stopping()
            done, pending = wait(pending, timeout=max(0.2, min(1.0, self.hold / 3)), return_when=FIRST_COMPLETED)
            ran += len(done)
            for future in done:
                queued.pop(future, None)
            if done:
                exhausted = False  # a finished unit may have made room for what fell due meanwhile
            if time.monotonic() - last_extend >= self.hold / 3:
                last_extend = time.monotonic()
                self._extend()

    def _extend(self) -> None:
        with self.guard:
            held = list(self.in_flight)
        try:
            units.extend(self.connection, held, self.hold)
        except REDIS_DOWN as error:  # the claims may lapse; a second run is harmless
            log.warning("engine: could not extend claims (%s)", describe(error))

    def _run_chain(self, unit_id: str, attempt: int) -> None:
        chain, started = [(unit_id, attempt)], False
        while chain:
            if started and self.stopping():
                self._hand_back(chain)  # SIGTERM: follow-ups not started go back, due now
                return
            current, number = chain.pop(0)
            started = True
            try:
                follow, claimed_already = self._run_one(current, number)
                if claimed_already:
                    with self.guard:
                        self.in_flight.update(unit for unit, _ in claimed_already)
                    chain += claimed_already
                if follow:
                    claimed = units.claim(self.connection, len(follow), self.hold, units=follow)
                    with self.guard:
                        self.in_flight.update(unit for unit, _ in claimed)
                    chain += claimed
            except redis.RedisError as error:  # they stay due or claimed; their claims bring them back
                log.warning("engine: after %s: %s", current, describe(error))
            except Exception:  # never silently: a future's exception is not looked at
                log.exception("engine: after %s", current)

    def _hand_back(self, claimed: list[tuple[str, int]]) -> None:
        for unit, attempt in claimed:
            try:
                units.again(self.connection, unit, time.time(), counted=False, attempt=attempt)
            except redis.RedisError as error:  # its claim brings it back
                log.warning("engine: could not hand %s back (%s)", unit, describe(error))
            with self.guard:
                self.in_flight.discard(unit)

    def _run_one(self, unit_id: str, attempt: int) -> tuple[list[str], list[tuple[str, int]]]:
        with logs.bind(**log_ids(units.Unit.parse(unit_id))):  # on every line the unit's run logs
            return self._run_unit(unit_id, attempt)

    def _run_unit(self, unit_id: str, attempt: int) -> tuple[list[str], list[tuple[str, int]]]:
        unit = units.Unit.parse(unit_id)
        with self.guard:
            self.in_flight.add(unit_id)
        try:
            handler = self.handlers.get(unit.kind)
            run = Run(unit, attempt)
            if handler is None:  # written by a newer version of the bridge: leave it for that one
                log.error("engine: no handler for %s; trying again in 5 minutes", unit_id)
                outcome = again(time.time() + 300, counted=False)
            else:
                try:
                    outcome = handler(run)
                except REDIS_DOWN as error:
                    log.warning("engine: %s stopped: Redis unreachable (%s); its claim brings it back",
                                unit_id, describe(error))
                    return [], run.claimed  # claimed ones run (and end) on their own
                except Exception:
                    wait_for = backoff(FAILURE_BACKOFF, attempt)
                    log.exception("engine: %s failed (attempt %d); next attempt in %.0f s", unit_id, attempt,
                                  wait_for)
                    outcome = again(time.time() + wait_for)
            self._record(unit_id, outcome, attempt)
            return run.follow, run.claimed
        finally:
            with self.guard:
                self.in_flight.discard(unit_id)

    def _record(self, unit_id: str, outcome: Next, attempt: int) -> None:
        """The unit's end or next time, only while this run's claim is still the unit's."""
        try:
            if outcome.handled:
                return
            if outcome.at is None:
                units.finish(self.connection, unit_id, attempt)
            else:
                units.again(self.connection, unit_id, outcome.at, counted=outcome.counted, attempt=attempt)
        except redis.RedisError as error:  # away, read-only in a failover, out of memory
            log.warning("engine: could not record %s (%s); its claim brings it back", unit_id, describe(error))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
