"""The Salesforce writer against a local stand-in of the org's REST API (real HTTP, real Redis)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from integration.dispatches.limits import Limiter
from integration.settings import Secret, Settings
from integration.writeback.crm import salesforce
from integration.writeback.crm.base import DEAD, OK, RETRY, Activity, NotConfigured, Write
from integration.writeback.crm.salesforce import SalesforceWriter, trusted_instance_url
from tests.servers import ThreadServer
from tests.standin_salesforce import ACCOUNT_ID, CONTACT_ID, LEAD_ID, OPPORTUNITY_ID, salesforce_standin

CLIENT_ID = "3MVG9standinConsumerKey0123456789"
CLIENT_SECRET = "standin-consumer-secret-0123456789ABCDEF"
STATUS = {"Revor_Status__c": "succeeded", "Revor_Last_Job_Id__c": "job_123"}


@pytest.fixture(autouse=True)
def fresh_token_cache() -> Iterator[None]:
    """A port may be reused by a later test's stand-in: no token crosses tests."""
    salesforce.forget_tokens()
    yield
    salesforce.forget_tokens()


@pytest.fixture
def org() -> Iterator[tuple[ThreadServer, dict]]:
    app, state = salesforce_standin(CLIENT_ID, CLIENT_SECRET)
    with ThreadServer(app) as server:
        yield server, state


def settings_for(server: ThreadServer, **overrides: object) -> Settings:
    values: dict[str, object] = dict(salesforce_base_url=server.url, salesforce_client_id=Secret(CLIENT_ID),
                                     salesforce_client_secret=Secret(CLIENT_SECRET), salesforce_max_rps=1000.0)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def writer(org, redis_db) -> Iterator[SalesforceWriter]:
    server, _ = org
    w = SalesforceWriter.from_settings(settings_for(server), redis_db)
    yield w
    w.close()


def deal(properties: dict | None = None, object_id: str = OPPORTUNITY_ID, **changes: object) -> Write:
    write = Write(key=f"rb:msg:{object_id}", object="deal", object_id=object_id,
                  properties=STATUS if properties is None else properties)
    return replace(write, **changes) if changes else write


def api_calls(state: dict) -> list[dict]:
    return [c for c in state["calls"] if c["path"].startswith("/services/data/")]


def token_calls(state: dict) -> list[dict]:
    return [c for c in state["calls"] if c["path"] == "/services/oauth2/token"]


def test_one_write_is_a_patch_on_the_record(org, writer):
    _, state = org
    [result] = writer.update([deal({**STATUS, "Revor_Last_Error__c": None})])
    assert result.outcome == OK and result.status == 204
    record = state["records"]["Opportunity"][OPPORTUNITY_ID]
    assert record["Revor_Status__c"] == "succeeded" and record["Revor_Last_Error__c"] is None
    [call] = api_calls(state)
    assert (call["method"], call["path"]) == ("PATCH", f"/services/data/v62.0/sobjects/Opportunity/{OPPORTUNITY_ID}")
    assert call["json"]["Revor_Last_Error__c"] is None  # None clears the field: JSON null
    [token] = token_calls(state)
    assert token["form"] == {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "***"}


def test_token_fetched_once_and_shared_by_threads(org, redis_db):
    server, state = org
    writers = [SalesforceWriter.from_settings(settings_for(server), redis_db) for _ in range(4)]
    results: list = []
    barrier = threading.Barrier(len(writers))

    def run(w: SalesforceWriter) -> None:
        barrier.wait()
        for _ in range(3):
            results.extend(w.update([deal()]))

    threads = [threading.Thread(target=run, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert [r.outcome for r in results] == [OK] * 12
    assert state["tokens_issued"] == 1
    assert all(c["auth_ok"] for c in api_calls(state))
    for w in writers:
        w.close()


def test_token_expiry_mid_run_refreshes_once_and_the_write_succeeds(org, writer):
    _, state = org
    assert writer.update([deal({"Revor_Status__c": "scheduled"})])[0].outcome == OK
    state["expire_tokens"]()
    [result] = writer.update([deal({"Revor_Status__c": "succeeded"})])
    assert result.outcome == OK
    assert state["tokens_issued"] == 2
    assert state["records"]["Opportunity"][OPPORTUNITY_ID]["Revor_Status__c"] == "succeeded"
    assert [c["auth_ok"] for c in api_calls(state)] == [True, False, True]  # refused once, then repeated
    assert writer.update([deal()])[0].outcome == OK and state["tokens_issued"] == 2  # the new one is kept


def test_a_token_refused_twice_is_retry_not_a_loop(org, writer):
    _, state = org
    state["fail_next"] = [(401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])] * 2
    [result] = writer.update([deal()])
    assert result.outcome == RETRY and "INVALID_SESSION_ID" in result.reason
    assert len(api_calls(state)) == 2 and state["tokens_issued"] == 2


@pytest.mark.parametrize(("client_id", "secret", "named"), [
    (CLIENT_ID, "wrong-secret-value-0123456789", "SALESFORCE_CLIENT_SECRET"),
    ("3MVG9someOtherApp", CLIENT_SECRET, "SALESFORCE_CLIENT_ID"),
])
def test_refused_credentials_are_retry_naming_the_setting_and_check_says_so(org, redis_db, client_id, secret, named):
    server, state = org
    w = SalesforceWriter.from_settings(settings_for(server, salesforce_client_id=Secret(client_id),
                                                    salesforce_client_secret=Secret(secret)), redis_db)
    [result] = w.update([deal()])
    assert result.outcome == RETRY and result.status == 400
    assert named in result.reason and secret not in result.reason
    assert "invalid_client" in result.reason
    problems = w.check({"deal": list(STATUS)})
    assert len(problems) == 1 and named in problems[0] and secret not in problems[0]
    assert api_calls(state) == [] and state["tokens_issued"] == 0
    w.close()


def test_composite_batch_with_one_deleted_record(org, writer):
    _, state = org
    state["deleted"].add(CONTACT_ID)
    writes = [deal(), Write("rb:msg:c", "contact", CONTACT_ID, STATUS),
              Write("rb:msg:a", "company", ACCOUNT_ID, STATUS), Write("rb:msg:l", "contact", LEAD_ID, STATUS,
                                                                       sobject="Lead")]
    results = writer.update(writes)
    assert [r.outcome for r in results] == [OK, DEAD, OK, OK]
    assert results[1].reason.startswith("ENTITY_IS_DELETED") and "entity is deleted" in results[1].reason
    [call] = api_calls(state)
    assert (call["method"], call["path"]) == ("PATCH", "/services/data/v62.0/composite/sobjects")
    assert call["json"]["allOrNone"] is False
    assert {(r["attributes"]["type"], r["id"]) for r in call["json"]["records"]} == {
        ("Opportunity", OPPORTUNITY_ID), ("Contact", CONTACT_ID), ("Account", ACCOUNT_ID), ("Lead", LEAD_ID)}
    assert state["records"]["Lead"][LEAD_ID]["Revor_Status__c"] == "succeeded"


def test_single_write_to_a_deleted_or_unknown_record_is_dead(org, writer):
    _, state = org
    state["deleted"].add(OPPORTUNITY_ID)
    [gone] = writer.update([deal()])
    assert gone.outcome == DEAD and gone.status == 404 and "ENTITY_IS_DELETED" in gone.reason
    [unknown] = writer.update([deal(object_id="006Dn00000ZZZZZIAA")])
    assert unknown.outcome == DEAD and unknown.reason.startswith("NOT_FOUND")


def test_invalid_field_is_dead_naming_the_field(org, writer):
    _, state = org
    [result] = writer.update([deal({"Revor_Satus__c": "failed"})])
    assert result.outcome == DEAD and result.status == 400
    assert "INVALID_FIELD" in result.reason and "Revor_Satus__c" in result.reason and "Opportunity" in result.reason


def test_invalid_field_in_a_batch_sends_only_that_write_to_the_dead_letters(org, writer):
    _, state = org
    results = writer.update([deal(), Write("rb:msg:c", "contact", CONTACT_ID, {"Revor_Satus__c": "failed"}),
                             Write("rb:msg:a", "company", ACCOUNT_ID, STATUS)])
    assert [r.outcome for r in results] == [OK, DEAD, OK]
    assert "Revor_Satus__c" in results[1].reason
    assert state["records"]["Account"][ACCOUNT_ID]["Revor_Status__c"] == "succeeded"


def test_read_only_field_is_dead_naming_it(org, writer):
    [result] = writer.update([deal({"CreatedDate": "2026-01-01"})])
    assert result.outcome == DEAD and "INVALID_FIELD_FOR_INSERT_UPDATE" in result.reason
    assert "CreatedDate" in result.reason


def test_request_limit_exceeded_is_retry_with_a_long_wait_and_pauses_the_limiter(org, writer, redis_db):
    _, state = org
    state["api_usage"] = [15000, 15000]
    results = writer.update([deal(), Write("rb:msg:c", "contact", CONTACT_ID, STATUS)])
    assert [r.outcome for r in results] == [RETRY, RETRY]
    assert all(r.wait == 900 and r.status == 403 and "REQUEST_LIMIT_EXCEEDED" in r.reason for r in results)
    assert Limiter(redis_db, "salesforce", 1000).paused_for() > 850


def test_api_usage_at_its_limit_pauses_the_limiter(org, writer, redis_db):
    _, state = org
    state["api_usage"] = [14999, 15000]
    assert writer.update([deal()])[0].outcome == OK  # the call that used the last one went through
    assert Limiter(redis_db, "salesforce", 1000).paused_for() > 850


def test_server_error_and_no_answer_are_retry(org, writer, redis_db):
    server, state = org
    state["fail_next"] = [(503, [{"message": "Server unavailable", "errorCode": "SERVER_UNAVAILABLE"}])]
    [result] = writer.update([deal()])
    assert result.outcome == RETRY and result.status == 503
    gone = SalesforceWriter.from_settings(settings_for(server, salesforce_base_url="http://127.0.0.1:9"), redis_db)
    [nothing] = gone.update([deal()])
    assert nothing.outcome == RETRY and "no answer" in nothing.reason
    assert gone.check({"deal": ["Revor_Status__c"]}) == [nothing.reason]
    gone.close()


def test_task_on_an_opportunity_uses_what_id_and_on_a_contact_who_id(org, writer):
    _, state = org
    activity = Activity("Revor sms succeeded", "To +15550100; Revor job job_123", "2026-01-01T23:30:08.000Z")
    assert writer.log_activity(deal(activity=activity)).outcome == OK
    person = Write("rb:msg:c", "contact", CONTACT_ID, {}, activity=replace(activity, subject="x" * 300))
    assert writer.log_activity(person).outcome == OK
    opportunity_task, contact_task = state["tasks"]
    assert opportunity_task["WhatId"] == OPPORTUNITY_ID and "WhoId" not in opportunity_task
    assert opportunity_task["Subject"] == "Revor sms succeeded" and opportunity_task["Status"] == "Completed"
    assert opportunity_task["Description"] == "To +15550100; Revor job job_123"
    assert opportunity_task["ActivityDate"] == "2026-01-01"
    assert contact_task["WhoId"] == CONTACT_ID and "WhatId" not in contact_task
    assert len(contact_task["Subject"]) == 255
    assert [c["path"] for c in api_calls(state)] == ["/services/data/v62.0/sobjects/Task"] * 2


def test_task_on_a_deleted_record_is_dead(org, writer):
    _, state = org
    state["deleted"].add(OPPORTUNITY_ID)
    result = writer.log_activity(deal(activity=Activity("s", "b", "2026-01-01T12:00:00Z")))
    assert result.outcome == DEAD and "ENTITY_IS_DELETED" in result.reason and state["tasks"] == []


def test_check_names_a_missing_field_and_changes_nothing(org, writer):
    _, state = org
    needs = {"deal": list(STATUS), "contact": ["Revor_Status__c", "Email"]}
    assert writer.check(needs) == []
    state["fields"]["Opportunity"].discard("Revor_Last_Job_Id__c")
    state["fields"]["Contact"].discard("Revor_Status__c")
    assert writer.check({**needs, "company": ["CreatedDate"]}) == [
        "field Revor_Last_Job_Id__c does not exist on Salesforce Opportunity",
        "field Revor_Status__c does not exist on Salesforce Contact",
        "field CreatedDate on Salesforce Account is not updateable",
    ]
    assert {c["method"] for c in api_calls(state)} == {"GET"}
    assert {c["path"] for c in api_calls(state)} == {
        f"/services/data/v62.0/sobjects/{s}/describe" for s in ("Opportunity", "Contact", "Account")}


def test_check_fetches_a_new_token_each_time(org, writer):
    _, state = org
    assert writer.check({"deal": ["Revor_Status__c"]}) == [] and writer.check({}) == []
    assert state["tokens_issued"] == 2


def test_writes_that_cannot_name_a_record_are_dead_without_a_call(org, writer):
    _, state = org
    results = writer.update([deal(object_id="006../../x"), deal(object_id="12345"),
                             deal(sobject="Opportunity/../User"), deal({"Id": OPPORTUNITY_ID}), deal({})])
    assert [r.outcome for r in results] == [DEAD, DEAD, DEAD, DEAD, OK]
    assert "not a Salesforce record id" in results[0].reason and "sObject" in results[2].reason
    assert state["calls"] == []


def test_instance_url_elsewhere_never_receives_the_token(org, writer):
    _, state = org
    state["instance_url"] = "https://attacker.example.com"
    assert writer.update([deal()])[0].outcome == OK
    assert len(api_calls(state)) == 1  # the API call still went to SALESFORCE_DOMAIN


def test_trusted_instance_url():
    ours = "https://acme.my.salesforce.com"
    assert trusted_instance_url(ours, "https://acme.my.salesforce.com/") == ours
    assert trusted_instance_url(ours, "https://acme--uat.sandbox.my.salesforce.com") == \
        "https://acme--uat.sandbox.my.salesforce.com"
    for bad in ("https://evil.example.com", "http://acme.my.salesforce.com", "https://my.salesforce.com.evil.io",
                "https://acme.my.salesforce.com:8443", "https://acme.my.salesforce.com/x", None, 3,
                "https://user@acme.my.salesforce.com"):
        assert trusted_instance_url(ours, bad) is None, bad
    assert trusted_instance_url("http://127.0.0.1:5000", "http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_from_settings_names_what_is_missing(redis_db):
    with pytest.raises(NotConfigured, match="^SALESFORCE_DOMAIN and SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET"):
        SalesforceWriter.from_settings(Settings(), redis_db)
    with pytest.raises(NotConfigured, match="^SALESFORCE_CLIENT_SECRET is not set"):
        SalesforceWriter.from_settings(Settings(salesforce_base_url="https://acme.my.salesforce.com",
                                                salesforce_client_id=Secret(CLIENT_ID)), redis_db)
    w = SalesforceWriter.from_settings(Settings(salesforce_base_url="https://acme.my.salesforce.com",
                                                salesforce_client_id=Secret(CLIENT_ID),
                                                salesforce_client_secret=Secret(CLIENT_SECRET)), redis_db)
    assert CLIENT_SECRET not in repr(w) and (w.kind, w.batch_size) == ("salesforce", 200)
    w.close()


# ---- hostile answers (issue 13 attack review) ---------------------------------------------------------

ACCESS = "00DHOSTILE!AQ.access-token-value-0123456789"


def hostile_org(status: int, body: object, headers: dict[str, str] | None = None) -> ThreadServer:
    """A token endpoint that works, and an API that gives every call the same answer."""
    import json

    from flask import Flask, Response, request

    app = Flask("hostile_salesforce")

    @app.post("/services/oauth2/token")
    def token() -> Response:
        return Response(json.dumps({"access_token": ACCESS, "instance_url": request.host_url}), 200,
                        mimetype="application/json")

    @app.route("/services/data/<path:path>", methods=["GET", "POST", "PATCH"])
    def api(path: str) -> Response:
        return Response(body if isinstance(body, str) else json.dumps(body), status, headers=headers or {},
                        mimetype="application/json")

    return ThreadServer(app)


def hostile_writer(server: ThreadServer, redis_db, name: str = "salesforce") -> SalesforceWriter:
    return SalesforceWriter(server.url, CLIENT_ID, CLIENT_SECRET, "62.0", Limiter(redis_db, name, 1000.0))


@pytest.mark.parametrize(("retry_after", "wait"), [("1e9", 3600.0), ("inf", 3600.0), ("1e400", 3600.0),
                                                   ("nan", 60.0), ("-5", 1.0), ("garbage", 60.0), ("7", 7.0)])
def test_a_429_wait_is_finite_and_at_most_an_hour(redis_db, retry_after, wait):
    """Retry-After: 1e9 paused the shared limiter for 31 years, `inf` raised OverflowError."""
    with hostile_org(429, [{"errorCode": "REQUEST_LIMIT", "message": "slow down"}], {"Retry-After": retry_after}) as s:
        w = hostile_writer(s, redis_db)
        [result] = w.update([deal()])
    assert (result.outcome, result.wait) == ("throttled", wait)
    assert wait - 2 < w.limiter.paused_for() <= wait


def test_the_limiter_pause_takes_only_a_finite_bounded_wait(redis_db):
    limiter = Limiter(redis_db, "bounded", 10.0)
    for nonsense in (float("inf"), float("nan"), -5.0, 0.0):
        limiter.pause(nonsense)  # `inf` raised OverflowError
        assert limiter.paused_for() == 0, nonsense
    limiter.pause(1e9)
    assert 86000 < limiter.paused_for() <= 86400  # a day at most, whatever a caller asks


@pytest.mark.parametrize(("status", "body"), [
    (400, [{"errorCode": "INVALID_FIELD", "message": f"Bearer {ACCESS}"}]),
    (400, [{"errorCode": "INVALID_FIELD", "message": "x" * 270 + ACCESS}]),  # where the reason is cut short
    (500, f"upstream said Authorization: Bearer {ACCESS}"),
    (429, [{"errorCode": "X", "message": ACCESS}]),
    (200, [{"success": False, "errors": [{"statusCode": "FIELD_INTEGRITY_EXCEPTION", "message": ACCESS}]},
           {"success": False, "errors": [{"statusCode": "X", "message": "y" * 280 + ACCESS}]}]),
])
def test_the_access_token_is_in_no_reason_and_no_check_line(redis_db, status, body):
    with hostile_org(status, body) as s:
        w = hostile_writer(s, redis_db, f"sf-{status}")
        said = [r.reason for r in w.update([deal()]) + w.update([deal(), deal(object_id=ACCOUNT_ID, object="company")])]
        said += [w.log_activity(deal(activity=Activity("s", "b", "2026-01-01T00:00:00Z"))).reason]
        said += w.check({"deal": ["Revor_Status__c"]})
    assert said and all(ACCESS[:10] not in text for text in said), said


@pytest.mark.parametrize("body", [
    [{"errorCode": "INVALID_FIELD", "message": "m", "fields": 5}],
    [{"errorCode": 5, "message": {"a": 1}, "fields": "Revor_Status__c"}],
    {"fields": 5},
    [1, 2],
    "[" * 5000 + "]" * 5000,
])
def test_answers_of_the_wrong_shape_are_outcomes_never_exceptions(redis_db, body):
    """`fields: 5` raised TypeError in describe_error (and in check's describe)."""
    for status in (400, 200, 404):
        with hostile_org(status, body) as s:
            w = hostile_writer(s, redis_db)
            one = w.update([deal()])
            two = w.update([deal(), deal(object_id=ACCOUNT_ID, object="company")])
            lines = w.check({"deal": ["Revor_Status__c"]})
        assert len(one) == 1 and len(two) == 2 and all(r.reason or r.outcome == OK for r in one + two)
        assert all(isinstance(line, str) for line in lines)


def test_a_batch_answer_whose_errors_are_of_the_wrong_shape_is_dead_per_record(redis_db):
    answer = [{"success": False, "errors": 5}, {"success": False, "errors": [{"statusCode": "X", "fields": 3}]}]
    with hostile_org(200, answer) as s:
        results = hostile_writer(s, redis_db).update([deal(), deal(object_id=ACCOUNT_ID, object="company")])
    # the batch goes sorted by sObject (Account first), each answer back to its own write
    assert [r.outcome for r in results] == [DEAD, DEAD]
    assert (results[0].reason, results[1].reason) == ("X", "no error detail")


def test_an_instance_url_with_a_fragment_query_or_userinfo_is_not_trusted():
    ours = "https://acme.my.salesforce.com"
    for bad in ("https://x.my.salesforce.com#@evil.example.com", "https://x.my.salesforce.com#",
                "https://x.my.salesforce.com?", "https://x.my.salesforce.com?a=1",
                "https://evil.example.com\\@x.my.salesforce.com", "https://:pw@x.my.salesforce.com",
                "https://x.my.salesforce.com:99999", "https://x.my.salesforce.com\n", "https://[x.my.salesforce.com"):
        assert trusted_instance_url(ours, bad) is None, bad
