"""Storage: stored before the 2xx, once per event, in a handful of round trips; 503 without Redis."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import redis
import requests
from rq import Queue

from integration.inbound import hubspot
from integration.inbound.store import store
from tests.conftest import ADMIN_TOKEN, SALESFORCE_PATH, cli_env, free_port, wait_for_port
from tests.servers import fixture_bytes, signatures

SIGS = signatures()
SECRET = SIGS["secrets"]["hubspot_client_secret"]
BATCH = "hubspot-deal-propertychange-batch.json"


def _signed(bridge, body: bytes) -> dict[str, str]:
    ts = str(int(bridge.clock.now * 1000))
    return {"Content-Type": "application/json", "X-HubSpot-Request-Timestamp": ts,
            "X-HubSpot-Signature-v3": hubspot.v3_signature(SECRET, "POST", "https://hooks.example.com/webhooks/hubspot",
                                                           body, ts)}


def _batch(count: int, first_event: int = 1, occurred: int = 1767268795000) -> bytes:
    return json.dumps([{"eventId": first_event + n, "subscriptionId": 7, "portalId": 24681357, "appId": 1,
                        "occurredAt": occurred + n, "subscriptionType": "deal.propertyChange", "attemptNumber": 0,
                        "objectId": 5000 + n, "propertyName": "dealstage", "propertyValue": "closedwon"}
                       for n in range(count)]).encode()


def test_stored_and_queued_before_the_answer(bridge, redis_db):
    answer = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), SIGS["requests"][BATCH]["headers"])
    delivery = answer.json()["delivery_id"]
    assert len(redis_db.keys("rb:event:hubspot:*")) == 3
    queue = Queue("default", connection=redis_db, serializer="json")
    assert queue.job_ids == [f"wake-{delivery}"]  # one job wakes a worker for the whole request
    due = {m.decode() for m in redis_db.zrange("rb:due", 0, -1)}
    assert due == {f"event|{k.decode()}" for k in redis_db.keys("rb:event:hubspot:*")}
    assert redis_db.zcard("rb:events:status:received") == 3
    assert not redis_db.exists(f"rb:delivery:{delivery}:new")  # nothing reads a list of new events
    assert redis_db.ttl("rb:event:hubspot:24681357-2718281-3471102201-18273645501-1767268795123") > 6 * 24 * 3600


def test_duplicate_batch_is_stored_once_and_answered_alike(bridge, redis_db):
    headers = SIGS["requests"][BATCH]["headers"]
    first = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), headers).json()
    events_after_first = sorted(redis_db.keys("rb:event:*"))
    second = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), headers).json()
    assert first["new"] == 3 and second["new"] == 0 and second["duplicate"] == 3
    assert sorted(redis_db.keys("rb:event:*")) == events_after_first
    assert redis_db.zcard("rb:due") == 3
    assert Queue("default", connection=redis_db, serializer="json").job_ids == [f"wake-{first['delivery_id']}"]


def test_an_older_event_for_the_same_property_is_marked_stale(bridge):
    newer = _batch(1, first_event=10, occurred=1767268795000)
    older = _batch(1, first_event=11, occurred=1767268790000)
    assert bridge.post("/webhooks/hubspot", newer, _signed(bridge, newer)).json()["new"] == 1
    assert bridge.post("/webhooks/hubspot", older, _signed(bridge, older)).json()["stale"] == 1
    stale = bridge.event("hubspot", "24681357-7-11-5000-1767268790000").json()
    assert stale["stale"] is True and stale["status"] == "received"


class CountingConnection(redis.Connection):
    """A real connection that counts the requests it writes (one per round trip)."""

    writes = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.writes += 1
        return super().send_packed_command(command, check_health)


def test_a_100_event_batch_costs_one_round_trip(redis_url, redis_db):
    from integration.inbound.hubspot import parse_app_batch
    from integration.inbound.store import delivery_record

    connection = redis.Redis.from_url(f"{redis_url}/1", connection_class=CountingConnection)
    queue = Queue("default", connection=connection, serializer="json")
    queue.get_redis_server_version()  # cached per process, as in the web app
    for first_event, writes in ((1, 2), (101, 1)):  # the first also loads the script, once per process
        events, _ = parse_app_batch(json.loads(_batch(100, first_event=first_event)))
        record = delivery_record("hubspot", "POST", "/webhooks/hubspot", "", {}, b"[]", events, [])
        CountingConnection.writes = 0
        result = store(connection, queue, "hubspot", events, record, max_stored_bytes=64 * 1024 * 1024)
        assert result.counts == {"new": 100, "stale": 0, "duplicate": 0}
        assert CountingConnection.writes == writes  # one EVALSHA: events, delivery and wake job
    assert len(redis_db.keys("rb:event:hubspot:*")) == 200


@pytest.mark.parametrize(
    ("path", "fixture"),
    [("/webhooks/hubspot", BATCH),
     (SALESFORCE_PATH, "salesforce-outbound-message-opportunity.xml"),
     ("/webhooks/pipedrive", "pipedrive-deal-updated-v2.json"),
     ("/webhooks/generic/zapier", "zapier-generic.json")],
)
def test_redis_down_is_503_so_the_sender_retries(make_bridge, path, fixture):
    bridge = make_bridge(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    answer = bridge.post(path, fixture_bytes(fixture), SIGS["requests"][fixture]["headers"])
    assert answer.status_code == 503
    if "salesforce" in path:
        assert b"<faultstring>events could not be stored; retry later</faultstring>" in answer.content
    else:
        assert answer.json()["error"]["code"] == "storage_unavailable"


@pytest.mark.parametrize("path", ["/webhooks/hubspot", SALESFORCE_PATH, "/webhooks/pipedrive",
                                  "/webhooks/generic/zapier"])
def test_oversize_bodies_are_413(bridge, path):
    headers = {"Content-Type": "application/json", "X-Hook-Token": "zap-fixture-token-7f3a",
               "Authorization": "Basic cGQtaG9vazpmaXh0dXJlLXBhc3MtMTIz", "X-HubSpot-Signature": "00"}
    answer = bridge.post(path, b"x" * (600 * 1024), headers)
    assert answer.status_code == 413
    if "salesforce" in path:  # Salesforce reads only SOAP faults
        assert b"<faultcode>soapenv:Client</faultcode>" in answer.content
    else:
        assert answer.json()["error"]["code"] == "body_too_large"


@pytest.fixture
def gunicorn_web(redis_url, redis_db, tmp_path):
    """`revor-bridge web` as production runs it (gunicorn), on a loopback port."""
    port = free_port()
    env = cli_env(REDIS_URL=f"{redis_url}/1", PORT=str(port), WEB_CONCURRENCY="1",
                  GENERIC_WEBHOOK_SECRET_ZAPIER="zap-fixture-token-7f3a")
    web = subprocess.Popen([sys.executable, "-m", "integration", "web"], env=env, cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        web.terminate()
        web.wait(timeout=30)


def _chunked(body: bytes, size: int = 16 * 1024):
    """A generator body: requests sends it with Transfer-Encoding: chunked and no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


@pytest.mark.parametrize("server", ["threaded", "gunicorn"])
def test_chunked_bodies_over_the_limit_are_413(request, server):
    url = request.getfixturevalue("bridge").url if server == "threaded" else request.getfixturevalue("gunicorn_web")
    over = requests.post(url + "/webhooks/generic/zapier", data=_chunked(_zap("chunk-1", 600 * 1024)),
                         headers=ZAPIER, timeout=10)
    assert over.status_code == 413 and over.json()["error"]["code"] == "body_too_large"
    within = requests.post(url + "/webhooks/generic/zapier", data=_chunked(_zap("chunk-2", 500 * 1024)),
                           headers=ZAPIER, timeout=10)
    assert within.status_code == 200 and within.json()["new"] == 1  # read whole, not cut at the limit


def test_events_api_needs_the_admin_token(bridge, make_bridge):
    bridge.post("/webhooks/generic/zapier", fixture_bytes("zapier-generic.json"),
                SIGS["requests"]["zapier-generic.json"]["headers"])
    import requests

    url = f"{bridge.url}/api/v1/events/generic:zapier/zap-hs-deal-18273645501-1767268795123"
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    found = requests.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
    assert found.status_code == 200
    text = found.text
    for secret in ("zap-fixture-token-7f3a", ADMIN_TOKEN, SECRET, "fixture-pass-123"):
        assert secret not in text
    assert found.json()["delivery"]["headers"]["Content-Type"] == "application/json"
    missing = requests.get(f"{bridge.url}/api/v1/events/hubspot/nope",
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
    assert missing.status_code == 404
    disabled = make_bridge(admin_token=None)
    assert requests.get(f"{disabled.url}/api/v1/events/hubspot/x", timeout=5).status_code == 403


def test_unknown_routes_and_methods_answer_json(bridge):
    import requests

    assert requests.get(f"{bridge.url}/webhooks/hubspot", timeout=5).status_code == 405
    missing = requests.post(f"{bridge.url}/webhooks/nowhere", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


# ---- what a delivery may cost in Redis (issue 9 item 8) -------------------------------------

ZAPIER = {"Content-Type": "application/json", "X-Hook-Token": "zap-fixture-token-7f3a"}


def _zap(event_id: str, pad: int, deal: str = "1", **fields: object) -> bytes:
    return json.dumps({"event": "deal.updated", "deal__id": deal, "event_id": event_id, "pad": "x" * pad,
                       **fields}).encode()


def _deliveries(redis_db) -> list[bytes]:
    return [k for k in redis_db.keys("rb:delivery:*") if not k.endswith(b":new")]


def test_duplicate_deliveries_store_nothing_again(bridge, redis_db):
    body = _zap("dup-1", 200_000)
    first = bridge.post("/webhooks/generic/zapier", body, ZAPIER).json()
    used = redis_db.info("memory")["used_memory"]
    for _ in range(20):
        again = bridge.post("/webhooks/generic/zapier", body, ZAPIER)
        assert again.status_code == 200 and again.json()["duplicate"] == 1
    assert len(_deliveries(redis_db)) == 1  # the original's; each duplicate only counted on it
    original = bridge.event("generic:zapier", "dup-1").json()
    assert original["duplicates"] == 20 and original["delivery"]["body"] == body.decode()
    assert redis_db.info("memory")["used_memory"] - used < 500_000  # 20 x 200 KB were 4 MB
    assert first["new"] == 1
    # Nor does a repeat queue a job (its original's job was queued with it): a flood of duplicates
    # while workers are down or behind leaves nothing behind in Redis.
    assert Queue("default", connection=redis_db, serializer="json").count == 1
    assert len(redis_db.keys("rq:job:*")) == 1


def test_skipped_batch_items_keep_a_few_hundred_bytes(bridge):
    good = json.loads(_batch(1, first_event=40))
    junk = {**good[0], "eventId": 41, "subscriptionType": "conversation.creation", "note": "y" * 100_000}
    body = json.dumps([good[0], junk]).encode()
    answer = bridge.post("/webhooks/hubspot", body, _signed(bridge, body)).json()
    assert answer["new"] == 1 and answer["skipped"] == 1
    delivery = bridge.event("hubspot", "24681357-7-40-5000-1767268795000").json()["delivery"]
    stored = json.loads(delivery["body"])
    assert stored[0] == good[0]  # what the bridge handles is kept whole
    assert stored[1]["skipped_item_bytes"] > 100_000 and len(stored[1]["skipped_item_excerpt"]) == 300
    assert len(delivery["body"]) < 2000 and "sha256" in delivery["body_note"]
    assert delivery["skipped"][0]["index"] == 1


def test_a_source_at_its_ceiling_gets_429_and_stores_nothing(make_bridge, redis_db):
    bridge = make_bridge(inbound_max_stored_bytes=300_000)
    assert bridge.post("/webhooks/generic/zapier", _zap("big-1", 100_000), ZAPIER).status_code == 200
    full = bridge.post("/webhooks/generic/zapier", _zap("big-2", 100_000), ZAPIER)
    assert full.status_code == 429 and full.json()["error"]["code"] == "storage_full"
    assert 1 <= int(full.headers["Retry-After"]) <= 3600
    assert redis_db.exists("rb:event:generic:zapier:big-2") == 0 and len(_deliveries(redis_db)) == 1
    assert Queue("default", connection=redis_db, serializer="json").count == 1  # no job for the refused one
    # A duplicate costs nothing, so it is still answered 200; other sources have their own ceiling.
    assert bridge.post("/webhooks/generic/zapier", _zap("big-1", 100_000), ZAPIER).json()["duplicate"] == 1
    pipedrive = bridge.post("/webhooks/pipedrive", fixture_bytes("pipedrive-deal-updated-v2.json"),
                            SIGS["requests"]["pipedrive-deal-updated-v2.json"]["headers"])
    assert pipedrive.status_code == 200
    # Salesforce gets its refusal as a SOAP fault, with the same Retry-After.
    redis_db.hset("rb:stored-bytes:salesforce", str(int(time.time() // 3600)), 10**9)
    soap = bridge.post(SALESFORCE_PATH, fixture_bytes("salesforce-outbound-message-opportunity.xml"),
                       SIGS["requests"]["salesforce-outbound-message-opportunity.xml"]["headers"])
    assert soap.status_code == 429 and b"<faultstring>" in soap.content and "Retry-After" in soap.headers


def test_the_script_enforces_the_ceiling_when_requests_race(redis_url, redis_db):
    """The transaction's script decides, atomically, however many requests race for the last room."""
    from integration.inbound import store as store_module
    from integration.inbound.generic import parse

    redis_db.hset(store_module.stored_bytes_key("generic:zapier"), str(int(time.time() // 3600)), 290_000)
    queue = Queue("default", connection=redis_db, serializer="json")
    raw = _zap("race-1", 50_000)
    event = parse("zapier", json.loads(raw), raw, None, None)
    record = store_module.delivery_record("generic:zapier", "POST", "/x", "", {}, raw, [event], [])
    with pytest.raises(store_module.StorageFull) as refused:
        store(redis_db, queue, "generic:zapier", [event], record, max_stored_bytes=300_000)
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    assert redis_db.exists("rb:event:generic:zapier:race-1") == 0 and not _deliveries(redis_db)
    assert queue.count == 0 and not redis_db.exists("rb:wake:pending")  # nor a job for it


def _used_memory(redis_db) -> int:
    """INFO memory's used_memory less the clients' buffers, which shrink when Redis gets to it (not data)."""
    memory = redis_db.info("memory")
    return int(memory["used_memory"]) - int(memory["mem_clients_normal"])


def _stored_bytes(redis_db, source: str) -> int:
    return sum(int(n) for n in redis_db.hgetall(f"rb:stored-bytes:{source}").values())


def test_the_ceiling_counts_what_redis_really_holds(make_bridge, redis_db):
    """Security review F5: the counter charged bodies only, about a fifth to a seventh of what an
    accepted event makes Redis hold (its RQ job, keys, lease entry, lists). Now a source at its
    ceiling has grown Redis by about the ceiling, not several times it."""
    ceiling = 1_000_000
    bridge = make_bridge(inbound_max_stored_bytes=ceiling)
    accepted, used_before, counted_before = 0, 0, 0
    with requests.Session() as session:
        for n in range(2000):
            body = json.dumps({"event": "deal.updated", "deal__id": str(n), "event_id": f"tiny-{n}"}).encode()
            answer = session.post(f"{bridge.url}/webhooks/generic/zapier", data=body, headers=ZAPIER, timeout=10)
            if answer.status_code == 429:
                break
            assert answer.status_code == 200, answer.text
            accepted += 1
            if n == 0:  # measured from here: the web app's connection, script and queue now exist
                used_before = _used_memory(redis_db)
                counted_before = _stored_bytes(redis_db, "generic:zapier")
    grown = _used_memory(redis_db) - used_before
    counted = _stored_bytes(redis_db, "generic:zapier") - counted_before
    assert accepted < 2000, "the ceiling never answered 429"
    # ~2 KB of Redis per tiny event (store.py); charging bodies alone let ~1,400 in (3.5 MB).
    assert 200 <= accepted <= 700, accepted
    assert counted <= ceiling
    assert 0.7 <= grown / counted <= 1.3, (grown, counted, accepted)
    assert grown <= 1.3 * ceiling, grown


def test_the_script_charges_what_the_model_says(redis_url, redis_db):
    """What the script adds for a request is exactly event_charge + delivery_charge: one byte less
    room refuses it, an exact fit passes."""
    from integration.inbound import store as store_module
    from integration.inbound.salesforce import parse as parse_salesforce

    queue = Queue("default", connection=redis_db, serializer="json")
    raw = fixture_bytes("salesforce-outbound-message-opportunity.xml")
    events, skipped = parse_salesforce(raw, ("00D5e000000Fxq2EAC",), None)
    assert events[0].track_field  # a tracked field adds its own key: charged too
    record = store_module.delivery_record("salesforce", "POST", "/x", "", {}, raw, events, skipped)
    store(redis_db, queue, "salesforce", events, record)
    charge = _stored_bytes(redis_db, "salesforce")
    assert charge == sum(
        store_module.event_charge(store_module.event_key("salesforce", e.event["event_id"]),
                                  json.dumps({**e.event, "_extra": e.extra}), e.ordering_key, e.track_field,
                                  str(e.event["properties"].get(e.track_field) or "")) for e in events
    ) + store_module.delivery_charge(json.dumps(record))
    ceiling, hour = 10_000_000, str(int(time.time() // 3600))
    for room, fits in ((charge - 1, False), (charge, True)):
        redis_db.flushdb()
        redis_db.hset(store_module.stored_bytes_key("salesforce"), hour, ceiling - room)
        if fits:
            store(redis_db, queue, "salesforce", events, record, max_stored_bytes=ceiling)
            assert _stored_bytes(redis_db, "salesforce") == ceiling
        else:
            with pytest.raises(store_module.StorageFull):
                store(redis_db, queue, "salesforce", events, record, max_stored_bytes=ceiling)
            assert queue.count == 0 and not redis_db.exists(*redis_db.keys("rq:job:*") or ["none"])


# ---- future-dated events (issue 9 item 9) ---------------------------------------------------


def test_a_future_dated_event_does_not_make_later_events_stale(bridge, redis_db, redis_url, tmp_path):
    from tests.conftest import cli_env, revor_bridge

    future = bridge.post("/webhooks/generic/zapier", _zap("fut-1", 10, deal="77", occurred_at="2099-01-01T00:00:00Z"),
                         ZAPIER).json()
    genuine = bridge.post("/webhooks/generic/zapier", _zap("now-1", 10, deal="77", occurred_at=bridge.clock.now - 5),
                          ZAPIER).json()
    assert future["new"] == 1 and genuine["new"] == 1 and genuine["stale"] == 0
    marked = bridge.event("generic:zapier", "fut-1").json()
    assert marked["future_dated"] is True and "ahead of the server clock" in marked["future_dated_reason"]
    assert bridge.event("generic:zapier", "now-1").json()["future_dated"] is False
    # An older genuine event is still stale against the genuine one: ordering works as before.
    older = bridge.post("/webhooks/generic/zapier", _zap("old-1", 10, deal="77", occurred_at=bridge.clock.now - 60),
                        ZAPIER).json()
    assert older["stale"] == 1
    result = revor_bridge("worker", "--burst", env=cli_env(REDIS_URL=f"{redis_url}/1"), cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert bridge.event("generic:zapier", "now-1").json()["status"] == "processed"
    assert bridge.event("generic:zapier", "fut-1").json()["status"] == "processed"
    assert bridge.event("generic:zapier", "old-1").json()["status"] == "skipped"


def test_an_ordering_key_already_dated_in_the_future_is_ignored(bridge, redis_db):
    """Keys written by a future-dated event before this rule existed must not block a record either."""
    first = bridge.post("/webhooks/generic/zapier", _zap("k-1", 10, deal="78", occurred_at=bridge.clock.now - 100),
                        ZAPIER).json()
    assert first["new"] == 1
    okeys = [k for k in redis_db.keys("*|78|*") if redis_db.type(k) == b"string"]
    assert okeys, redis_db.keys("*")
    redis_db.set(okeys[0], "4070908800000")  # 2099-01-01, as an old future-dated event left it
    later = bridge.post("/webhooks/generic/zapier", _zap("k-2", 10, deal="78", occurred_at=bridge.clock.now - 50),
                        ZAPIER).json()
    assert later["new"] == 1 and later["stale"] == 0


# ---- the store script's keys (issue 10 item 5) ----------------------------------------------


def _key_names(script: str) -> set[str]:
    """The names the script binds to KEYS entries (`local a, b = KEYS[1], KEYS[2]`, `key = KEYS[k]`)."""
    names: set[str] = set()
    for targets, values in re.findall(r"([\w.]+(?:\s*,\s*[\w.]+)*)\s*=\s*(KEYS\[[^\]]+\](?:\s*,\s*KEYS\[[^\]]+\])*)",
                                      script):
        bound = [t.strip() for t in targets.split(",")][-len(values.split(",")):]
        names.update(name.rpartition(".")[2] for name in bound)
    return names


def test_every_key_the_store_script_touches_comes_from_keys():
    """Redis' scripting contract: a script names every key it touches in KEYS (managed Redis
    proxies and clusters route by them). Statically: each redis.call's key is bound from KEYS and
    never rebound to anything else (the old script took every key from ARGV, or wrote its name)."""
    from integration.inbound.store import STORE_SCRIPT

    names = _key_names(STORE_SCRIPT)
    assert {"delivery", "bytes_key", "due", "received_index", "key", "okey", "tkey",
            "wake_flag", "rq_queues", "wake_job", "rq_queue"} <= names  # RQ's keys too
    calls = re.findall(r"redis\.call\(\s*'(\w+)'\s*,\s*([^,)]+)", STORE_SCRIPT)
    assert len(calls) >= 15
    for command, key in calls:
        key = key.strip()
        assert re.fullmatch(r"(e\.)?\w+", key) and key.rpartition(".")[2] in names, (command, key)
    for name in names:  # bound once, from KEYS: no other assignment to the same name
        rebound = re.findall(rf"(?<![\w.]){name}\s*=(?!=)(?!\s*KEYS\[)", STORE_SCRIPT)
        assert not rebound, (name, rebound)


# Runs before the script: every redis.call must address a key declared in KEYS, or the script fails.
KEY_GUARD = """
local declared = {}
for _, name in ipairs(KEYS) do declared[name] = true end
local real = redis
local redis = {call = function(command, key, ...)
  if not declared[key] then error('undeclared key ' .. tostring(key) .. ' in ' .. command) end
  return real.call(command, key, ...)
end}
"""


def test_the_store_script_touches_only_declared_keys(redis_db, monkeypatch):
    """Dynamically: the script, guarded so that any key outside KEYS fails it, stores new, duplicate,
    stale, tracked (Salesforce), future-dated and refused requests as before."""
    from integration.inbound import store as store_module
    from integration.inbound.generic import parse
    from integration.inbound.hubspot import parse_app_batch
    from integration.inbound.salesforce import parse as parse_salesforce

    monkeypatch.setattr(store_module, "STORE_SCRIPT", KEY_GUARD + store_module.STORE_SCRIPT)
    queue = Queue("default", connection=redis_db, serializer="json")

    def put(source, events, raw=b"{}", **kwargs):
        record = store_module.delivery_record(source, "POST", "/x", "", {}, raw, events, [])
        return store(redis_db, queue, source, events, record, **kwargs).outcomes

    batch = json.loads(_batch(2, first_event=1, occurred=1767268795000))
    events, _ = parse_app_batch([*batch, batch[0]])  # the same event twice in one batch
    assert put("hubspot", events) == ["new", "new", "duplicate"]
    older, _ = parse_app_batch(json.loads(_batch(1, first_event=9, occurred=1767268790000)))
    assert put("hubspot", older) == ["stale"]
    assert put("hubspot", events[:2]) == ["duplicate", "duplicate"]
    raw = fixture_bytes("salesforce-outbound-message-opportunity.xml")
    tracked, _ = parse_salesforce(raw, ("00D5e000000Fxq2EAC",), None)
    assert tracked[0].track_field
    assert put("salesforce", tracked, raw) == ["new"] * len(tracked)
    future = _zap("fut-guard", 10, occurred_at="2099-01-01T00:00:00Z")
    assert put("generic:zapier", [parse("zapier", json.loads(future), future, None, None)], future) == ["new"]
    big = _zap("big-guard", 5000)
    with pytest.raises(store_module.StorageFull):
        put("generic:zapier", [parse("zapier", json.loads(big), big, None, None)], big, max_stored_bytes=1000)
    stored = 3 + len(tracked) + 1
    assert redis_db.zcard("rb:due") == stored and redis_db.zcard("rb:events:status:received") == stored
    assert queue.count == 1  # the first request's wake job (written under the guard) serves the others
    redis_db.delete("rb:wake:pending")  # as run_due does when it starts: the next request queues one
    assert put("generic:zapier", [parse("zapier", json.loads(_zap("after", 5)), b"{}", None, None)]) == ["new"]
    assert queue.count == 2


def test_a_flushed_script_is_loaded_again_and_leaves_no_stray_job(redis_db):
    """After a Redis restart or SCRIPT FLUSH, EVALSHA fails having done nothing: the script is loaded
    again and the request stored once, with one wake job."""
    from integration.inbound import store as store_module
    from integration.inbound.generic import parse

    queue = Queue("default", connection=redis_db, serializer="json")
    for number in range(2):
        raw = _zap(f"flush-{number}", 10)
        events = [parse("zapier", json.loads(raw), raw, None, None)]
        record = store_module.delivery_record("generic:zapier", "POST", "/x", "", {}, raw, events, [])
        redis_db.script_flush()
        redis_db.delete("rb:wake:pending")  # as a worker starting the last job does
        result = store(redis_db, queue, "generic:zapier", events, record)
        assert result.outcomes == ["new"]
        assert queue.job_ids[-1] == f"wake-{result.delivery_id}"
    assert queue.count == 2 and len(redis_db.keys("rq:job:*")) == 2


def test_the_scripts_wake_job_is_what_rq_itself_enqueues(redis_db):
    """The store script writes its wake job from the commands RQ's enqueue_call issued once
    (building a job through RQ cost as much CPU as the rest of the storage): it must be RQ's own."""
    from rq.job import Job

    from integration.inbound import store as store_module
    from integration.inbound.generic import parse

    queue = Queue("default", connection=redis_db, serializer="json")
    queue.enqueue_call(store_module.WAKE_JOB, job_id="wake-by-rq", result_ttl=0,
                       failure_ttl=store_module.WAKE_JOB_FAILURE_TTL, timeout=store_module.WAKE_JOB_TIMEOUT)
    redis_db.delete("rq:queues")
    raw = _zap("rq-own", 5)
    events = [parse("zapier", json.loads(raw), raw, None, None)]
    record = store_module.delivery_record("generic:zapier", "POST", "/x", "", {}, raw, events, [])
    delivery = store(redis_db, queue, "generic:zapier", events, record).delivery_id
    by_rq, replayed = (redis_db.hgetall(f"rq:job:{name}") for name in ("wake-by-rq", f"wake-{delivery}"))
    times = {b"created_at", b"enqueued_at"}
    assert {k: v for k, v in replayed.items() if k not in times} == {k: v for k, v in by_rq.items() if k not in times}
    assert replayed[b"created_at"] == replayed[b"enqueued_at"] != by_rq[b"created_at"]
    assert redis_db.ttl(f"rq:job:wake-{delivery}") == redis_db.ttl("rq:job:wake-by-rq") == -1
    assert queue.job_ids == ["wake-by-rq", f"wake-{delivery}"]
    assert redis_db.smembers("rq:queues") == {b"rq:queue:default"}  # workers find the queue by it
    job = Job.fetch(f"wake-{delivery}", connection=redis_db, serializer="json")
    assert job.func_name == store_module.WAKE_JOB and job.get_status() == "queued"
    assert job.timeout == store_module.WAKE_JOB_TIMEOUT
    assert abs((job.enqueued_at - Job.fetch("wake-by-rq", connection=redis_db).enqueued_at).total_seconds()) < 5


# ---- one wake job for a burst (issue 10 item 3, ingest) ---------------------------------------


def _post_all(url: str, bodies: list[bytes], clients: int = 8) -> list[dict]:
    """POST every body to the Zapier hook from `clients` threads; the answers, in order."""
    from concurrent.futures import ThreadPoolExecutor

    def post(body: bytes) -> dict:
        answer = requests.post(f"{url}/webhooks/generic/zapier", data=body, headers=ZAPIER, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(post, bodies))


def test_a_burst_while_no_worker_runs_queues_one_wake_job(bridge, redis_db):
    """Each request queued its own run_due job: a burst of N requests left N jobs, all but the first
    finding nothing to run. Now the script queues one only when none is pending."""
    answers = _post_all(bridge.url, [_zap(f"burst-{n}", 10, deal=str(n)) for n in range(60)])
    assert sum(a["new"] for a in answers) == 60 and redis_db.zcard("rb:due") == 60
    queue = Queue("default", connection=redis_db, serializer="json")
    assert queue.count == 1 and len(redis_db.keys("rq:job:*")) == 1
    assert 0 < redis_db.pttl("rb:wake:pending") <= 2000  # lapses by itself should that job be lost
    redis_db.delete("rb:wake:pending")  # what run_due does when it starts
    assert _post_all(bridge.url, [_zap("after-start", 10)])[0]["new"] == 1
    assert queue.count == 2  # an event stored once a job has started gets a job of its own


def test_events_stored_while_run_due_drains_are_processed_promptly(bridge, redis_db, redis_url, tmp_path):
    """A real worker, with its clock silenced (another token holds the clock's leader lock), so that
    only the web's wake jobs get anything run: a burst, a trickle of events posted during the drain,
    then one more right after the last was processed. Each must be processed within seconds: one
    stored after run_due started queues the next job (run_due deletes the pending flag first)."""
    import threading

    from rq import Worker

    from integration.scheduler import clock

    redis_db.set(clock.LEADER_KEY, "a-test-holds-the-clock", px=120_000)
    env = cli_env(REDIS_URL=f"{redis_url}/1", LOG_LEVEL="WARNING")
    worker = subprocess.Popen([sys.executable, "-m", "integration", "worker"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "w"))

    def processed(prefix: str, count: int, timeout: float = 30) -> list[tuple[float, float]]:
        """(received_at, processed_at) of events prefix-0..count-1, once every one is processed."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [redis_db.hmget(f"rb:event:generic:zapier:{prefix}-{n}", "received_at", "processed_at")
                    for n in range(count)]
            if all(row[1] for row in rows):
                return [(float(row[0]), float(row[1])) for row in rows]
            assert time.monotonic() < deadline, (prefix, sum(1 for row in rows if row[1]), count,
                                                 (tmp_path / "worker.log").read_text()[-2000:])
            time.sleep(0.02)

    try:
        deadline = time.monotonic() + 60
        while not Worker.all(connection=redis_db):
            assert worker.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.1)
        trickled: list[bytes] = []
        stop = threading.Event()

        def trickle() -> None:
            while not stop.is_set() and len(trickled) < 400:
                trickled.append(_zap(f"trickle-{len(trickled)}", 10, deal="t"))
                _post_all(bridge.url, [trickled[-1]], clients=1)
                time.sleep(0.01)

        runner = threading.Thread(target=trickle)
        runner.start()
        try:
            _post_all(bridge.url, [_zap(f"burst-{n}", 10, deal=str(n)) for n in range(300)])
            burst = processed("burst", 300)
        finally:
            stop.set()
            runner.join()
        trickle_times = processed("trickle", len(trickled))
        drain = (min(done for _, done in burst), max(done for _, done in burst))
        during = [received for received, _ in trickle_times if drain[0] < received < drain[1]]
        assert during, "no event was stored while the burst was being drained"
        assert max(done - received for received, done in trickle_times) < 3.0
        _post_all(bridge.url, [_zap("last-0", 10)])  # within the 2 s a pending flag would last
        (received, done), = processed("last", 1, timeout=5)
        assert done - received < 3.0
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_the_answer_is_compact_json_with_its_counts(bridge):
    """The 2xx body is written without an encoder per answer: still exactly the compact JSON."""
    first = bridge.post("/webhooks/generic/zapier", _zap("answer-1", 10), ZAPIER)
    again = bridge.post("/webhooks/generic/zapier", _zap("answer-1", 10), ZAPIER)
    for answer, new, duplicate in ((first, 1, 0), (again, 0, 1)):
        body = answer.json()
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.text == json.dumps(body, separators=(",", ":")) + "\n"
        assert list(body) == ["ok", "delivery_id", "new", "stale", "duplicate", "skipped"]
        counts = (body["ok"], body["new"], body["stale"], body["duplicate"], body["skipped"])
        assert counts == (True, new, 0, duplicate, 0)
