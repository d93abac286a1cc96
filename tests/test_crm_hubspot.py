"""HubSpot write-back against the local HubSpot stand-in over real HTTP, with a real Redis limiter."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from integration.dispatches.limits import Limiter
from integration.settings import Settings
from integration.writeback.crm.base import DEAD, OK, RETRY, THROTTLED, Activity, NotConfigured, Write
from integration.writeback.crm.hubspot import HubSpotWriter
from integration.writeback.crm.hubspot_setup import revor_properties
from tests.conftest import cli_env, revor_bridge
from tests.servers import ThreadServer, hubspot_standin

TOKEN_INFO = "/oauth/v2/private-apps/get/access-token-info"
TOKEN = "pat-na1-writeback-token"
DEAL = "18273645501"
DANA, SAM = "98765432101", "98765432102"
PORTAL = "2718281"


@pytest.fixture
def hub():
    app, state = hubspot_standin(TOKEN)
    with ThreadServer(app) as server:
        yield server, state


def revor_fields(state, *types: str) -> None:
    """What `hubspot setup` creates, put straight into the stand-in."""
    for object_type in types:
        state["groups"][object_type]["revor"] = {"name": "revor", "label": "Revor"}
        for definition in revor_properties():
            state["properties"][object_type][definition["name"]] = {**definition, "modificationMetadata": {}}


def writer(server, redis_db, token: str = TOKEN) -> HubSpotWriter:
    return HubSpotWriter(server.url, token, redis_db, max_rps=50)


def status_write(object_id: str, status: str, obj: str = "deal", key: str = "rb:msg:1", **extra) -> Write:
    return Write(key=key, object=obj, object_id=object_id, account=PORTAL,
                 properties={"revor_status": status, "revor_last_job_id": "job_123", **extra})


def test_one_write_is_one_patch_with_properties_only(hub, redis_db):
    server, state = hub
    revor_fields(state, "deals")
    results = writer(server, redis_db).update([status_write(DEAL, "succeeded", revor_last_error=None)])
    assert [r.outcome for r in results] == [OK]
    assert state["records"]["deals"][DEAL]["revor_status"] == "succeeded"
    assert state["records"]["deals"][DEAL]["revor_last_error"] == ""  # None clears it
    call = state["calls"][-1]
    assert (call["method"], call["path"]) == ("PATCH", f"/crm/v3/objects/deals/{DEAL}")
    assert call["json"] == {"properties": {"revor_status": "succeeded", "revor_last_job_id": "job_123",
                                           "revor_last_error": ""}}
    assert call["auth"] == f"Bearer {TOKEN}" and TOKEN not in str(call["headers"]) and not call["args"]
    # hydration's GET sees what write-back set: one record, one truth
    assert state["deals"][DEAL]["properties"]["revor_status"] == "succeeded"


def test_several_writes_of_one_type_go_in_one_batch(hub, redis_db):
    server, state = hub
    revor_fields(state, "contacts")
    writes = [status_write(DANA, "scheduled", "contact", "rb:msg:1"),
              status_write(SAM, "failed", "contact", "rb:msg:2")]
    results = writer(server, redis_db).update(writes)
    assert [r.outcome for r in results] == [OK, OK]
    posts = [c for c in state["calls"] if c["method"] == "POST"]
    assert [c["path"] for c in posts] == ["/crm/v3/objects/contacts/batch/update"]
    assert posts[0]["json"]["inputs"][1] == {"id": SAM, "properties": {"revor_status": "failed",
                                                                        "revor_last_job_id": "job_123"}}
    assert state["records"]["contacts"][DANA]["revor_status"] == "scheduled"
    assert state["records"]["contacts"][SAM]["revor_status"] == "failed"


def test_a_deleted_record_refuses_the_batch_and_only_its_write_goes_dead(hub, redis_db):
    server, state = hub
    revor_fields(state, "contacts")
    state["delete"]("contacts", SAM)
    writes = [status_write(DANA, "succeeded", "contact", "rb:msg:1"),
              status_write(SAM, "succeeded", "contact", "rb:msg:2")]
    results = writer(server, redis_db).update(writes)
    assert [r.outcome for r in results] == [OK, DEAD]
    assert results[1].status == 404
    assert "OBJECT_NOT_FOUND" in results[1].reason and "Object not found" in results[1].reason  # HubSpot's words
    assert state["records"]["contacts"][DANA]["revor_status"] == "succeeded"
    assert [c["method"] for c in state["calls"]] == ["POST", "PATCH", "PATCH"]  # batch refused, then one by one


def test_a_property_that_does_not_exist_is_dead_naming_it(hub, redis_db):
    server, state = hub  # no `hubspot setup`: the Revor properties are missing
    results = writer(server, redis_db).update([status_write(DEAL, "succeeded")])
    assert results[0].outcome == DEAD and results[0].status == 400
    assert results[0].reason.startswith("properties revor_status, revor_last_job_id do not exist on HubSpot deals")
    assert "PROPERTY_DOESNT_EXIST" in results[0].reason
    revor_fields(state, "deals")
    wrong = writer(server, redis_db).update([status_write(DEAL, "succeeded", revor_colour="blue")])
    assert wrong[0].reason.startswith("property revor_colour does not exist on HubSpot deals")
    assert "revor_status" not in state["records"]["deals"][DEAL]  # nothing half-written


def test_429_is_throttled_and_pauses_the_portal_limiter_hydration_shares(hub, redis_db):
    server, state = hub
    revor_fields(state, "deals")
    state["fail_next"] = [(429, {"Retry-After": "7"})]
    results = writer(server, redis_db).update([status_write(DEAL, "succeeded")])
    assert results[0].outcome == THROTTLED and results[0].wait == 7
    # the very bucket create.py's hydration takes from: Limiter(redis, f"hubspot:{account}", ...)
    hydration = Limiter(redis_db, f"hubspot:{PORTAL}", 8.0)
    assert 5 < hydration.paused_for() <= 7
    assert Limiter(redis_db, "hubspot:default", 8.0).paused_for() == 0  # another portal is not paused
    # while paused, nothing is sent: the next write waits for the limiter instead of calling
    calls = len(state["calls"])
    again = HubSpotWriter(server.url, TOKEN, redis_db, max_rps=50).update([status_write(DEAL, "succeeded")])
    assert again[0].outcome == THROTTLED and len(state["calls"]) == calls


def test_429_without_retry_after_uses_hubspots_interval_header_and_daily_an_hour(hub, redis_db):
    server, state = hub
    revor_fields(state, "deals")
    state["fail_next"] = [(429, {"X-HubSpot-RateLimit-Interval-Milliseconds": "10000"})]
    assert writer(server, redis_db).update([status_write(DEAL, "x")])[0].wait == 10
    redis_db.flushdb()
    state["fail_next"] = [(429, {}, {"status": "error", "message": "You have reached your daily limit.",
                                     "errorType": "RATE_LIMIT", "policyName": "DAILY"})]
    result = writer(server, redis_db).update([status_write(DEAL, "x")])[0]
    assert result.outcome == THROTTLED and result.wait == 3600  # the daily allocation: an hour, not 10 s
    assert Limiter(redis_db, f"hubspot:{PORTAL}", 8.0).paused_for() > 3500


def test_a_wrong_token_is_retry_and_check_names_the_token(hub, redis_db):
    server, state = hub
    revor_fields(state, "deals", "contacts")
    bad = writer(server, redis_db, token="pat-na1-wrong")
    writes = [status_write(DEAL, "succeeded"), status_write(DANA, "succeeded", "contact", "rb:msg:2")]
    results = bad.update(writes)
    assert [r.outcome for r in results] == [RETRY, RETRY]
    assert results[0].reason == "HubSpot refused HUBSPOT_ACCESS_TOKEN (401 INVALID_AUTHENTICATION)"
    assert len(state["calls"]) == 1  # a refused token is not tried again for every write
    assert bad.check({"deal": ["revor_status"]}) == [
        "HubSpot refused HUBSPOT_ACCESS_TOKEN (401 INVALID_AUTHENTICATION)"]
    assert all("pat-na1-wrong" not in r.reason for r in results)
    state["scopes"] = {"crm.objects.contacts.write"}  # a token without the deals scope
    scoped = writer(server, redis_db).update([status_write(DEAL, "succeeded")])
    assert scoped[0].outcome == RETRY and scoped[0].reason == (
        "HubSpot refused HUBSPOT_ACCESS_TOKEN (403 MISSING_SCOPES: needs scope crm.objects.deals.write)")


def test_check_names_each_missing_property_and_a_missing_scope(hub, redis_db):
    server, state = hub
    revor_fields(state, "deals")
    good = writer(server, redis_db)
    assert good.check({"deal": ["revor_status", "revor_last_error"]}) == []
    assert good.check({"deal": ["revor_status", "revor_colour"], "contact": ["revor_status"]}) == [
        "property revor_colour does not exist on HubSpot deals",
        "property revor_status does not exist on HubSpot contacts"]
    # check never changes anything: it lists properties and reads the token's scopes
    assert all(c["method"] == "GET" or c["path"] == TOKEN_INFO for c in state["calls"])
    state["scopes"] = {"crm.objects.deals.write"}
    assert good.check({"deal": ["revor_status"]}) == [
        "HubSpot refused HUBSPOT_ACCESS_TOKEN for deals properties (403 MISSING_SCOPES: needs scope "
        "crm.schemas.deals.read)"]
    down = HubSpotWriter("http://127.0.0.1:9", TOKEN, None)
    assert down.check({"deal": ["revor_status"]})[0].startswith("HubSpot API unreachable at http://127.0.0.1:9")


def test_check_names_a_write_scope_the_token_lacks(hub, redis_db):
    """A token that may read properties but not write deals passed check, then every write met a 403."""
    server, state = hub
    revor_fields(state, "deals", "contacts")
    state["scopes"] = {"crm.schemas.deals.read", "crm.schemas.contacts.read", "crm.objects.contacts.write"}
    assert writer(server, redis_db).check({"deal": ["revor_status"], "contact": ["revor_status"]}) == [
        "HUBSPOT_ACCESS_TOKEN lacks the scope crm.objects.deals.write: HubSpot would refuse every write (grant it "
        "in the private app's Scopes tab)"]
    [info] = [c for c in state["calls"] if c["path"] == TOKEN_INFO]
    assert info["method"] == "POST" and info["json"] == {"tokenKey": TOKEN}


def test_the_note_is_logged_on_the_deal_with_the_deal_association(hub, redis_db):
    server, state = hub
    write = Write(key="rb:msg:9", object="deal", object_id=DEAL, account=PORTAL,
                  activity=Activity("Revor sms <succeeded>", "To +14155550123\nRevor job job_123",
                                    "2026-01-01T12:00:08.000Z"))
    result = writer(server, redis_db).log_activity(write)
    assert result.outcome == OK and result.status == 201
    [note] = state["notes"]
    assert note["properties"] == {"hs_timestamp": "2026-01-01T12:00:08.000Z",
                                  "hs_note_body": "<strong>Revor sms &lt;succeeded&gt;</strong><br>To +14155550123"
                                                  "<br>Revor job job_123"}
    assert note["associations"] == [{"to": {"id": DEAL}, "types": [{"associationCategory": "HUBSPOT_DEFINED",
                                                                    "associationTypeId": 214}]}]
    contact = writer(server, redis_db).log_activity(Write(key="k", object="contact", object_id=DANA,
                                                           activity=Activity("s", "", "2026-01-01T12:00:08Z")))
    assert contact.outcome == OK and state["notes"][1]["associations"][0]["types"][0]["associationTypeId"] == 202
    state["delete"]("deals", DEAL)
    gone = writer(server, redis_db).log_activity(write)
    assert gone.outcome == DEAD and "does not exist" in gone.reason


def test_ids_and_objects_hubspot_cannot_have_are_dead_without_a_call(hub, redis_db):
    server, state = hub
    results = writer(server, redis_db).update([status_write("../owners/1", "x"),
                                               Write(key="k", object="ticket", object_id="1", properties={"a": 1}),
                                               Write(key="k2", object="deal", object_id=DEAL)])
    assert [r.outcome for r in results] == [DEAD, DEAD, OK]
    assert results[0].reason.startswith("not a HubSpot id") and state["calls"] == []


def test_5xx_and_no_answer_are_retry(hub, redis_db):
    server, state = hub
    revor_fields(state, "deals")
    state["fail_next"] = [(502, {})]
    assert writer(server, redis_db).update([status_write(DEAL, "x")])[0].outcome == RETRY
    down = HubSpotWriter("http://127.0.0.1:9", TOKEN, redis_db).update([status_write(DEAL, "x")])
    assert down[0].outcome == RETRY and down[0].reason.startswith("no answer")


def test_from_settings_needs_the_token():
    with pytest.raises(NotConfigured, match="HUBSPOT_ACCESS_TOKEN is not set"):
        HubSpotWriter.from_settings(Settings(), None)


def test_hubspot_setup_creates_the_revor_group_and_properties_once(hub, tmp_path):
    server, state = hub
    env = cli_env(HUBSPOT_ACCESS_TOKEN=TOKEN, HUBSPOT_API_BASE_URL=server.url)
    first = revor_bridge("hubspot", "setup", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "deals: created group revor, revor_status, revor_last_job_id, revor_last_sent_at, revor_last_error",
        "contacts: created group revor, revor_status, revor_last_job_id, revor_last_sent_at, revor_last_error"]
    status = state["properties"]["deals"]["revor_status"]
    assert (status["type"], status["fieldType"], status["groupName"]) == ("enumeration", "select", "revor")
    assert [o["value"] for o in status["options"]] == ["pending", "accepted", "scheduled", "running", "succeeded",
                                                       "failed", "cancelled", "rejected", "invalid", "skipped"]
    assert state["properties"]["contacts"]["revor_last_sent_at"]["type"] == "datetime"
    assert state["properties"]["contacts"]["revor_last_error"]["fieldType"] == "textarea"
    assert state["groups"]["deals"]["revor"]["label"] == "Revor" and "revor" not in state["groups"]["companies"]
    posts = sum(c["method"] == "POST" for c in state["calls"])
    second = revor_bridge("hubspot", "setup", "--object", "deals", "--object", "contacts", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["deals: already there (group revor and 4 properties)",
                                          "contacts: already there (group revor and 4 properties)"]
    assert sum(c["method"] == "POST" for c in state["calls"]) == posts  # nothing changed the second time
    # and write-back now works on what setup made
    revor = HubSpotWriter(server.url, TOKEN, None).update([status_write(DEAL, "succeeded",
                                                                        revor_last_sent_at="2026-01-01T12:00:08Z")])
    assert revor[0].outcome == OK


def test_hubspot_setup_without_or_with_a_refused_token_exits_2(hub, tmp_path):
    server, state = hub
    unset = revor_bridge("hubspot", "setup", env=cli_env(HUBSPOT_API_BASE_URL=server.url), cwd=tmp_path)
    assert unset.returncode == 2 and "HUBSPOT_ACCESS_TOKEN is not set" in unset.stderr
    wrong = revor_bridge("hubspot", "setup", env=cli_env(HUBSPOT_ACCESS_TOKEN="pat-wrong",
                                                         HUBSPOT_API_BASE_URL=server.url), cwd=tmp_path)
    assert wrong.returncode == 2
    assert "HubSpot refused HUBSPOT_ACCESS_TOKEN (401 INVALID_AUTHENTICATION)" in wrong.stderr
    assert "pat-wrong" not in wrong.stderr + wrong.stdout
    state["scopes"] = {"crm.schemas.deals.read", "crm.schemas.contacts.read"}
    scoped = revor_bridge("hubspot", "setup", "--object", "deals",
                          env=cli_env(HUBSPOT_ACCESS_TOKEN=TOKEN, HUBSPOT_API_BASE_URL=server.url), cwd=tmp_path)
    assert scoped.returncode == 2 and "needs scope crm.schemas.deals.write" in scoped.stderr, scoped.stderr
    assert "revor" not in state["groups"]["deals"]


# ---- hostile answers (issue 13 attack review) ---------------------------------------------------------


def answering(status: int, body: str, content_type: str = "application/json") -> ThreadServer:
    """A server that gives every request the same answer (what a broken proxy or a changed API might)."""
    from flask import Flask, Response

    app = Flask("hostile_hubspot")

    @app.route("/<path:path>", methods=["GET", "POST", "PATCH"])
    def any_path(path: str) -> Response:
        return Response(body, status, content_type=content_type)

    return ThreadServer(app)


def test_a_batch_answer_is_trusted_only_for_the_ids_it_names(hub, redis_db):
    """A 200/207 batch answer confirms a write only when its `results` name the record (and its `errors`
    do not): an empty `results`, errors without ids or of the wrong type leave every write unconfirmed, and
    each is sent as its own PATCH (whose answer must be the record) instead of being called written."""
    server, state = hub
    revor_fields(state, "contacts")
    for answer in [(200, {}, {"status": "COMPLETE", "results": []}),
                   (207, {}, {"status": "COMPLETE", "results": [], "errors": [{"status": "error", "message": "boom"}]}),
                   (207, {}, {"status": "COMPLETE", "errors": 7}),
                   (207, {}, {"status": "COMPLETE", "results": [{"id": DANA}], "errors": [{"context": {"ids": 9}}]})]:
        state["calls"].clear()
        for contact in (DANA, SAM):
            state["records"]["contacts"][contact].pop("revor_status", None)
        state["fail_next"] = [answer]
        writes = [status_write(DANA, "scheduled", "contact", "rb:msg:1"),
                  status_write(SAM, "failed", "contact", "rb:msg:2")]
        results = writer(server, redis_db).update(writes)
        assert [r.outcome for r in results] == [OK, OK], answer
        assert [(c["method"], c["path"]) for c in state["calls"]] == [
            ("POST", "/crm/v3/objects/contacts/batch/update"), ("PATCH", f"/crm/v3/objects/contacts/{DANA}"),
            ("PATCH", f"/crm/v3/objects/contacts/{SAM}")], answer
        assert state["records"]["contacts"][DANA]["revor_status"] == "scheduled"  # really written now
        assert state["records"]["contacts"][SAM]["revor_status"] == "failed"
    # a 207 that confirms one record and names the other's id under errors: only that one again
    state["calls"].clear()
    state["fail_next"] = [(207, {}, {"status": "COMPLETE", "results": [{"id": DANA}],
                                     "errors": [{"status": "error", "context": {"ids": [SAM]}}]})]
    results = writer(server, redis_db).update([status_write(DANA, "succeeded", "contact", "rb:msg:1"),
                                               status_write(SAM, "succeeded", "contact", "rb:msg:2")])
    assert [r.outcome for r in results] == [OK, OK]
    assert [c["method"] for c in state["calls"]] == ["POST", "PATCH"] and state["calls"][1]["path"].endswith(SAM)


def test_a_throttled_answer_while_writing_one_by_one_stops_the_rest(hub, redis_db):
    server, state = hub
    revor_fields(state, "contacts")
    state["fail_next"] = [(200, {}, {"status": "COMPLETE", "results": []}), (429, {"Retry-After": "2"})]
    results = writer(server, redis_db).update([status_write(DANA, "x", "contact", "rb:msg:1"),
                                               status_write(SAM, "y", "contact", "rb:msg:2")])
    assert [r.outcome for r in results] == [THROTTLED, THROTTLED]
    assert [c["method"] for c in state["calls"]] == ["POST", "PATCH"]  # not a call more into the 429


def test_an_answer_that_is_not_json_confirms_nothing(redis_db):
    with answering(200, "<html>ok</html>", "text/html") as server:
        w = HubSpotWriter(server.url, TOKEN, redis_db, max_rps=50)
        batch = w.update([status_write(DEAL, "x", key="rb:msg:1"), status_write("18273645502", "x", key="rb:msg:2")])
        one = w.update([status_write(DEAL, "x")])
    assert [r.outcome for r in batch] == [RETRY, RETRY] and one[0].outcome == RETRY
    assert "without the updated record" in one[0].reason and "HTTP 200" in batch[0].reason


@pytest.mark.parametrize(("status", "body", "outcome", "reason"), [
    (400, {"message": "PROPERTY_DOESNT_EXIST", "errors": 5}, DEAD, "property (unnamed) does not exist"),
    (400, {"status": "error", "message": "Property values were not valid", "category": "VALIDATION_ERROR",
           "errors": [{"code": "PROPERTY_DOESNT_EXIST", "context": {"propertyName": "revor_status"}}]},
     DEAD, "property revor_status does not exist on HubSpot deals (400 VALIDATION_ERROR PROPERTY_DOESNT_EXIST)"),
    (400, {"message": "x [1, {\"name\": 5}] [", "errors": [{"code": "PROPERTY_DOESNT_EXIST", "context": 3}]},
     DEAD, "property (unnamed) does not exist"),
    (403, {"category": "MISSING_SCOPES", "errors": [{"context": {"requiredScopes": 5}}]}, RETRY,
     "HubSpot refused HUBSPOT_ACCESS_TOKEN (403 MISSING_SCOPES: needs scope crm.objects.deals.write)"),
    (403, {"category": "MISSING_SCOPES", "errors": [{"context": {"requiredScopes": "crm.objects.deals.write"}}]},
     RETRY, "HubSpot refused HUBSPOT_ACCESS_TOKEN (403 MISSING_SCOPES: needs scope crm.objects.deals.write)"),
    (400, [1, 2], DEAD, "HubSpot 400: [1, 2]"),
    (400, "[" * 5000 + "]" * 5000, DEAD, "HubSpot 400: [[["),
])
def test_answers_of_the_wrong_shape_are_outcomes_never_exceptions(hub, redis_db, status, body, outcome, reason):
    """Whatever JSON (or not) comes back, each write gets a Result; nothing raises (it raised TypeError)."""
    server, state = hub
    revor_fields(state, "deals")
    with answering(status, body if isinstance(body, str) else json.dumps(body)) as hostile:
        w = HubSpotWriter(hostile.url, TOKEN, redis_db, max_rps=50)
        [result] = w.update([status_write(DEAL, "x")])
        lines = w.check({"deal": ["revor_status"]})
    assert result.outcome == outcome and result.reason.startswith(reason), result
    assert len(lines) == 1 and lines[0].startswith("HubSpot"), lines


def test_check_reads_a_property_list_of_the_wrong_shape_without_raising(hub, redis_db):
    server, state = hub
    state["fail_next"] = [(200, {}, {"results": 5})]
    assert writer(server, redis_db).check({"deal": ["revor_status"]}) == [
        "property revor_status does not exist on HubSpot deals"]


def test_the_token_is_in_no_reason_and_no_check_line_whatever_hubspot_echoes(hub, redis_db):
    server, state = hub
    revor_fields(state, "deals")
    state["fail_next"] = [(429, {"Retry-After": "1"}, {"category": f"RATE {TOKEN}", "message": TOKEN}),
                          (401, {}, {"category": f"BAD {TOKEN}"}),
                          (400, {}, {"status": "error", "message": "x" * 230 + TOKEN}),
                          (403, {}, {"category": f"MISSING_SCOPES {TOKEN}"}),
                          (429, {}, {"category": f"RATE {TOKEN}"})]
    w = writer(server, redis_db)
    throttled = w.update([status_write(DEAL, "x")])[0]
    redis_db.flushdb()
    refused = w.update([status_write(DEAL, "x")])[0]
    cut = w.update([status_write(DEAL, "x")])[0]  # the token where the reason is cut short
    lines = w.check({"deal": []}) + w.check({"deal": []})
    redis_db.flushdb()
    said = [throttled.reason, refused.reason, cut.reason, *lines]
    assert (throttled.outcome, refused.outcome, cut.outcome) == (THROTTLED, RETRY, DEAD)
    assert len(lines) == 2 and all(TOKEN[:8] not in text for text in said), said
    assert "***" in throttled.reason and "***" in lines[0]


def test_an_id_with_a_trailing_newline_is_not_a_hubspot_id(hub, redis_db):
    server, state = hub
    write = status_write(DEAL + "\n", "x")
    results = writer(server, redis_db).update([write])
    note = writer(server, redis_db).log_activity(
        replace(write, activity=Activity("s", "b", "2026-01-01T00:00:00Z")))
    assert (results[0].outcome, results[0].reason) == (DEAD, f"not a HubSpot id: '{DEAL}\\n'")
    assert note.outcome == DEAD and state["calls"] == []
    # hydration's client (the same id pattern) refuses it too, before any call
    from integration.hydrate.hubspot import HubSpotClient, HubSpotError

    with pytest.raises(HubSpotError, match="not a HubSpot id"):
        HubSpotClient(server.url, TOKEN).get_deal(DEAL + "\n")
    assert HubSpotClient(server.url, TOKEN).read_contacts([DANA + "\n"]) == [] and state["calls"] == []
