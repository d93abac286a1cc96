"""Pipedrive webhooks v2: HTTP Basic credentials (no signature exists), `{meta, data, previous}`.

`meta.id` is the event id. A change whose `previous` holds `stage_id` is a stage change. Person
maps to contact and organization to company; `custom_fields` are flattened to their keys.
"""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError

from integration.inbound.errors import malformed, unauthorized
from integration.inbound.normalize import (
    InboundEvent,
    context_map,
    iso_from_ms,
    shared_schema,
    timestamp_field,
    validated,
)
from integration.inbound.signatures import basic_credentials, safe_equal
from schemas.inbound import PipedriveWebhookSchema

OBJECT_TYPES = {"person": "contact", "organization": "company", "user": "owner"}
ACTIONS = {"create": "created", "added": "created", "change": "updated", "updated": "updated",
           "merged": "updated", "delete": "deleted", "deleted": "deleted"}


def check_auth(header: str | None, user: str, password: str) -> None:
    given = basic_credentials(header)
    if given is None:
        raise unauthorized("HTTP Basic credentials missing or malformed")
    # Both compared, always, so timing does not tell which one was wrong.
    user_ok = safe_equal(user, given[0])
    password_ok = safe_equal(password, given[1])
    if not (user_ok and password_ok):
        raise unauthorized("HTTP Basic credentials do not match")


def flatten(record: dict[str, Any] | None) -> dict[str, Any]:
    if not record:
        return {}
    flat = {k: v for k, v in record.items() if k != "custom_fields"}
    custom = record.get("custom_fields")
    if isinstance(custom, dict):
        for key, field in custom.items():
            flat[key] = field.get("value") if isinstance(field, dict) and "value" in field else field
    return flat


def _primary(items: Any) -> Any:
    """The primary (or first) `value` of Pipedrive's `[{value, primary}]` lists, or a plain string."""
    if isinstance(items, str):
        return items
    if isinstance(items, list) and items:
        chosen = next((i for i in items if isinstance(i, dict) and i.get("primary")), items[0])
        return chosen.get("value") if isinstance(chosen, dict) else chosen
    return None


def _ref(value: Any) -> str | None:
    """A related id, given as a number, a string or (older payloads) `{"value": id, ...}`."""
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        return None
    return str(value)


def common_names(object_type: str, props: dict[str, Any]) -> dict[str, Any]:
    if object_type == "deal":
        return {"name": props.get("title"), "stage": props.get("stage_id"), "amount": props.get("value")}
    if object_type == "contact":
        return {"email": _primary(props.get("emails", props.get("email"))),
                "first_name": props.get("first_name"), "last_name": props.get("last_name"),
                "phone": _primary(props.get("phones", props.get("phone")))}
    if object_type == "company":
        return {"name": props.get("name")}
    if object_type == "owner":
        return {"email": props.get("email")}
    return {}


def parse(body: Any) -> InboundEvent:
    if not isinstance(body, dict):
        raise malformed("expected a JSON object with meta, data and previous")
    try:
        payload = shared_schema(PipedriveWebhookSchema).load(body)
    except ValidationError as exc:
        raise malformed("not a Pipedrive webhook v2 body", fields=exc.messages_dict) from None
    meta = payload["meta"]
    entity = meta["entity"]
    object_type = OBJECT_TYPES.get(entity, entity)
    kind = ACTIONS[meta["action"]]
    data, previous = flatten(payload["data"]), flatten(payload["previous"])
    current = data if kind != "deleted" else previous
    object_id = meta.get("entity_id") or current.get("id")
    if object_id is None or isinstance(object_id, bool | dict | list):
        raise malformed("no entity id in meta.entity_id or data.id")
    if kind == "updated" and "stage_id" in previous and previous.get("stage_id") != data.get("stage_id"):
        kind = "stage_changed"
    occurred = timestamp_field(meta.get("timestamp"), "meta", "timestamp")
    event: dict[str, Any] = {
        "source": "pipedrive", "event_id": meta["id"], "type": f"{object_type}.{kind}",
        "object": {"type": object_type, "id": str(object_id)},
        "occurred_at": iso_from_ms(occurred) if occurred else None,
        "properties": current, "previous": previous or None,
        "account": meta.get("company_id"),
    }
    if object_type in ("deal", "contact", "company", "owner"):
        event[object_type] = context_map(object_id, current, common_names(object_type, current))
    for field, context in (("person_id", "contact"), ("org_id", "company")):
        related = _ref(current.get(field)) if object_type == "deal" else None
        if related is not None:
            event[context] = {"id": related}
    extra = {"change_source": meta.get("change_source"), "attempt": meta.get("attempt")}
    return InboundEvent(validated(event), occurred_ms=occurred, property_name=None, extra=extra)
