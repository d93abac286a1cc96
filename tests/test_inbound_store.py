"""Storage: stored before the 2xx, once per event, in a handful of round trips; 503 without Redis."""

from __future__ import annotations

import json

import pytest
import redis
from rq import Queue

from integration.inbound import hubspot
from integration.inbound.store import store
from tests.conftest import ADMIN_TOKEN, SALESFORCE_PATH, free_port
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
    assert queue.job_ids == [f"delivery-{delivery}"]
    assert redis_db.llen(f"rb:delivery:{delivery}:new") == 3
    assert redis_db.ttl("rb:event:hubspot:24681357-2718281-3471102201-18273645501-1767268795123") > 6 * 24 * 3600


def test_duplicate_batch_is_stored_once_and_answered_alike(bridge, redis_db):
    headers = SIGS["requests"][BATCH]["headers"]
    first = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), headers).json()
    events_after_first = sorted(redis_db.keys("rb:event:*"))
    second = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), headers).json()
    assert first["new"] == 3 and second["new"] == 0 and second["duplicate"] == 3
    assert sorted(redis_db.keys("rb:event:*")) == events_after_first
    assert redis_db.llen(f"rb:delivery:{second['delivery_id']}:new") == 0


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


def test_a_100_event_batch_costs_a_handful_of_round_trips(redis_url, redis_db):
    from integration.inbound.hubspot import parse_app_batch
    from integration.inbound.store import delivery_record

    connection = redis.Redis.from_url(f"{redis_url}/1", connection_class=CountingConnection)
    queue = Queue("default", connection=connection, serializer="json")
    queue.get_redis_server_version()  # cached per process, as in the web app
    events, _ = parse_app_batch(json.loads(_batch(100)))
    record = delivery_record("hubspot", "POST", "/webhooks/hubspot", "", {}, b"[]", events, [])
    CountingConnection.writes = 0
    result = store(connection, queue, "hubspot", events, record)
    assert result.counts == {"new": 100, "stale": 0, "duplicate": 0}
    assert CountingConnection.writes <= 2
    assert len(redis_db.keys("rb:event:hubspot:*")) == 100


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
