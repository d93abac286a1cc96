"""The scheduler's claims against a real Redis: a run whose claim lapsed cannot touch the run that
took the unit over, and a worker asked to stop hands back what it has not started.

Found by a review of the new engine: `finish` and `again` used to act on the unit whatever claim
they came from, so a slow run finishing after its claim lapsed erased the newer run's claim (the
unit was then in neither `rb:due` nor `rb:claimed`: lost if that run died too); and a stopping
worker ran every unit it had queued for its threads, past Heroku's 30 s.
"""

from __future__ import annotations

import threading
import time

from integration.scheduler import units
from integration.scheduler.runner import DONE, Engine, Run, again


def test_a_run_whose_claim_lapsed_cannot_end_or_move_the_newer_claim(redis_db):
    unit = units.submit_unit("dsp_lapsed")
    units.schedule(redis_db, unit, 0)
    [(_, first)] = units.claim(redis_db, 10, 30)
    later = time.time() + 31
    assert units.recover(redis_db, now=later) == [unit]  # the first run's claim ran out
    [(_, second)] = units.claim(redis_db, 10, 30, now=later)
    assert (first, second) == (1, 2)

    units.finish(redis_db, unit, first)  # the slow first run ends late
    units.again(redis_db, unit, time.time() + 600, attempt=first)
    assert units.where(redis_db, unit)["claimed_until"] is not None  # still the second run's
    assert units.where(redis_db, unit)["due"] is None
    assert units.attempts(redis_db, unit) == 2

    units.again(redis_db, unit, time.time() + 5, attempt=second)  # the second run's own word counts
    assert units.where(redis_db, unit)["claimed_until"] is None and units.where(redis_db, unit)["due"]
    units.finish(redis_db, unit, first)  # and a stale finish cannot end the unit while it waits
    assert units.where(redis_db, unit)["due"] is not None and units.attempts(redis_db, unit) == 2


def test_a_finish_in_a_pipeline_checks_the_claim_too(redis_db):
    unit = units.event_unit("rb:event:generic:zapier:x")
    units.schedule(redis_db, unit, 0)
    [(_, first)] = units.claim(redis_db, 10, 30)
    with redis_db.pipeline(transaction=True) as pipe:
        units.finish(pipe, unit, first + 1)  # not this claim's number
        pipe.execute()
    assert units.where(redis_db, unit)["claimed_until"] is not None
    with redis_db.pipeline(transaction=True) as pipe:
        units.finish(pipe, unit, first)
        pipe.execute()
    assert units.where(redis_db, unit) == {"due": None, "claimed_until": None}
    assert units.attempts(redis_db, unit) == 0


def test_a_stopping_engine_hands_back_what_it_has_not_started(redis_db):
    """16 units due, 2 threads, each unit slow: the stop comes while 2 run; the rest go back, due."""
    stop = threading.Event()
    ran: list[str] = []

    def slow(run: Run):
        ran.append(run.unit.id)
        stop.set()
        time.sleep(0.5)
        return DONE

    for n in range(16):
        units.schedule(redis_db, units.poll_unit(f"dsp_{n}"), 0)
    engine = Engine(redis_db, {units.POLL: slow}, hold_seconds=30, threads=2, stopping=stop.is_set)
    try:
        started = time.monotonic()
        engine.drain()
        took = time.monotonic() - started
    finally:
        engine.close()
    assert len(ran) == 2 and took < 2.0, (ran, took)  # the two that had started, nothing more
    assert redis_db.zcard(units.CLAIMED) == 0  # no claim left to lapse
    assert redis_db.zcard(units.DUE) == 14  # due now for another worker...
    assert all(score <= time.time() for _, score in redis_db.zrange(units.DUE, 0, -1, withscores=True))
    assert redis_db.hlen(units.ATTEMPTS) == 0  # ...with the attempt they were charged handed back


def test_a_stopping_engine_does_not_run_follow_ups(redis_db):
    stop = threading.Event()
    ran: list[str] = []

    def submit(run: Run):
        ran.append(run.unit.id)
        follow = units.deliver_unit(run.unit.ref, "crm")
        units.schedule(redis_db, follow, 0)
        run.follow.append(follow)
        stop.set()  # SIGTERM arrives while the submit runs
        return DONE

    units.schedule(redis_db, units.submit_unit("dsp_f"), 0)
    engine = Engine(redis_db, {units.SUBMIT: submit, units.DELIVER: lambda run: again(0)}, hold_seconds=30,
                    threads=2, stopping=stop.is_set)
    try:
        engine.drain()
    finally:
        engine.close()
    assert ran == ["submit|dsp_f"]
    assert units.where(redis_db, "deliver|dsp_f|crm")["due"] is not None  # left due for the next worker
    assert redis_db.zcard(units.CLAIMED) == 0


def test_counts_are_exact_when_small_and_bounded_estimates_when_large(redis_db):
    now = 1_000_000.0
    redis_db.zadd(units.DUE, {f"event|rb:event:hubspot:{i}": now - 10 - i for i in range(30)})
    redis_db.zadd(units.DUE, {f"submit|dsp_{i}": now - 5 for i in range(10)})
    redis_db.zadd(units.DUE, {f"poll|dsp_{i}": now + 60 for i in range(20)})
    redis_db.zadd(units.CLAIMED, {f"deliver|dsp_{i}|crm": now + 30 for i in range(3)})

    exact = units.counts(redis_db, now=now)
    assert exact["event"] == {"due": 30, "waiting": 0, "claimed": 0}
    assert exact["submit"] == {"due": 10, "waiting": 0, "claimed": 0}
    assert exact["poll"] == {"due": 0, "waiting": 20, "claimed": 0}
    assert exact["deliver"] == {"due": 0, "waiting": 0, "claimed": 3}
    assert exact["estimated"] is False
    assert exact["oldest_due_seconds"] == 39.0

    # Reading at most 8 units per state: totals stay exact, the split by kind is scaled.
    sampled = units.counts(redis_db, now=now, sample=8)
    assert sampled["totals"] == {"due": 40, "waiting": 20, "claimed": 3}
    assert sampled["estimated"] is True
    assert sampled["event"]["due"] == 40  # the 8 earliest due are all events: scaled to the total
    assert sampled["poll"]["waiting"] == 20 and sampled["deliver"]["claimed"] == 3
    assert sampled["oldest_due_seconds"] == 39.0


def test_an_imports_rows_wait_in_the_bulk_lane_behind_everything_else_due(redis_db, tmp_path):
    """The importer stores a list's events in `rb:due:bulk`; a claim takes what is due in `rb:due`
    first (a webhook's event stored after the rows included) and fills the room left from the bulk
    lane. Before, the rows were due in `rb:due` by their store time, and a webhook arriving during
    an import waited behind every row stored before it: 2.6 s p50 against 9 ms without the import
    (1,000 rows pending, two workers; benchmarks/imports.py --latency)."""
    from rq import Queue

    from integration.imports import runner

    path = tmp_path / "list.csv"
    path.write_text("contact.email,contact.first_name\n" + "".join(f"l{i}@example.com,L{i}\n" for i in range(5)))
    options = runner.ImportOptions(path, "csv:list", wait=False)
    queue = Queue("default", connection=redis_db, serializer="json")
    assert runner.Runner(redis_db, queue, runner.prepare(options)).run().status == "stored"
    rows = [u.decode() for u in redis_db.zrange(units.BULK, 0, -1)]
    assert len(rows) == 5 and all(u.startswith("event|rb:event:csv:list:") for u in rows)
    assert redis_db.zcard(units.DUE) == 0

    now = time.time() + 1
    redis_db.zadd(units.DUE, {"event|rb:event:hubspot:later": now - 0.5, "submit|dsp_a": now - 0.7,
                              "poll|dsp_b": now + 60})
    assert units.counts(redis_db, now=now)["event"]["due"] == 6
    assert units.next_due(redis_db) == redis_db.zscore(units.BULK, rows[0])
    first = units.claim(redis_db, 3, 30, now=now)
    assert [u for u, _ in first] == ["submit|dsp_a", "event|rb:event:hubspot:later", rows[0]]
    assert [u for u, _ in units.claim(redis_db, 1, 30, units=[rows[4]], now=now)] == [rows[4]]  # by name
    assert [u for u, _ in units.claim(redis_db, 100, 30, now=now)] == rows[1:4]
    assert redis_db.zcard(units.BULK) == 0 and units.next_due(redis_db) == now + 60
