"""The Pipedrive writer against a local Pipedrive stand-in over real HTTP, with a real Redis limiter."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from integration.dispatches.limits import Limiter
from integration.settings import Secret, Settings
from integration.writeback.crm.base import DEAD, OK, RETRY, THROTTLED, Activity, NotConfigured, Write
from integration.writeback.crm.pipedrive import PipedriveWriter
from tests.servers import ThreadServer
from tests.standin_pipedrive import pipedrive_standin

TOKEN = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def standin() -> Iterator[tuple[ThreadServer, dict[str, Any]]]:
    app, state = pipedrive_standin(TOKEN)
    PipedriveWriter.forget_fields()  # a port can be reused by the next test's stand-in
    with ThreadServer(app) as server:
        yield server, state
    PipedriveWriter.forget_fields()


def make_writer(server: ThreadServer, redis_db, token: str = TOKEN, rps: float = 50.0) -> PipedriveWriter:
    settings = Settings(pipedrive_api_token=Secret(token), pipedrive_api_base_url=server.url, pipedrive_max_rps=rps)
    return PipedriveWriter.from_settings(settings, redis_db)


def write(obj: str, object_id: str, properties: dict[str, Any], activity: Activity | None = None) -> Write:
    return Write(key=f"rb:msg:{obj}:{object_id}", object=obj, object_id=object_id, properties=properties,
                 activity=activity)


def patches(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in state["calls"] if c["method"] == "PATCH"]


def test_deal_custom_field_is_set_by_its_key_through_v2_with_the_token_in_a_header(standin, redis_db) -> None:
    server, state = standin
    status_key = state["add_field"]("deal", "Revor status")
    job_key = state["add_field"]("deal", "Revor last job id")
    writer = make_writer(server, redis_db)

    [result] = writer.update([write("deal", "1001", {status_key: "succeeded", job_key: "job_1"})])
    [again] = writer.update([write("deal", "1001", {status_key: "failed", job_key: None})])

    assert (result.outcome, result.status) == (OK, 200)
    assert again.outcome == OK
    assert state["deals"][1001]["custom_fields"] == {status_key: "failed", job_key: None}
    assert [c["path"] for c in patches(state)] == ["/api/v2/deals/1001", "/api/v2/deals/1001"]
    assert patches(state)[0]["json"] == {"custom_fields": {status_key: "succeeded", job_key: "job_1"}}
    # The field list is read once per process, not once per write.
    assert [c["path"] for c in state["calls"]].count("/api/v2/dealFields") == 1
    # The token travels in the x-api-token header only, never in a URL.
    assert all("api_token" not in c["args"] for c in state["calls"])
    assert TOKEN not in repr(writer)


def test_person_update_goes_to_persons(standin, redis_db) -> None:
    server, state = standin
    key = state["add_field"]("person", "Revor status")
    writer = make_writer(server, redis_db)

    [result] = writer.update([write("contact", "2001", {key: "scheduled"})])

    assert result.outcome == OK
    assert state["persons"][2001]["custom_fields"] == {key: "scheduled"}
    assert [c["path"] for c in patches(state)] == ["/api/v2/persons/2001"]
    assert "/api/v2/personFields" in [c["path"] for c in state["calls"]]


def test_a_key_pipedrive_does_not_know_is_a_dead_letter_naming_it(standin, redis_db) -> None:
    server, state = standin
    key = state["add_field"]("deal", "Revor status")
    writer = make_writer(server, redis_db)
    typo = "f" * 40

    # Pipedrive itself would take the typo silently and write nothing: the bridge must refuse it.
    direct = requests.patch(f"{server.url}/api/v2/deals/1001", json={"custom_fields": {typo: "x"}},
                            headers={"x-api-token": TOKEN}, timeout=5)
    assert direct.status_code == 200 and state["ignored"] == [typo]
    state["calls"].clear()

    [unknown] = writer.update([write("deal", "1001", {key: "succeeded", typo: "x"})])
    [by_name] = writer.update([write("deal", "1001", {"Revor status": "succeeded"})])
    [standard] = writer.update([write("deal", "1001", {"status": "won"})])

    assert unknown.outcome == DEAD and f"field {typo} does not exist on Pipedrive deals" in unknown.reason
    assert by_name.outcome == DEAD and f"whose key is {key}" in by_name.reason
    assert standard.outcome == DEAD and "standard Pipedrive deal field" in standard.reason
    assert patches(state) == []  # nothing half-written
    assert state["deals"][1001]["custom_fields"] == {}


def test_a_field_created_after_the_list_was_read_is_found_on_a_second_look(standin, redis_db) -> None:
    server, state = standin
    first = state["add_field"]("deal", "Revor status")
    writer = make_writer(server, redis_db)
    assert writer.update([write("deal", "1001", {first: "accepted"})])[0].outcome == OK
    later = state["add_field"]("deal", "Revor last error")

    # Within the recheck window the cached list stands; after it, one fresh read finds the new key.
    assert writer.update([write("deal", "1001", {later: "boom"})])[0].outcome == DEAD
    writer.fields_ttl = 0.0
    assert writer.update([write("deal", "1001", {later: "boom"})])[0].outcome == OK


def test_a_429_mid_run_throttles_with_the_reset_wait_and_pauses_the_shared_limiter(standin, redis_db) -> None:
    server, state = standin
    key = state["add_field"]("deal", "Revor status")
    state["window_limit"] = 3
    writer = make_writer(server, redis_db)
    assert writer.update([write("deal", "1001", {key: "accepted"})])[0].outcome == OK  # 2 requests

    # Another integration on the same token uses the window up (Pipedrive counts per token).
    other = requests.get(f"{server.url}/v1/users/me", headers={"x-api-token": TOKEN}, timeout=5)
    assert other.headers["x-ratelimit-remaining"] == "0"
    [throttled] = writer.update([write("deal", "1001", {key: "scheduled"})])

    assert throttled.outcome == THROTTLED and throttled.status == 429
    refused = state["calls"][-1]
    assert refused["method"] == "PATCH"
    assert throttled.wait is not None and 1.0 <= throttled.wait <= 2.0
    limiter = Limiter(redis_db, "pipedrive", 50.0)
    assert limiter.paused_for() > 0.5  # every worker now waits, not only this one
    assert state["deals"][1001]["custom_fields"] == {key: "accepted"}

    time.sleep(throttled.wait)
    [after] = writer.update([write("deal", "1001", {key: "scheduled"})])
    assert after.outcome == OK
    assert state["deals"][1001]["custom_fields"] == {key: "scheduled"}


def test_remaining_zero_on_a_success_pauses_before_pipedrive_refuses(standin, redis_db) -> None:
    server, state = standin
    key = state["add_field"]("deal", "Revor status")
    state["window_limit"] = 2
    writer = make_writer(server, redis_db)

    assert writer.update([write("deal", "1001", {key: "accepted"})])[0].outcome == OK  # remaining: 0
    assert Limiter(redis_db, "pipedrive", 50.0).paused_for() > 0.5
    assert writer.update([write("deal", "1001", {key: "scheduled"})])[0].outcome == OK  # waited the window out

    assert [c["path"] for c in state["calls"]] == ["/api/v2/dealFields", "/api/v2/deals/1001", "/api/v2/deals/1001"]
    assert state["deals"][1001]["custom_fields"] == {key: "scheduled"}


def test_retry_after_on_a_429_wins_over_the_window_reset(standin, redis_db) -> None:
    server, state = standin
    key = state["add_field"]("deal", "Revor status")
    writer = make_writer(server, redis_db)
    writer.update([write("deal", "1001", {key: "accepted"})])
    state["fail_next"].append((429, {"Retry-After": "7"}))

    [result] = writer.update([write("deal", "1001", {key: "scheduled"})])

    assert (result.outcome, result.wait) == (THROTTLED, 7.0)
    assert 6.0 < Limiter(redis_db, "pipedrive", 50.0).paused_for() <= 7.0
    assert "Rate limit exceeded" in result.reason


def test_a_deleted_deal_is_a_dead_letter_with_pipedrives_reason(standin, redis_db) -> None:
    server, state = standin
    key = state["add_field"]("deal", "Revor status")
    state["deals"][1002] = {"id": 1002, "title": "Old deal", "status": "deleted", "is_deleted": True,
                            "custom_fields": {}}
    writer = make_writer(server, redis_db)
    state["deleted"].add(1001)

    [gone] = writer.update([write("deal", "1001", {key: "succeeded"})])
    [soft] = writer.update([write("deal", "1002", {key: "succeeded"})])
    [missing] = writer.update([write("deal", "99", {key: "succeeded"})])
    [not_an_id] = writer.update([write("deal", "12/../1", {key: "succeeded"})])

    assert (gone.outcome, gone.status) == (DEAD, 404) and "Deal not found" in gone.reason
    assert soft.outcome == DEAD and "deal 1002 is deleted" in soft.reason
    assert missing.outcome == DEAD and "Deal not found" in missing.reason
    assert not_an_id.outcome == DEAD and "not a Pipedrive deal id" in not_an_id.reason
    assert "/api/v2/deals/12/../1" not in [c["path"] for c in state["calls"]]


def test_a_wrong_token_is_retried_and_check_names_it(standin, redis_db) -> None:
    server, state = standin
    key = state["add_field"]("deal", "Revor status")
    wrong = "f" * 40
    writer = make_writer(server, redis_db, token=wrong)

    [result] = writer.update([write("deal", "1001", {key: "succeeded"})])
    problems = writer.check({"deal": [key]})

    assert (result.outcome, result.status) == (RETRY, 401)
    assert "PIPEDRIVE_API_TOKEN" in result.reason and "unauthorized access" in result.reason
    assert wrong not in result.reason
    assert problems == ["Pipedrive refused PIPEDRIVE_API_TOKEN (401 unauthorized access)"]
    assert state["deals"][1001]["custom_fields"] == {}


def test_check_names_a_missing_key_and_a_name_given_instead_of_a_key(standin, redis_db) -> None:
    server, state = standin
    status_key = state["add_field"]("deal", "Revor status")
    job_key = state["add_field"]("deal", "Revor last job id")
    person_key = state["add_field"]("person", "Revor status")
    writer = make_writer(server, redis_db)
    missing = "a" * 40

    assert writer.check({"deal": [status_key, job_key], "contact": [person_key]}) == []
    problems = writer.check({"deal": [status_key, "Revor last job id", missing], "contact": [person_key]})

    assert problems == [
        f"field Revor last job id does not exist on Pipedrive deals: that is the name of the field whose key "
        f"is {job_key}; map the key instead",
        f"field {missing} does not exist on Pipedrive deals (custom fields are written by their 40-character "
        "key: Company settings > Data fields)",
    ]
    assert not [c for c in state["calls"] if c["method"] != "GET"]  # check changes nothing


def test_check_reads_the_fields_fresh_and_reports_an_unreachable_api(standin, redis_db) -> None:
    server, state = standin
    writer = make_writer(server, redis_db)
    assert writer.check({"deal": ["b" * 40]}) != []
    key = state["add_field"]("deal", "Revor status")
    assert writer.check({"deal": [key]}) == []  # not answered from the cache

    server.__exit__()
    problems = writer.check({"deal": [key]})
    assert len(problems) == 1 and problems[0].startswith(f"Pipedrive API at {server.url} did not answer")


def test_notes_are_logged_on_a_deal_and_on_a_person(standin, redis_db) -> None:
    server, state = standin
    writer = make_writer(server, redis_db)
    activity = Activity(subject="Revor sms <succeeded>", body="To +4915100000000\nRevor job job_1",
                        at="2026-01-01T12:00:08.000Z")

    on_deal = writer.log_activity(write("deal", "1001", {}, activity))
    on_person = writer.log_activity(write("contact", "2001", {}, activity))

    assert (on_deal.outcome, on_deal.status) == (OK, 201)
    assert on_person.outcome == OK
    content = "<strong>Revor sms &lt;succeeded&gt;</strong><br>To +4915100000000<br>Revor job job_1"
    assert state["notes"] == [{"id": 1, "content": content, "deal_id": 1001},
                              {"id": 2, "content": content, "person_id": 2001}]
    assert [c["path"] for c in state["calls"]] == ["/v1/notes", "/v1/notes"]

    state["deleted"].add(1001)
    gone = writer.log_activity(write("deal", "1001", {}, activity))
    assert gone.outcome == DEAD and "Deal not found" in gone.reason


def test_server_errors_and_silence_are_retried(standin, redis_db) -> None:
    server, state = standin
    key = state["add_field"]("deal", "Revor status")
    writer = make_writer(server, redis_db)
    state["fail_next"].append((503, {}))

    [fields_failed] = writer.update([write("deal", "1001", {key: "x"})])
    [written] = writer.update([write("deal", "1001", {key: "x"})])
    server.__exit__()
    [silence] = writer.update([write("deal", "1001", {key: "y"})])

    assert (fields_failed.outcome, fields_failed.status) == (RETRY, 503)
    assert written.outcome == OK
    assert silence.outcome == RETRY and silence.reason.startswith("no answer")


def test_an_empty_write_makes_no_call_and_a_missing_token_is_named(standin, redis_db) -> None:
    server, state = standin
    writer = make_writer(server, redis_db)
    assert writer.update([write("deal", "1001", {})])[0].outcome == OK
    assert state["calls"] == []
    with pytest.raises(NotConfigured, match="PIPEDRIVE_API_TOKEN"):
        PipedriveWriter.from_settings(Settings(), redis_db)


# ---- hostile answers (issue 13 attack review) ---------------------------------------------------------


def answering(status: int, body: Any, seen: list[str] | None = None) -> ThreadServer:
    """A server that gives every request the same answer, noting each request's path and query."""
    import json

    from flask import Flask, Response, request

    app = Flask("hostile_pipedrive")

    @app.route("/<path:path>", methods=["GET", "POST", "PATCH"])
    def any_path(path: str) -> Response:
        if seen is not None:
            seen.append(request.full_path)
        return Response(body if isinstance(body, str) else json.dumps(body), status, mimetype="application/json")

    return ThreadServer(app)


def test_the_token_is_in_no_check_line_or_reason_whatever_pipedrive_echoes(redis_db) -> None:
    """check() put Pipedrive's error text in its line as it came, token and all."""
    for body in ({"success": False, "error": f"unauthorized {TOKEN}"},
                 {"success": False, "error": "x" * 180 + TOKEN}):  # the token where the text is cut short
        with answering(401, body) as server:
            w = PipedriveWriter(server.url, Secret(TOKEN), Limiter(redis_db, "pd-echo", 1000.0))
            said = w.check({"deal": []}) + [w.update([write("deal", "12", {"a" * 40: "x"})])[0].reason]
            said.append(w.log_activity(write("deal", "12", {}, Activity("s", "b", "2026-01-01T00:00:00Z"))).reason)
        assert said[0].startswith("Pipedrive refused PIPEDRIVE_API_TOKEN (401")
        assert all(TOKEN[:8] not in text for text in said), said


@pytest.mark.parametrize("body", [{"data": 5}, {"data": "fields"},
                                  {"data": [], "additional_data": {"next_cursor": {"a": 1}}},
                                  {"data": [], "additional_data": {"next_cursor": "same"}}, [1, 2], {"data": None}])
def test_a_field_list_of_the_wrong_shape_is_retried_never_an_exception(redis_db, body) -> None:
    """`data: 5` raised TypeError; a cursor that is not text was sent as `cursor=a`; one that repeats was
    followed page after page."""
    PipedriveWriter.forget_fields()
    seen: list[str] = []
    with answering(200, body, seen) as server:
        w = PipedriveWriter(server.url, Secret(TOKEN), Limiter(redis_db, "pd-fields", 1000.0))
        [result] = w.update([write("deal", "12", {"a" * 40: "x"})])
        lines = w.check({"deal": ["a" * 40]})
    PipedriveWriter.forget_fields()
    assert result.outcome in (RETRY, DEAD) and isinstance(lines, list) and len(lines) == 1
    if body == {"data": None}:  # no fields at all: the key is not one of them
        assert result.outcome == DEAD
    else:
        assert result.outcome == RETRY and "Pipedrive deal fields" in result.reason, result
    assert not any("cursor=a" in path for path in seen)
    assert len([p for p in seen if "dealFields" in p]) <= 2 * 2  # update (with one second look) + check


def test_an_id_with_a_trailing_newline_is_not_a_pipedrive_id(standin, redis_db) -> None:
    server, state = standin
    key = state["add_field"]("deal", "Revor status")
    [result] = make_writer(server, redis_db).update([write("deal", "1001\n", {key: "x"})])
    assert result.outcome == DEAD and "is not a Pipedrive deal id" in result.reason
    assert not patches(state)
