"""Generic JSON hooks (Zapier, Make, n8n, Salesforce Flow callouts, Svix senders).

Authentication per hook, from `GENERIC_WEBHOOK_SECRET_<NAME>`: a `whsec_` secret means a
Standard Webhooks signature (also under Svix's `svix-*` header names); anything else is a shared
token, accepted as `Authorization: Bearer`, `X-Hook-Token` or `X-Webhook-Token`.

The event id is `webhook-id` when signed, else the field named by
`GENERIC_WEBHOOK_EVENT_ID_FIELD_<NAME>` (default `event_id`), else a hash of the body: a replayed
Zap sends the same body, so it is still caught as a duplicate.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from integration.inbound.errors import InboundError, malformed, unauthorized
from integration.inbound.normalize import InboundEvent, context_map, iso_from_ms, timestamp_field, validated
from integration.inbound.signatures import StandardWebhookVerifier, safe_equal
from schemas.events import CONTEXT_OBJECTS, EVENT_TYPE

TOKEN_HEADERS = ("X-Hook-Token", "X-Webhook-Token")
HOOK_NAME = re.compile(r"^[a-z0-9_-]{1,64}\Z")


def setting_name(hook: str) -> str:
    """`/webhooks/generic/zapier-eu` is configured as GENERIC_WEBHOOK_SECRET_ZAPIER_EU."""
    return hook.lower().replace("-", "_")


def authenticate(secret: str, body: bytes, headers: Any, now_s: float) -> str | None:
    """Check the request; return the signed message id, if the scheme has one."""
    if secret.startswith("whsec_"):
        msg_id = headers.get("webhook-id") or headers.get("svix-id")
        reason = StandardWebhookVerifier(secret).verify(
            body, msg_id,
            headers.get("webhook-timestamp") or headers.get("svix-timestamp"),
            headers.get("webhook-signature") or headers.get("svix-signature"),
            now_s,
        )
        if reason:
            raise unauthorized(f"Standard Webhooks signature: {reason}")
        return msg_id
    authorization = headers.get("Authorization") or ""
    candidates = [authorization[7:].strip()] if authorization[:7].lower() == "bearer " else []
    candidates += [headers.get(name) for name in TOKEN_HEADERS if headers.get(name)]
    if not candidates:
        raise unauthorized("no token: send Authorization: Bearer <token> or X-Hook-Token")
    if not any([safe_equal(secret, candidate) for candidate in candidates]):
        raise unauthorized("token does not match")
    return None


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Zapier's `contact__email` keys (Unflatten: no) as nested objects; nested input is kept."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split("__") if "__" in key.strip("_") else [key]
        target = nested
        for part in parts[:-1]:
            existing = target.get(part)
            if not isinstance(existing, dict):
                existing = target[part] = {} if existing is None else {"value": existing}
            target = existing
        leaf = parts[-1]
        if isinstance(target.get(leaf), dict) and isinstance(value, dict):
            target[leaf].update(value)
        else:
            target[leaf] = value
    return nested


def _field(payload: dict[str, Any], dotted: str) -> Any:
    current: Any = payload
    for part in dotted.split("."):
        if not isinstance(current, dict):
            return None
        current = current.get(part)
    return current


def _object_id(payload: dict[str, Any], object_type: str) -> Any:
    nested = payload.get(object_type)
    for candidate in ((nested or {}).get("id") if isinstance(nested, dict) else None,
                      payload.get(f"{object_type}_id"), payload.get("object_id"), payload.get("id")):
        if isinstance(candidate, int | str) and not isinstance(candidate, bool) and str(candidate) != "":
            return candidate
    return None


def parse(hook: str, body: Any, raw: bytes, signed_id: str | None, id_field: str | None) -> InboundEvent:
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        body = body[0]  # Zapier's "Wrap Request In Array"
    if not isinstance(body, dict):
        raise malformed("expected a JSON object (or an array holding exactly one)")
    envelope_type = body.get("type") if isinstance(body.get("data"), dict) else None
    payload = unflatten(body["data"] if envelope_type else body)
    event_type = envelope_type or payload.get("type") or payload.get("event")
    if not isinstance(event_type, str) or not EVENT_TYPE.regex.match(event_type):
        raise InboundError(400, "invalid_event", "say what happened in `type` or `event`",
                           fields={"type": ["Expected <object>.created|updated|stage_changed|deleted, "
                                            "e.g. deal.stage_changed."]})
    object_type = event_type.split(".", 1)[0]
    object_id = _object_id(payload, object_type)
    if object_id is None:
        raise InboundError(400, "invalid_event", f"no {object_type} id",
                           fields={object_type: [f"Send {object_type}__id, {object_type}_id or id."]})
    field_value = _field(body, id_field or "event_id")
    if signed_id:
        event_id = signed_id
    elif isinstance(field_value, int | str) and not isinstance(field_value, bool) and str(field_value).strip():
        event_id = str(field_value).strip()
    else:
        event_id = "sha256-" + hashlib.sha256(raw).hexdigest()
    occurred = _occurred(body, payload, envelope_type is not None)
    scalars = {k: v for k, v in payload.items() if not isinstance(v, dict)}
    event: dict[str, Any] = {
        "source": f"generic:{hook}", "event_id": event_id[:300], "type": event_type,
        "object": {"type": object_type, "id": str(object_id)},
        "occurred_at": iso_from_ms(occurred) if occurred else None,
        "properties": scalars,
        "previous": payload.get("previous") if isinstance(payload.get("previous"), dict) else None,
        "account": _account(payload),
    }
    for name in CONTEXT_OBJECTS:
        nested = payload.get(name)
        if isinstance(nested, dict):
            flat = {k: v for k, v in nested.items() if not isinstance(v, dict)}
            event[name] = context_map(flat.get("id"), flat, {})
        elif name == object_type:
            event[name] = context_map(object_id, scalars, {})
    return InboundEvent(validated(event), occurred_ms=occurred, property_name=None)


def _occurred(body: dict[str, Any], payload: dict[str, Any], enveloped: bool) -> int | None:
    """The envelope's `timestamp`, else the payload's `occurred_at` or `timestamp`; a value that is
    there but no timestamp is a 400 naming it (a Zap maps the wrong field: say so, do not guess)."""
    prefix = ("data",) if enveloped else ()
    found = timestamp_field(body.get("timestamp"), "timestamp") if enveloped else None
    for name in ("occurred_at", "timestamp"):
        if not found and payload.get(name) not in (None, ""):
            found = timestamp_field(payload.get(name), *prefix, name)
    return found


def _account(payload: dict[str, Any]) -> str | None:
    for key in ("account", "portal_id", "account_id"):
        value = payload.get(key)
        if isinstance(value, int | str) and not isinstance(value, bool):
            return str(value)
    return None
