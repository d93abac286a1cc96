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

from marshmallow import RAISE, Schema, ValidationError, fields
from marshmallow import missing as marshmallow_missing

from integration.inbound.errors import InboundError
from schemas.events import NormalizedEventSchema, StringKeyedDict
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


_MISSING = object()
# Per field of the normalized schema, in its order: (name, kind, required, allow_none, default,
# validators, nested specs); None when the schema has something the plain check does not know.
_Spec = tuple[str, str, bool, bool, Any, tuple[Any, ...], tuple[Any, ...]]
_PLAIN: dict[type, tuple[_Spec, ...] | None] = {}


def _plain_specs(schema: Schema) -> tuple[_Spec, ...] | None:
    """What `_plain_load` checks for `schema`'s fields: strings with their validators, string-keyed
    dicts, booleans and nested schemas of these, nothing else (no hooks, data keys, unknown=RAISE)."""
    if any(schema._hooks.values()) or schema.unknown != RAISE or schema.many:  # noqa: SLF001 - read only
        return None
    specs: list[_Spec] = []
    for name, declared in schema.load_fields.items():
        nested: tuple[Any, ...] = ()
        if declared.data_key not in (None, name) or declared.attribute not in (None, name):
            return None
        if type(declared) is fields.String:
            kind = "str"
        elif type(declared) is StringKeyedDict:
            kind = "dict"
        elif type(declared) is fields.Boolean:
            kind = "bool"
        elif type(declared) is fields.Nested and not declared.many:
            inner = _plain_specs(declared.schema)
            if inner is None:
                return None
            kind, nested = "nested", inner
        else:
            return None
        default = declared.load_default
        if callable(default):
            return None
        specs.append((name, kind, declared.required, declared.allow_none, default, tuple(declared.validators), nested))
    return tuple(specs)


def _plain_load(specs: tuple[_Spec, ...], data: Any) -> dict[str, Any] | None:
    """What `schema.load(data)` returns, computed without marshmallow's machinery when `data` is
    plainly valid (the case of every parsed event); None when anything is off, so that marshmallow
    decides and words the error. tests/test_inbound_validation.py checks both agree."""
    if type(data) is not dict or not data.keys() <= {spec[0] for spec in specs}:
        return None
    loaded: dict[str, Any] = {}
    for name, kind, required, allow_none, default, validators, nested in specs:
        value = data.get(name, _MISSING)
        if value is _MISSING:
            if required or default is marshmallow_missing:
                return None
            loaded[name] = default
            continue
        if value is None:
            if not allow_none:
                return None
            loaded[name] = None
            continue
        if kind == "str":
            if type(value) is not str:
                return None
            try:
                for check in validators:
                    check(value)
            except ValidationError:
                return None
        elif kind == "dict":
            if type(value) is not dict or validators or not all(type(key) is str for key in value):
                return None
            value = dict(value)
        elif kind == "bool":
            if type(value) is not bool or validators:
                return None
        else:
            value = _plain_load(nested, value)
            if value is None or validators:
                return None
        loaded[name] = value
    return loaded


def validated(event: dict[str, Any]) -> dict[str, Any]:
    """Check a parser's output against the normalized schema; a failure is the sender's 400.

    Loading with marshmallow was a sixth of the web's time per webhook; an event that is plainly
    valid is checked in plain Python (`_plain_load`), with the same result, and anything else goes
    through marshmallow, which words the error."""
    schema = shared_schema(NormalizedEventSchema)
    if NormalizedEventSchema not in _PLAIN:
        _PLAIN[NormalizedEventSchema] = _plain_specs(schema)
    specs = _PLAIN[NormalizedEventSchema]
    if specs is not None and (loaded := _plain_load(specs, event)) is not None:
        return loaded
    try:
        return schema.load(event)
    except ValidationError as exc:
        raise InboundError(400, "invalid_event", "the payload does not describe a CRM event",
                           fields=exc.messages_dict) from None
