"""HubSpot: the reference's known-answer vectors, the fixtures' signatures, and the endpoint."""

from __future__ import annotations

import json

import pytest

from integration.inbound import hubspot
from integration.inbound.errors import InboundError
from tests.conftest import FIXTURE_NOW
from tests.servers import fixture_bytes, signatures

REF_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
REF_URI = "https://www.example.com/webhook_uri"
SIGS = signatures()
SECRET = SIGS["secrets"]["hubspot_client_secret"]
BATCH = "hubspot-deal-propertychange-batch.json"
CONTACTS = "hubspot-contact-creation-batch.json"
WORKFLOW = "hubspot-workflow-webhook-deal.json"
V3_HEADERS = ("X-HubSpot-Signature-v3", "X-HubSpot-Request-Timestamp")
NO_V3 = {"X_HubSpot_Signature_v3": None, "X_HubSpot_Request_Timestamp": None}


def test_reference_vectors():
    v1_body = (b'[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,'
               b'"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM",'
               b'"changeFlag":"NEW","appId":54321}]')
    assert hubspot.v1_signature(REF_SECRET, v1_body) == (
        "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de")
    assert hubspot.v2_signature(REF_SECRET, "GET", REF_URI, b"") == (
        "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e")
    assert hubspot.v2_signature(REF_SECRET, "POST", REF_URI, b'{"example_field":"example_value"}') == (
        "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900")
    assert hubspot.v3_signature(REF_SECRET, "POST", REF_URI, b"{'example_field':'example_value'}",
                                "1693657560000") == "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="


@pytest.mark.parametrize("name", [BATCH, CONTACTS])
def test_fixture_v3_and_v1_signatures_verify(name):
    spec = SIGS["requests"][name]
    body, headers = fixture_bytes(name), spec["headers"]
    ts = int(headers["X-HubSpot-Request-Timestamp"])
    assert hubspot.verify(SECRET, "POST", spec["url"], body, headers, ts + 1000) == "v3"
    with pytest.raises(InboundError, match="outside the 5-minute window"):
        hubspot.verify(SECRET, "POST", spec["url"], body, headers, ts + 300_001)
    with pytest.raises(InboundError, match="outside the 5-minute window"):
        hubspot.verify(SECRET, "POST", spec["url"], body, headers, ts - 300_001)
    v1_only = {k: v for k, v in headers.items() if not k.startswith(("X-HubSpot-Signature-v3", "X-HubSpot-Request"))}
    assert hubspot.verify(SECRET, "POST", spec["url"], body, v1_only, ts + 10**9, ("v3", "v2", "v1")) == "v1"
    with pytest.raises(InboundError, match="X-HubSpot-Signature v1 is not accepted"):
        hubspot.verify(SECRET, "POST", spec["url"], body, v1_only, ts + 10**9)


def test_fixture_v2_workflow_signature_verifies():
    spec = SIGS["requests"][WORKFLOW]
    v2_only = {k: v for k, v in spec["headers"].items() if k not in V3_HEADERS}
    assert hubspot.verify(SECRET, "POST", spec["url"], fixture_bytes(WORKFLOW), v2_only, 0) == "v2"
    assert hubspot.verify(SECRET, "POST", spec["url"], fixture_bytes(WORKFLOW), spec["headers"],
                          int(spec["headers"]["X-HubSpot-Request-Timestamp"]) + 1000) == "v3"


def test_url_decoding_case():
    case = SIGS["requests"]["hubspot_v3_url_decode_example"]
    body = fixture_bytes(case["body_file"])
    ts = case["headers"]["X-HubSpot-Request-Timestamp"]
    assert hubspot.hs_uri(case["url_as_received"]) == case["uri_used_for_signing"]
    assert hubspot.v3_signature(SECRET, "POST", case["url_as_received"], body, ts) == \
        case["headers"]["X-HubSpot-Signature-v3"]
    undecoded = hubspot.v3_signature(SECRET, "POST", "X", b"", ts)  # sanity: differs from both
    assert undecoded != case["negative_signature_over_undecoded_url"]
    bad = {**case["headers"], "X-HubSpot-Signature-v3": case["negative_signature_over_undecoded_url"]}
    with pytest.raises(InboundError):
        hubspot.verify(SECRET, "POST", case["url_as_received"], body, bad, int(ts) + 1000)


def _headers(name: str, **changes: str | None) -> dict[str, str]:
    headers = dict(SIGS["requests"][name]["headers"])
    for key, value in changes.items():
        key = key.replace("_", "-")
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    return headers


def test_app_batch_is_accepted_and_normalized(bridge):
    answer = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), _headers(BATCH))
    assert answer.status_code == 200, answer.text
    assert answer.json()["new"] == 3 and answer.json()["duplicate"] == 0
    stage = bridge.event("hubspot", "24681357-2718281-3471102201-18273645501-1767268795123").json()
    event = stage["event"]
    assert event["type"] == "deal.stage_changed"
    assert event["object"] == {"type": "deal", "id": "18273645501"}
    assert event["properties"] == {"dealstage": "closedwon"}
    assert event["deal"] == {"id": "18273645501", "dealstage": "closedwon", "stage": "closedwon"}
    assert event["account"] == "24681357" and event["hydrate"] is True
    assert event["occurred_at"] == "2026-01-01T11:59:55.123Z"
    assert stage["status"] == "received" and stage["stale"] is False
    amount = bridge.event("hubspot", "24681357-2718282-3471101990-18273645501-1767268412007").json()["event"]
    assert amount["type"] == "deal.updated" and amount["deal"]["amount"] == "12500"


def test_contact_creation_in_both_formats(bridge):
    answer = bridge.post("/webhooks/hubspot", fixture_bytes(CONTACTS), _headers(CONTACTS))
    assert answer.json()["new"] == 2
    generic = bridge.event("hubspot", "24681357-2718290-3471103310-98765432101-1767268797001").json()["event"]
    classic = bridge.event("hubspot", "24681357-2718291-3471103311-98765432101-1767268797001").json()["event"]
    assert generic["type"] == classic["type"] == "contact.created"
    assert generic["object"] == classic["object"] == {"type": "contact", "id": "98765432101"}


def test_v1_fallback_only_when_named_and_proxy_url(make_bridge):
    bridge = make_bridge(hubspot_signature_versions=("v3", "v2", "v1"))
    answer = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), _headers(BATCH, **NO_V3))
    assert answer.status_code == 200
    # Without HUBSPOT_WEBHOOK_URL the URL as received (127.0.0.1) is signed, not HubSpot's public one.
    direct = make_bridge(hubspot_webhook_url=None)
    assert direct.post("/webhooks/hubspot", fixture_bytes(BATCH), _headers(BATCH)).status_code == 401


def test_url_decoding_over_http(bridge):
    case = SIGS["requests"]["hubspot_v3_url_decode_example"]
    headers = {"Content-Type": "application/json", **case["headers"]}
    path = "/webhooks/hubspot?tenant=acme%3Aus&ref=%28crm%29"
    assert bridge.post(path, fixture_bytes(BATCH), headers).status_code == 200
    bad = {**headers, "X-HubSpot-Signature-v3": case["negative_signature_over_undecoded_url"]}
    assert bridge.post(path, fixture_bytes(BATCH), bad).status_code == 401


@pytest.mark.parametrize("with_v3", [False, True])
def test_workflow_action(make_bridge, with_v3):
    bridge = make_bridge(hubspot_webhook_url="https://hooks.example.com/webhooks/hubspot-workflow")
    headers = _headers(WORKFLOW) if with_v3 else _headers(WORKFLOW, **NO_V3)
    answer = bridge.post("/webhooks/hubspot?flow=deal-won", fixture_bytes(WORKFLOW), headers)
    assert answer.status_code == 200, answer.text
    stored = bridge.event("hubspot", "wf-deal-won-24681357-deal-18273645501-1767268795123").json()
    event = stored["event"]
    assert event["type"] == "deal.stage_changed"
    assert event["deal"]["name"] == "Northwind Pilot - Annual plan" and event["deal"]["stage"] == "closedwon"
    assert event["deal"]["amount"] == "12500"
    assert event["contact"] == {"id": "98765432101"} and event["company"] == {"id": "5544332211"}
    assert stored["sender"]["associated_contact_ids"] == ["98765432101", "98765432102"]


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"X-HubSpot-Signature-v3": "fuytrm1o/8kHjfGDIJ6mxXpfaSdyJGUh8Wh1TG7AuGX="}, 401, "does not match"),
        ({"X-HubSpot-Request-Timestamp": "1767268400000"}, 401, "outside the 5-minute window"),
        ({"X-HubSpot-Request-Timestamp": "soon"}, 401, "not epoch milliseconds"),
        ({"X-HubSpot-Signature-v3": None, "X-HubSpot-Request-Timestamp": None, "X-HubSpot-Signature": None}, 401,
         "no HubSpot signature"),
        ({"X-HubSpot-Signature-v3": None, "X-HubSpot-Request-Timestamp": None, "X-HubSpot-Signature-Version": "v9"},
         401, "must be v1 or v2"),
        ({"X-HubSpot-Signature-v3": None}, 401, "X-HubSpot-Signature-v3 missing"),
        ({"X-HubSpot-Signature-v3": "ünïcødé"}, 401, "does not match"),
    ],
)
def test_bad_signatures_are_refused(bridge, change, status, message):
    headers = dict(SIGS["requests"][BATCH]["headers"])
    for key, value in change.items():
        if value is None:
            headers.pop(key)
        else:
            headers[key] = value
    answer = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), {k: v.encode("utf-8").decode("latin-1")
                                                                      for k, v in headers.items()})
    assert answer.status_code == status
    assert message in answer.json()["error"]["message"]


def test_tampered_body_and_wrong_secret(make_bridge):
    body = fixture_bytes(BATCH).replace(b"closedwon", b"closedlost")
    bridge = make_bridge()
    assert bridge.post("/webhooks/hubspot", body, _headers(BATCH)).status_code == 401
    from integration.settings import Secret

    other = make_bridge(hubspot_client_secret=Secret("another-secret"))
    assert other.post("/webhooks/hubspot", fixture_bytes(BATCH), _headers(BATCH)).status_code == 401


def test_stale_clock_rejects_the_fixture(bridge):
    bridge.clock.now = FIXTURE_NOW + 400
    answer = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), _headers(BATCH))
    assert answer.status_code == 401


def _signed(bridge, body: bytes, path: str = "/webhooks/hubspot") -> dict[str, str]:
    ts = str(int(bridge.clock.now * 1000))
    return {"Content-Type": "application/json", "X-HubSpot-Request-Timestamp": ts,
            "X-HubSpot-Signature-v3": hubspot.v3_signature(SECRET, "POST", "https://hooks.example.com" + path,
                                                           body, ts)}


def test_verified_but_unexpected_events_get_200(bridge):
    body = (b'[{"eventId":1,"subscriptionId":2,"portalId":3,"occurredAt":4,"subscriptionType":"conversation.creation",'
            b'"objectId":5},{"nonsense":true},42]')
    answer = bridge.post("/webhooks/hubspot", body, _signed(bridge, body))
    assert answer.status_code == 200
    assert answer.json()["skipped"] == 3 and answer.json()["new"] == 0


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [(b"[{not json", "application/json", 400, "malformed_body"),
     (b'"just a string"', "application/json", 400, "malformed_body"),
     (b"\xff\xfe", "application/json", 400, "malformed_body"),
     (b"[]", "text/plain", 415, "unsupported_media_type"),
     (b'{"portalId": 1}', "application/json", 400, "malformed_body")],
)
def test_malformed_bodies_after_a_valid_signature(bridge, body, content_type, status, code):
    headers = {**_signed(bridge, body), "Content-Type": content_type}
    answer = bridge.post("/webhooks/hubspot", body, headers)
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code


def test_unconfigured_hubspot_is_503(make_bridge):
    bridge = make_bridge(hubspot_client_secret=None)
    answer = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), _headers(BATCH))
    assert answer.status_code == 503 and "HUBSPOT_CLIENT_SECRET" in answer.json()["error"]["message"]


# ---- signature versions: no downgrade (issue 9 item 2) ------------------------------------


def test_v3_stripped_and_v1_kept_is_refused_by_default(bridge, redis_db):
    """The downgrade: a captured app request minus its v3 headers, replayed a year later."""
    bridge.clock.now = FIXTURE_NOW + 365 * 86400
    answer = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), _headers(BATCH, **NO_V3))
    assert answer.status_code == 401
    message = answer.json()["error"]["message"]
    assert "X-HubSpot-Signature v1 is not accepted" in message and "HUBSPOT_SIGNATURE_VERSIONS" in message
    assert redis_db.keys("rb:event:*") == [] and redis_db.keys("rb:delivery:*") == []


def test_v3_alone_decides_when_its_headers_are_present(make_bridge):
    """With v1 named too, a failing or partial v3 is never rescued by the valid v1 signature."""
    bridge = make_bridge(hubspot_signature_versions=("v3", "v2", "v1"))
    bridge.clock.now = FIXTURE_NOW + 3600  # an hour-old request: v3 is out of its window, v1 never expires
    answer = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), _headers(BATCH))
    assert answer.status_code == 401 and "outside the 5-minute window" in answer.json()["error"]["message"]
    bridge.clock.now = FIXTURE_NOW
    wrong = "fuytrm1o/8kHjfGDIJ6mxXpfaSdyJGUh8Wh1TG7AuGX="
    for changes, reason in (({"X_HubSpot_Signature_v3": wrong}, "does not match"),
                            ({"X_HubSpot_Signature_v3": None}, "X-HubSpot-Signature-v3 missing"),
                            ({"X_HubSpot_Request_Timestamp": None}, "not epoch milliseconds")):
        answer = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), _headers(BATCH, **changes))
        assert answer.status_code == 401 and reason in answer.json()["error"]["message"], changes


def test_accepted_versions_are_what_the_setting_names():
    spec = SIGS["requests"][WORKFLOW]
    body, headers = fixture_bytes(WORKFLOW), spec["headers"]
    v2_only = {k: v for k, v in headers.items() if k not in V3_HEADERS}
    with pytest.raises(InboundError, match="X-HubSpot-Signature v2 is not accepted"):
        hubspot.verify(SECRET, "POST", spec["url"], body, v2_only, 0, ("v3",))
    # Without v3 among them, v3 headers are ignored and v2 decides.
    assert hubspot.verify(SECRET, "POST", spec["url"], body, headers, 0, ("v2",)) == "v2"


def test_no_signature_or_credential_header_is_stored(bridge):
    extra = {"Authorization": "Bearer not-for-storage", "X-Hook-Token": "hook-token-value",
             "X-Webhook-Token": "webhook-token-value", "webhook-signature": "v1,c2lnbmF0dXJl",
             "svix-signature": "v1,c3ZpeA==", "X-Other-Signature": "other-signature-value", "X-Trace": "kept"}
    headers = {**_headers(BATCH), **extra}
    answer = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), headers)
    assert answer.status_code == 200, answer.text
    stored = bridge.event("hubspot", "24681357-2718281-3471102201-18273645501-1767268795123").json()
    kept = stored["delivery"]["headers"]
    assert {k.lower() for k in kept} >= {"content-type", "x-trace"}
    for name, value in headers.items():
        if name not in ("Content-Type", "X-Trace"):
            assert name.lower() not in {k.lower() for k in kept}, name
            assert value not in json.dumps(stored), name


# ---- at most 100 events per batch (issue 9 item 8) ----------------------------------------


def _events(count: int, **changes: object) -> list[dict[str, object]]:
    return [{"eventId": 100 + n, "subscriptionId": 7, "portalId": 24681357, "occurredAt": 1767268795000 + n,
             "subscriptionType": "deal.propertyChange", "objectId": 5000 + n, "propertyName": "dealstage",
             "propertyValue": "closedwon", **changes} for n in range(count)]


def test_a_batch_over_100_events_is_refused_before_anything_is_stored(bridge, redis_db):
    body = json.dumps(_events(101)).encode()
    answer = bridge.post("/webhooks/hubspot", body, _signed(bridge, body))
    assert answer.status_code == 413
    error = answer.json()["error"]
    assert error["code"] == "batch_too_large" and "at most 100" in error["message"] and "101" in error["message"]
    assert redis_db.keys("rb:event:*") == [] and redis_db.keys("rb:delivery:*") == []
    body = json.dumps(_events(100)).encode()
    answer = bridge.post("/webhooks/hubspot", body, _signed(bridge, body))
    assert answer.status_code == 200 and answer.json()["new"] == 100


# ---- bad values never end in 5xx (issue 9 item 10) ----------------------------------------

GOOD_EVENT = ('{"eventId":1,"subscriptionId":2,"portalId":3,"occurredAt":1767268795000,'
              '"subscriptionType":"deal.creation","objectId":4}')
BAD_ITEM_TEMPLATE = ('{"eventId":%(eventId)s,"subscriptionId":%(subscriptionId)s,"portalId":%(portalId)s,'
                     '"occurredAt":%(occurredAt)s,"subscriptionType":"deal.creation","objectId":%(objectId)s}')
GOOD_VALUES = {"eventId": "11", "subscriptionId": "12", "portalId": "13", "occurredAt": "1767268795000",
               "objectId": "14"}


@pytest.mark.parametrize(
    ("field", "literal"),
    [
        ("occurredAt", "253402300800000"),  # year 10000: found by test_inbound_fuzz (one run in four)
        ("occurredAt", "1e20"), ("occurredAt", "1e300"), ("occurredAt", '"NaN"'), ("occurredAt", '"Infinity"'),
        ("occurredAt", "-1"), ("occurredAt", "100000000000000000000"),
        ("occurredAt", '"²"'), ("occurredAt", '"١٧٦٧٢٦٨٧٩٥٠٠٠"'), ("occurredAt", "1767268795000.5"),
        ("objectId", '"²"'), ("objectId", '"١٢٣"'), ("objectId", "1e20"), ("objectId", '"NaN"'), ("objectId", "-5"),
        ("objectId", "123456789012345678901"), ("portalId", '"²"'), ("portalId", '"٢٤٦٨"'),
        ("subscriptionId", '"²"'), ("subscriptionId", "1e300"), ("eventId", '"¹²³"'), ("eventId", '"٣٤٧"'),
        ("eventId", '"NaN"'), ("eventId", '"12 34"'), ("eventId", "1.5"),
    ],
)
def test_a_bad_value_in_a_verified_batch_skips_that_item_with_200(bridge, field, literal):
    bad = BAD_ITEM_TEMPLATE % {**GOOD_VALUES, field: literal}
    body = f"[{GOOD_EVENT},{bad}]".encode()
    answer = bridge.post("/webhooks/hubspot", body, _signed(bridge, body))
    assert answer.status_code == 200, answer.text
    assert answer.json()["new"] == 1 and answer.json()["skipped"] == 1
    delivery = bridge.event("hubspot", "3-2-1-4-1767268795000").json()["delivery"]
    assert delivery["skipped"] == [{"index": 1, "reason": "invalid event", "fields": delivery["skipped"][0]["fields"]}]
    assert list(delivery["skipped"][0]["fields"]) == [field]


def test_twenty_digit_ids_are_kept_exactly(bridge):
    big = "12345678901234567890"  # above 2**63: kept as text, never through a float
    body = (BAD_ITEM_TEMPLATE % {**GOOD_VALUES, "objectId": big, "eventId": f'"{big}"'}).encode()
    answer = bridge.post("/webhooks/hubspot", b"[" + body + b"]", _signed(bridge, b"[" + body + b"]"))
    assert answer.status_code == 200 and answer.json()["new"] == 1, answer.text
    event = bridge.event("hubspot", f"13-12-{big}-{big}-1767268795000").json()["event"]
    assert event["object"] == {"type": "deal", "id": big}


@pytest.mark.parametrize("timestamp", ["1e20", "²", "¹²³", "12345678901234567890", "NaN", "-1767268800000",
                                       "1767268800000.0", "", "0x19B7A2C8E00"])
def test_a_bad_v3_timestamp_header_is_401_with_the_reason(bridge, timestamp):
    headers = _headers(BATCH, X_HubSpot_Request_Timestamp=timestamp)
    answer = bridge.post("/webhooks/hubspot", fixture_bytes(BATCH), headers)
    assert answer.status_code == 401, answer.text
    assert "X-HubSpot-Request-Timestamp missing or not epoch milliseconds" in answer.json()["error"]["message"]


@pytest.mark.parametrize("timestamp", ["١٧٦٧٢٦٨٨٠٠٠٠٠", "１７６７２６８８００００００", "²"])
def test_unicode_digits_in_the_v3_timestamp_are_refused(timestamp):
    """Only reachable without HTTP (headers arrive as latin-1), but verify() must not trust isdigit()."""
    headers = _headers(BATCH, X_HubSpot_Request_Timestamp=timestamp)
    with pytest.raises(InboundError, match="not epoch milliseconds"):
        hubspot.verify(SECRET, "POST", SIGS["requests"][BATCH]["url"], fixture_bytes(BATCH), headers,
                       1767268800000)


def _workflow_body(path: str, literal: str) -> bytes:
    body = json.loads(fixture_bytes(WORKFLOW))
    if path == "occurred_at":
        body = {"hs_object_id": "18273645501", "object_type": "deal", "occurred_at": "@@"}
    else:
        body["properties"]["dealstage"]["timestamp"] = "@@"
    return json.dumps(body).replace('"@@"', literal).encode()


@pytest.mark.parametrize("path", ["properties.dealstage.timestamp", "occurred_at"])
@pytest.mark.parametrize("literal", ["253402300800000", "1e20", "1e300", '"NaN"', '"-Infinity"', "-1", '"²"',
                                     '"١٧٦٧٢٦٨٧٩٥١٢٣"', '"soon"', "100000000000000000000"])
def test_a_bad_workflow_timestamp_is_400_naming_the_field(bridge, path, literal):
    """Workflow actions do not retry a 4xx: the answer says which field to fix."""
    body = _workflow_body(path, literal)
    answer = bridge.post("/webhooks/hubspot", body, _signed(bridge, body))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "malformed_body" and error["message"].startswith(f"{path}: expected epoch")


@pytest.mark.parametrize("literal", ['"²"', '"١٢٣"', "12345678901234567890", "1e300", '"NaN"', '{"a": 1}'])
def test_odd_workflow_ids_never_end_in_5xx(bridge, literal):
    body = json.dumps({"portalId": "@@", "dealId": "@@", "properties": {}}).replace('"@@"', literal).encode()
    answer = bridge.post("/webhooks/hubspot", body, _signed(bridge, body))
    assert answer.status_code in (200, 400), answer.text
