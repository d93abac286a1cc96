"""Issue 12 item 1 and 6: a CSV file read as a stream, whatever saved it; bad rows and not-CSV files.

The fixtures in tests/fixtures/imports are what the tools save: CRM exports, Excel's "Unicode
text" (UTF-16, tabs), a European Excel's CSV (Windows-1252, `;`), UTF-8 with a BOM, quoted cells
holding line breaks and quotes, and files that are not CSV at all.
"""

from __future__ import annotations

import pytest

from integration.imports.reader import BadRow, NotCsv, Row, iter_rows, open_table
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "imports"


def rows_of(name: str, **kwargs) -> list[Row | BadRow]:
    return list(iter_rows(FIXTURES / name, **kwargs))


@pytest.mark.parametrize(("name", "encoding", "delimiter", "first"), [
    ("hubspot-contacts.csv", "utf-8", ",", {"Record ID": "51", "Email": "emailmaria@hubspot.com"}),
    ("salesforce-contacts-report.csv", "utf-8", ",", {"Contact ID": "0035g00000A1bC2AAJ", "Title": "SVP, Procurement"}),
    ("pipedrive-persons.csv", "utf-8", ",", {"Person - ID": "1", "Person - Email": "oliver@acme.example"}),
    ("excel-unicode-text.txt", "utf-16", "\t", {"First Name": "Zoë", "Last Name": "Åström", "City": "Malmö"}),
    ("excel-european.csv", "cp1252", ";", {"Vorname": "Jürgen", "Firma": "Müller & Söhne GmbH",
                                           "Umsatz": "1.234,50 €"}),
    ("utf8-bom.csv", "utf-8-sig", ",", {"Email": "anna@example.com", "Company": "Ünited"}),
])
def test_encodings_and_delimiters_are_sniffed(name, encoding, delimiter, first):
    table = open_table(FIXTURES / name)
    assert (table.encoding, table.delimiter) == (encoding, delimiter)
    assert not table.headers[0].startswith("\ufeff")
    rows = list(table.rows())
    assert all(isinstance(row, Row) for row in rows)
    assert rows[0].line == 2
    assert first.items() <= rows[0].fields.items()


def test_quoted_cells_with_line_breaks_and_quotes_start_on_their_own_line():
    rows = rows_of("quoted-multiline.csv")
    assert [(row.line, row.fields["id"]) for row in rows] == [(2, "1"), (4, "2"), (5, "3"), (8, "4")]
    assert rows[0].fields["name"] == "Smith, Anna"
    assert rows[0].fields["note"] == "first line\nsecond line"
    assert rows[1].fields["name"] == 'Bob "the builder" Jones'
    assert rows[2].fields["note"] == "three\r\nphysical\r\nlines"


def test_bad_rows_are_reported_with_their_line_and_the_rest_goes_on():
    rows = rows_of("bad-rows.csv")
    assert [(type(row).__name__, row.line) for row in rows] == [
        ("Row", 2), ("BadRow", 3), ("Row", 4), ("BadRow", 5), ("Row", 6), ("Row", 8), ("BadRow", 10)]
    assert rows[1].reason == "5 cells where the header has 3 columns"
    assert "quote" in rows[3].reason
    assert rows[5].fields["First Name"] == "Fay\nFaye"
    assert rows[6].reason == "a quoted cell opened on line 10 is not closed before the end of the file"


def test_skip_to_line_continues_after_a_checkpoint():
    assert [row.line for row in rows_of("quoted-multiline.csv", skip_to_line=4)] == [5, 8]
    assert [row.line for row in rows_of("quoted-multiline.csv", skip_to_line=3)] == [4, 5, 8]


@pytest.mark.parametrize(("name", "reason"), [
    ("contacts.xlsx", "contacts.xlsx is not a CSV file: it is a ZIP archive (an Excel .xlsx or Numbers file is one): "
                      "save the sheet as CSV and import that"),
    ("logo.png", "logo.png is not a CSV file: it is a PNG image"),
    ("contacts.json", "contacts.json is not a CSV file: it is JSON (it starts with `[`)"),
    ("empty.csv", "empty.csv is not a CSV file: it is empty"),
])
def test_a_file_that_is_not_csv_gets_one_clear_line(name, reason):
    with pytest.raises(NotCsv) as raised:
        open_table(FIXTURES / name)
    assert str(raised.value) == reason
    assert "\n" not in str(raised.value)
