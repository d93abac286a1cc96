"""Issue 12 items 1 and 2: header maps per CRM export, and rows as events with a stable identity."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from integration.imports.formats import FORMATS, HeaderError, detect, header_map, readme_table
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


# ---- property: rows -> events are deterministic; the content id ignores order, whitespace, line ----

header_names = st.text(alphabet=string.ascii_letters + string.digits + " _-", min_size=1, max_size=10).map(
    str.strip).filter(bool)
padding = st.sampled_from(["", " ", "  ", "\t", " \t "])


@settings(max_examples=200, deadline=None)
@given(cells=st.dictionaries(header_names, st.text(max_size=12), min_size=1, max_size=6), data=st.data())
@example(cells={"Email": "a@example.com", "Name": ""}, data=None)
def test_the_content_id_ignores_column_order_whitespace_and_the_line(cells, data):
    headers = list(cells)
    first = row_event("csv:list", None, Row(2, cells), header_map(headers, None))
    again = row_event("csv:list", None, Row(2, dict(cells)), header_map(headers, None))
    assert first.event == again.event  # deterministic: the runner, the dry run and the result CSV agree
    assert first.event["event_id"].startswith("row-")
    if data is None:
        shuffled, padded = headers[::-1], {h: f" {v}\t" for h, v in cells.items()}
    else:
        shuffled = data.draw(st.permutations(headers))
        padded = {h: data.draw(padding) + cells[h] + data.draw(padding) for h in shuffled}
    other = row_event("csv:list", None, Row(9_999, {h: padded[h] for h in shuffled}), header_map(shuffled, None))
    assert other.event["event_id"] == first.event["event_id"]
    assert other.event == first.event
    changed = dict(cells)
    changed[headers[0]] = cells[headers[0]].strip() + "x"
    assert row_event("csv:list", None, Row(2, changed), header_map(headers, None)).event["event_id"] != \
        first.event["event_id"]


def test_the_record_id_is_the_event_id_so_an_overlapping_export_sends_nobody_twice():
    """Issue 12 item 2: the same contact in a later export (other columns, other values) has the same id."""
    hmap = header_map(["Record ID", "Email", "Lifecycle Stage"], "hubspot")
    first = row_event("csv:hs", None, Row(2, {"Record ID": "26051", "Email": "j@x.example",
                                              "Lifecycle Stage": "Lead"}), hmap)
    later_map = header_map(["Email", "Record ID"], "hubspot")
    later = row_event("csv:hs", None, Row(40, {"Email": "j@x.example", "Record ID": " 26051 "}), later_map)
    assert first.key == later.key == "csv:hs|26051"
    by_hash = row_event("csv:hs", None, Row(2, {"Record ID": "26051", "Email": "j@x.example"}), hmap, id_column=None)
    assert by_hash.event["event_id"].startswith("row-")


def test_type_and_object_follow_the_option():
    hmap = header_map(["Record ID", "Deal Name", "Email"], "hubspot")
    assert hmap.object_type == "deal"
    event = row_event("csv:deals", "deal.stage_changed", Row(2, {"Record ID": "7", "Deal Name": "Big",
                                                                 "Email": "a@example.com"}), hmap).event
    assert (event["type"], event["object"]) == ("deal.stage_changed", {"type": "deal", "id": "7"})
    assert event["deal"]["name"] == "Big" and event["contact"] == {"email": "a@example.com"}
    with pytest.raises(RowError) as raised:
        row_event("csv:deals", "deal.sent", Row(2, {"Record ID": "7", "Deal Name": "", "Email": ""}), hmap)
    assert raised.value.reason.startswith("not an event: type: Expected <object>.")
    with pytest.raises(ValueError, match="expected csv:<name>"):
        row_event("csv:Big List", None, Row(2, {"Record ID": "7"}), hmap)


def test_a_value_longer_than_an_id_may_be_is_a_row_error():
    hmap = header_map(["Id", "Email"], "salesforce")
    assert hmap.id_column == "Id"
    with pytest.raises(RowError) as raised:
        row_event("csv:sf", None, Row(3, {"Id": "x" * 201, "Email": ""}), hmap)
    assert raised.value.reason == "id column Id: 201 characters, at most 200"


def test_salesforce_plain_id_does_not_detect_but_report_ids_do():
    assert detect(["Id", "First Name", "Last Name", "Email"]) is None
    assert detect(["Id", "FirstName", "LastName", "Email"]) is None
    assert detect(["Lead ID", "First Name", "Last Name", "Company / Account", "Email"]) == "salesforce"
    assert detect(["Deal - ID", "Deal - Title", "Deal - Value", "Person - Name"]) == "pipedrive"
    assert header_map(["Deal - ID", "Deal - Title", "Person - ID", "Person - Email"], "pipedrive").id_column == \
        "Deal - ID"
    assert detect(["Record ID", "Email"]) is None  # one known column is not "obvious"


def test_the_readme_shows_the_header_maps_generated_from_formats():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### CSV files and header maps"):]
    assert readme_table() in section
    for fmt in FORMATS.values():
        assert f"`--format {fmt.name}`" in section


def test_a_pipedrive_person_gets_the_first_address_and_number_there_is():
    _, events = events_of("pipedrive-persons.csv")
    assert [e["contact"].get("email") for e in events] == ["oliver@acme.example", "emma.brown@mail.example", None]
    assert [e["contact"].get("phone") for e in events] == ["+1 202 555 0101", "+1 202 555 0177", "+1 202 555 0103"]
    assert events[0]["company"] == {"name": "Acme Corp"}
    assert events[1]["contact"]["first_name"] == "Emma"
    assert events[1]["object"] == {"type": "contact", "id": "2"}
