"""The rules file's CRM destinations: what each kind takes, and what is refused with which words."""

from __future__ import annotations

import pytest

from integration.rules.loader import RulesError, load_rules

RULE = """\
version: 1
rules:
  - name: r
    when: {{source: {source}}}
    dispatch:
      account: connect_account_x
      channel: email
      recipient: {{address: "a@example.com"}}
      content: {{subject: "s", text: "t"}}
    writeback: [d]
destinations:
  d:
{destination}
"""


def load(tmp_path, destination: str, source: str = "hubspot"):
    path = tmp_path / "rules.yaml"
    path.write_text(RULE.format(source=source, destination=destination))
    return load_rules(path)


def refused(tmp_path, destination: str, source: str = "hubspot") -> str:
    with pytest.raises(RulesError) as caught:
        load(tmp_path, destination, source)
    return str(caught.value)


def test_a_crm_destination_compiles_with_its_record_properties_and_activity(tmp_path):
    rules = load(tmp_path, """\
    kind: hubspot
    record: contact
    on: [succeeded]
    properties: {revor_status: "{{ data.status }}", revor_count: "{{ data.sequence }}"}
    activity: {on: [failed]}""")
    crm = rules.crm_destinations["d"]
    assert (crm.kind, crm.record, crm.on, crm.activity_on) == ("hubspot", "contact", ("succeeded",), ("failed",))
    # A message is made for the activity's statuses too, or a note on `failed` would never happen.
    assert rules.destination_statuses() == {"d": ["succeeded", "failed"]}


@pytest.mark.parametrize(("destination", "words"), [
    ("    kind: pipedrive\n    url: http://example.com/\n    properties: {a: b}",
     "destinations.d.url: Not for kind pipedrive"),
    ("    kind: salesforce", "A salesforce destination sets properties"),
    ("    url: http://example.com/\n    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n    properties: {a: b}",
     "destinations.d.properties: Only for kind hubspot, salesforce or pipedrive"),
    ("    kind: zoho\n    properties: {a: b}", "destinations.d.kind: Must be one of: webhook, hubspot"),
    ("    kind: hubspot\n    properties: {\"bad name\": x}", "'bad name': Use the property's internal name"),
    ("    kind: hubspot\n    properties: {\"_x\": x}", "'_x': Use the property's internal name"),
    ("    kind: hubspot\n    properties: {revor_status: {nested: 1}}", "revor_status: expected a template"),
    ("    kind: hubspot\n    properties: {revor_status: \"{{ data.crm.nothing }}\"}",
     "destinations.d.properties.revor_status: data.crm.nothing has no value"),
    ("    kind: hubspot\n    properties: {revor_status: \"{{ data.status\"}", "template error"),
    ("    kind: hubspot\n    record: company\n    properties: {a: b}", "destinations.d.record: Must be one of"),
    ("    kind: hubspot\n    properties: {revor_status: \"{{ data }}\"}",
     "destinations.d.properties.revor_status: gives a mapping; a CRM property takes text"),
    ("    kind: hubspot\n    properties: {revor_status: \"{{ [data.status] }}\"}", "gives a list"),
])
def test_a_wrong_crm_destination_is_refused_naming_the_field(tmp_path, destination, words):
    assert words in refused(tmp_path, destination)


def test_a_rule_cannot_write_one_crms_events_into_another_crm(tmp_path):
    message = refused(tmp_path, "    kind: salesforce\n    properties: {Revor_Status__c: x}", source="hubspot")
    assert "Destination 'd' updates salesforce records, but this rule's events come from hubspot" in message
    # A list import or a generic source may carry that CRM's ids: allowed.
    assert load(tmp_path, "    kind: salesforce\n    properties: {Revor_Status__c: x}", source="csv:leads")


def test_a_pipedrive_key_may_start_with_a_digit_and_a_refused_name_is_said_once(tmp_path):
    rules = load(tmp_path, '    kind: pipedrive\n    properties: {"9f3c0b7e5d1a2c4b6e8f0a1b3c5d7e9f1a2b3c4d": x}',
                 source="pipedrive")
    assert list(rules.crm_destinations["d"].properties.leaves) == ["9f3c0b7e5d1a2c4b6e8f0a1b3c5d7e9f1a2b3c4d"]
    # A field's name where its key belongs loads: check and the dead letter say which key it has.
    assert load(tmp_path, '    kind: pipedrive\n    properties: {"Revor status": x}', source="pipedrive")
    message = refused(tmp_path, '    kind: pipedrive\n    properties: {"a\\tb": x}', source="pipedrive")
    assert "without control characters" in message and "sets properties" not in message


def test_two_destinations_of_one_crm_may_not_set_one_property_of_one_record(tmp_path):
    second = "\n  e:\n    kind: hubspot\n    properties: {revor_status: y, other: z}"
    message = refused(tmp_path, "    kind: hubspot\n    properties: {revor_status: x}" + second)
    assert "destinations.e.properties: revor_status also set by destination 'd' on the same hubspot records" in message
    # Contacts and deals are different records; other property names never meet.
    assert load(tmp_path, "    kind: hubspot\n    record: deal\n    properties: {revor_status: x}"
                + second.replace("kind: hubspot", "kind: hubspot\n    record: contact"))
    assert load(tmp_path, "    kind: hubspot\n    properties: {mine: x}" + second)
