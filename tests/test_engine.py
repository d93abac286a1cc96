"""Exactly once on the one-scheduler engine (issue 10, items 1 and 5).

Everything is real: a redis-server, the web app over HTTP, `revor-bridge worker` processes killed
with SIGKILL (worker and clock: the whole process group), the Revor sandbox over HTTP. What these
tests prove:

- a worker killed while a dispatch waits out a Revor outage leaves a unit that goes out at its
  next planned attempt, with its attempt count continued (the old engine re-queued it as a new RQ
  job without retries: it went out at once, or 300 s later);
- a worker killed in a 10,000-event burst loses no event and makes no second dispatch;
- a unit waiting behind a backlog is never "recovered" (the old engine's leases ran out while
  events merely waited in the queue), and RQ's scheduler plays no part;
- every Redis script names in KEYS each key it touches (read statically from the source, and
  watched at run time with MONITOR).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import requests

from integration.dispatches.state import ALL_INDEX, STATUS_INDEX
from integration.inbound.records import STATUS_INDEX as EVENT_STATUS_INDEX
from integration.inbound.store import event_key
from integration.scheduler import units
from integration.settings import SANDBOX_API_KEY
from integration.storage import free_port
from tests.conftest import SALESFORCE_PATH, cli_env, configure, sandbox_requests, sandbox_tasks, wait_for_port
from tests.test_pipeline import RULES, ZAP_HEADERS, _stack, _stop, kill_worker_and_horse, post_all_fixtures, settle, zap

ROOT = Path(__file__).resolve().parent.parent
SF_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}
ORG = "00D5e000000Fxq2EAC"

# One rule, no write-backs: the burst tests count events, dispatches and Revor tasks only.
BURST_RULES = """\
version: 1
accounts: {mail: connect_account_sandbox_email}
rules:
  - name: salesforce-won
    when: {source: salesforce, type: deal.stage_changed, match: {deal.StageName: Closed Won}}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "owner+{{ deal.Id | lower }}@example.com"}
      content: {subject: "Won: {{ deal.Name }}", text: "Congratulations on {{ deal.Name }}"}
"""


# ---- a burst: Salesforce outbound messages of 100 notifications (no hydration) ------------------


def notification_id(number: int) -> str:
    return f"04l{number:015d}"


def salesforce_message(first: int, count: int) -> bytes:
    """One outbound message with `count` won opportunities, each its own record and event."""
    notes = "".join(f"""
   <Notification>
    <Id>{notification_id(n)}</Id>
    <sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>006{n:015d}</sf:Id>
     <sf:LastModifiedDate>2026-01-01T11:59:55.000Z</sf:LastModifiedDate>
     <sf:Name>Deal {n}</sf:Name>
     <sf:StageName>Closed Won</sf:StageName>
    </sObject>
   </Notification>""" for n in range(first, first + count))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{ORG}</OrganizationId>
   <ActionId>04k5e000000Kq7PAAS</ActionId>
   <SessionId xsi:nil="true"/>{notes}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>""".encode()


def post_burst(bridge, events: int, senders: int = 4) -> None:
    """`events` events in messages of 100, from `senders` threads at once."""
    starts = list(range(0, events, 100))
    failures: list[str] = []

    def send(mine: list[int]) -> None:
        with requests.Session() as session:
            for first in mine:
                body = salesforce_message(first, min(100, events - first))
                answer = session.post(bridge.url + SALESFORCE_PATH, data=body, headers=SF_HEADERS, timeout=30)
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=send, args=(starts[i::senders],)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]


@contextmanager
def sandbox_process(tmp_path: Path) -> Iterator[str]:
    """The sandbox in a process of its own (`revor-bridge sandbox`), so that the web app in this
    process does not share its interpreter lock with 10,000 Revor calls. Its clock runs at real
    speed: the tasks are paced minutes apart, so no dispatch is polled during the test."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "integration", "sandbox", "--port", str(port), "--time-scale", "1",
                             "--rate-limit", "0", "--seed", "7"], env=cli_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "sandbox.txt", "w"),
                            start_new_session=True)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def stack(tmp_path, make_bridge, redis_url, redis_db):
    """The pipeline tests' stack (tests/test_pipeline.py): in-process sandbox, receiver, web app."""
    with _stack(tmp_path, make_bridge, redis_url, redis_db, RULES, {}) as started:
        yield started


@pytest.fixture
def burst_stack(tmp_path, make_bridge, redis_url, redis_db):
    """Web app, sandbox process and a way to start (and kill) `revor-bridge worker` processes."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(BURST_RULES)
    workers: list[subprocess.Popen] = []
    with sandbox_process(tmp_path) as sandbox_url:
        env = cli_env(REDIS_URL=f"{redis_url}/1", REVOR_BASE_URL=sandbox_url + "/api/v1", RULES_FILE=str(rules),
                      BRIDGE_LEASE_SECONDS="3", REVOR_MAX_RPS="1000", LOG_LEVEL="WARNING")

        def start_worker() -> subprocess.Popen:
            proc = subprocess.Popen([sys.executable, "-m", "integration", "worker"], env=env, cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"worker{len(workers)}.log", "w"),
                                    start_new_session=True)
            workers.append(proc)
            return proc

        try:
            yield {"bridge": make_bridge(rules_file=rules), "sandbox_url": sandbox_url, "redis": redis_db,
                   "start_worker": start_worker, "tmp": tmp_path}
        finally:
            _stop(workers)


def logs(tmp: Path) -> str:
    return "\n".join(f"--- {name}\n" + (tmp / name).read_text()[-3000:] for name in sorted(os.listdir(tmp))
                     if name.endswith(".log"))


def wait_processed(stack, events: int, timeout: float) -> float:
    """Until every event is processed and no dispatch is pending; returns the seconds it took."""
    redis_db, started = stack["redis"], time.monotonic()
    while time.monotonic() - started < timeout:
        done = redis_db.zcard(EVENT_STATUS_INDEX + "processed")
        if done >= events and redis_db.zcard(ALL_INDEX) >= events and not redis_db.zcard(STATUS_INDEX + "pending"):
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{redis_db.zcard(EVENT_STATUS_INDEX + 'processed')} of {events} processed, "
                         f"{redis_db.zcard(ALL_INDEX)} dispatches, {redis_db.zcard(STATUS_INDEX + 'pending')} "
                         f"pending after {timeout} s\n{logs(stack['tmp'])}")


def assert_exactly_once(stack, events: int) -> dict[str, str]:
    """Every event processed into exactly one dispatch of its own; one Revor task per dispatch."""
    redis_db = stack["redis"]
    keys = [event_key("salesforce", notification_id(n)) for n in range(events)]
    with redis_db.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, "status", "dispatches", "attempts")
        rows = pipe.execute()
    statuses = {(row[0] or b"missing").decode() for row in rows}
    assert statuses == {"processed"}, statuses
    per_event = [__import__("json").loads(row[1]) for row in rows]
    assert all(len(ids) == 1 for ids in per_event), [ids for ids in per_event if len(ids) != 1][:5]
    dispatch_ids = [ids[0] for ids in per_event]
    assert len(set(dispatch_ids)) == events
    assert redis_db.zcard(ALL_INDEX) == events  # no dispatch beyond those the events name
    tasks = requests.get(stack["sandbox_url"] + "/_sandbox/tasks", timeout=60).json()["items"]
    task_ids = [task["body"]["metadata"]["dispatch_id"] for task in tasks]
    assert len(task_ids) == len(set(task_ids)) == events, (len(task_ids), len(set(task_ids)))
    assert set(task_ids) == set(dispatch_ids)
    return {key: (row[2] or b"0").decode() for key, row in zip(keys, rows, strict=True)}


# ---- RQ's scheduler: never started, never needed -----------------------------------------------


@contextmanager
def watch_keys(redis_db: redis.Redis, pattern: str) -> Iterator[list[str]]:
    """Every key matching `pattern` that is written while the block runs (keyspace notifications)."""
    db = redis_db.connection_pool.connection_kwargs.get("db", 0)
    before = redis_db.config_get("notify-keyspace-events")["notify-keyspace-events"]
    redis_db.config_set("notify-keyspace-events", "KA")
    seen: list[str] = []
    pubsub = redis_db.pubsub()
    pubsub.psubscribe(f"__keyspace@{db}__:{pattern}")
    pubsub.get_message(timeout=1.0)  # the subscription's confirmation
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                seen.append(message["channel"].decode().split(":", 1)[1])

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()
        pubsub.close()
        redis_db.config_set("notify-keyspace-events", before)


def test_a_backlog_drains_without_a_recovery_and_without_rq_scheduler(burst_stack):
    """2,000 events wait behind each other with 3 s claims: none is "recovered" (the old engine's
    leases ran out while events only waited in the queue: 4,101 recover jobs for 2,000 events),
    each event runs once, and RQ's scheduler writes no key (its lock and its scheduled registry)."""
    stack = burst_stack
    redis_db = stack["redis"]
    events = 2000
    with watch_keys(redis_db, "rq:schedule*") as scheduler_keys:
        post_burst(stack["bridge"], events)
        assert redis_db.zcard(units.DUE) >= events * 0.5  # a backlog: posted faster than drained
        stack["start_worker"]()
        took = wait_processed(stack, events, timeout=120)
    attempts = assert_exactly_once(stack, events)
    assert set(attempts.values()) == {"1"}, {k: v for k, v in attempts.items() if v != "1"}  # each ran once
    assert int(redis_db.get(units.RECOVERED) or 0) == 0, logs(stack["tmp"])
    assert scheduler_keys == []
    assert not redis_db.keys("rq:scheduler*") and not redis_db.keys("rq:scheduled:*")
    print(f"\n{events} events drained by one worker in {took:.1f} s")


def test_sigkill_in_a_10000_event_burst_loses_nothing_and_dispatches_nothing_twice(burst_stack):
    """100 Salesforce messages of 100 events; one worker drains them and is killed with SIGKILL
    (worker and clock) while it holds claims (it is the only worker then, so the claims are its
    own); two workers take over: every event is processed into exactly one dispatch, and Revor
    has one task per dispatch."""
    stack = burst_stack
    redis_db = stack["redis"]
    events = 10_000
    started = time.monotonic()
    victim = stack["start_worker"]()
    post_burst(stack["bridge"], events)
    posted = time.monotonic() - started
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and redis_db.zcard(EVENT_STATUS_INDEX + "processed") < events * 0.3:
        time.sleep(0.05)
    held = redis_db.zrange(units.CLAIMED, 0, -1)
    kill_worker_and_horse(victim)
    processed_at_kill = redis_db.zcard(EVENT_STATUS_INDEX + "processed")
    assert held and processed_at_kill < events, "the kill came too late to test anything"
    stack["start_worker"]()
    stack["start_worker"]()
    wait_processed(stack, events, timeout=240)
    took = time.monotonic() - started
    assert_exactly_once(stack, events)
    recovered = int(redis_db.get(units.RECOVERED) or 0)
    assert recovered >= 1  # the killed worker's claims were handed back
    # Nothing left behind: no event or submit still waits, runs or counts attempts (what does is
    # the tracking of accepted dispatches, and housekeeping).
    # A claim the killed worker held on a unit it had finished comes back once it runs out (a few
    # seconds), and that run only ends it: wait for it rather than race it.
    def left_over() -> list[bytes]:
        found = [*redis_db.zrange(units.DUE, 0, -1), *redis_db.zrange(units.CLAIMED, 0, -1),
                 *redis_db.hkeys(units.ATTEMPTS)]
        return [unit for unit in found if unit.decode().partition("|")[0] in (units.EVENT, units.SUBMIT)]
    deadline = time.monotonic() + 30
    while left_over() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left_over(), left_over()[:5]
    print(f"\n{events} events: posted in {posted:.1f} s, all processed and submitted {took:.1f} s after the "
          f"first post; killed at {processed_at_kill} processed holding {len(held)} claims; {recovered} recovered")


# ---- SIGKILL during a Revor outage: the schedule goes on where it was ---------------------------


def revor_posts(sandbox) -> list[dict]:
    return [r for r in sandbox_requests(sandbox) if r["method"] == "POST"]


def wait_for(condition, timeout: float, what: str, stack=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}\n{logs(stack['tmp']) if stack else ''}")


def test_sigkill_while_a_submit_waits_out_a_revor_outage_keeps_its_schedule(stack):
    """Revor answers 503 to every POST; the submit fails twice (next attempt 10 s after the
    second, SUBMIT_BACKOFF); the worker and its clock are killed while it waits; a new worker
    starts and the outage ends: the dispatch goes out at that planned time, as attempt 3, once.
    The old engine re-queued a recovered submit as a new RQ job without retries."""
    sandbox, redis_db = stack["sandbox"], stack["redis"]
    configure(sandbox, error_rate=1.0)
    first = stack["start_worker"]()
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(1), ZAP_HEADERS).status_code == 200

    def second_failure_scheduled():
        posts = revor_posts(sandbox)
        if len(posts) < 2:
            return None
        due = redis_db.zscore(units.DUE, units.submit_unit(posts[0]["idempotency_key"]))
        return (posts, due) if due and due > posts[1]["time"] else None

    posts, planned = wait_for(second_failure_scheduled, 30, "two failed submits", stack)
    dispatch_id = posts[0]["idempotency_key"]
    unit = units.submit_unit(dispatch_id)
    assert [p["status"] for p in posts] == [503, 503]
    assert 10 <= planned - posts[1]["time"] <= 11.5  # SUBMIT_BACKOFF after attempt 2: 10 s
    assert units.attempts(redis_db, unit) == 2 and redis_db.zscore(units.CLAIMED, unit) is None

    kill_worker_and_horse(first)
    killed_at = time.time()
    assert planned - killed_at > 5, "killed too late: the unit was about to run"
    stack["start_worker"]()
    configure(sandbox, error_rate=0.0)  # the outage ends before the next planned attempt
    found = settle(stack, expected=1, timeout=60)

    posts = revor_posts(sandbox)
    assert [p["status"] for p in posts] == [503, 503, 202], posts
    sent = posts[2]["time"]
    assert planned - 0.05 <= sent <= planned + 2.5, (sent - planned)  # at its next planned attempt
    assert sent - killed_at < 30  # not 300 s later
    assert found[dispatch_id]["submit_attempts"] == "3" and found[dispatch_id]["status"] == "succeeded"
    assert [t["body"]["metadata"]["dispatch_id"] for t in sandbox_tasks(sandbox)] == [dispatch_id]
    assert int(redis_db.get(units.RECOVERED) or 0) == 0  # nothing was claimed when it died: nothing to recover
    print(f"\nkilled {planned - killed_at:.1f} s before the planned attempt; sent {sent - planned:+.2f} s from it")


def test_sigkill_during_the_submit_hands_the_unit_back_when_its_claim_runs_out(stack):
    """The kill lands while the POST is in flight (the sandbox answers after 2.5 s): the claim
    (BRIDGE_LEASE_SECONDS=3) runs out, the new worker's clock makes the unit due again with its
    attempt count, and the dispatch goes out once, as attempt 3, never before the claim ran out."""
    sandbox, redis_db = stack["sandbox"], stack["redis"]
    configure(sandbox, error_rate=1.0)
    first = stack["start_worker"]()
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(2), ZAP_HEADERS).status_code == 200
    [failed] = wait_for(lambda: revor_posts(sandbox), 30, "the first failed submit", stack)
    configure(sandbox, latency_ms=2500)  # attempt 2, 2 s later, stays in flight
    dispatch_id = failed["idempotency_key"]
    unit = units.submit_unit(dispatch_id)
    wait_for(lambda: units.attempts(redis_db, unit) == 2 and redis_db.zscore(units.CLAIMED, unit), 30,
             "attempt 2 under way", stack)
    time.sleep(0.3)
    claimed_until = redis_db.zscore(units.CLAIMED, unit)
    kill_worker_and_horse(first)
    assert units.attempts(redis_db, unit) == 2 and claimed_until > time.time()
    stack["start_worker"]()
    # The dead worker's POST is still in the sandbox's hands; it gets its 503, which nobody reads.
    wait_for(lambda: len(revor_posts(sandbox)) == 2, 10, "the orphaned POST's answer", stack)
    configure(sandbox, error_rate=0.0, latency_ms=0)
    found = settle(stack, expected=1, timeout=60)

    posts = revor_posts(sandbox)
    assert [p["status"] for p in posts] == [503, 503, 202], posts
    sent = posts[2]["time"]
    # Not before the claim ran out (no two sends at once), and soon after: the clock's lead lock
    # of the dead worker lapses within 5 s.
    assert claimed_until <= sent <= claimed_until + 6.5, sent - claimed_until
    assert found[dispatch_id]["submit_attempts"] == "3" and found[dispatch_id]["status"] == "succeeded"
    assert int(redis_db.get(units.RECOVERED) or 0) == 1
    assert [t["body"]["metadata"]["dispatch_id"] for t in sandbox_tasks(sandbox)] == [dispatch_id]
    print(f"\nsent {sent - claimed_until:.2f} s after the dead worker's claim ran out")


# ---- one scheduler: a 429, a retry and a recovery are each the unit's next time in rb:due ---------


def assert_no_rq_schedule(redis_db: redis.Redis) -> None:
    from rq.registry import ScheduledJobRegistry

    assert ScheduledJobRegistry("default", connection=redis_db).count == 0
    assert not redis_db.keys("rq:schedule*")


def test_a_429_and_a_retry_are_each_the_units_next_time_in_rb_due(stack):
    sandbox, redis_db = stack["sandbox"], stack["redis"]
    from rq import Worker

    stack["start_worker"]()
    wait_for(lambda: Worker.all(connection=redis_db), 30, "the worker", stack)
    configure(sandbox, rate_limit=1, rate_window_ms=6000)
    window = time.time()
    taken = requests.get(sandbox.api_url + "/connect/accounts", headers={"Authorization": f"Bearer {SANDBOX_API_KEY}"},
                         timeout=5)
    assert taken.status_code == 200  # the window's one request: the submit gets a 429
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(3), ZAP_HEADERS).status_code == 200
    [limited] = wait_for(lambda: revor_posts(sandbox), 30, "the rate-limited submit", stack)
    assert limited["status"] == 429
    unit = units.submit_unit(limited["idempotency_key"])
    due = wait_for(lambda: redis_db.zscore(units.DUE, unit), 5, "the unit's next time", stack)
    assert window + 6 - 0.1 <= due <= limited["time"] + 6 + 1.5  # when Revor's window ends (Retry-After)
    # Revor's pace is not a failure: the pause is waited out without counting an attempt, so a
    # burst of 429s never pushes a dispatch onto the minutes-long back-off of real errors.
    assert units.attempts(redis_db, unit) == 0 and redis_db.zscore(units.CLAIMED, unit) is None
    assert_no_rq_schedule(redis_db)
    posts = wait_for(lambda: [p for p in revor_posts(sandbox) if p["status"] == 202], 30, "the submit", stack)
    assert due - 0.05 <= posts[0]["time"] <= due + 2.5
    configure(sandbox, rate_limit=0)

    configure(sandbox, error_rate=1.0)
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(4), ZAP_HEADERS).status_code == 200
    [failed] = wait_for(lambda: [p for p in revor_posts(sandbox) if p["status"] == 503], 30, "a 503", stack)
    unit = units.submit_unit(failed["idempotency_key"])
    due = wait_for(lambda: redis_db.zscore(units.DUE, unit), 5, "the unit's next time", stack)
    assert 2 <= due - failed["time"] <= 3  # SUBMIT_BACKOFF after attempt 1: 2 s
    assert units.attempts(redis_db, unit) == 1
    assert_no_rq_schedule(redis_db)
    configure(sandbox, error_rate=0.0)
    sent = wait_for(lambda: [p for p in revor_posts(sandbox)
                             if p["status"] == 202 and p["idempotency_key"] == failed["idempotency_key"]],
                    30, "the retried submit", stack)
    assert due - 0.05 <= sent[0]["time"] <= due + 2.5
    settle(stack, expected=2)
    assert len(sandbox_tasks(sandbox)) == 2 and int(redis_db.get(units.RECOVERED) or 0) == 0


def test_a_lapsed_claim_is_made_due_again_with_its_attempt_count_and_waiting_is_not_lapsing(redis_db):
    """The clock's tick (the same function every worker's clock runs) on a claim whose worker
    died: the unit is due again now, with its attempt count; units that only wait in rb:due,
    however long, are left alone; one wake job is queued, and nothing goes to RQ's scheduler."""
    from rq import Queue

    from integration.scheduler import clock

    now = time.time()
    dead = units.event_unit("rb:event:generic:zapier:dead-worker")
    waiting = units.event_unit("rb:event:generic:zapier:behind-a-backlog")
    later = units.submit_unit("d_retry_in_ten_minutes")
    units.schedule(redis_db, dead, at=now - 1)
    assert units.claim(redis_db, 10, hold_seconds=0.3, units=[dead]) == [(dead, 1)]  # its worker dies now
    units.schedule(redis_db, waiting, at=now - 3600)  # due for an hour, never claimed
    units.schedule(redis_db, later, at=now + 600)
    queue = Queue("default", connection=redis_db, serializer="json")
    assert clock.tick(redis_db, queue, "clock-a") == 1  # something is due: one wake job
    assert units.where(redis_db, dead) == {"due": None, "claimed_until": pytest.approx(now + 0.3, abs=0.2)}
    time.sleep(0.4)
    redis_db.delete(clock.WOKEN_KEY)
    before = time.time()
    assert clock.tick(redis_db, queue, "clock-a") == 1
    assert before <= redis_db.zscore(units.DUE, dead) <= time.time()  # due again, now
    assert redis_db.zscore(units.CLAIMED, dead) is None and units.attempts(redis_db, dead) == 1
    assert redis_db.zscore(units.DUE, waiting) == pytest.approx(now - 3600)  # untouched
    assert redis_db.zscore(units.DUE, later) == pytest.approx(now + 600)
    assert int(redis_db.get(units.RECOVERED)) == 1
    assert clock.tick(redis_db, queue, "clock-b") == 0  # another worker's clock does not lead meanwhile
    assert units.claim(redis_db, 10, hold_seconds=30, units=[dead]) == [(dead, 2)]  # the count goes on
    assert queue.count == 2 and {job.func_name for job in queue.jobs} == {"integration.jobs.engine.run_due"}
    assert_no_rq_schedule(redis_db)


# ---- every Redis script names in KEYS each key it touches ----------------------------------------

PACKAGE = ROOT / "integration"
KEYLESS = {"TIME", "PING", "ECHO", "INFO", "DBSIZE", "RANDOMKEY", "LASTSAVE", "ROLE"}
ALL_ARGS_ARE_KEYS = {"DEL", "UNLINK", "EXISTS", "MGET", "TOUCH", "WATCH", "SINTER", "SUNION", "SDIFF", "PFCOUNT"}
TWO_KEYS = {"RENAME", "RENAMENX", "RPOPLPUSH", "LMOVE", "SMOVE", "COPY", "BLMOVE"}
SCRIPT_CALLS = {"eval", "eval_ro", "register_script", "script_load"}


def _strings_outside_lua_strings(code: str) -> str:
    """The script with its comments removed (a `--` inside a quoted string stays)."""
    out, i, quote = [], 0, None
    while i < len(code):
        char = code[i]
        if quote:
            out.append(char)
            if char == "\\":
                out.append(code[i + 1:i + 2])
                i += 1
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
            out.append(char)
        elif code.startswith("--", i):
            while i < len(code) and code[i] != "\n":
                i += 1
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _split_args(code: str, start: int) -> list[str]:
    """The comma-separated arguments of the call whose `(` is at `start`, at the top level."""
    args, depth, quote, current, i = [], 0, None, [], start + 1
    while i < len(code):
        char = code[i]
        if quote:
            if char == "\\":
                current.append(code[i:i + 2])
                i += 2
                continue
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            if depth == 0:
                args.append("".join(current).strip())
                return args
            depth -= 1
        elif char == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
            i += 1
            continue
        current.append(char)
        i += 1
    raise ValueError("unbalanced call")


KEYS_ITEM = re.compile(r"KEYS\s*\[[^\[\]]+\]")
NAME = r"(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*"
# `a, b = ...`, `local a = ...`, `t.field = ...` and a table constructor's `field = ...`; not `==`, `~=`, `<=`.
ASSIGNMENT = re.compile(rf"(?<![\w.=~<>])(?:local\s+)?({NAME}(?:\s*,\s*{NAME})*)\s*=(?!=)(?=\s*([^\n]*))")
KEYS_LOOP = re.compile(r"for\s+\w+\s*,\s*(\w+)\s+in\s+i?pairs\s*\(\s*KEYS\s*\)")
STATEMENT_END = re.compile(r"\s+(?:then|do|end|else|elseif|return|local|if|for|while|redis\.\w+)\b")


def _values(text: str) -> list[str]:
    """The expressions of an assignment's right side (up to the end of its statement or line)."""
    cut = STATEMENT_END.search(text)
    text = text[:cut.start()] if cut else text
    try:
        return _split_args("(" + text + ")", 0)
    except ValueError:  # a table constructor that goes on over the next lines
        return [text.strip()]


def _key_names(code: str) -> set[str]:
    """Names (variables, and table fields: `e.key` counts as `key`) that only ever hold a key
    from KEYS: assigned KEYS[n] every time they are assigned, or the value of a loop over KEYS."""
    holds: dict[str, set[bool]] = {}
    for match in ASSIGNMENT.finditer(code):
        names = [name.strip().rsplit(".", 1)[-1] for name in match.group(1).split(",")]
        values = _values(match.group(2))
        for index, name in enumerate(names):
            value = values[index] if index < len(values) else ""
            holds.setdefault(name, set()).add(bool(KEYS_ITEM.fullmatch(value)))
    for name in KEYS_LOOP.findall(code):
        holds.setdefault(name, set()).add(True)
    return {name for name, kinds in holds.items() if kinds == {True}}


def undeclared_keys(script: str) -> list[str]:
    """Each `redis.call`/`redis.pcall` whose key is not taken from KEYS, as `COMMAND <key expression>`."""
    code = _strings_outside_lua_strings(script)
    names = _key_names(code)
    problems = []
    for call in re.finditer(r"redis\.p?call\s*\(", code):
        args = _split_args(code, call.end() - 1)
        literal = re.fullmatch(r"""(['"])(\w+)\1""", args[0])
        if literal is None:
            problems.append(f"{args[0]} (a command that is not a literal cannot be checked)")
            continue
        command = literal.group(2).upper()
        if command in KEYLESS:
            continue
        count = len(args) - 1 if command in ALL_ARGS_ARE_KEYS else 2 if command in TWO_KEYS else 1
        for key in args[1:1 + count] or ["(none)"]:
            if not (KEYS_ITEM.fullmatch(key) or re.fullmatch(NAME, key) and key.rsplit(".", 1)[-1] in names):
                problems.append(f"{command} {key}")
    return problems


def _constants() -> dict[str, str]:
    """Module-level string constants of the package, by name (for `.eval(NAME, ...)`)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str):
                found.update({target.id: node.value.value for target in node.targets if isinstance(target, ast.Name)})
    return found


def _with_function(node: ast.AST, function: str) -> Iterator[tuple[ast.AST, str]]:
    """Every node below `node`, with the name of the function it is in."""
    for child in ast.iter_child_nodes(node):
        inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
        yield child, inner
        yield from _with_function(child, inner)


def package_scripts() -> tuple[dict[str, str], list[str]]:
    """Every Lua script in the package, `path::NAME` (or `path::function` for an inline one) ->
    text: the string constants that call Redis, wherever they are; and every call that loads or
    runs a script built at run time, which no static check can read. `evalsha` is not checked:
    it runs a script that `script_load` loaded, and that call is."""
    scripts, unreadable, constants = {}, [], _constants()
    for path in sorted(PACKAGE.rglob("*.py")):
        where, tree = path.relative_to(ROOT), ast.parse(path.read_text())
        names = {id(node.value): target.id for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)}
        aliases = {node.targets[0].id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                   and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                   and getattr(node.value, "id", getattr(node.value, "attr", None)) in constants}
        for node, function in _with_function(tree, "module"):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.search(r"redis\.p?call", node.value):
                key = f"{where}::{names.get(id(node)) or function}"
                scripts[key if key not in scripts else f"{key}@{node.lineno}"] = node.value
            if where.as_posix() == "integration/storage.py" and function == "run_script":
                continue  # the one runner: it runs what its callers pass, and those calls are checked here
            runner = isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run_script" \
                and len(node.args) > 1
            if runner or isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in SCRIPT_CALLS and node.args:
                first = node.args[1] if runner else node.args[0]
                name = getattr(first, "id", getattr(first, "attr", None))
                if not (isinstance(first, ast.Constant) and isinstance(first.value, str)) \
                        and name not in constants and name not in aliases:
                    unreadable.append(f"{where}:{node.lineno}: {ast.unparse(first)}")
    return scripts, unreadable


def test_the_checker_catches_keys_a_script_builds_or_spells_out():
    """What the old engine's scripts did, as the checker must see it (and what they do now)."""
    assert undeclared_keys("redis.call('ZADD', 'rb:lease:event', tonumber(received) + 60, key)") == [
        "ZADD 'rb:lease:event'"]
    assert undeclared_keys("if ARGV[5] ~= '' then redis.call('ZREM', 'rb:dispatches:status:' .. ARGV[5], id) end") \
        == ["ZREM 'rb:dispatches:status:' .. ARGV[5]"]
    assert undeclared_keys("local key = ARGV[2]\nredis.call('SET', key, 1)") == ["SET key"]
    assert undeclared_keys("local key = KEYS[1]\nif x then key = ARGV[1] end\nredis.call('SET', key, 1)") == [
        "SET key"]
    assert undeclared_keys("local tkey = okey .. '|' .. f\nredis.call('GET', tkey)") == ["GET tkey"]
    assert undeclared_keys("redis.call('DEL', KEYS[1], 'other')") == ["DEL 'other'"]
    assert undeclared_keys("local c = 'GET'\nredis.call(c, KEYS[1])") == ["c (a command that is not a literal "
                                                                         "cannot be checked)"]
    # What is declared passes: KEYS[n] with any index, a name bound to KEYS, a loop over KEYS.
    assert undeclared_keys("""
local key, rate = KEYS[1], tonumber(ARGV[1]) -- a comment with redis.call('GET', 'x')
local k = 8
redis.call('HSET', key, 'a', rate)
redis.call('SET', KEYS[k + 1], ARGV[2])
for _, name in ipairs(KEYS) do redis.call('DEL', name) end
local e = {key = KEYS[2], body = ARGV[1],
           other = ARGV[2]}
e.tkey = KEYS[3]
redis.call('HSET', e.key, 'body', e.body)
redis.call('SET', e.tkey, 1)
return redis.call('TIME')""") == []
    assert undeclared_keys("local e = {key = KEYS[2], okey = ARGV[1]}\nredis.call('GET', e.okey)") == ["GET e.okey"]


SCRIPTS, BUILT_AT_RUN_TIME = package_scripts()


@pytest.mark.parametrize("where", sorted(SCRIPTS))
def test_every_redis_script_declares_every_key_it_touches(where):
    problems = undeclared_keys(SCRIPTS[where])
    assert problems == [], f"{where}: keys not passed in KEYS: {problems}"


def test_the_package_has_the_scripts_this_check_is_about_and_none_built_at_run_time():
    assert BUILT_AT_RUN_TIME == []
    files = {where.split("::")[0] for where in SCRIPTS}
    assert {"integration/scheduler/units.py", "integration/dispatches/state.py", "integration/dispatches/limits.py",
            "integration/scheduler/lock.py", "integration/inbound/store.py"} <= files, files


MONITOR_LINE = re.compile(rb"^[\d.]+ \[(\d+) ([^\]]+)\] (.*)$", re.S)
MONITOR_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)", re.S)
SIMPLE_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


def _monitor_args(line: bytes) -> tuple[str, list[bytes]] | None:
    """(who sent it: an address or `lua`, the command's arguments) from one MONITOR line."""
    match = MONITOR_LINE.match(line)
    if match is None:
        return None
    def unescape(found: re.Match) -> bytes:
        code = found.group(1)
        return bytes([int(code[1:], 16)]) if code[:1] == b"x" and len(code) == 3 else SIMPLE_ESCAPES.get(code, code)
    return match.group(2).decode(), [ESCAPE.sub(unescape, arg) for arg in MONITOR_ARG.findall(match.group(3))]


@contextmanager
def monitor(redis_url: str) -> Iterator[list[bytes]]:
    """Every command Redis runs while the block runs, as MONITOR shows it (a script's own
    commands follow the EVAL/EVALSHA that ran them, marked `lua`)."""
    lines: list[bytes] = []
    sentinel = f"end-of-monitor-{time.time()}".encode()
    # A long timeout: a read that times out halfway drops the connection, and with it every line
    # after (a loaded machine can be slow to hand over a line); the sentinel ends the reading.
    client = redis.Redis.from_url(redis_url, socket_timeout=60)
    watching = client.monitor()
    watching.__enter__()

    def read() -> None:
        while True:
            try:
                line = watching.connection.read_response()
            except redis.TimeoutError:
                continue
            if sentinel in line:
                return
            lines.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        redis.Redis.from_url(redis_url).echo(sentinel)
        thread.join(timeout=30)
        watching.__exit__()
        client.close()


def undeclared_at_run_time(lines: list[bytes], connection: redis.Redis) -> tuple[dict[str, list[str]], set[str]]:
    """Per script (by its name in the package): each key a script command touched that its
    EVAL/EVALSHA did not pass in KEYS (Redis' COMMAND GETKEYS says which arguments are keys);
    and the names of the package's scripts that ran."""
    import hashlib

    names = {text: name for name, text in SCRIPTS.items()}
    names.update({hashlib.sha1(text.encode()).hexdigest(): name for name, text in SCRIPTS.items()})  # noqa: S324
    calls: list[tuple[str, set[bytes], list[bytes]]] = []
    current = None
    for line in lines:
        parsed = _monitor_args(line)
        if parsed is None or not parsed[1]:
            continue
        who, args = parsed
        command = args[0].upper()
        if who != "lua":
            current = None
            if command in (b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO"):
                script = args[1].decode(errors="replace")
                count = int(args[2])
                current = (names.get(script, f"not in the package: {script[:60]!r}"), set(args[3:3 + count]))
            continue
        assert current is not None, f"a script command without its EVAL: {line[:200]!r}"
        calls.append((current[0], current[1], args))
    with connection.pipeline(transaction=False) as pipe:
        for _, _, args in calls:
            pipe.command_getkeys(*args)
        answers = pipe.execute(raise_on_error=False)
    problems: dict[str, list[str]] = {}
    for (name, declared, args), keys in zip(calls, answers, strict=True):
        touched = [] if isinstance(keys, redis.ResponseError) else keys  # a command without keys
        for key in (k if isinstance(k, bytes) else k.encode() for k in touched):
            if key not in declared:
                problems.setdefault(name, []).append(f"{args[0].decode()} {key.decode(errors='replace')}")
    return problems, {name for name, _, _ in calls}


def test_every_script_touches_only_the_keys_it_was_given_at_run_time(stack, redis_url):
    """MONITOR on a run of every source through the pipeline, with write-backs, a retry and
    Revor's rate-limit headers: no script command touches a key its EVAL did not pass in KEYS."""
    configure(stack["sandbox"], rate_limit=3, rate_window_ms=1000, error_rate=0.3)
    with monitor(redis_url) as lines:
        stack["start_worker"]()
        post_all_fixtures(stack["bridge"])
        settle(stack, expected=4, timeout=60)
    problems, ran = undeclared_at_run_time(lines, stack["redis"])
    assert problems == {}, {name: sorted(set(found))[:5] for name, found in problems.items()}
    core = {"integration/scheduler/units.py::CLAIM", "integration/scheduler/units.py::RECOVER",
            "integration/dispatches/state.py::TRANSITION", "integration/dispatches/limits.py::BUCKET",
            "integration/scheduler/lock.py::RELEASE", "integration/inbound/store.py::STORE_SCRIPT"}
    assert core <= ran, core - ran
    print(f"\nscripts seen at run time: {sorted(ran)}")
