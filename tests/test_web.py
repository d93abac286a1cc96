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
    assert health["consecutive_failures"] == destinations.FAILURES_TO_OPEN
    [dead] = requests.get(f"{bridge.url}/api/v1/deliveries/dead", headers=headers, timeout=10).json()["items"]
    assert re.match(ISO, dead["dead_at"]), dead
