"""Shared pieces of normalisation: common names, flat context maps, timestamps, ids.

Each context map keeps the CRM's own property names exactly as sent and adds the common names
(`deal.name`, `contact.email`, ...) so one rule can serve every CRM. Where a CRM property has
the name of a common name but another value (a HubSpot custom property called `stage`, say),
the common name wins and the CRM's value stays reachable as `crm_<name>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from marshmallow import ValidationError

from integration.inbound.errors import InboundError
from schemas.events import NormalizedEventSchema

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


def iso_from_ms(ms: int | float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ms) % 1000:03d}Z"


def ms_from_any(value: Any) -> int | None:
    """Epoch seconds or milliseconds (number or digits) or ISO-8601 text, as epoch ms."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float) or (isinstance(value, str) and value.strip().isdigit()):
        number = float(value)
        return int(number if number > 10_000_000_000 else number * 1000)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    return None


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


def validated(event: dict[str, Any]) -> dict[str, Any]:
    """Check a parser's output against the normalized schema; a failure is the sender's 400."""
    try:
        return NormalizedEventSchema().load(event)
    except ValidationError as exc:
        raise InboundError(400, "invalid_event", "the payload does not describe a CRM event",
                           fields=exc.messages_dict) from None
