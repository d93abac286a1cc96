"""The web app factory and its health endpoints, against a real Redis."""

from __future__ import annotations

import json

from integration.settings import Settings
from tests.conftest import free_port


def test_readyz_reports_redis(redis_url):
    from integration.web import create_app

    up = create_app(Settings(redis_url=f"{redis_url}/1")).test_client()
    assert up.get("/healthz").json == {"status": "ok"}
    assert up.get("/readyz").json == {"status": "ready", "redis": "ok", "rules": "no RULES_FILE"}
    down = create_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")).test_client()
    answer = down.get("/readyz")
    assert answer.status_code == 503
    assert answer.json == {"status": "unavailable", "redis": "unreachable (ConnectionError)"}
    assert down.get("/healthz").status_code == 200


def test_create_app_has_no_import_time_side_effects():
    import importlib
    import sys

    sys.modules.pop("integration.web", None)
    module = importlib.import_module("integration.web")
    assert not [name for name in vars(module) if name in ("app", "redis_client", "queue")]


STATUS_RULES = """\
version: 1
rules: []
destinations:
  crm:
    url: http://127.0.0.1:9/status
    secret: whsec_ZGVtby1zdGF0dXMtc2VjcmV0LTAxMjM0NTY3ODk=
"""
ISO = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


def test_the_status_api_answers_numbers_as_numbers_and_times_as_iso(make_bridge, redis_db, tmp_path):
    """Issue 9 item 8: no `"polls": "2"` or `"updated_at": "1796160433.690"` (epoch text) next to ISO times."""
    import re

    import requests

    from integration.dispatches import state
    from integration.writeback import destinations
    from tests.conftest import ADMIN_TOKEN

    rules = tmp_path / "rules.yaml"
    rules.write_text(STATUS_RULES)
    bridge = make_bridge(rules_file=rules)
    state.transition(redis_db, "dsp_types", "pending", create={"rule": "r", "channel": "email", "attempt": 0,
                                                               "recipient": {"address": "a@example.com"}})
    state.transition(redis_db, "dsp_types", "accepted", {"revor_job_id": "job_1", "scheduled_at": "",
                                                         "attempt_count": 1})
    redis_db.hincrby(state.key_for("dsp_types"), "polls", 2)
    destinations.record_success(redis_db, "crm")
    for _ in range(destinations.FAILURES_TO_OPEN):
        destinations.record_failure(redis_db, "crm", "HTTP 500")
    redis_db.set("rb:msg:msg_x", json.dumps({"destination": "crm", "dispatch_id": "dsp_types", "sequence": 1,
                                             "body": {"type": "dispatch.accepted"}}))
    destinations.dead_letter(redis_db, "crm", "rb:msg:msg_x", "gave up")
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    one = requests.get(f"{bridge.url}/api/v1/dispatches/dsp_types", headers=headers, timeout=10).json()
    assert (one["attempt_count"], one["polls"], one["sequence"], one["attempt"]) == (1, 2, 2, 0)
    assert re.match(ISO, one["updated_at"]) and re.match(ISO, one["created_at"]), one
    assert one["scheduled_at"] is None
    listed = requests.get(f"{bridge.url}/api/v1/dispatches", headers=headers, timeout=10).json()["items"][0]
    assert listed["polls"] == 2 and re.match(ISO, listed["updated_at"])
    [health] = requests.get(f"{bridge.url}/api/v1/destinations", headers=headers, timeout=10).json()["items"]
    assert re.match(ISO, health["open_until"]) and re.match(ISO, health["last_success_at"]), health
    assert health["consecutive_failures"] == destinations.FAILURES_TO_OPEN and health["kind"] == "webhook"
    [dead] = requests.get(f"{bridge.url}/api/v1/deliveries/dead", headers=headers, timeout=10).json()["items"]
    assert re.match(ISO, dead["dead_at"]), dead

    # Every time of every answer, events and deliveries included (they were epoch floats).
    from integration.inbound import records
    from integration.inbound.store import event_key
    from tests.test_pipeline import ZAP_HEADERS, zap

    assert bridge.post("/webhooks/generic/zapier", zap(1), ZAP_HEADERS).status_code == 200
    key = event_key("generic:zapier", "zap-1")
    redis_db.hset(key, mapping={"status": "failed", "processed_at": "1767268802.5"})
    with redis_db.pipeline() as pipe:
        records.index_outcome(pipe, key, "failed", 1767268802.5)
        pipe.execute()
    redis_db.hset("rb:msg:msg_x:attempts", mapping={"count": 3, "at": "1767268803.25", "last": "HTTP 500"})

    def get(path: str) -> dict:
        answer = requests.get(f"{bridge.url}/api/v1{path}", headers=headers, timeout=10)
        assert answer.status_code == 200, (path, answer.text)
        return answer.json()

    def times(found: object, where: str = "") -> dict[str, object]:
        """Each `*_at`/`open_until` of our own (not inside a sender's event or a stored body) by path."""
        if isinstance(found, list):
            return {k: v for n, item in enumerate(found) for k, v in times(item, f"{where}[{n}]").items()}
        if not isinstance(found, dict):
            return {}
        shown = {f"{where}.{k}": v for k, v in found.items() if k.endswith("_at") or k == "open_until"}
        for name, value in found.items():
            if name not in ("event", "context", "sender", "body", "headers", "result", "error"):
                shown.update(times(value, f"{where}.{name}"))
        return shown

    answers = {path: get(path) for path in ("/events/generic:zapier/zap-1", "/events?status=failed",
                                            "/deliveries/dead", "/deliveries/msg_x", "/dispatches",
                                            "/dispatches/dsp_types", "/destinations", "/failed-jobs")}
    seen = {f"{path}{name}": value for path, found in answers.items() for name, value in times(found).items()}
    wrong = {name: value for name, value in seen.items() if value is not None and not re.match(ISO, str(value))}
    assert not wrong, wrong
    event = answers["/events/generic:zapier/zap-1"]
    assert re.match(ISO, event["received_at"]) and event["processed_at"] == "2026-01-01T12:00:02.500Z"
    assert re.match(ISO, event["delivery"]["received_at"]), event["delivery"]
    assert answers["/events?status=failed"]["items"][0]["processed_at"] == "2026-01-01T12:00:02.500Z"
    assert answers["/deliveries/dead"]["items"][0]["last_attempt_at"] == "2026-01-01T12:00:03.250Z"
    assert answers["/deliveries/msg_x"]["last_attempt_at"] == "2026-01-01T12:00:03.250Z"


RULES = """\
version: 1
accounts: {mail: connect_account_sandbox_email}
rules:
  - name: won
    when: {source: hubspot, type: deal.stage_changed}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "{{ contact.email }}"}
      content: {subject: "Won", text: "Won"}
"""


def test_readyz_names_the_rules_file_not_its_path(redis_url, tmp_path):
    """/readyz needs no token: it names the rules file (as the README shows), never the host's directories."""
    from integration.web import create_app

    rules = tmp_path / "deploy" / "rules.yaml"
    rules.parent.mkdir()
    rules.write_text(RULES)
    app = create_app(Settings(redis_url=f"{redis_url}/1", rules_file=str(rules)))
    answer = app.test_client().get("/readyz")
    assert answer.json == {"status": "ready", "redis": "ok", "rules": "1 rules from rules.yaml"}
    assert str(tmp_path) not in answer.text


def test_redis_down_is_503_storage_unavailable_with_one_log_line(caplog):
    """/api/v1 and /metrics with Redis unreachable: a JSON reason and one line each, no traceback."""
    import logging

    from integration.settings import Secret
    from integration.web import create_app

    app = create_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", admin_token=Secret("admin-token")))
    client = app.test_client()
    auth = {"Authorization": "Bearer admin-token"}
    caplog.set_level(logging.INFO)
    for path in ("/api/v1/events", "/api/v1/dispatches", "/api/v1/queues", "/metrics"):
        caplog.clear()
        answer = client.get(path, headers=auth)
        assert answer.status_code == 503 and answer.json["error"]["code"] == "storage_unavailable", answer.text
        assert "retry later" in answer.json["error"]["message"]
        errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1 and errors[0].exc_info is None and "Traceback" not in caplog.text, caplog.text
        assert path in errors[0].getMessage() and "ConnectionError" in errors[0].getMessage()


def _fault(answer) -> str:
    assert answer.content_type.startswith("text/xml"), answer.content_type
    text = answer.get_data(as_text=True)
    assert "<soapenv:Fault><faultcode>soapenv:Client</faultcode>" in text, text
    return text


def test_salesforce_refusals_outside_its_view_are_soap_faults(redis_url):
    """405 and 404 under /webhooks/salesforce are SOAP faults like every other Salesforce refusal; JSON elsewhere."""
    from integration.web import create_app

    client = create_app(Settings(redis_url=f"{redis_url}/1")).test_client()
    wrong_method = client.get("/webhooks/salesforce")
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"]
    _fault(wrong_method)
    for path in ("/webhooks/salesforce/", "/webhooks/salesforce/x"):
        answer = client.post(path, data=b"<x/>", content_type="text/xml")
        assert answer.status_code == 404
        _fault(answer)
    other = client.get("/webhooks/hubspot")
    assert other.status_code == 405 and other.json["error"]["code"] == "method_not_allowed"
    assert client.get("/nowhere").json["error"]["code"] == "not_found"


def test_salesforce_body_cut_short_or_too_slow_is_a_soap_fault(make_bridge):
    """The read-deadline middleware answers Salesforce with SOAP faults too (400 and 408)."""
    import socket

    bridge = make_bridge(web_read_timeout=0.5)
    head = (b"POST /webhooks/salesforce?token=t HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
            b"Content-Length: 100\r\n\r\n<soapenv:")
    for close_write, status in ((True, b"400"), (False, b"408")):
        with socket.create_connection(("127.0.0.1", bridge.server.port), timeout=5) as sock:
            sock.sendall(head)
            if close_write:
                sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer
        assert b"Content-Type: text/xml" in answer and b"<faultcode>soapenv:Client</faultcode>" in answer, answer


def test_an_id_naming_a_key_of_another_type_is_404_not_an_outage(bridge, redis_db, caplog):
    """Found by the attack review: `/api/v1/dispatches/<id>:doc` read the document string as a
    hash and answered 503 "Redis is unavailable" with an error line."""
    import requests

    from tests.conftest import ADMIN_TOKEN

    redis_db.set("rb:dispatch:dsp_0123:doc", "{}")
    answer = requests.get(f"{bridge.url}/api/v1/dispatches/dsp_0123:doc", timeout=10,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    assert "Redis unavailable" not in caplog.text
