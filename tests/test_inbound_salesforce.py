"""Salesforce Outbound Messages: the exact Ack, organization checks, hostile XML, stage tracking."""

from __future__ import annotations

import pytest

from tests.servers import fixture_bytes

MESSAGE = "salesforce-outbound-message-opportunity.xml"
XML = {"Content-Type": "text/xml; charset=utf-8"}


def test_message_is_acked_exactly_and_normalized(bridge):
    answer = bridge.post("/webhooks/salesforce", fixture_bytes(MESSAGE), XML)
    assert answer.status_code == 200
    assert answer.content == fixture_bytes("salesforce-outbound-message-ack.xml")
    assert answer.headers["Content-Type"].startswith("text/xml")
    won = bridge.event("salesforce", "04l5e00000TuV9aAAF").json()["event"]
    assert won["type"] == "deal.stage_changed"  # first time this opportunity's stage is seen
    assert won["object"] == {"type": "deal", "id": "0065e00000Gd3RmAAJ"}
    assert won["account"] == "00D5e000000Fxq2EAC"
    assert won["deal"]["StageName"] == "Closed Won" and won["deal"]["stage"] == "Closed Won"
    assert won["deal"]["name"] == "Northwind Pilot - Annual plan" and won["deal"]["amount"] == "12500.0"
    assert won["occurred_at"] == "2026-01-01T11:59:55.000Z"
    second = bridge.event("salesforce", "04l5e00000TuV9bAAF").json()["event"]
    assert second["deal"]["stage"] == "Proposal/Price Quote"


def _message(notification_id: str, stage: str, modified: str) -> bytes:
    return fixture_bytes(MESSAGE).replace(b"04l5e00000TuV9aAAF", notification_id.encode()).replace(
        b"<sf:StageName>Closed Won", f"<sf:StageName>{stage}".encode()).replace(
        b"2026-01-01T11:59:55.000Z", modified.encode())


def test_stage_changes_are_tracked_per_record(bridge):
    bridge.post("/webhooks/salesforce", _message("04l5e00000TuV01AAF", "Prospecting", "2026-01-01T10:00:00.000Z"), XML)
    bridge.post("/webhooks/salesforce", _message("04l5e00000TuV02AAF", "Closed Won", "2026-01-01T11:00:00.000Z"), XML)
    bridge.post("/webhooks/salesforce", _message("04l5e00000TuV03AAF", "Closed Won", "2026-01-01T11:30:00.000Z"), XML)
    bridge.post("/webhooks/salesforce", _message("04l5e00000TuV04AAF", "Prospecting", "2026-01-01T09:00:00.000Z"), XML)
    changed = bridge.event("salesforce", "04l5e00000TuV02AAF").json()["event"]
    assert changed["type"] == "deal.stage_changed" and changed["previous"] == {"StageName": "Prospecting"}
    same = bridge.event("salesforce", "04l5e00000TuV03AAF").json()["event"]
    assert same["type"] == "deal.updated"
    late = bridge.event("salesforce", "04l5e00000TuV04AAF").json()
    assert late["stale"] is True  # older than what was already seen: stored, marked, not applied


def test_duplicate_message_is_acked_and_stored_once(bridge, redis_db):
    first = bridge.post("/webhooks/salesforce", fixture_bytes(MESSAGE), XML)
    keys_after_first = sorted(redis_db.keys("rb:event:*"))
    again = bridge.post("/webhooks/salesforce", fixture_bytes(MESSAGE), XML)
    assert first.content == again.content == fixture_bytes("salesforce-outbound-message-ack.xml")
    assert sorted(redis_db.keys("rb:event:*")) == keys_after_first and len(keys_after_first) == 2
    assert bridge.event("salesforce", "04l5e00000TuV9aAAF").json()["duplicates"] == 1


def test_organization_checks(make_bridge):
    assert make_bridge(salesforce_org_ids=("00D5e000000Fxq2",)).post(
        "/webhooks/salesforce", fixture_bytes(MESSAGE), XML).status_code == 200
    refused = make_bridge(salesforce_org_ids=("00D5e000000ZZZZEAC",)).post(
        "/webhooks/salesforce", fixture_bytes(MESSAGE), XML)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "organization_not_allowed"
    unconfigured = make_bridge(salesforce_org_ids=()).post("/webhooks/salesforce", fixture_bytes(MESSAGE), XML)
    assert unconfigured.status_code == 503


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>&lol3;</soapenv:Body>
</soapenv:Envelope>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>&xxe;</soapenv:Body>
</soapenv:Envelope>"""


@pytest.mark.parametrize(
    ("body", "message"),
    [(BOMB, "DTD, entities or external references"), (XXE, "DTD, entities or external references"),
     (b"<notifications><unclosed>", "not well-formed XML"),
     (b"<a/>", "not a Salesforce Outbound Message"),
     (fixture_bytes(MESSAGE).replace(b"<OrganizationId>00D5e000000Fxq2EAC</OrganizationId>", b""),
      "the Outbound Message is incomplete"),
     (fixture_bytes(MESSAGE).replace(b"<Id>04l5e00000TuV9aAAF</Id>", b"<Id>x</Id>"),
      "the Outbound Message is incomplete")],
    ids=["billion-laughs", "external-entity", "malformed", "not-om", "no-org", "bad-notification-id"],
)
def test_hostile_and_malformed_xml_is_a_400(bridge, body, message):
    answer = bridge.post("/webhooks/salesforce", body, XML)
    assert answer.status_code == 400
    assert message in answer.json()["error"]["message"]


def test_wrong_content_type(bridge):
    answer = bridge.post("/webhooks/salesforce", fixture_bytes(MESSAGE), {"Content-Type": "application/json"})
    assert answer.status_code == 415
