"""Salesforce Outbound Messages: the URL token, the exact Ack, organization and session checks,
hostile XML, SOAP faults for every refusal, stage tracking."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask, jsonify, request

from integration.inbound import salesforce
from integration.inbound.errors import InboundError
from tests.conftest import FIXTURE_NOW, SALESFORCE_PATH, SALESFORCE_TOKEN, bridge_settings, free_port
from tests.servers import Clock, ThreadServer, fixture_bytes

MESSAGE = "salesforce-outbound-message-opportunity.xml"
ORG = "00D5e000000Fxq2EAC"
XML = {"Content-Type": "text/xml; charset=utf-8"}


def test_message_is_acked_exactly_and_normalized(bridge):
    answer = bridge.post(SALESFORCE_PATH, fixture_bytes(MESSAGE), XML)
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
    bridge.post(SALESFORCE_PATH, _message("04l5e00000TuV01AAF", "Prospecting", "2026-01-01T10:00:00.000Z"), XML)
    bridge.post(SALESFORCE_PATH, _message("04l5e00000TuV02AAF", "Closed Won", "2026-01-01T11:00:00.000Z"), XML)
    bridge.post(SALESFORCE_PATH, _message("04l5e00000TuV03AAF", "Closed Won", "2026-01-01T11:30:00.000Z"), XML)
    bridge.post(SALESFORCE_PATH, _message("04l5e00000TuV04AAF", "Prospecting", "2026-01-01T09:00:00.000Z"), XML)
    changed = bridge.event("salesforce", "04l5e00000TuV02AAF").json()["event"]
    assert changed["type"] == "deal.stage_changed" and changed["previous"] == {"StageName": "Prospecting"}
    same = bridge.event("salesforce", "04l5e00000TuV03AAF").json()["event"]
    assert same["type"] == "deal.updated"
    late = bridge.event("salesforce", "04l5e00000TuV04AAF").json()
    assert late["stale"] is True  # older than what was already seen: stored, marked, not applied


def test_duplicate_message_is_acked_and_stored_once(bridge, redis_db):
    first = bridge.post(SALESFORCE_PATH, fixture_bytes(MESSAGE), XML)
    keys_after_first = sorted(redis_db.keys("rb:event:*"))
    again = bridge.post(SALESFORCE_PATH, fixture_bytes(MESSAGE), XML)
    assert first.content == again.content == fixture_bytes("salesforce-outbound-message-ack.xml")
    assert sorted(redis_db.keys("rb:event:*")) == keys_after_first and len(keys_after_first) == 2
    assert bridge.event("salesforce", "04l5e00000TuV9aAAF").json()["duplicates"] == 1


def test_organization_checks(make_bridge):
    assert make_bridge(salesforce_org_ids=("00D5e000000Fxq2",)).post(
        SALESFORCE_PATH, fixture_bytes(MESSAGE), XML).status_code == 200
    refused = make_bridge(salesforce_org_ids=("00D5e000000ZZZZEAC",)).post(
        SALESFORCE_PATH, fixture_bytes(MESSAGE), XML)
    assert refused.status_code == 403
    assert fault_string(refused, "Client") == "OrganizationId is not in SALESFORCE_ORG_IDS"
    unconfigured = make_bridge(salesforce_org_ids=()).post(SALESFORCE_PATH, fixture_bytes(MESSAGE), XML)
    assert unconfigured.status_code == 503
    assert fault_string(unconfigured, "Server") == "this endpoint is not configured (SALESFORCE_ORG_IDS is unset)"


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
    answer = bridge.post(SALESFORCE_PATH, body, XML)
    assert answer.status_code == 400
    assert message in fault_string(answer, "Client")


def test_wrong_content_type_and_oversize_body_are_soap_faults(bridge, redis_db):
    wrong_type = bridge.post(SALESFORCE_PATH, fixture_bytes(MESSAGE), {"Content-Type": "application/json"})
    assert wrong_type.status_code == 415
    assert fault_string(wrong_type, "Client").startswith("Content-Type must be text/xml")
    too_large = bridge.post(SALESFORCE_PATH, b"<" * (600 * 1024), XML)
    assert too_large.status_code == 413
    assert fault_string(too_large, "Client") == "the body is larger than 524288 bytes"
    assert nothing_stored(redis_db)


def fault_string(answer, code: str) -> str:
    """The faultstring of a SOAP 1.1 fault answer, checking that it is one (text/xml, faultcode)."""
    from defusedxml.ElementTree import fromstring

    assert answer.headers["Content-Type"].startswith("text/xml"), answer.headers["Content-Type"]
    envelope = fromstring(answer.content)
    fault = envelope.find("s:Body/s:Fault", salesforce.NS)
    assert fault is not None, answer.text
    assert fault.findtext("faultcode") == f"soapenv:{code}"
    return fault.findtext("faultstring")


def nothing_stored(redis_db) -> bool:
    """No event, no delivery, no RQ job: a refused message leaves no trace in Redis but its count
    in the /metrics counters (integration/metrics.py)."""
    return set(redis_db.keys("rb:*")) <= {b"rb:metrics"} and redis_db.keys("rq:*") == []


# ---- the token in the endpoint URL (the org id is public: it authenticates nothing) ----------

@pytest.mark.parametrize(
    ("query", "reason"),
    [("", "no token in the endpoint URL"),
     ("?token=", "the token in the endpoint URL is not SALESFORCE_WEBHOOK_TOKEN"),
     ("?token=sf-outbound-token-0123456788", "the token in the endpoint URL is not SALESFORCE_WEBHOOK_TOKEN"),
     ("?token=sf-outbound-token-0123456789x", "the token in the endpoint URL is not SALESFORCE_WEBHOOK_TOKEN"),
     ("?TOKEN=sf-outbound-token-0123456789", "no token in the endpoint URL"),
     (f"?token=nope&token={SALESFORCE_TOKEN}", "more than one token in the endpoint URL"),
     ("?token=%FF%FE", "the token in the endpoint URL is not SALESFORCE_WEBHOOK_TOKEN")],
    ids=["none", "empty", "wrong", "longer", "other-name", "twice", "not-utf8"],
)
def test_forged_message_with_the_right_org_but_no_token_is_refused(bridge, redis_db, query, reason):
    # The right OrganizationId, a well-formed message: only the token tells it from a forgery.
    answer = bridge.post("/webhooks/salesforce" + query, fixture_bytes(MESSAGE), XML)
    assert answer.status_code == 401
    assert fault_string(answer, "Client").startswith(reason)
    assert SALESFORCE_TOKEN.encode() not in answer.content
    assert nothing_stored(redis_db)


def test_token_is_checked_before_the_body_is_parsed(bridge, redis_db):
    answer = bridge.post("/webhooks/salesforce?token=wrong", b"<not xml", {"Content-Type": "application/json"})
    assert answer.status_code == 401  # not 415 or 400: nothing about the body is looked at
    assert nothing_stored(redis_db)


def test_without_a_configured_token_the_endpoint_is_503(make_bridge, redis_db):
    bridge = make_bridge(salesforce_webhook_token=None)
    for path in ("/webhooks/salesforce", SALESFORCE_PATH):
        answer = bridge.post(path, fixture_bytes(MESSAGE), XML)
        assert answer.status_code == 503  # Salesforce keeps retrying for 24 h while an operator sets it
        assert fault_string(answer, "Server") == "this endpoint is not configured (SALESFORCE_WEBHOOK_TOKEN is unset)"
    assert nothing_stored(redis_db)


def test_token_is_neither_stored_nor_logged(bridge, redis_db, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "sf-outbound-token-WRONG-WRONG"
    assert bridge.post(f"/webhooks/salesforce?token={wrong}", fixture_bytes(MESSAGE), XML).status_code == 401
    answer = bridge.post(f"/webhooks/salesforce?x=1&token={SALESFORCE_TOKEN}&y=2", fixture_bytes(MESSAGE), XML)
    assert answer.content == fixture_bytes("salesforce-outbound-message-ack.xml")
    assert bridge.post(f"/webhooks/salesforce?%74oken={SALESFORCE_TOKEN}", b"<a/>", XML).status_code == 400
    [delivery] = [k for k in redis_db.keys("rb:delivery:*") if not k.endswith(b":new")]
    assert json.loads(redis_db.get(delivery))["query"] == "x=1&token=***&y=2"
    dump = b"".join(redis_db.dump(key) or b"" for key in redis_db.keys("*"))
    assert SALESFORCE_TOKEN.encode() not in dump
    # Everything the bridge's process logged, but the test's own HTTP client (urllib3) that sent the URL.
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records if not r.name.startswith("urllib3"))
    assert "inbound /webhooks/salesforce refused (401 unauthorized)" in logged  # the refusal is logged
    assert SALESFORCE_TOKEN not in logged and wrong not in logged


def test_redacted_query_keeps_everything_but_token_values():
    assert salesforce.redacted_query("") == ""
    assert salesforce.redacted_query("token=abc") == "token=***"
    assert salesforce.redacted_query("a=1&token=abc&token&b=token%3Dx") == "a=1&token=***&token=***&b=token%3Dx"
    assert salesforce.redacted_query("%74oken=abc&tok+en=1") == "%74oken=***&tok+en=1"


# ---- the optional session check (SALESFORCE_VERIFY_SESSION) ----------------------------------

@pytest.mark.parametrize("endpoint", [
    "https://northwind-example.my.salesforce.com/services/Soap/c/66.0/00D5e000000Fxq2",
    "https://NA1.Salesforce.COM/services/Soap/u/66.0/00D5e000000Fxq2",
    "https://northwind--dev.sandbox.my.salesforce.com:443/services/Soap/u/66.0/00D5e000000Fxq2",
    "https://northwind.my.site.force.com/services/Soap/u/66.0",
])
def test_session_check_hosts_allowed(endpoint):
    host = urlsplit(endpoint).hostname
    assert salesforce.userinfo_url(endpoint) == f"https://{host}/services/oauth2/userinfo"


@pytest.mark.parametrize("endpoint", [
    "http://northwind-example.my.salesforce.com/services/Soap/c/66.0/00D5e000000Fxq2",  # not https
    "https://evil.example.com/services/Soap/c/66.0/00D5e000000Fxq2",
    "https://salesforce.com.evil.example/services/Soap/c/66.0",
    "https://evilsalesforce.com/x", "https://evilforce.com/x", "https://salesforce.com/x", "https://force.com/x",
    "https://x.salesforce.com.:443/x", "https://x.salesforce.com:8443/x", "https://x.salesforce.com:99999/x",
    "https://user:pw@x.my.salesforce.com/x", "https://evil.example\\@x.my.salesforce.com/x",
    "https://127.0.0.1/x", "https://[::1]/x", "https://x_y.salesforce.com/x", "ftp://x.salesforce.com/x",
    "//x.salesforce.com/x", "x.salesforce.com", "",
])
def test_session_check_never_goes_to_another_host(endpoint):
    with pytest.raises(InboundError) as refused:
        salesforce.userinfo_url(endpoint)
    assert refused.value.status == 403 and refused.value.code == "session_host_refused"
    calls: list[str] = []
    message = {"organization_id": ORG, "session_id": "00D5e000000Fxq2!AQ4AQ", "enterprise_url": endpoint,
               "partner_url": None}
    with pytest.raises(InboundError):
        salesforce.verify_session(message, fetch=lambda url, session, timeout: calls.append(url) or (200, {}))
    assert calls == []  # refused without connecting anywhere


SESSIONS = {"ours": ORG, "theirs": "00D5e000000ZZZZEAC"}  # session id -> the org the identity service names


@pytest.fixture
def verifying_bridge(redis_url, redis_db):
    """A bridge with SALESFORCE_VERIFY_SESSION on whose identity-service calls reach a loopback
    stand-in: the injection point is an app extension that only code can set, never the environment."""
    standin = Flask("salesforce_identity_standin")
    calls: list[str | None] = []

    @standin.get("/services/oauth2/userinfo")
    def userinfo():
        calls.append(request.headers.get("Authorization"))
        session = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if session == "overloaded":
            return "<html>maintenance</html>", 503
        org = SESSIONS.get(session)
        if org is None:
            return jsonify([{"errorCode": "INVALID_SESSION_ID", "message": "Session expired or invalid"}]), 401
        return jsonify({"organization_id": org, "user_id": "0055e000007QaRtAAK"})

    with ThreadServer(standin) as identity:
        def fetch(url: str, session_id: str, timeout: tuple[float, float]) -> tuple[int, Any]:
            # The allow-listed https URL, re-pointed at the stand-in; the real fetch does the rest.
            parts = urlsplit(url)
            assert parts.scheme == "https" and parts.hostname.endswith((".salesforce.com", ".force.com"))
            return salesforce.fetch_userinfo(identity.url + parts.path, session_id, timeout)

        from integration.web import create_app

        app = create_app(bridge_settings(redis_url, salesforce_verify_session=True), clock=Clock(FIXTURE_NOW))
        app.extensions["revor_bridge.salesforce_userinfo"] = fetch
        with ThreadServer(app) as server:
            yield server.url, calls


def _with_session(session: str | None, endpoint: str | None = None) -> bytes:
    body = fixture_bytes(MESSAGE)
    if session is not None:
        body = body.replace(b'<SessionId xsi:nil="true"/>', f"<SessionId>{session}</SessionId>".encode())
    if endpoint is not None:
        body = body.replace(b"https://northwind-example.my.salesforce.com/services/Soap/c/66.0/00D5e000000Fxq2",
                            endpoint.encode())
    return body


def _post(url: str, body: bytes):
    import requests

    return requests.post(url + SALESFORCE_PATH, data=body, headers=XML, timeout=10)


def test_session_of_the_sending_org_is_accepted(verifying_bridge, redis_db):
    url, calls = verifying_bridge
    answer = _post(url, _with_session("ours"))
    assert answer.content == fixture_bytes("salesforce-outbound-message-ack.xml")
    assert calls == ["Bearer ours"]
    assert len(redis_db.keys("rb:event:salesforce:*")) == 2


@pytest.mark.parametrize(
    ("body", "status", "reason", "asked"),
    [(_with_session("theirs"), 403, "the SessionId belongs to another org than OrganizationId", 1),
     (_with_session("expired"), 403, "northwind-example.my.salesforce.com did not accept the message's SessionId", 1),
     (_with_session(None), 403, "SALESFORCE_VERIFY_SESSION is on but the message carries no SessionId", 0),
     (_with_session("ours", "https://evil.example.com/services/Soap/c/66.0/00D5e000000Fxq2"), 403,
      "EnterpriseUrl/PartnerUrl is not an https URL on a host under salesforce.com or force.com", 0),
     (_with_session("our s"), 400, "SessionId: expected 1 to 2048 printable ASCII characters", 0)],
    ids=["other-org", "invalid-session", "no-session", "foreign-host", "bad-session-id"],
)
def test_session_check_refusals(verifying_bridge, redis_db, body, status, reason, asked):
    url, calls = verifying_bridge
    answer = _post(url, body)
    assert answer.status_code == status
    assert fault_string(answer, "Client").startswith(reason)
    assert len(calls) == asked
    assert nothing_stored(redis_db)


def test_identity_service_without_an_identity_is_503_so_salesforce_retries(verifying_bridge, redis_db):
    url, calls = verifying_bridge
    answer = _post(url, _with_session("overloaded"))
    assert answer.status_code == 503 and len(calls) == 1
    assert fault_string(answer, "Server") == ("northwind-example.my.salesforce.com answered the session check with "
                                              "HTTP 503 and no identity; retry later")
    assert nothing_stored(redis_db)


def test_unreachable_identity_service_is_503_so_salesforce_retries(redis_url, redis_db):
    from integration.web import create_app

    port = free_port()

    def fetch(url: str, session_id: str, timeout: tuple[float, float]) -> tuple[int, Any]:
        return salesforce.fetch_userinfo(f"http://127.0.0.1:{port}{urlsplit(url).path}", session_id, timeout)

    app = create_app(bridge_settings(redis_url, salesforce_verify_session=True), clock=Clock(FIXTURE_NOW))
    app.extensions["revor_bridge.salesforce_userinfo"] = fetch
    with ThreadServer(app) as server:
        answer = _post(server.url, _with_session("ours"))
    assert answer.status_code == 503
    assert fault_string(answer, "Server") == ("the session could not be checked at northwind-example.my.salesforce.com "
                                              "(ConnectionError); retry later")
    assert nothing_stored(redis_db)


@pytest.mark.parametrize(("value", "error"), [
    ("short-token", "SALESFORCE_WEBHOOK_TOKEN: malformed, expected 16+ characters from A-Z a-z 0-9 . _ ~ -"),
    ("a token with spaces!", "SALESFORCE_WEBHOOK_TOKEN: malformed, expected 16+ characters from A-Z a-z 0-9 . _ ~ -"),
    ("x" * 16 + "&y=1", "SALESFORCE_WEBHOOK_TOKEN: malformed, expected 16+ characters from A-Z a-z 0-9 . _ ~ -"),
])
def test_token_setting_is_url_safe_and_long_enough(value, error):
    from integration.settings import Settings, SettingsError

    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"SALESFORCE_WEBHOOK_TOKEN": value})
    assert str(refused.value) == error and value not in str(refused.value)
    good = Settings.from_env({"SALESFORCE_WEBHOOK_TOKEN": SALESFORCE_TOKEN, "SALESFORCE_VERIFY_SESSION": "true"})
    assert good.salesforce_webhook_token.get() == SALESFORCE_TOKEN and good.salesforce_verify_session is True
    assert Settings.from_env({}).salesforce_verify_session is False
    with pytest.raises(SettingsError, match="^SALESFORCE_VERIFY_SESSION: malformed, expected true or false$"):
        Settings.from_env({"SALESFORCE_VERIFY_SESSION": "maybe"})
