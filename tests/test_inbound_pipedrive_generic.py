"""Pipedrive (HTTP Basic) and generic hooks (shared token or Standard Webhooks signature)."""

from __future__ import annotations

import base64
import json

import pytest
from standardwebhooks import Webhook

from tests.servers import fixture_bytes, signatures

SIGS = signatures()
PIPEDRIVE = "pipedrive-deal-updated-v2.json"
ZAPIER = "zapier-generic.json"
STANDARD = "standard-webhooks-deal-stage-changed.json"


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Content-Type": "application/json", "Authorization": f"Basic {token}"}


def test_pipedrive_fixture(bridge):
    answer = bridge.post("/webhooks/pipedrive", fixture_bytes(PIPEDRIVE), SIGS["requests"][PIPEDRIVE]["headers"])
    assert answer.status_code == 200, answer.text
    stored = bridge.event("pipedrive", "c2a9e6f0-7b1d-4d3e-9a8f-0e1d2c3b4a59").json()
    event = stored["event"]
    assert event["type"] == "deal.stage_changed"
    assert event["object"] == {"type": "deal", "id": "4821"}
    assert event["previous"]["stage_id"] == 3 and event["properties"]["stage_id"] == 4
    assert event["deal"]["name"] == "Northwind Pilot - Annual plan" and event["deal"]["stage"] == 4
    assert event["deal"]["amount"] == 12500
    assert event["deal"]["9f3c1a7e2b8d4c6f0a1b2c3d4e5f6a7b8c9d0e1f"] == "outreach-ready"
    assert event["contact"] == {"id": "7731"} and event["company"] == {"id": "3307"}
    assert event["account"] == "13570246"
    assert "Authorization" not in stored["delivery"]["headers"]


@pytest.mark.parametrize(
    "headers",
    [_basic("pd-hook", "wrong"), _basic("someone", "fixture-pass-123"), {"Content-Type": "application/json"},
     {"Content-Type": "application/json", "Authorization": "Basic !!!not-base64"},
     {"Content-Type": "application/json", "Authorization": "Bearer fixture-pass-123"}],
    ids=["wrong-password", "wrong-user", "missing", "garbled", "not-basic"],
)
def test_pipedrive_refuses_bad_credentials(bridge, headers):
    answer = bridge.post("/webhooks/pipedrive", fixture_bytes(PIPEDRIVE), headers)
    assert answer.status_code == 401


def test_pipedrive_malformed_bodies(bridge):
    headers = _basic("pd-hook", "fixture-pass-123")
    assert bridge.post("/webhooks/pipedrive", b"{nope", headers).status_code == 400
    answer = bridge.post("/webhooks/pipedrive", b'{"meta": {"action": "explode", "entity": "deal"}}', headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["fields"]["meta"]["id"] == ["Missing data for required field."]
    assert "action" in answer.json()["error"]["fields"]["meta"]


def test_pipedrive_create_and_delete(bridge):
    headers = _basic("pd-hook", "fixture-pass-123")
    created = {"meta": {"id": "evt-1", "action": "create", "entity": "person", "entity_id": 7731,
                        "timestamp": 1767268798, "company_id": 1},
               "data": {"id": 7731, "name": "Dana Lee", "first_name": "Dana", "last_name": "Lee",
                        "emails": [{"value": "dana@example.com", "primary": True}],
                        "phones": [{"value": "+14155550123", "primary": True}]}, "previous": None}
    assert bridge.post("/webhooks/pipedrive", json.dumps(created).encode(), headers).status_code == 200
    person = bridge.event("pipedrive", "evt-1").json()["event"]
    assert person["type"] == "contact.created"
    assert person["contact"]["email"] == "dana@example.com" and person["contact"]["phone"] == "+14155550123"
    assert person["occurred_at"] == "2026-01-01T11:59:58.000Z"
    deleted = {"meta": {"id": "evt-2", "action": "delete", "entity": "deal", "entity_id": "4821"},
               "data": None, "previous": {"id": 4821, "title": "Gone"}}
    assert bridge.post("/webhooks/pipedrive", json.dumps(deleted).encode(), headers).status_code == 200
    assert bridge.event("pipedrive", "evt-2").json()["event"]["type"] == "deal.deleted"


def test_zapier_flat_keys_with_token(bridge):
    answer = bridge.post("/webhooks/generic/zapier", fixture_bytes(ZAPIER), SIGS["requests"][ZAPIER]["headers"])
    assert answer.status_code == 200, answer.text
    stored = bridge.event("generic:zapier", "zap-hs-deal-18273645501-1767268795123").json()
    event = stored["event"]
    assert event["type"] == "deal.stage_changed" and event["object"] == {"type": "deal", "id": "18273645501"}
    assert event["deal"] == {"id": "18273645501", "name": "Northwind Pilot - Annual plan", "stage": "closedwon",
                             "amount": "12500"}
    assert event["contact"]["email"] == "dana.lee@example.com" and event["contact"]["first_name"] == "Dana"
    assert "X-Hook-Token" not in stored["delivery"]["headers"]


def test_zapier_bearer_nested_and_array_wrapped(bridge):
    body = json.dumps([{"event": "contact.updated", "contact": {"id": "c1", "email": "x@example.com"}}]).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer zap-fixture-token-7f3a"}
    answer = bridge.post("/webhooks/generic/zapier", body, headers)
    assert answer.status_code == 200
    event_id = "sha256-" + __import__("hashlib").sha256(body).hexdigest()  # no id given: the body's hash
    assert bridge.event("generic:zapier", event_id).json()["event"]["contact"]["email"] == "x@example.com"
    assert bridge.post("/webhooks/generic/zapier", body, headers).json()["duplicate"] == 1


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"X-Hook-Token": "wrong"}, 401), ({}, 401), ({"Authorization": "Bearer nope"}, 401),
     ({"X-Hook-Token": "zäp"}, 401)],
)
def test_zapier_refuses_bad_tokens(bridge, headers, status):
    headers = {"Content-Type": "application/json", **{k: v.encode().decode("latin-1") for k, v in headers.items()}}
    assert bridge.post("/webhooks/generic/zapier", fixture_bytes(ZAPIER), headers).status_code == status


def test_generic_payload_errors_name_the_field(bridge):
    headers = {"Content-Type": "application/json", "X-Hook-Token": "zap-fixture-token-7f3a"}
    no_type = bridge.post("/webhooks/generic/zapier", b'{"deal__id": "1"}', headers)
    assert no_type.status_code == 400 and "type" in no_type.json()["error"]["fields"]
    no_id = bridge.post("/webhooks/generic/zapier", b'{"event": "deal.updated"}', headers)
    assert no_id.status_code == 400 and "deal" in no_id.json()["error"]["fields"]
    not_object = bridge.post("/webhooks/generic/zapier", b"[1, 2]", headers)
    assert not_object.status_code == 400
    unknown = bridge.post("/webhooks/generic/nosuchhook", b"{}", headers)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_hook"


def test_standard_webhooks_fixture(bridge):
    headers = SIGS["requests"][STANDARD]["headers"]
    bridge.clock.now = int(headers["webhook-timestamp"]) + 1
    answer = bridge.post("/webhooks/generic/standard", fixture_bytes(STANDARD), headers)
    assert answer.status_code == 200, answer.text
    event = bridge.event("generic:standard", "msg_2pQx7kR9cT4vW1yZ3aB5dE8fG0h").json()["event"]
    assert event["type"] == "deal.stage_changed" and event["object"] == {"type": "deal", "id": "18273645501"}
    assert event["deal"]["stage"] == "closedwon" and event["contact"]["email"] == "dana.lee@example.com"
    assert event["account"] == "24681357" and event["occurred_at"] == "2026-01-01T11:59:55.123Z"


def test_standard_webhooks_svix_header_names(bridge):
    headers = SIGS["requests"][STANDARD]["headers"]
    bridge.clock.now = int(headers["webhook-timestamp"]) + 1
    svix = {"Content-Type": "application/json", "svix-id": headers["webhook-id"],
            "svix-timestamp": headers["webhook-timestamp"], "svix-signature": headers["webhook-signature"]}
    assert bridge.post("/webhooks/generic/standard", fixture_bytes(STANDARD), svix).status_code == 200


@pytest.mark.parametrize(
    ("offset", "change", "message"),
    [(301, {}, "outside the 5-minute window"), (-301, {}, "outside the 5-minute window"),
     (1, {"webhook-signature": "v1,AAAA"}, "no matching v1 signature"),
     (1, {"webhook-signature": "garbage-without-comma"}, "no matching v1 signature"),
     (1, {"webhook-id": None}, "missing webhook-id"),
     (1, {"webhook-timestamp": "12.5"}, "not whole seconds"),
     (1, {"webhook-id": "msg_other"}, "no matching v1 signature")],
)
def test_standard_webhooks_refusals(bridge, offset, change, message):
    headers = dict(SIGS["requests"][STANDARD]["headers"])
    bridge.clock.now = int(headers["webhook-timestamp"]) + offset
    for key, value in change.items():
        if value is None:
            headers.pop(key)
        else:
            headers[key] = value
    answer = bridge.post("/webhooks/generic/standard", fixture_bytes(STANDARD), headers)
    assert answer.status_code == 401
    assert message in answer.json()["error"]["message"]


def test_standard_webhooks_tampered_body(bridge):
    headers = SIGS["requests"][STANDARD]["headers"]
    bridge.clock.now = int(headers["webhook-timestamp"]) + 1
    body = fixture_bytes(STANDARD).replace(b"closedwon", b"closedlost")
    assert bridge.post("/webhooks/generic/standard", body, headers).status_code == 401


def test_standard_webhooks_with_the_package_signing(bridge):
    """A sender using the standardwebhooks package itself is accepted (key rotation: two signatures)."""
    from datetime import UTC, datetime

    secret = SIGS["secrets"]["standard_webhooks_secret"]
    body = json.dumps({"type": "contact.created", "timestamp": "2026-01-01T12:00:00Z",
                       "data": {"contact": {"id": "c9", "email": "new@example.com"}}})
    when = datetime.fromtimestamp(bridge.clock.now, UTC)
    signature = Webhook(secret).sign("msg_pkg_1", when, body)
    headers = {"Content-Type": "application/json", "webhook-id": "msg_pkg_1",
               "webhook-timestamp": str(int(bridge.clock.now)), "webhook-signature": f"v1,bm90LWl0 {signature}"}
    assert bridge.post("/webhooks/generic/standard", body.encode(), headers).status_code == 200
    assert bridge.event("generic:standard", "msg_pkg_1").json()["event"]["type"] == "contact.created"


def test_configured_event_id_field(make_bridge):
    bridge = make_bridge(generic_event_id_fields={"zapier": "meta.run_id"})
    headers = {"Content-Type": "application/json", "X-Hook-Token": "zap-fixture-token-7f3a"}
    body = json.dumps({"event": "deal.updated", "deal__id": "9", "meta": {"run_id": "run-42"}}).encode()
    assert bridge.post("/webhooks/generic/zapier", body, headers).status_code == 200
    assert bridge.event("generic:zapier", "run-42").json()["event"]["deal"]["id"] == "9"


# ---- bodies that can never succeed get a 4xx saying why, never a 503 (issue 9 item 10) ------

DEEP = b"[" * 10_000 + b"]" * 10_000
TOKEN = {"Content-Type": "application/json", "X-Hook-Token": "zap-fixture-token-7f3a"}
NOT_A_TIMESTAMP = [1e20, 1e300, "12345678901234567890", "²", "١٧٦٧٢٦٨٧٩٥", "NaN", True, -5, "next tuesday"]


@pytest.mark.parametrize(
    ("body", "message"),
    [(DEEP, "nests arrays or objects more than 64 levels deep"),
     (b'{"event": "deal.updated", "deal__id": "1", "occurred_at": NaN}', "NaN is not a JSON value"),
     (b'{"event": "deal.updated", "deal__id": "1", "occurred_at": Infinity}', "Infinity is not a JSON value"),
     (b'{"event": "deal.updated", "deal__id": "1", "occurred_at": 1e400}', "the number 1e400 is out of range"),
     (b'{"x": ' + b"9" * 5000 + b"}", "not valid JSON")],
    ids=["nested-10000-deep", "NaN", "Infinity", "1e400", "5000-digit-integer"],
)
@pytest.mark.parametrize("path", ["/webhooks/generic/zapier", "/webhooks/pipedrive"])
def test_unreadable_json_is_400(bridge, path, body, message):
    headers = TOKEN if "generic" in path else _basic("pd-hook", "fixture-pass-123")
    answer = bridge.post(path, body, headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "malformed_body" and message in answer.json()["error"]["message"]


@pytest.mark.parametrize(("body", "message"), [(DEEP, "64 levels"),
                                               (b'[{"eventId": 1, "occurredAt": Infinity}]', "Infinity")],
                         ids=["nested-10000-deep", "Infinity"])
def test_hubspot_unreadable_json_is_400(bridge, body, message):
    """Not JSON at all, so not a batch whose items could be skipped: the one 4xx HubSpot gets."""
    from integration.inbound import hubspot

    secret = SIGS["secrets"]["hubspot_client_secret"]
    ts = str(int(bridge.clock.now * 1000))
    headers = {"Content-Type": "application/json", "X-HubSpot-Request-Timestamp": ts,
               "X-HubSpot-Signature-v3": hubspot.v3_signature(
                   secret, "POST", "https://hooks.example.com/webhooks/hubspot", body, ts)}
    answer = bridge.post("/webhooks/hubspot", body, headers)
    assert answer.status_code == 400 and message in answer.json()["error"]["message"]


@pytest.mark.parametrize("value", NOT_A_TIMESTAMP, ids=repr)
def test_generic_timestamps_out_of_range_name_the_field(bridge, value):
    flat = bridge.post("/webhooks/generic/zapier",
                       json.dumps({"event": "deal.updated", "deal__id": "1", "occurred_at": value}).encode(), TOKEN)
    assert flat.status_code == 400, flat.text
    assert flat.json()["error"]["fields"]["occurred_at"][0].startswith("Expected epoch seconds or milliseconds")
    envelope = bridge.post("/webhooks/generic/zapier", json.dumps(
        {"type": "deal.updated", "timestamp": value, "data": {"deal": {"id": "1"}}}).encode(), TOKEN)
    assert envelope.status_code == 400 and "timestamp" in envelope.json()["error"]["fields"]
    inner = bridge.post("/webhooks/generic/zapier", json.dumps(
        {"type": "deal.updated", "data": {"deal": {"id": "1"}, "occurred_at": value}}).encode(), TOKEN)
    assert inner.status_code == 400 and "occurred_at" in inner.json()["error"]["fields"]["data"]


@pytest.mark.parametrize("value", NOT_A_TIMESTAMP, ids=repr)
def test_pipedrive_timestamps_out_of_range_name_the_field(bridge, value):
    body = {"meta": {"id": "bad-ts", "action": "change", "entity": "deal", "entity_id": 1, "timestamp": value},
            "data": {"id": 1}, "previous": {}}
    answer = bridge.post("/webhooks/pipedrive", json.dumps(body).encode(), _basic("pd-hook", "fixture-pass-123"))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["fields"]["meta"]["timestamp"][0].startswith("Expected epoch seconds")


@pytest.mark.parametrize("value", ["1767268795", 1767268795123, "2026-01-01T11:59:55.123Z", "2026-01-01 11:59:55",
                                   1767268795.5, "", None, "9999-12-31T23:59:59Z"])
def test_good_timestamps_still_pass(bridge, value):
    body = json.dumps({"event": "deal.updated", "deal__id": "1", "occurred_at": value}).encode()
    assert bridge.post("/webhooks/generic/zapier", body, TOKEN).status_code == 200


@pytest.mark.parametrize("timestamp", ["²", "1e20", "99999999999999999999", "١٧٦٧٢٦٨٧٩٥"])
def test_standard_webhooks_bad_timestamp_header_is_401(bridge, timestamp):
    headers = {**SIGS["requests"][STANDARD]["headers"], "webhook-timestamp": timestamp}
    answer = bridge.post("/webhooks/generic/standard", fixture_bytes(STANDARD),
                         {k: v.encode().decode("latin-1") for k, v in headers.items()})
    assert answer.status_code == 401 and "webhook-timestamp" in answer.json()["error"]["message"]
