"""Lone UTF-16 surrogates (`"\\ud800"` in JSON text) never reach Redis (security review F3).

JSON lets a string escape half a surrogate pair; Python decodes it into a str that cannot be
encoded as UTF-8, so redis-py raised UnicodeEncodeError on any key or argument holding it: a 503
"retry later" with a traceback, for a body that can never succeed. The strict JSON reader refuses
it with a 400 naming where it is; in a HubSpot app batch only that item is skipped (HubSpot
retries every 4xx for a day, and one broken item must not block the other 99).
"""

from __future__ import annotations

import base64
import json
import logging

import pytest

from integration.inbound import hubspot, jsonbody
from integration.inbound.errors import InboundError
from tests.conftest import SALESFORCE_PATH
from tests.servers import fixture_bytes, signatures

SIGS = signatures()
SECRET = SIGS["secrets"]["hubspot_client_secret"]
ZAPIER = {"Content-Type": "application/json", "X-Hook-Token": "zap-fixture-token-7f3a"}
PIPEDRIVE = {"Content-Type": "application/json",
             "Authorization": "Basic " + base64.b64encode(b"pd-hook:fixture-pass-123").decode()}
LONE = "\\ud800"  # as it is written in the JSON text: a backslash escape, valid UTF-8 bytes


def _hubspot_headers(bridge, body: bytes) -> dict[str, str]:
    ts = str(int(bridge.clock.now * 1000))
    return {"Content-Type": "application/json", "X-HubSpot-Request-Timestamp": ts,
            "X-HubSpot-Signature-v3": hubspot.v3_signature(
                SECRET, "POST", "https://hooks.example.com/webhooks/hubspot", body, ts)}


def _refused(answer, where: str) -> None:
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "malformed_body"
    assert "lone UTF-16 surrogate" in error["message"] and where in error["message"], error["message"]


# ---- the reader ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [('{"event_id": "ev\\ud800"}', "$.event_id"),
     ('{"a": [1, {"b": "\\udfff"}]}', "$.a[1].b"),
     ('{"\\ud800": 1}', "at a key in $"),
     ('{"deal": {"\\udc00x": 1}}', "at a key in $.deal"),
     ('["ok", "\\ud83d"]', "at $[1]"),
     ('"\\ud800\\ud800"', "at $")],
)
def test_the_reader_names_where_the_lone_surrogate_is(text, where):
    with pytest.raises(InboundError) as caught:
        jsonbody.parse(text.encode())
    assert caught.value.status == 400
    assert where in caught.value.message
    # The reason is ASCII: it is logged and answered, and must never hold the surrogate itself.
    assert caught.value.message.isascii()


def test_a_proper_pair_is_not_a_lone_surrogate():
    assert jsonbody.parse(b'{"e": "\\ud83d\\ude00", "\\ud83d\\ude00": 1}') == {"e": "\U0001f600", "\U0001f600": 1}
    assert jsonbody.lone_surrogate_path({"e": ["\U0001f600", "x"]}) is None


def test_batch_items_are_left_to_the_caller():
    items = jsonbody.parse(b'[{"p": "\\ud800"}, {"p": "ok"}]', items_checked_by_caller=True)
    assert jsonbody.lone_surrogate_path(items[0]) == "$.p"
    assert jsonbody.lone_surrogate_path(items[1]) is None
    with pytest.raises(InboundError):  # an object is still checked whole
        jsonbody.parse(b'{"p": "\\ud800"}', items_checked_by_caller=True)


# ---- over HTTP: the review's examples -------------------------------------------------------

GENERIC_CASES = [
    ({"type": "deal.updated", "deal__id": "1", "event_id": "ev" + "\ud800"}, "$.event_id"),
    ({"type": "deal.updated", "deal__id": "1" + "\ud800"}, "$.deal__id"),
    ({"type": "deal.updated", "deal": {"id": "\udfff"}}, "$.deal.id"),
    ({"type": "deal.updated", "deal__id": "1", "account": "acme" + "\ud800"}, "$.account"),
    ({"type": "deal.updated", "data": {"deal": {"id": 1}}, "account": "\ud800"}, "$.account"),
]


@pytest.mark.parametrize(("body", "where"), GENERIC_CASES)
def test_generic_hooks_answer_400_naming_the_field(bridge, redis_db, caplog, body, where):
    raw = json.dumps(body).encode()
    assert LONE.encode() in raw or b"\\udfff" in raw
    with caplog.at_level(logging.INFO):
        _refused(bridge.post("/webhooks/generic/zapier", raw, ZAPIER), where)
    assert redis_db.keys("rb:*") == [b"rb:metrics"]  # nothing stored: only the refusal counted (/metrics)
    assert "Traceback" not in caplog.text and "UnicodeEncodeError" not in caplog.text


def test_standard_webhooks_answer_400_too(bridge, redis_db):
    from standardwebhooks import Webhook

    raw = json.dumps({"type": "deal.updated", "timestamp": "2026-01-01T11:59:55Z",
                      "data": {"deal": {"id": "4" + "\ud800"}}})
    secret = SIGS["secrets"]["standard_webhooks_secret"]
    from datetime import UTC, datetime

    from tests.conftest import FIXTURE_NOW

    sent = datetime.fromtimestamp(FIXTURE_NOW, UTC)
    signature = Webhook(secret).sign("msg_surrogate", sent, raw)
    headers = {"Content-Type": "application/json", "webhook-id": "msg_surrogate",
               "webhook-timestamp": str(int(FIXTURE_NOW)), "webhook-signature": signature}
    _refused(bridge.post("/webhooks/generic/standard", raw.encode(), headers), "$.data.deal.id")
    assert redis_db.keys("rb:*") == [b"rb:metrics"]  # nothing stored: only the refusal counted (/metrics)


@pytest.mark.parametrize(
    ("meta", "where"),
    [({"id": "e" + "\ud800"}, "$.meta.id"), ({"entity_id": "7" + "\ud800"}, "$.meta.entity_id"),
     ({"company_id": "\ud800"}, "$.meta.company_id")],
)
def test_pipedrive_answers_400_naming_the_field(bridge, redis_db, meta, where):
    body = {"meta": {"id": "e1", "action": "change", "entity": "deal", "entity_id": 7, "timestamp": 1767268795,
                     "company_id": 1, **meta}, "data": {"id": 7, "title": "x"}, "previous": {}}
    _refused(bridge.post("/webhooks/pipedrive", json.dumps(body).encode(), PIPEDRIVE), where)
    assert redis_db.keys("rb:*") == [b"rb:metrics"]  # nothing stored: only the refusal counted (/metrics)


@pytest.mark.parametrize(
    ("changes", "where"),
    [({"dealId": "5" + "\ud800"}, "$.dealId"), ({"portalId": "\ud800"}, "$.portalId"),
     ({"event_id": "wf" + "\ud800"}, "$.event_id")],
)
def test_hubspot_workflow_bodies_answer_400_naming_the_field(bridge, redis_db, changes, where):
    body = json.dumps({"dealId": 5, "portalId": 62515, "properties": {"dealstage": {"value": "won"}},
                       **changes}).encode()
    _refused(bridge.post("/webhooks/hubspot", body, _hubspot_headers(bridge, body)), where)
    assert redis_db.keys("rb:*") == [b"rb:metrics"]  # nothing stored: only the refusal counted (/metrics)


def _item(n: int, **changes: object) -> dict[str, object]:
    return {"eventId": 100 + n, "subscriptionId": 7, "portalId": 24681357, "occurredAt": 1767268795000 + n,
            "subscriptionType": "deal.propertyChange", "objectId": 5000 + n, "propertyName": "dealstage",
            "propertyValue": "closedwon", **changes}


@pytest.mark.parametrize(
    "changes",
    [{"propertyName": "deal" + "\ud800"}, {"eventId": "1" + "\ud800"}, {"portalId": "\ud800"},
     {"propertyValue": "won" + "\udfff"}, {"\ud800": 1}],
    ids=["propertyName", "eventId", "portalId", "propertyValue", "key"],
)
def test_one_lone_surrogate_in_a_hubspot_batch_skips_only_that_item(bridge, redis_db, caplog, changes):
    batch = [_item(n) for n in range(100)]
    batch[37] = _item(37, **changes)
    raw = json.dumps(batch).encode()
    with caplog.at_level(logging.INFO):
        answer = bridge.post("/webhooks/hubspot", raw, _hubspot_headers(bridge, raw))
    assert answer.status_code == 200, answer.text
    assert answer.json()["new"] == 99 and answer.json()["skipped"] == 1
    delivery = bridge.event("hubspot", "24681357-7-100-5000-1767268795000").json()["delivery"]
    [skipped] = delivery["skipped"]
    assert skipped["index"] == 37 and "lone UTF-16 surrogate" in skipped["reason"]
    assert "Traceback" not in caplog.text and "UnicodeEncodeError" not in caplog.text


# ---- Salesforce: XML cannot carry a lone surrogate at all ------------------------------------


@pytest.mark.parametrize("surrogate", [b"&#xD800;", b"&#55296;", b"\xed\xa0\x80"],
                         ids=["hex-reference", "decimal-reference", "utf8-encoded"])
def test_salesforce_refuses_a_surrogate_as_not_well_formed_xml(bridge, redis_db, surrogate):
    from tests.test_inbound_salesforce import MESSAGE, XML, fault_string

    body = fixture_bytes(MESSAGE).replace(b"</sf:Name>", surrogate + b"</sf:Name>", 1)
    assert surrogate in body
    answer = bridge.post(SALESFORCE_PATH, body, XML)
    assert answer.status_code == 400
    assert "not well-formed XML" in fault_string(answer, "Client")
    assert redis_db.keys("rb:*") == [b"rb:metrics"]  # nothing stored: only the refusal counted (/metrics)
