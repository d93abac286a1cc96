"""Header maps: which column of a CRM's export holds which of the event's common names.

A rule written for `contact.email` should work for a HubSpot export, a Salesforce report and a
Pipedrive export alike, as it does for their webhooks. Each built-in format maps the column
names of that CRM's standard export to the common names (integration/inbound/normalize.py
COMMON_NAMES) and names its record-id column (the event id: importing the file again, or an
export that overlaps it, sends nobody twice). Columns named like `contact.email` or
`contact__email` (Zapier's flattened style) map as they are, in every format; every other
column is kept under its own name. Headers match without regard to case or repeated spaces.

The maps are conservative: a column whose content is not what the common name promises (an
owner column holding a person's name, not an address) is left out. The README's table is
generated from FORMATS (`readme_table`) and tests/test_import_formats.py checks it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from integration.inbound.normalize import COMMON_NAMES

PLAIN = "plain"
CONTEXT_OBJECTS = tuple(COMMON_NAMES)
# `contact.email`, `Contact.Email`, `contact__email`: mapped as they are, lowercased.
_DOTTED = re.compile(r"(deal|contact|company|owner)(?:\.|__)([a-z0-9_]{1,64})", re.I)


class HeaderError(ValueError):
    """An option that does not fit the file's header (an unknown format, a missing id column)."""


@dataclass(frozen=True)
class IdColumn:
    """A record-id column: `object_type` None when the columns decide (a HubSpot "Record ID" is a
    deal's in a deals export); `detects` False when the name is too plain to tell the format
    ("Id" is Salesforce's Data Export, and any spreadsheet's)."""

    header: str
    object_type: str | None
    detects: bool = True


@dataclass(frozen=True)
class Format:
    name: str
    crm: str
    title: str
    # Record-id columns, the first present wins.
    id_columns: tuple[IdColumn, ...]
    # (column in the export, common name), in the README's order.
    columns: tuple[tuple[str, str], ...]
    # What the map rests on, said in the README.
    basis: str

    def common_name(self, header: str) -> str | None:
        key = _key(header)
        return next((name for column, name in self.columns if _key(column) == key), None)


@dataclass(frozen=True)
class HeaderMap:
    """For each header (in the file's order) its common name, or None: kept under its own name only."""

    headers: list[str]
    names: list[str | None]
    id_column: str | None
    object_type: str
    format: str
    decided_by: str | None = None  # the header whose common name decided `object_type`, when columns decided it

    @functools.cached_property
    def mapped(self) -> tuple[tuple[str, str, str], ...]:
        """(header, object, attribute) of each mapped column, in the file's order."""
        return tuple((header, *name.split(".", 1)) for header, name in zip(self.headers, self.names, strict=True)
                     if name)  # type: ignore[misc]


FORMATS: dict[str, Format] = {
    "hubspot": Format(
        name="hubspot",
        crm="HubSpot",
        title="HubSpot contacts or deals export",
        id_columns=(IdColumn("Record ID", None),),
        columns=(
            ("Email", "contact.email"),
            ("First Name", "contact.first_name"),
            ("Last Name", "contact.last_name"),
            ("Phone Number", "contact.phone"),
            ("Company Name", "company.name"),
            ("Deal Name", "deal.name"),
            ("Deal Stage", "deal.stage"),
            ("Amount", "deal.amount"),
        ),
        basis="the column labels of an export from a contacts or deals view (Export, CSV); `Contact owner` "
              "and `Deal owner` hold the owner's name, not an address, and keep their own names",
    ),
    "salesforce": Format(
        name="salesforce",
        crm="Salesforce",
        title="Salesforce report (CSV, details only) or Data Export",
        id_columns=(
            IdColumn("Opportunity ID", "deal"),
            IdColumn("Contact ID", "contact"),
            IdColumn("Lead ID", "contact"),
            IdColumn("Id", None, detects=False),
        ),
        columns=(
            ("Email", "contact.email"),
            ("First Name", "contact.first_name"),
            ("FirstName", "contact.first_name"),
            ("Last Name", "contact.last_name"),
            ("LastName", "contact.last_name"),
            ("Phone", "contact.phone"),
            ("Account Name", "company.name"),
            ("Company / Account", "company.name"),
            ("Opportunity Name", "deal.name"),
            ("Stage", "deal.stage"),
            ("StageName", "deal.stage"),
            ("Amount", "deal.amount"),
        ),
        basis="report column labels (contacts, leads and opportunities reports) and, for Data Export "
              "and Data Loader files, the API names; `Id` (Data Export) is the record id only with "
              "`--format salesforce`: too plain a name to recognize the format by",
    ),
    "pipedrive": Format(
        name="pipedrive",
        crm="Pipedrive",
        title="Pipedrive people or deals export",
        id_columns=(
            IdColumn("Deal - ID", "deal"),
            IdColumn("Person - ID", "contact"),
        ),
        columns=(
            ("Person - Email", "contact.email"),
            ("Person - Email - Work", "contact.email"),
            ("Person - Email - Home", "contact.email"),
            ("Person - Email - Other", "contact.email"),
            ("Person - First name", "contact.first_name"),
            ("Person - Last name", "contact.last_name"),
            ("Person - Phone", "contact.phone"),
            ("Person - Phone - Work", "contact.phone"),
            ("Person - Phone - Mobile", "contact.phone"),
            ("Person - Phone - Home", "contact.phone"),
            ("Person - Phone - Other", "contact.phone"),
            ("Person - Organization", "company.name"),
            ("Organization - Name", "company.name"),
            ("Deal - Title", "deal.name"),
            ("Deal - Stage", "deal.stage"),
            ("Deal - Value", "deal.amount"),
        ),
        basis="the `<Item> - <Field>` column names of an export from a list view (a person's address "
              "and number columns carry their label, `Person - Email - Work`, in people exports, and none "
              "in deals exports); of several columns for one name the first non-empty one in this order "
              "wins; `Person - Name` (the full name) and owners (names, not addresses) keep their own names",
    ),
}


def _key(header: str) -> str:
    return " ".join(header.split()).casefold()


def dotted_name(header: str) -> str | None:
    """`contact.email` / `contact__email` as the common name it spells, else None."""
    found = _DOTTED.fullmatch(header.strip())
    return f"{found.group(1)}.{found.group(2)}".lower() if found else None


def detect(headers: Sequence[str]) -> str | None:
    """The format a header plainly comes from: its distinctive record-id column and at least two of
    its other columns; None (the plain format) when no format or more than one fits."""
    keys = {_key(header) for header in headers}
    found = []
    for fmt in FORMATS.values():
        has_id = any(column.detects and _key(column.header) in keys for column in fmt.id_columns)
        mapped = {name for column, name in fmt.columns if _key(column) in keys}
        if has_id and len(mapped) >= 2:
            found.append(fmt.name)
    return found[0] if len(found) == 1 else None


def header_map(headers: Sequence[str], fmt: str | None, *, id_column: str | None = None) -> HeaderMap:
    """Map a file's headers for format `fmt` (None or "plain": only `contact.email`-style headers).

    `id_column` (the --id-column option) names the record-id column, matched exactly or else
    without regard to case; without it, the format's record-id column when the file has one
    (for the plain format, a `<object>.id` column). Raises HeaderError naming what does not fit."""
    name = fmt or PLAIN
    if name != PLAIN and name not in FORMATS:
        raise HeaderError(f"unknown format {fmt!r}: expected one of {', '.join([*FORMATS, PLAIN])}")
    spec = FORMATS.get(name)
    headers = list(headers)
    names = [dotted_name(header) or (spec.common_name(header) if spec else None) for header in headers]
    record: str | None = None
    object_type: str | None = None
    if spec is not None:
        for column in spec.id_columns:
            record = next((h for h in headers if _key(h) == _key(column.header)), None)
            if record is not None:
                object_type = column.object_type
                break
    objects = [n.split(".", 1)[0] for n in names if n]
    decided_by = None
    if object_type is None:
        # A deals export also names the deal's contact and company; a plain list is of contacts
        # unless it says otherwise.
        order = ("deal", "contact", "company") if spec is not None else ("contact", "deal", "company")
        object_type = next((o for o in order if o in objects), "contact")
        decided_by = next((h for h, n in zip(headers, names, strict=True) if n and n.startswith(f"{object_type}.")),
                          None)
    if spec is None:
        record = next((h for h, n in zip(headers, names, strict=True) if n == f"{object_type}.id"), None)
    if id_column is not None:
        record = _find_header(headers, id_column)
    return HeaderMap(headers, names, record, object_type, name, decided_by)


def _find_header(headers: list[str], wanted: str) -> str:
    if wanted in headers:
        return wanted
    match = [h for h in headers if _key(h) == _key(wanted)]
    if len(match) == 1:
        return match[0]
    shown = ", ".join(repr(h) for h in headers[:20]) + (", ..." if len(headers) > 20 else "")
    raise HeaderError(f"--id-column {wanted!r}: the file has no such column (its columns: {shown})")


def readme_table() -> str:
    """The README's table of header maps, generated so that it cannot drift from FORMATS: one row
    per common name, one column per format, then what each format's map rests on."""
    formats = list(FORMATS.values())
    out = ["| Common name | " + " | ".join(f"{f.crm} (`--format {f.name}`)" for f in formats) + " |",
           "|---" * (len(formats) + 1) + "|"]

    def ids(fmt: Format) -> str:
        return ", ".join(f"`{c.header}`" + (f" ({c.object_type})" if c.object_type else "") for c in fmt.id_columns)

    out.append("| record id (the event id) | " + " | ".join(ids(f) for f in formats) + " |")
    for obj in ("contact", "deal", "company", "owner"):
        for name in (f"{obj}.{attr}" for attr in COMMON_NAMES[obj]):
            cells = [", ".join(f"`{column}`" for column, mapped in f.columns if mapped == name) or "-"
                     for f in formats]
            if any(cell != "-" for cell in cells):
                out.append(f"| `{name}` | " + " | ".join(cells) + " |")
    out.append("")
    out.extend(f"- {f.title}: {f.basis}." for f in formats)
    return "\n".join(out) + "\n"
