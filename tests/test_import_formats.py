"""Issue 12 items 1 and 2: header maps per CRM export, and rows as events with a stable identity."""

from __future__ import annotations

import pytest

from integration.imports.formats import HeaderError, detect, header_map
from integration.imports.reader import Row, open_table
from integration.imports.rows import RowError, row_event
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "imports"


def events_of(name: str, fmt: str | None = "detect", **kwargs):
    table = open_table(FIXTURES / name)
    hmap = header_map(table.headers, detect(table.headers) if fmt == "detect" else fmt)
    return hmap, [row_event("csv:test", None, row, hmap, **kwargs).event for row in table.rows()]


@pytest.mark.parametrize(("name", "fmt", "object_type", "id_column"), [
    ("hubspot-contacts.csv", "hubspot", "contact", "Record ID"),
    ("hubspot-deals.csv", "hubspot", "deal", "Record ID"),
    ("salesforce-contacts-report.csv", "salesforce", "contact", "Contact ID"),
    ("pipedrive-persons.csv", "pipedrive", "contact", "Person - ID"),
    ("plain-dotted.csv", None, "contact", None),
    ("excel-european.csv", None, "contact", None),
])
def test_formats_are_detected_when_obvious(name, fmt, object_type, id_column):
    table = open_table(FIXTURES / name)
    assert detect(table.headers) == fmt
    hmap = header_map(table.headers, fmt)
    assert (hmap.object_type, hmap.id_column, hmap.format) == (object_type, id_column, fmt or "plain")


def test_a_hubspot_contact_row_reads_like_a_webhook_contact():
    hmap, events = events_of("hubspot-contacts.csv")
    event = events[2]
    assert (event["source"], event["type"], event["event_id"]) == ("csv:test", "contact.imported", "26051")
    assert event["object"] == {"type": "contact", "id": "26051"}
    assert event["contact"]["email"] == "jane.cooper@northwind.example"
    assert event["contact"]["first_name"] == "Jane"
    assert event["contact"]["phone"] == "+44 20 7946 0958"
    assert event["company"] == {"name": "Northwind Traders"}
    assert event["properties"]["Lifecycle Stage"] == "Marketing Qualified Lead"
    assert event["contact"]["Contact owner"] == "Ana Ruiz"  # kept under its own name, not owner.email
    assert event["owner"] is None


def test_a_hubspot_deals_export_makes_deal_events():
    _, events = events_of("hubspot-deals.csv")
    assert events[1]["type"] == "deal.imported"
    assert events[1]["object"] == {"type": "deal", "id": "9871234502"}
    assert {k: events[1]["deal"][k] for k in ("name", "stage", "amount")} == {
        "name": "Contoso renewal", "stage": "Contract Sent", "amount": "8400.50"}


def test_plain_headers_in_dotted_and_zapier_style_map_as_they_are():
    hmap, events = events_of("plain-dotted.csv")
    assert hmap.names == ["contact.email", "contact.first_name", "contact.last_name", "company.name", "deal.name",
                          None, None]
    assert events[0]["contact"]["email"] == "ines@example.org"
    assert events[0]["contact"]["last_name"] == "Moreau"
    assert events[0]["company"]["name"] == "Initech"
    assert events[0]["properties"]["Booth visit"] == "yes"
    assert events[0]["event_id"].startswith("row-")
    assert events[0]["object"] == {"type": "contact", "id": "ines@example.org"}


def test_an_empty_id_is_a_row_error_naming_the_column():
    hmap = header_map(["Record ID", "Email"], "hubspot")
    with pytest.raises(RowError) as raised:
        row_event("csv:test", None, Row(7, {"Record ID": " ", "Email": "a@example.com"}), hmap)
    assert raised.value.reason == "id column Record ID is empty"


def test_an_unknown_id_column_names_the_columns_there_are():
    with pytest.raises(HeaderError) as raised:
        header_map(["Email", "Name"], None, id_column="Record ID")
    assert str(raised.value) == "--id-column 'Record ID': the file has no such column (its columns: 'Email', 'Name')"
    assert header_map(["Email", "record id"], None, id_column="Record ID").id_column == "record id"
