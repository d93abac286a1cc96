"""Bounded storage (issue 10, item 4): a finished dispatch expires with everything it owns after the
retention, and the retention sweep leaves no index entry, unit, outbox or lock behind.

Real parts throughout: events posted to the web app over HTTP, RQ jobs run by the bridge's worker
class (in this process, so the retention can be seconds), the clock's tick, the Revor sandbox,
a write-back receiver that verifies signatures and one that answers 410 Gone (dead letters).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from flask import Flask, Response
from rq import Queue

from integration.context import JobContext
from integration.dispatches import retention, state
from integration.sandbox.core import Faults
from integration.sandbox.server import SandboxServer
from integration.scheduler import units
from tests.servers import ThreadServer, writeback_receiver

SECRET = "whsec_cmV0ZW50aW9uLXRlc3Qtd3JpdGViYWNrLXNlY3JldC0x"
HOOK = {"Content-Type": "application/json", "X-Hook-Token": "zap-fixture-token-7f3a"}
RETENTION = 6  # seconds, instead of DISPATCH_RETENTION_DAYS

RULES = """\
version: 1
accounts:
  wa: connect_account_sandbox_whatsapp
  gone: connect_account_that_does_not_exist
defaults:
  interval_seconds: 60
rules:
  - name: zap-won
    when: {source: generic:zapier, type: deal.stage_changed, match: {deal.stage: closedwon}}
    dispatch:
      account: wa
      channel: whatsapp
      recipient: {phone: "{{ contact.phone }}"}
      content: {text: "Hi {{ contact.first_name }}"}
    once_per: "{{ deal.id }}"
    writeback: [crm, down]
  - name: zap-lost
    when: {source: generic:zapier, type: deal.stage_changed, match: {deal.stage: closedlost}}
    dispatch:
      account: gone
      channel: whatsapp
      recipient: {phone: "{{ contact.phone }}"}
      content: {text: "Sorry to see you go"}
    writeback: [crm]
  - name: zap-lost-mail
    when: {source: generic:zapier, type: deal.stage_changed, match: {deal.stage: closedlost}}
    dispatch:
      account: wa
      channel: email
      recipient: {address: "{{ contact.email }}"}
      content: {subject: "Sorry", text: "Sorry to see you go"}
    writeback: [crm]
destinations:
  crm: {url: "${RECEIVER_URL}", secret: "SECRET"}
  down: {url: "${DOWN_URL}", secret: "SECRET", "on": [succeeded]}
""".replace("SECRET", SECRET)


def zap(event_id: str, deal: int, stage: str) -> bytes:
    return json.dumps({"event": "deal.stage_changed", "event_id": event_id, "deal__id": str(deal),
                       "deal__stage": stage, "contact__first_name": "Lead",
                       "contact__phone": f"+1415555{deal:04d}"}).encode()


def keys(connection: redis.Redis, pattern: str = "*") -> set[str]:
    return {k.decode() for k in connection.scan_iter(match=pattern, count=1000)}


def wait_until(condition, timeout: float, what: str, step=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step is not None:
            step()
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def stack(tmp_path, make_bridge, redis_db) -> Iterator[dict]:
    """Web app, sandbox, receivers, and a `work()` that runs what is due the way a worker does."""
    from integration import context
    from integration.jobs import engine
    from integration.jobs.worker import BridgeWorker
    from integration.scheduler import clock

    receiver_app, received = writeback_receiver(SECRET)
    down_app = Flask("down")
    down_app.post("/status")(lambda: Response("{}", 410, mimetype="application/json"))
    signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with SandboxServer(faults=Faults(time_scale=100000.0, rate_limit=0), seed=3) as sandbox, \
            ThreadServer(receiver_app) as receiver, ThreadServer(down_app) as down:
        rules = tmp_path / "rules.yaml"
        rules.write_text(RULES)
        os.environ.update(RECEIVER_URL=receiver.url + "/status", DOWN_URL=down.url + "/status")
        try:
            bridge = make_bridge(rules_file=rules)
            settings = dataclasses.replace(bridge.settings, revor_base_url=sandbox.api_url, revor_max_rps=500,
                                           lease_seconds=5, writeback_retry_scale=0.0001, worker_threads=4,
                                           dispatch_retention_seconds=RETENTION)
            ctx = JobContext.build(settings)
        finally:
            for name in ("RECEIVER_URL", "DOWN_URL"):
                os.environ.pop(name, None)
        context.install(ctx)
        engine._engine = None
        queues = [Queue(name, connection=ctx.redis, serializer="json") for name in ("high", "default", "low")]

        def work() -> None:
            clock.tick(ctx.redis, queues[1], "retention-test-clock")
            BridgeWorker(queues, connection=ctx.redis, serializer="json").work(burst=True, with_scheduler=False,
                                                                                logging_level="WARNING")

        try:
            yield {"bridge": bridge, "ctx": ctx, "redis": redis_db, "work": work, "received": received}
        finally:
            if engine._engine is not None:
                engine._engine.close()
            engine._engine = None
            context._current = None
            for sig, handler in signals.items():
                signal.signal(sig, handler)


def finished(connection: redis.Redis) -> bool:
    """Every dispatch final, every outbox empty, no unit of a dispatch waiting."""
    ids = [i.decode() for i in connection.zrange(state.ALL_INDEX, 0, -1)]
    records = [state.load(connection, i) for i in ids]
    waiting = [u for u in connection.zrange(units.DUE, 0, -1) + connection.zrange(units.CLAIMED, 0, -1)
               if not u.decode().startswith(retention.SWEEP)]
    return (len(ids) == 5 and all(r and r["status"] in state.TERMINAL for r in records)
            and not keys(connection, "rb:outbox:*") and not waiting)


def test_expired_dispatches_leave_nothing_behind(stack):
    connection: redis.Redis = stack["redis"]
    posts = [zap("won-1", 1, "closedwon"), zap("won-2", 2, "closedwon"), zap("won-1-again", 1, "closedwon"),
             zap("lost-3", 3, "closedlost")]
    for body in posts:
        assert stack["bridge"].post("/webhooks/generic/zapier", body, HOOK).status_code == 200
    wait_until(lambda: finished(connection), 120, "every dispatch final and delivered", step=stack["work"])

    statuses = sorted(state.load(connection, i.decode())["status"] for i in connection.zrange(state.ALL_INDEX, 0, -1))
    assert statuses == ["invalid", "rejected", "skipped", "succeeded", "succeeded"]
    assert connection.zcard("rb:dead:down") == 2  # the two `succeeded` messages for `down`, which is gone
    ids = [i.decode() for i in connection.zrange(state.ALL_INDEX, 0, -1)]
    changes = [entry for i in ids for entry in state.timeline(connection, i) if entry["status"] != "pending"]
    assert len(stack["received"]["messages"]) == len(changes) >= 7  # one per state change for `crm`
    # Delivered messages are gone at once; a dispatch's keys and its dead letters expire together.
    assert all(connection.exists(f"rb:msg:{m['id']}") == 0 for m in stack["received"]["messages"])
    owned = keys(connection, "rb:dispatch:*") | keys(connection, "rb:msg:*")
    assert owned and all(0 < connection.pttl(k) <= RETENTION * 1000 for k in owned), \
        {k: connection.pttl(k) for k in owned}
    assert connection.exists("rb:once:zap-won:1") and connection.ttl("rb:once:zap-won:1") > 300 * 86400

    time.sleep(RETENTION + 0.5)
    assert not keys(connection, "rb:dispatch:*") and not keys(connection, "rb:msg:*")
    assert retention.ensure_scheduled(connection)  # as the clock does when a worker starts
    stack["work"]()  # the sweep runs as a unit, through the worker's handler table, and schedules itself again
    assert [u.decode() for u in connection.zrange(units.DUE, 0, -1)] == [retention.SWEEP_UNIT]
    assert connection.zscore(units.DUE, retention.SWEEP_UNIT) > time.time() + 3000
    # Seven days on, the events expire too: their index entries go with them.
    retention.sweep(connection, RETENTION, event_ttl=0)

    left = keys(connection)
    assert not {k for k in left if k.startswith(("rb:dispatch", "rb:msg:", "rb:outbox:", "rb:lock:", "rb:dead:",
                                                 "rb:events:status:", "rb:claimed", "rb:attempts"))}
    # What remains is bounded by design: the sweep's own unit, each destination's health, operators'
    # counters (the /metrics hash: one field per label set, from config names), RQ's list of queue
    # names; everything else has an expiry of its own (events and their dedupe and ordering keys:
    # 7 days; `once_per` claims: the rule's once_per_days; RQ's worker records).
    global_keys = {units.DUE, "rb:destination:crm", "rb:destination:down", units.RECOVERED, "rq:queues", "rb:metrics"}
    unbounded = {k for k in left - global_keys if connection.ttl(k) < 0}
    assert not unbounded, unbounded
    assert connection.zcard(units.DUE) == 1


def test_a_waiting_message_expires_with_its_dispatch_and_a_retry_keeps_everything(redis_db):
    """A final state sets one expiry on the dispatch and every message still in its outbox; an
    operator's retry (out of the final state) takes it off again, old messages included."""
    destinations = {"crm": list(state.RANK)}
    create = {"rule": "r", "channel": "email", "writeback": ["crm"], "attempt": 0}
    state.transition(redis_db, "dsp_keep", "pending", create=create, destinations=destinations)
    state.transition(redis_db, "dsp_keep", "rejected", destinations=destinations, retention=600)
    outbox = state.outbox_key("dsp_keep", "crm")
    waiting = [k.decode() for k in redis_db.lrange(outbox, 0, -1)]
    assert waiting == [state.message_key("dsp_keep", 1, "crm"), state.message_key("dsp_keep", 2, "crm")]
    for key in [state.key_for("dsp_keep"), state.doc_key("dsp_keep"), outbox, *waiting]:
        assert 599_000 < redis_db.pttl(key) <= 600_000, key
    state.transition(redis_db, "dsp_keep", "pending", force=True, destinations=destinations)
    for key in [state.key_for("dsp_keep"), state.doc_key("dsp_keep"), outbox, *waiting]:
        assert redis_db.pttl(key) == -1, key
    assert redis_db.pttl(state.message_key("dsp_keep", 3, "crm")) == -1


def test_the_sweep_keeps_live_entries_and_drops_orphans(redis_db):
    """Index entries of dispatches that still exist stay, however old; units and dead letters of
    records that are gone go, with their attempt counts and outboxes."""
    now = time.time()
    state.transition(redis_db, "dsp_live", "pending", create={"rule": "r", "writeback": []}, now=now - 10 * 86400)
    redis_db.zadd(state.ALL_INDEX, {"dsp_gone": now - 10 * 86400})
    redis_db.zadd(state.RULE_INDEX + "r", {"dsp_gone": now - 10 * 86400})
    redis_db.zadd(state.STATUS_INDEX + "succeeded", {"dsp_gone": now - 10 * 86400, "dsp_recent": now})
    for unit in (units.deliver_unit("dsp_gone", "crm"), units.poll_unit("dsp_gone"), units.submit_unit("dsp_live")):
        redis_db.zadd(units.DUE, {unit: now + 60})
        redis_db.hset(units.ATTEMPTS, unit, 2)
    redis_db.hset(units.ATTEMPTS, "poll|dsp_lost", 1)  # neither due nor claimed: a count left by a crash
    redis_db.rpush(state.outbox_key("dsp_gone", "crm"), "rb:msg:msg_dsp_gone_2_crm")
    redis_db.zadd("rb:dead:crm", {"msg_dsp_gone_2_crm": now, "msg_dsp_live_1_crm": now})
    redis_db.set("rb:msg:msg_dsp_live_1_crm", "{}")

    removed = retention.sweep(redis_db, 7 * 86400, now=now)

    assert removed == {"dispatch_index": 3, "event_index": 0, "dead_letters": 1, "units": 3}
    assert [m.decode() for m in redis_db.zrange(state.ALL_INDEX, 0, -1)] == ["dsp_live"]
    assert [m.decode() for m in redis_db.zrange(state.RULE_INDEX + "r", 0, -1)] == ["dsp_live"]
    assert [m.decode() for m in redis_db.zrange(state.STATUS_INDEX + "succeeded", 0, -1)] == ["dsp_recent"]
    assert [m.decode() for m in redis_db.zrange(units.DUE, 0, -1)] == [units.submit_unit("dsp_live")]
    assert redis_db.hgetall(units.ATTEMPTS) == {units.submit_unit("dsp_live").encode(): b"2"}
    assert not redis_db.exists(state.outbox_key("dsp_gone", "crm"))
    assert [m.decode() for m in redis_db.zrange("rb:dead:crm", 0, -1)] == ["msg_dsp_live_1_crm"]
