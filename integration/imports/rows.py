"""One CSV row as one normalized event, shaped like a generic webhook's so the same rules apply.

The event id is the row's record id (the id column) when the file has one, else a hash of the
row's content: never the line number, so the same row in another file, or in the same file
re-saved with its columns in another order, has the same id and the store drops it as a
duplicate. Everything here is deterministic: the runner, the dry run and the result CSV all
re-read the file and get the same events.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from integration.imports.formats import CONTEXT_OBJECTS, HeaderMap
from integration.imports.reader import Row
from integration.inbound.errors import InboundError
from integration.inbound.normalize import InboundEvent, context_map, validated

SOURCE = re.compile(r"csv:[a-z0-9_-]{1,64}")
MAX_EVENT_ID = 300
MAX_OBJECT_ID = 200
_FROM_MAP: Any = object()


class RowError(ValueError):
    """A row that cannot be an event: `reason` says which column and what was expected."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def default_type(hmap: HeaderMap) -> str:
    """`contact.imported` for a list of contacts, `deal.imported` for a deals export."""
    return f"{hmap.object_type}.imported"


def content_id(fields: dict[str, str]) -> str:
    """`row-` + sha256 of the row's non-empty cells by column name, names sorted, values stripped."""
    cells = sorted((name.strip(), value.strip()) for name, value in fields.items() if value.strip())
    text = json.dumps(cells, ensure_ascii=False, separators=(",", ":"))
    return "row-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def row_event(source: str, event_type: str | None, row: Row, hmap: HeaderMap, *,
              id_column: str | None = _FROM_MAP) -> InboundEvent:
    """The event of `row`; RowError when the row cannot be one (an empty id, a value too long).

    `event_type` None is `default_type(hmap)`; `id_column` defaults to the map's record-id column
    (pass None for ids from the content). The event's object is the type's (`deal.imported`: a
    deal), its id the id column's value, else the contact's email, else the content hash."""
    if not SOURCE.fullmatch(source):
        raise ValueError(f"source {source!r}: expected csv:<name>, the name of a-z, 0-9, _ and - (at most 64)")
    event_type = event_type or default_type(hmap)
    if id_column is _FROM_MAP:
        id_column = hmap.id_column
    properties = {header: value.strip() for header, value in row.fields.items()}
    if len(properties) != len(hmap.headers):  # a row built by hand, not by the reader
        for header in hmap.headers:
            properties.setdefault(header, "")
    common: dict[str, dict[str, str]] = {name: {} for name in CONTEXT_OBJECTS}
    for header, obj, attr in hmap.mapped:
        value = properties[header]
        if value and attr not in common[obj]:
            common[obj][attr] = value  # the first non-empty column of a name wins
    record_id = None
    if id_column is not None:
        if id_column not in row.fields:
            raise RowError(f"id column {id_column}: no such column")
        record_id = properties[id_column]
        if not record_id:
            raise RowError(f"id column {id_column} is empty")
        if len(record_id) > MAX_OBJECT_ID:
            raise RowError(f"id column {id_column}: {len(record_id)} characters, at most {MAX_OBJECT_ID}")
    hashed = None if record_id else content_id(properties)
    object_type = event_type.split(".", 1)[0]
    own = common.get(object_type, {})
    object_id = record_id or own.get("id") or (own.get("email") if object_type == "contact" else None) or hashed
    assert object_id is not None
    if len(object_id) > MAX_OBJECT_ID:
        raise RowError(f"column {object_type}.id: {len(object_id)} characters, at most {MAX_OBJECT_ID}")
    event: dict[str, Any] = {
        "source": source, "event_id": record_id or hashed, "type": event_type,
        "object": {"type": object_type, "id": object_id},
        "occurred_at": None, "properties": properties, "previous": None, "account": None,
    }
    for name in CONTEXT_OBJECTS:
        names = {attr: value for attr, value in common[name].items() if attr != "id"}
        if name == object_type:
            event[name] = context_map(object_id, properties, names)
        elif names or common[name].get("id"):
            event[name] = context_map(common[name].get("id"), {}, names)
    try:
        return InboundEvent(validated(event), occurred_ms=None, property_name=None)
    except InboundError as exc:
        raise RowError(f"not an event: {_flat(exc.fields)}") from None


def _flat(messages: Any, path: str = "") -> str:
    if isinstance(messages, dict):
        return "; ".join(_flat(value, f"{path}.{key}" if path else str(key)) for key, value in messages.items())
    if isinstance(messages, list):
        return f"{path}: {' '.join(str(m) for m in messages)}"
    return f"{path}: {messages}"
