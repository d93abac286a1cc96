"""`revor-bridge preview`, `suppress` and `check` with rules, and start-up refusal on a bad rules file."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.conftest import ROOT, cli_env, free_port, revor_bridge

FIXTURES = ROOT / "tests" / "fixtures"


def preview(*args: str, tmp_path, **env: str) -> dict | list:
    result = revor_bridge("preview", *args, "--json", env=cli_env(**env), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def by_name(result: dict) -> dict[str, dict]:
    return {rule["name"]: rule for rule in result["rules"]}


def test_preview_hubspot_batch(tmp_path):
    results = preview(str(FIXTURES / "hubspot-deal-propertychange-batch.json"), tmp_path=tmp_path)
    assert [r["event"]["type"] for r in results] == ["deal.stage_changed", "deal.stage_changed", "deal.updated"]
    first = by_name(results[0])
    assert first["demo-booked"] == {"name": "demo-booked", "matched": False, "reason": "contact.email is missing",
                                    "status": None, "dispatch_id": None, "once_per": None, "dispatch": None}
    assert by_name(results[1])["demo-booked"]["reason"].startswith("deal.dealstage is 'presentationscheduled'")


def test_preview_a_normalized_hydrated_event_sends_email(tmp_path):
    event = {"source": "hubspot", "event_id": "e1", "type": "deal.stage_changed",
             "object": {"type": "deal", "id": "18273645501"}, "occurred_at": None,
             "properties": {"dealstage": "closedwon"}, "previous": None, "account": "24681357",
             "deal": {"id": "18273645501", "dealname": "Northwind Pilot", "dealstage": "closedwon", "amount": "12500"},
             "contact": {"id": "1", "email": "dana.lee@example.com", "firstname": "Dana"}}
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    result = preview(str(path), tmp_path=tmp_path)
    rule = by_name(result)["demo-booked"]
    assert rule["matched"] and rule["status"] == "ready"
    assert rule["dispatch"]["recipient"] == {"address": "dana.lee@example.com", "name": "Dana"}
    assert rule["dispatch"]["content"]["subject"] == "Next steps for Northwind Pilot"
    assert rule["once_per"] == "18273645501:dana.lee@example.com"


def test_preview_salesforce_pipedrive(tmp_path):
    salesforce = preview(str(FIXTURES / "salesforce-outbound-message-opportunity.xml"), tmp_path=tmp_path)
    assert by_name(salesforce[0])["salesforce-closed-won"]["reason"] == "deal.Primary_Contact_Email__c is missing"
    assert by_name(salesforce[1])["salesforce-closed-won"]["reason"] == (
        "deal.StageName is 'Proposal/Price Quote', not 'Closed Won'")
    pipedrive = preview(str(FIXTURES / "pipedrive-deal-updated-v2.json"), tmp_path=tmp_path)
    assert pipedrive["event"]["type"] == "deal.stage_changed"
    assert by_name(pipedrive)["pipedrive-proposal"]["reason"] == "contact.phone is missing"


def test_preview_generic_hooks(tmp_path):
    zapier = preview(str(FIXTURES / "zapier-generic.json"), "--source", "generic:zapier", tmp_path=tmp_path)
    rule = by_name(zapier)["won-whatsapp"]
    assert rule["status"] == "ready"
    assert rule["dispatch"]["recipient"] == {"phone": "+14155550123"}
    assert rule["dispatch"]["min_channel_task_interval_seconds"] == 120
    standard = preview(str(FIXTURES / "standard-webhooks-deal-stage-changed.json"), "--source", "generic:standard",
                       tmp_path=tmp_path)
    assert by_name(standard)["stage-linkedin"]["reason"] == "contact.linkedin_url is missing"


def test_preview_human_output_and_errors(tmp_path):
    result = revor_bridge("preview", str(FIXTURES / "zapier-generic.json"), "--source", "generic:zapier",
                          env=cli_env(), cwd=tmp_path)
    assert "+ won-whatsapp: ready" in result.stdout and '"phone": "+14155550123"' in result.stdout
    assert "- demo-booked: no match: source is generic:zapier, rule wants hubspot" in result.stdout
    guessed = revor_bridge("preview", str(FIXTURES / "zapier-generic.json"), env=cli_env(), cwd=tmp_path)
    assert guessed.returncode == 0 and "reading it as generic:zapier, from the file name" in guessed.stderr
    anonymous = tmp_path / "hook.json"  # a generic body with a name that says nothing: the user must say
    anonymous.write_bytes((FIXTURES / "zapier-generic.json").read_bytes())
    unknown = revor_bridge("preview", str(anonymous), env=cli_env(), cwd=tmp_path)
    assert unknown.returncode == 2 and "pass --source" in unknown.stderr
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00\x01not json")
    bad = revor_bridge("preview", str(garbage), env=cli_env(), cwd=tmp_path)
    assert bad.returncode == 2 and "neither JSON nor XML" in bad.stderr and "Traceback" not in bad.stderr


BAD_RULES = """\
version: 1
rules:
  - name: broken
    when: {source: hubspot}
    dispatch: {account: connect_account_x, channel: email, recipient: {address: x}, content: {text: "{{ oops"}}
"""


def test_processes_refuse_to_start_on_an_invalid_rules_file(tmp_path, redis_url):
    rules = tmp_path / "rules.yaml"
    rules.write_text(BAD_RULES)
    env = cli_env(RULES_FILE=str(rules), REDIS_URL=f"{redis_url}/1", PORT=str(free_port()))
    for command in (("web",), ("worker", "--burst"), ("check",), ("preview", str(FIXTURES / "zapier-generic.json"))):
        result = revor_bridge(*command, env=env, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert "rule 'broken' dispatch.content: email needs subject and text or html." in result.stderr
        assert "Traceback" not in result.stderr
    from integration.rules.loader import RulesError
    from integration.web import create_app
    from tests.conftest import bridge_settings

    with pytest.raises(RulesError):
        create_app(bridge_settings(redis_url, rules_file=rules))


def test_check_validates_each_rules_account(tmp_path, redis_url, sandbox):
    rules = tmp_path / "rules.yaml"
    rules.write_text(textwrap.dedent("""\
        version: 1
        accounts: {mail: connect_account_sandbox_email, old: connect_account_sandbox_email_reconnect}
        rules:
          - name: good
            when: {source: hubspot}
            dispatch: {account: mail, channel: email, recipient: {address: x}, content: {subject: s, text: t}}
          - name: wrong-channel
            when: {source: hubspot}
            dispatch: {account: mail, channel: whatsapp, recipient: {phone: x}, content: {text: t}}
          - name: cannot-send
            when: {source: hubspot}
            dispatch: {account: old, channel: email, recipient: {address: x}, content: {subject: s, text: t}}
          - name: unknown
            when: {source: hubspot}
            dispatch: {account: connect_account_ghost, channel: email, recipient: {address: x},
                       content: {subject: s, text: t}}
        """))
    result = revor_bridge("check", env=cli_env(RULES_FILE=str(rules), REDIS_URL=f"{redis_url}/1",
                                              REVOR_BASE_URL=sandbox.api_url), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "rules: ok (4 rules in " + str(rules) + ")" in lines
    assert "rule 'good': account ok" in lines
    assert ("rule 'wrong-channel': account connect_account_sandbox_email is email, the rule sends whatsapp"
            in lines)
    assert any(line.startswith("rule 'cannot-send': account connect_account_sandbox_email_reconnect cannot send")
               for line in lines)
    assert "rule 'unknown': account connect_account_ghost does not exist for this key" in lines


def test_suppress_commands(tmp_path, redis_url, redis_db):
    env = cli_env(REDIS_URL=f"{redis_url}/1")
    added = revor_bridge("suppress", "add", "Alex@Example.com", "+1 415 555 2671", env=env, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == ["suppressed email:alex@example.com", "suppressed phone:+14155552671"]
    assert revor_bridge("suppress", "list", env=env, cwd=tmp_path).stdout.splitlines() == [
        "email:alex@example.com", "phone:+14155552671"]
    assert redis_db.sismember("rb:suppressed", "email:alex@example.com")
    revor_bridge("suppress", "remove", "alex@example.com", env=env, cwd=tmp_path)
    assert revor_bridge("suppress", "list", env=env, cwd=tmp_path).stdout.splitlines() == ["phone:+14155552671"]
    wrong = revor_bridge("suppress", "add", "not-a-recipient", env=env, cwd=tmp_path)
    assert wrong.returncode == 2 and "is not an email address" in wrong.stderr


NO_EMAIL_RULES = """\
version: 1
rules:
  - name: welcome
    when: {source: hubspot, type: deal.stage_changed}
    dispatch:
      account: connect_account_sandbox_email
      channel: email
      recipient: {address: "{{ contact.email }}"}
      content: {subject: "Welcome", text: "Hi {{ contact.firstname }}"}
"""


def test_preview_shows_a_matched_rule_that_cannot_render_as_invalid_with_its_dispatch_id(tmp_path):
    """The contact has no email: the rule matches, its recipient cannot render. The worker records
    this as an `invalid` dispatch; the preview shows the same verdict, reason and id."""
    from integration.rules.build import dispatch_id_for

    rules = tmp_path / "rules.yaml"
    rules.write_text(NO_EMAIL_RULES)
    event = {"source": "hubspot", "event_id": "e-no-email", "type": "deal.stage_changed",
             "object": {"type": "deal", "id": "7"}, "occurred_at": None, "properties": {"dealstage": "closedwon"},
             "previous": None, "account": "1", "contact": {"id": "3", "firstname": "Dana"}}
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    rule = by_name(preview(str(path), "--rules", str(rules), tmp_path=tmp_path))["welcome"]
    assert (rule["matched"], rule["status"]) == (True, "invalid")
    assert rule["reason"] == "dispatch.recipient.address: contact.email has no value"
    assert rule["dispatch_id"] == dispatch_id_for("welcome", "hubspot", "e-no-email", None)
    human = revor_bridge("preview", str(path), "--rules", str(rules), env=cli_env(), cwd=tmp_path)
    assert "+ welcome: invalid: dispatch.recipient.address: contact.email has no value" in human.stdout


MEMORY_RULES = """\
version: 1
rules:
  - name: bomb
    when: {source: generic:zapier}
    dispatch: {account: connect_account_x, channel: whatsapp, recipient: {phone: "{{ contact.phone }}"},
               content: {text: "{{ '%0100000000d' | format(1) }}"}}
  - name: amount
    when: {source: generic:zapier}
    dispatch: {account: connect_account_x, channel: whatsapp, recipient: {phone: "{{ contact.phone }}"},
               content: {text: "Deal of {{ deal.amount | int | tojson }} ({{ deal.amount | int * 100 }} cents)"}}
"""


def test_preview_shows_a_template_that_builds_too_much_as_invalid(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(MEMORY_RULES)
    result = preview(str(FIXTURES / "zapier-generic.json"), "--source", "generic:zapier", tmp_path=tmp_path,
                     RULES_FILE=str(rules))
    rules_by_name = by_name(result)
    assert (rules_by_name["bomb"]["status"], rules_by_name["bomb"]["reason"]) == (
        "invalid", "dispatch.content.text: template builds a string longer than 1000000 characters")
    assert rules_by_name["amount"]["status"] == "ready", rules_by_name["amount"]["reason"]
    assert rules_by_name["amount"]["dispatch"]["content"]["text"] == "Deal of 12500 (1250000 cents)"


UNSET_DESTINATION_RULES = """\
version: 1
rules:
  - name: won
    when: {source: generic:zapier}
    dispatch: {account: connect_account_sandbox_whatsapp, channel: whatsapp, recipient: {phone: "{{ contact.phone }}"},
               content: {text: "Hi"}}
    writeback: [crm]
destinations:
  crm:
    url: "${MY_CRM_URL}"
    secret: "${MY_CRM_SECRET}"
"""


def test_preview_needs_no_destination_settings_but_check_does(tmp_path):
    """Issue 9 item 6c: preview sends nothing, so unset destination variables are one warning line; check (like
    web and worker) still refuses, naming each variable once."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(UNSET_DESTINATION_RULES)
    env = cli_env(RULES_FILE=str(rules))
    shown = revor_bridge("preview", str(FIXTURES / "zapier-generic.json"), "--source", "generic:zapier",
                         env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "+ won: ready" in shown.stdout
    assert shown.stderr.splitlines() == [
        "(warning: ${MY_CRM_URL}, ${MY_CRM_SECRET} not set: destinations use placeholders here (nothing is sent); "
        "web, worker and check need them set)"]
    checked = revor_bridge("check", env=env, cwd=tmp_path)
    assert checked.returncode == 2
    assert checked.stderr.splitlines()[1:] == [
        "  destinations.crm.url: ${MY_CRM_URL} is not set in the environment (line 10)",
        "  destinations.crm.secret: ${MY_CRM_SECRET} is not set in the environment (line 11)"]


def test_a_workflow_event_id_keeps_its_form_across_versions(tmp_path):
    """A workflow action URL without ?flow= keeps the id form `wf--<portal>-...` it always had: a HubSpot
    retry that straddles an upgrade must still be a duplicate (a new id would mean a new dispatch id)."""
    from integration.inbound import hubspot

    body = json.loads((FIXTURES / "hubspot-workflow-webhook-deal.json").read_bytes())
    assert hubspot.parse_workflow(body, {}).event["event_id"] == "wf--24681357-deal-18273645501-1767268795123"
    assert hubspot.parse_workflow(body, {"flow": ""}).event["event_id"].startswith("wf--24681357-")
    assert hubspot.parse_workflow(body, {"flow": "deal-won"}).event["event_id"].startswith("wf-deal-won-24681357-")
    shown = preview(str(FIXTURES / "hubspot-workflow-webhook-deal.json"), tmp_path=tmp_path)
    assert shown["event"]["event_id"] == "wf--24681357-deal-18273645501-1767268795123"


def test_field_errors_read_as_names_and_messages_not_a_python_dict():
    """Found by the attack review: the preview's error showed `{'$.a': [...]}`."""
    from integration.rules.preview import _field_list

    assert _field_list({"$.a": ["missing", "bad"], "b": {"c": ["x"]}}) == " ($.a: missing; bad; b.c: x)"
    assert _field_list(None) == ""
