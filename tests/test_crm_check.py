"""`revor-bridge check` on CRM destinations (issue 13 item 7): the real command, in its own process,
against the local HubSpot, Salesforce and Pipedrive stand-ins. It must catch a wrong credential and a
missing property per CRM, naming them, pass when all is well, name an unset credential, and change
nothing in any CRM."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from integration.rules.loader import load_rules
from integration.storage import free_port
from integration.writeback.crm.config import needs
from tests.conftest import cli_env, revor_bridge
from tests.servers import ThreadServer, hubspot_standin
from tests.standin_pipedrive import _key, pipedrive_standin
from tests.standin_salesforce import salesforce_standin

HUBSPOT_TOKEN = "pat-na1-check-token-0123"
SF_CLIENT_ID = "3MVG9check.client.id"
SF_CLIENT_SECRET = "check-consumer-secret-0123456789ABCDEF"
PIPEDRIVE_TOKEN = "0123456789abcdef0123456789abcdef01234567"
STATUS_KEY = _key("deal", "Revor status")  # c4a5…: the stand-in's key for a custom deal field named so
JOB_KEY = _key("deal", "Revor job id")  # b453…: the rules file takes keys starting with a letter

DISPATCH = ("{account: connect_account_sandbox_email, channel: email, recipient: {address: x@example.com}, "
            "content: {subject: s, text: t}}")
RULES = textwrap.dedent(f"""\
    version: 1
    rules:
      - name: hubspot-won
        when: {{source: hubspot, type: [deal.stage_changed]}}
        dispatch: {DISPATCH}
        writeback: [hubspot-deals, hubspot-contacts]
      - name: salesforce-won
        when: {{source: salesforce, type: ["deal.*"]}}
        dispatch: {DISPATCH}
        writeback: [salesforce-opps]
      - name: pipedrive-won
        when: {{source: pipedrive, type: ["deal.*"]}}
        dispatch: {DISPATCH}
        writeback: [pipedrive-deals]
    destinations:
      hubspot-deals:
        kind: hubspot
        record: deal
        properties: {{revor_status: "{{{{ data.status }}}}", revor_last_job_id: "{{{{ data.revor_job_id }}}}"}}
      hubspot-contacts:
        kind: hubspot
        record: contact
        properties: {{revor_status: "{{{{ data.status }}}}"}}
      salesforce-opps:
        kind: salesforce
        properties: {{Revor_Status__c: "{{{{ data.status }}}}", Revor_Last_Job_Id__c: "{{{{ data.revor_job_id }}}}"}}
        activity: {{on: [failed]}}
      pipedrive-deals:
        kind: pipedrive
        properties: {{{STATUS_KEY}: "{{{{ data.status }}}}", {JOB_KEY}: "{{{{ data.revor_job_id }}}}"}}
    """)


def hubspot_properties(state: dict[str, Any], *names: str, types: tuple[str, ...] = ("deals", "contacts")) -> None:
    """Custom properties as `hubspot setup` (or a HubSpot admin) would have made them."""
    for object_type in types:
        for name in names:
            state["properties"][object_type][name] = {
                "name": name, "label": name, "type": "string", "fieldType": "text", "groupName": "revor",
                "options": [], "hubspotDefined": False, "hidden": False}


@pytest.fixture
def crms() -> Iterator[dict[str, Any]]:
    """The three stand-ins, each with every property the rules map (tests take some away)."""
    hub_app, hub = hubspot_standin(HUBSPOT_TOKEN)
    sf_app, sf = salesforce_standin(SF_CLIENT_ID, SF_CLIENT_SECRET)
    pd_app, pd = pipedrive_standin(PIPEDRIVE_TOKEN)
    hubspot_properties(hub, "revor_status", "revor_last_job_id")
    assert pd["add_field"]("deal", "Revor status") == STATUS_KEY
    pd["add_field"]("deal", "Revor job id")
    with ThreadServer(hub_app) as hub_server, ThreadServer(sf_app) as sf_server, ThreadServer(pd_app) as pd_server:
        yield {"hub": hub, "sf": sf, "pd": pd,
               "env": {"HUBSPOT_ACCESS_TOKEN": HUBSPOT_TOKEN, "HUBSPOT_API_BASE_URL": hub_server.url,
                       "SALESFORCE_DOMAIN": sf_server.url, "SALESFORCE_CLIENT_ID": SF_CLIENT_ID,
                       "SALESFORCE_CLIENT_SECRET": SF_CLIENT_SECRET,
                       "PIPEDRIVE_API_TOKEN": PIPEDRIVE_TOKEN, "PIPEDRIVE_API_BASE_URL": pd_server.url}}


def run_check(crms: dict[str, Any], sandbox, redis_url: str, tmp_path, **changes: str | None):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    env = {**crms["env"], **changes}
    env = cli_env(REVOR_BASE_URL=sandbox.api_url, REDIS_URL=f"{redis_url}/2", RULES_FILE=str(rules), LOG_FORMAT="text",
                  **{k: v for k, v in env.items() if v is not None})
    result = revor_bridge("check", env=env, cwd=tmp_path)
    lines = [line for line in result.stdout.splitlines() if line.startswith("destination ")]
    return result, lines


def assert_nothing_changed(crms: dict[str, Any]) -> None:
    """check reads: no write of any kind reached a CRM (a Salesforce token request is a read)."""
    for crm in ("hub", "sf", "pd"):
        reads = ("/services/oauth2/token", "/oauth/v2/private-apps/get/access-token-info")  # POSTs that read
        writes = [(c["method"], c["path"]) for c in crms[crm]["calls"]
                  if c["method"] != "GET" and c["path"] not in reads]
        assert writes == [], (crm, writes)


def test_check_passes_when_every_destination_can_write(crms, sandbox, redis_url, tmp_path):
    result, lines = run_check(crms, sandbox, redis_url, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines == [
        "destination hubspot-deals: ok (HubSpot, deal: revor_status, revor_last_job_id)",
        "destination hubspot-contacts: ok (HubSpot, contact: revor_status)",
        "destination salesforce-opps: ok (Salesforce, deal: Revor_Status__c, Revor_Last_Job_Id__c)",
        f"destination pipedrive-deals: ok (Pipedrive, deal: {STATUS_KEY}, {JOB_KEY})",
    ]
    assert_nothing_changed(crms)
    # It looked: the property lists of each object it writes, the Opportunity's describe, the deal fields.
    assert {c["path"] for c in crms["hub"]["calls"]} >= {"/crm/v3/properties/deals", "/crm/v3/properties/contacts"}
    assert any(c["path"].endswith("/sobjects/Opportunity/describe") for c in crms["sf"]["calls"])
    assert any(c["path"] == "/api/v2/dealFields" for c in crms["pd"]["calls"])


def test_check_catches_a_wrong_credential_of_each_crm(crms, sandbox, redis_url, tmp_path):
    result, lines = run_check(crms, sandbox, redis_url, tmp_path, HUBSPOT_ACCESS_TOKEN="pat-na1-wrong",
                              SALESFORCE_CLIENT_SECRET="wrong-consumer-secret-0000000000",
                              PIPEDRIVE_API_TOKEN="ffffffffffffffffffffffffffffffffffffffff")
    assert result.returncode == 1, result.stdout + result.stderr
    by_destination = {line.split(":", 1)[0]: line for line in lines}
    assert "HubSpot refused HUBSPOT_ACCESS_TOKEN (401" in by_destination["destination hubspot-deals"]
    assert "HubSpot refused HUBSPOT_ACCESS_TOKEN (401" in by_destination["destination hubspot-contacts"]
    assert ("Salesforce refused SALESFORCE_CLIENT_ID / SALESFORCE_CLIENT_SECRET (400 invalid_client"
            in by_destination["destination salesforce-opps"])
    assert "Pipedrive refused PIPEDRIVE_API_TOKEN (401" in by_destination["destination pipedrive-deals"]
    assert not any(": ok (" in line for line in lines)
    output = result.stdout + result.stderr
    for secret in ("pat-na1-wrong", "wrong-consumer-secret", "ffffffffffffffffffff"):
        assert secret not in output
    assert "Traceback" not in output
    assert_nothing_changed(crms)


def test_check_names_each_missing_property_or_field(crms, sandbox, redis_url, tmp_path):
    del crms["hub"]["properties"]["contacts"]["revor_status"]
    crms["sf"]["fields"]["Opportunity"].discard("Revor_Last_Job_Id__c")
    crms["pd"]["fields"]["deal"] = [f for f in crms["pd"]["fields"]["deal"] if f["key"] != JOB_KEY]
    result, lines = run_check(crms, sandbox, redis_url, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert lines == [
        "destination hubspot-deals: ok (HubSpot, deal: revor_status, revor_last_job_id)",
        "destination hubspot-contacts: property revor_status does not exist on HubSpot contacts",
        "destination salesforce-opps: field Revor_Last_Job_Id__c does not exist on Salesforce Opportunity",
        f"destination pipedrive-deals: field {JOB_KEY} does not exist on Pipedrive deals (custom fields are "
        "written by their 40-character key: Company settings > Data fields)",
    ]
    assert_nothing_changed(crms)  # nothing created: `hubspot setup` is the command that creates


def test_check_names_an_unset_credential(crms, sandbox, redis_url, tmp_path):
    result, lines = run_check(crms, sandbox, redis_url, tmp_path, HUBSPOT_ACCESS_TOKEN=None,
                              SALESFORCE_CLIENT_ID=None, PIPEDRIVE_API_TOKEN=None)
    assert result.returncode == 1, result.stdout + result.stderr
    assert [line.split(": ", 2)[:2] for line in lines] == [
        ["destination hubspot-deals", "HUBSPOT_ACCESS_TOKEN is not set"],
        ["destination hubspot-contacts", "HUBSPOT_ACCESS_TOKEN is not set"],
        ["destination salesforce-opps", "SALESFORCE_CLIENT_ID is not set"],
        ["destination pipedrive-deals", "PIPEDRIVE_API_TOKEN is not set"],
    ]
    assert all(c["path"] != "/services/oauth2/token" for c in crms["sf"]["calls"])


NEEDS_RULES = textwrap.dedent(f"""\
    version: 1
    rules:
      - name: any-event
        when: {{source: hubspot}}
        dispatch: {DISPATCH}
        writeback: [everything]
      - name: people
        when: {{source: hubspot, type: [contact.created, "company.*"]}}
        dispatch: {DISPATCH}
        writeback: [people, the-deal]
      - name: deals
        when: {{source: hubspot, type: [deal.updated, "deal.*"]}}
        dispatch: {DISPATCH}
        writeback: [people]
    destinations:
      everything: {{kind: hubspot, properties: {{revor_status: "{{{{ data.status }}}}"}}}}
      people: {{kind: hubspot, properties: {{revor_people_status: "{{{{ data.status }}}}", revor_last_error: x}}}}
      the-deal: {{kind: hubspot, record: deal, properties: {{revor_deal_status: "{{{{ data.status }}}}"}}}}
      notes-only: {{kind: hubspot, activity: {{on: [failed]}}}}
    """)


def test_needs_says_which_objects_a_destination_writes(tmp_path):
    """`record: event` checks the objects of the event types of the rules that write back to it; a wildcard
    (or no rule at all) cannot be told apart, so deals and contacts; `record: deal` is the deal alone."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(NEEDS_RULES)
    ruleset = load_rules(rules, environ={})
    assert needs(ruleset, "everything") == {"deal": ["revor_status"], "contact": ["revor_status"]}
    assert needs(ruleset, "people") == {"contact": ["revor_people_status", "revor_last_error"],
                                        "company": ["revor_people_status", "revor_last_error"],
                                        "deal": ["revor_people_status", "revor_last_error"]}
    assert needs(ruleset, "the-deal") == {"deal": ["revor_deal_status"]}
    assert needs(ruleset, "notes-only") == {"deal": [], "contact": []}


def test_dev_looks_for_local_receivers_among_webhook_destinations_only(tmp_path):
    """`revor-bridge dev` serves a local receiver for a webhook destination on 127.0.0.1; a CRM destination has
    no URL (it read `destination["url"]` and failed with KeyError on one)."""
    from integration.cli.dev import _local_destinations

    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES + textwrap.indent(textwrap.dedent("""\
        local-hook:
          url: "http://127.0.0.1:8766/revor-status"
          secret: "whsec_cGlwZWxpbmUtd3JpdGViYWNrLXNlY3JldC0wMDAx"
        """), "  "))
    ruleset = load_rules(rules, environ={})
    assert len(ruleset.crm_destinations) == 4
    assert [d.name for d in _local_destinations(ruleset)] == ["local-hook"]


def test_a_writer_check_that_raises_is_one_failing_line_and_the_rest_are_still_checked(tmp_path, monkeypatch, capsys):
    """An answer no writer foresaw must not end `check` with a traceback before the other destinations."""
    from integration.cli.processes import _check_crm_destinations
    from integration.settings import Settings
    from integration.writeback.crm import writers

    class Writer:
        def __init__(self, kind: str) -> None:
            self.kind, self.closed = kind, False

        def check(self, needs: dict[str, list[str]]) -> list[str]:
            if self.kind == "hubspot":
                raise TypeError("'int' object is not iterable")
            return []

        def close(self) -> None:
            self.closed = True

    built: list[Writer] = []
    monkeypatch.setattr(writers, "build", lambda kind, settings, connection: built.append(Writer(kind)) or built[-1])
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    assert _check_crm_destinations(load_rules(rules, environ={}), Settings(), None) is True
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        "destination hubspot-deals: unexpected answer from HubSpot (TypeError)",
        "destination hubspot-contacts: unexpected answer from HubSpot (TypeError)",
        "destination salesforce-opps: ok (Salesforce, deal: Revor_Status__c, Revor_Last_Job_Id__c)",
        f"destination pipedrive-deals: ok (Pipedrive, deal: {STATUS_KEY}, {JOB_KEY})",
    ]
    assert "Traceback" not in out.out + out.err and all(w.closed for w in built)


def hostile_crm():
    """One server answering as all three CRMs would not: bodies of the wrong shape, the credential echoed."""
    import json

    from flask import Flask, Response, request

    app = Flask("hostile_crm")
    access = "00DHOSTILE!AQ.check-access-token"

    def answer(status: int, body: object) -> Response:
        return Response(json.dumps(body), status, mimetype="application/json")

    @app.post("/services/oauth2/token")
    def token() -> Response:
        return answer(200, {"access_token": access, "instance_url": request.host_url})

    @app.get("/services/data/<path:path>")
    def describe(path: str) -> Response:
        return answer(403, [{"errorCode": "API_DISABLED_FOR_ORG", "message": f"token {access} refused"}])

    @app.get("/crm/v3/properties/<object_type>")
    def properties(object_type: str) -> Response:
        return answer(403, {"category": f"MISSING_SCOPES {HUBSPOT_TOKEN}",
                            "errors": [{"context": {"requiredGranularScopes": 5}}]})

    @app.get("/v1/users/me")
    def me() -> Response:
        return answer(200, {"success": True, "data": {}})

    @app.get("/api/v2/<fields>")
    def fields(fields: str) -> Response:
        return answer(200, {"success": True, "data": 5})

    return app, access


def test_check_against_answers_of_the_wrong_shape_names_each_destination_without_a_secret(crms, sandbox, redis_url,
                                                                                          tmp_path):
    app, access = hostile_crm()
    with ThreadServer(app) as hostile:
        result, lines = run_check(crms, sandbox, redis_url, tmp_path, HUBSPOT_API_BASE_URL=hostile.url,
                                  SALESFORCE_DOMAIN=hostile.url, PIPEDRIVE_API_BASE_URL=hostile.url)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and access not in output and HUBSPOT_TOKEN not in output
    by_destination = {line.split(":", 1)[0]: line for line in lines}
    assert by_destination["destination hubspot-deals"] == (
        "destination hubspot-deals: HubSpot refused HUBSPOT_ACCESS_TOKEN for deals properties (403 MISSING_SCOPES *** "
        "needs scope crm.schemas.deals.read)".replace("*** needs", "***: needs"))
    assert "API_DISABLED_FOR_ORG" in by_destination["destination salesforce-opps"]
    assert by_destination["destination pipedrive-deals"] == (
        "destination pipedrive-deals: could not read Pipedrive deal fields: Pipedrive deal fields: unexpected answer "
        "(HTTP 200)")


def test_the_crms_are_checked_even_when_revor_does_not_answer(crms, redis_url, tmp_path):
    """A release that fails on Revor still says what is wrong with the CRMs (it used to stop first)."""
    crms["hub"]["properties"]["deals"].pop("revor_last_job_id")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    env = cli_env(REVOR_BASE_URL=f"http://127.0.0.1:{free_port()}/api/v1", REDIS_URL=f"{redis_url}/2",
                  RULES_FILE=str(rules), LOG_FORMAT="text", **crms["env"])
    result = revor_bridge("check", env=env, cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr  # Revor unreachable decides the exit code
    lines = [line for line in result.stdout.splitlines() if line.startswith("destination ")]
    assert "destination hubspot-deals: property revor_last_job_id does not exist on HubSpot deals" in lines, lines
    assert "destination salesforce-opps: ok (Salesforce, deal: Revor_Status__c, Revor_Last_Job_Id__c)" in lines
    assert "accounts: not checked (Revor did not answer)" in result.stdout + result.stderr
