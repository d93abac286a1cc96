"""Shared pieces of normalisation: common names, flat context maps, timestamps, ids.

Each context map keeps the CRM's own property names exactly as sent and adds the common names
(`deal.name`, `contact.email`, ...) so one rule can serve every CRM. Where a CRM property has
the name of a common name but another value (a HubSpot custom property called `stage`, say),
the common name wins and the CRM's value stays reachable as `crm_<name>`.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from marshmallow import Schema, ValidationError, fields

from integration.inbound.errors import InboundError
from schemas.events import NormalizedEventSchema
from schemas.inbound import MAX_EPOCH_MS  # 9999-12-31T23:59:59.999Z, the last instant ISO-8601 can write

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

COMMON_NAMES = {
    "deal": ("name", "stage", "amount"),
    "contact": ("email", "first_name", "last_name", "phone", "linkedin_url"),
    "company": ("name",),
    "owner": ("email",),
}


def scalar(value: Any) -> Any:
    """CRM values as templates want them: scalars and lists as they are, objects as JSON text."""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def context_map(object_id: Any, properties: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    mapping = {str(k): scalar(v) for k, v in properties.items()}
    for name, value in common.items():
        if value is None or value == "":
            continue
        if name in mapping and mapping[name] != value:
            mapping[f"crm_{name}"] = mapping[name]
        mapping[name] = value
    if object_id is not None:
        if "id" in mapping and str(mapping["id"]) != str(object_id):
            mapping["crm_id"] = mapping["id"]
        mapping["id"] = str(object_id)
    return mapping


_DECIMAL = re.compile(r"[0-9]{1,20}(\.[0-9]{1,9})?")
TIMESTAMP_EXPECTED = ("Expected epoch seconds or milliseconds (ASCII digits) or ISO-8601 text, "
                     "from 1970 to 9999.")


def iso_from_ms(ms: int | float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ms) % 1000:03d}Z"


def epoch_ms(value: Any) -> int | None:
    """Epoch seconds or milliseconds (number or ASCII digits) or ISO-8601 text, as epoch ms.

    None when absent (null or blank); ValueError(TIMESTAMP_EXPECTED) for anything else that is not
    a finite instant from 1970 to 9999: `1e20`, `1e300`, `NaN`, 20-digit numbers and '²' (which
    `str.isdigit()` calls a digit) would otherwise fail much later, deep in datetime, as a 5xx.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number: float | None = None
    if isinstance(value, bool):
        raise ValueError(TIMESTAMP_EXPECTED)
    if isinstance(value, int | float):
        number = value
    elif isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        number = float(value.strip()) if "." in value else int(value.strip())
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(TIMESTAMP_EXPECTED) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        number = (parsed - EPOCH).total_seconds() * 1000
    else:
        raise ValueError(TIMESTAMP_EXPECTED)
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(TIMESTAMP_EXPECTED)
    ms = number if number > 10_000_000_000 else number * 1000
    if not 0 <= ms <= MAX_EPOCH_MS:
        raise ValueError(TIMESTAMP_EXPECTED)
    return int(ms)


def ms_from_any(value: Any) -> int | None:
    """Like `epoch_ms`, but None for anything that is not a usable timestamp (never raises)."""
    try:
        return epoch_ms(value)
    except ValueError:
        return None


def timestamp_field(value: Any, *path: str) -> int | None:
    """`epoch_ms` of a body field; a bad value is the sender's 400 naming the field (`path`)."""
    try:
        return epoch_ms(value)
    except ValueError:
        fields: Any = [f"{TIMESTAMP_EXPECTED} Got {_shown(value)}."]
        for name in reversed(path):
            fields = {name: fields}
        raise InboundError(400, "invalid_event", f"{'.'.join(path)} is not a timestamp", fields=fields) from None


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class InboundEvent:
    """A normalized event plus what the store needs to order and dedupe it."""

    event: dict[str, Any]
    occurred_ms: int | None = None
    # The ordering scope: an event older than the newest one seen for the same object and
    # property is stored as stale. `None` property means the whole record.
    property_name: str | None = None
    # Salesforce sends whole records: the store remembers this field's last value per object
    # and decides whether the event is a stage change (see store.py).
    track_field: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.event['source']}|{self.event['event_id']}"

    @property
    def ordering_key(self) -> str:
        obj = self.event["object"]
        return "|".join([self.event["source"], self.event.get("account") or "", obj["type"], obj["id"],
                         self.property_name or "*"])


SchemaT = TypeVar("SchemaT", bound=Schema)
_SCHEMAS: dict[type, Schema] = {}
_SCHEMAS_LOCK = threading.Lock()


def shared_schema(cls: type[SchemaT]) -> SchemaT:
    """One instance of a schema class per process, built on first use and shared by every thread.

    Building a marshmallow schema (deep copies of its declared fields) cost more than loading a
    webhook with it: about a fifth of a request's time. `load` keeps no state on the instance; the
    nested schemas it creates lazily are created here, under a lock, before anyone shares it.
    """
    found = _SCHEMAS.get(cls)
    if found is None:
        with _SCHEMAS_LOCK:
            found = _SCHEMAS.get(cls)
            if found is None:
                found = _SCHEMAS[cls] = _with_nested_built(cls())
    return found  # type: ignore[return-value]


def _with_nested_built(schema: SchemaT) -> SchemaT:
    for declared in schema.fields.values():
        inner = declared.inner if isinstance(declared, fields.List) else declared
        if isinstance(inner, fields.Nested):
            _with_nested_built(inner.schema)
    return schema


def validated(event: dict[str, Any]) -> dict[str, Any]:
    """Check a parser's output against the normalized schema; a failure is the sender's 400."""
    try:
        return shared_schema(NormalizedEventSchema).load(event)
    except ValidationError as exc:
        raise InboundError(400, "invalid_event", "the payload does not describe a CRM event",
                           fields=exc.messages_dict) from None
