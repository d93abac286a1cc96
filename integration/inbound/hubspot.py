"""HubSpot: signatures v3/v2/v1, app-webhook batches and workflow "Send a webhook" bodies.

Authentication (HubSpot's request-validation docs): v3 when its headers are present (HMAC-SHA256 over
method + URI + body + timestamp, 5-minute window both ways, URI decoded by HubSpot's table);
otherwise v2 (workflow actions) or v1 (legacy), which have no timestamp and rely on dedupe.
HubSpot sends v1 next to v3, so stripping the v3 headers would turn any captured app request
into one that never expires: when v3 headers are present v3 alone decides, and v1 counts only
when `HUBSPOT_SIGNATURE_VERSIONS` names it.

The URI HubSpot signed is the public URL it called. Behind a proxy that is not what Flask sees,
so with `HUBSPOT_WEBHOOK_URL` set the configured origin and path are used, plus the query string
exactly as received (workflow actions may add their own).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from typing import Any

from marshmallow import ValidationError

from integration.inbound import jsonbody
from integration.inbound.errors import InboundError, malformed, unauthorized
from integration.inbound.normalize import InboundEvent, context_map, iso_from_ms, ms_from_any, shared_schema, validated
from integration.inbound.signatures import safe_equal, whole_number, within_window
from schemas.inbound import HubSpotAppEventSchema

log = logging.getLogger(__name__)

_DECODE = {"%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$",
           "%27": "'", "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";"}
_DECODE_RE = re.compile("|".join(_DECODE), re.IGNORECASE)

OBJECT_TYPE_IDS = {"0-1": "contact", "0-2": "company", "0-3": "deal", "0-5": "ticket", "0-7": "product",
                   "0-8": "line_item"}
ACTIONS = {"creation": "created", "deletion": "deleted", "privacyDeletion": "deleted",
           "propertyChange": "updated", "merge": "updated", "restore": "updated",
           "associationChange": "updated"}
CLASSIC_OBJECTS = {"contact", "company", "deal", "ticket", "product", "line_item"}
STAGE_PROPERTIES = {"deal": "dealstage"}
HYDRATED = {"deal", "contact", "company"}
# HubSpot sends at most 100 events per request; a larger array did not come from HubSpot.
MAX_BATCH = 100
DEFAULT_VERSIONS = ("v3", "v2")


# ---- signatures -------------------------------------------------------------------------


def hs_uri(url: str) -> str:
    """Apply HubSpot's v3 decode table (and only it), in one pass, either case of hex digit."""
    return _DECODE_RE.sub(lambda m: _DECODE[m.group(0).upper()], url)


def signing_url(configured: str | None, received_url: str, raw_query: str) -> str:
    if not configured:
        return received_url
    base = configured.split("?", 1)[0]
    return f"{base}?{raw_query}" if raw_query else configured


def v3_signature(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    message = method.upper().encode() + hs_uri(uri).encode("utf-8") + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def v2_signature(secret: str, method: str, uri: str, body: bytes) -> str:
    return hashlib.sha256(secret.encode() + method.upper().encode() + uri.encode("utf-8") + body).hexdigest()


def v1_signature(secret: str, body: bytes) -> str:
    return hashlib.sha256(secret.encode() + body).hexdigest()


def verify(secret: str, method: str, uri: str, body: bytes, headers: Any, now_ms: int,
           versions: tuple[str, ...] = DEFAULT_VERSIONS) -> str:
    """The signature version that verified; raises a 401 InboundError with the reason otherwise.

    `versions` are the accepted ones (HUBSPOT_SIGNATURE_VERSIONS). When v3 is accepted and either
    v3 header is present, v3 alone decides: a failing v3 never falls back to v2 or v1.
    """
    v3 = headers.get("X-HubSpot-Signature-v3")
    timestamp = headers.get("X-HubSpot-Request-Timestamp")
    if "v3" in versions and (v3 is not None or timestamp is not None):
        return _verify_v3(secret, method, uri, body, v3, timestamp, now_ms)
    signature = headers.get("X-HubSpot-Signature")
    if not signature:
        raise unauthorized("no HubSpot signature (X-HubSpot-Signature-v3 or X-HubSpot-Signature)")
    version = (headers.get("X-HubSpot-Signature-Version") or "v1").lower()
    if version not in ("v1", "v2"):
        raise unauthorized("X-HubSpot-Signature-Version must be v1 or v2 (or send v3)")
    if version not in versions:
        raise unauthorized(f"X-HubSpot-Signature {version} is not accepted (HUBSPOT_SIGNATURE_VERSIONS allows "
                           f"{', '.join(versions)}): it has no timestamp, so an old request would pass")
    if version == "v2":
        expected = v2_signature(secret, method, uri, body)
    else:
        expected = v1_signature(secret, body)
    if not safe_equal(expected, signature.lower()):
        raise unauthorized(f"X-HubSpot-Signature ({version}) does not match")
    return version


def _verify_v3(secret: str, method: str, uri: str, body: bytes, signature: str | None, timestamp: str | None,
               now_ms: int) -> str:
    if signature is None:
        raise unauthorized("X-HubSpot-Signature-v3 missing (X-HubSpot-Request-Timestamp is present)")
    sent_ms = whole_number(timestamp)
    if sent_ms is None:
        raise unauthorized("X-HubSpot-Request-Timestamp missing or not epoch milliseconds (digits 0-9)")
    if not within_window(sent_ms / 1000, now_ms / 1000):
        raise unauthorized("X-HubSpot-Request-Timestamp outside the 5-minute window")
    if not safe_equal(v3_signature(secret, method, uri, body, str(timestamp)), signature):
        raise unauthorized("X-HubSpot-Signature-v3 does not match")
    return "v3"


# ---- common names -----------------------------------------------------------------------


def common_names(object_type: str, props: dict[str, Any]) -> dict[str, Any]:
    if object_type == "deal":
        return {"name": props.get("dealname"), "stage": props.get("dealstage"), "amount": props.get("amount")}
    if object_type == "contact":
        return {"email": props.get("email"), "first_name": props.get("firstname"),
                "last_name": props.get("lastname"), "phone": props.get("phone") or props.get("mobilephone"),
                "linkedin_url": props.get("hs_linkedin_url") or props.get("linkedin_url")}
    if object_type == "company":
        return {"name": props.get("name")}
    if object_type == "owner":
        return {"email": props.get("email")}
    return {}


def context_for(object_type: str, object_id: Any, props: dict[str, Any]) -> dict[str, Any]:
    return context_map(object_id, props, common_names(object_type, props))


# ---- app webhooks -----------------------------------------------------------------------


def parse_app_batch(batch: list[Any]) -> tuple[list[InboundEvent], list[dict[str, Any]]]:
    """Events we understand, and the ones we skip with why (answered 200 all the same).

    Nothing about one item may fail the batch: HubSpot retries every 4xx and 5xx for a day, and
    the same item would fail again each time.
    """
    events: list[InboundEvent] = []
    skipped: list[dict[str, Any]] = []
    for index, item in enumerate(batch):
        # Checked here, not by the reader for the whole body: its ids become Redis keys, which
        # cannot hold a lone surrogate, and one such item must not fail the other 99.
        where = jsonbody.lone_surrogate_path(item, f"$[{index}]")
        if where is not None:
            skipped.append({"index": index, "reason": jsonbody.lone_surrogate_reason(where)})
            continue
        try:
            data = shared_schema(HubSpotAppEventSchema).load(item if isinstance(item, dict) else {"_": item})
        except ValidationError as exc:
            skipped.append({"index": index, "reason": "invalid event", "fields": exc.messages_dict})
            continue
        try:
            event = _app_event(data)
        except InboundError as error:
            skipped.append({"index": index, "reason": error.message, "fields": error.fields})
            continue
        except (ValueError, ArithmeticError) as exc:
            skipped.append({"index": index, "reason": f"unreadable event ({type(exc).__name__})"})
            continue
        if event is None:
            skipped.append({"index": index, "reason": f"subscription type {data['subscriptionType']} not handled"})
            continue
        events.append(event)
    return events, skipped


def _app_event(data: dict[str, Any]) -> InboundEvent | None:
    subscription = data["subscriptionType"]
    prefix, _, action = subscription.partition(".")
    if prefix == "object":
        type_id = data.get("objectTypeId") or ""
        object_type = OBJECT_TYPE_IDS.get(type_id) or "custom_" + re.sub(r"[^a-z0-9]", "_", type_id.lower())
    elif prefix.lower() in CLASSIC_OBJECTS:
        object_type = prefix.lower()
    else:
        return None  # conversation.*, privacy and other hub events carry no CRM record
    if action not in ACTIONS or not re.match(r"^[a-z][a-z0-9_]*$", object_type or ""):
        return None
    kind = ACTIONS[action]
    prop = data.get("propertyName") if action == "propertyChange" else None
    properties: dict[str, Any] = {}
    if prop:
        properties[prop] = data.get("propertyValue")
        if STAGE_PROPERTIES.get(object_type) == prop:
            kind = "stage_changed"
    object_id = data["objectId"]
    occurred = data["occurredAt"]
    event: dict[str, Any] = {
        "source": "hubspot",
        "event_id": "-".join(str(p) for p in (data["portalId"], data["subscriptionId"], data["eventId"],
                                               object_id, occurred)),
        "type": f"{object_type}.{kind}",
        "object": {"type": object_type, "id": object_id},
        "occurred_at": iso_from_ms(occurred),
        "properties": properties,
        "previous": None,
        "account": data["portalId"],
        "hydrate": object_type in HYDRATED and kind != "deleted",
    }
    if object_type in ("deal", "contact", "company"):
        event[object_type] = context_for(object_type, object_id, properties)
    extra = {k: data[k] for k in ("changeSource", "sourceId", "attemptNumber", "changeFlag") if k in data}
    return InboundEvent(validated(event), occurred_ms=occurred, property_name=prop, extra=extra)


# ---- workflow "Send a webhook" ----------------------------------------------------------


def _epoch_ms(value: Any, where: str) -> int | None:
    """A workflow body's timestamp as epoch ms, None when absent; a 400 naming `where` when unreadable.

    Workflow actions do not retry a 4xx, and a value like `1e300` or `²` never becomes readable,
    so saying which field is wrong is the useful answer.
    """
    if value is None or value == "":
        return None
    readable = not (isinstance(value, str) and not value.isascii())
    ms = ms_from_any(value) if readable else None  # None unless an instant from 1970 to 9999; never raises
    if ms is None:
        raise malformed(f"{where}: expected epoch seconds or milliseconds, or ISO-8601, from 1970 to 9999")
    return ms


def _values(properties: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """Legacy form `{name: {value, timestamp}}` (or flat values) → (values, timestamps)."""
    values: dict[str, Any] = {}
    stamps: dict[str, int] = {}
    if not isinstance(properties, dict):
        raise malformed("properties must be an object")
    for name, prop in properties.items():
        if isinstance(prop, dict):
            values[name] = prop.get("value")
            stamp = _epoch_ms(prop.get("timestamp"), f"properties.{name}.timestamp")
            if stamp is not None:
                stamps[name] = stamp
        else:
            values[name] = prop
    return values, stamps


def parse_workflow(body: dict[str, Any], query: dict[str, str]) -> InboundEvent:
    """A workflow action body: the legacy deal or contact form, or a customised flat body."""
    portal = body.get("portalId", body.get("portal-id"))
    if portal is not None and (isinstance(portal, bool) or not isinstance(portal, int | str)):
        raise malformed("portalId must be a number or a string")
    if "dealId" in body:
        object_type, object_id = "deal", body.get("dealId")
        values, stamps = _values(body.get("properties", {}))
    elif "vid" in body or "canonical-vid" in body:
        object_type, object_id = "contact", body.get("canonical-vid", body.get("vid"))
        values, stamps = _values(body.get("properties", {}))
    elif "companyId" in body:
        object_type, object_id = "company", body.get("companyId")
        values, stamps = _values(body.get("properties", {}))
    elif "hs_object_id" in body:
        values = {k: v for k, v in body.items() if not isinstance(v, dict | list)}
        stamps = {}
        object_id = body["hs_object_id"]
        object_type = str(body.get("object_type") or query.get("object") or "")
        if not object_type:
            raise malformed("say which object the record is: add object_type (deal, contact, company) to the body")
    else:
        raise malformed("not a HubSpot workflow body: expected dealId, vid, companyId or hs_object_id")
    if not isinstance(object_id, int | str) or isinstance(object_id, bool) or str(object_id) == "":
        raise malformed("the record id must be a number or a string")
    latest = max(stamps, key=lambda name: stamps[name]) if stamps else None
    occurred = stamps.get(latest) if latest else _epoch_ms(body.get("occurred_at"), "occurred_at")
    kind = "updated"
    if latest and STAGE_PROPERTIES.get(object_type) == latest:
        kind = "stage_changed"
    wanted = query.get("type") or body.get("event_type")
    event_type = str(wanted) if wanted else f"{object_type}.{kind}"
    # The id's form never changes between versions (an empty flow stays `wf--...`): a HubSpot retry
    # that straddles an upgrade must still be recognised as a duplicate, or it would dispatch again.
    event_id = body.get("event_id") or "-".join(
        str(p) for p in ("wf", query.get("flow", ""), portal, object_type, object_id, occurred or "")
    )
    associations = body.get("associations") if isinstance(body.get("associations"), dict) else {}
    contact_ids = [str(v) for v in associations.get("associatedVids") or [] if isinstance(v, int | str)]
    company_ids = [str(v) for v in associations.get("associatedCompanyIds") or [] if isinstance(v, int | str)]
    event: dict[str, Any] = {
        "source": "hubspot", "event_id": str(event_id), "type": event_type,
        "object": {"type": object_type, "id": object_id},
        "occurred_at": iso_from_ms(occurred) if occurred else None,
        "properties": values, "previous": None,
        "account": portal if portal is not None else None,
        "hydrate": bool(contact_ids or company_ids),
    }
    if object_type in ("deal", "contact", "company"):
        event[object_type] = context_for(object_type, object_id, values)
    if contact_ids and object_type == "deal":
        event["contact"] = {"id": contact_ids[0]}
    if company_ids:
        event["company"] = {"id": company_ids[0]}
    event = _stringify_ids(event)
    return InboundEvent(validated(event), occurred_ms=occurred, property_name=None,
                        extra={"associated_contact_ids": contact_ids, "associated_company_ids": company_ids})


def _stringify_ids(event: dict[str, Any]) -> dict[str, Any]:
    event["object"]["id"] = str(event["object"]["id"])
    if event.get("account") is not None:
        event["account"] = str(event["account"])
    return event


def read(raw: bytes) -> Any:
    """The body as JSON values (jsonbody.parse), leaving a batch's lone surrogates to `parse`."""
    return jsonbody.parse(raw, items_checked_by_caller=True)


def parse(body: Any, query: dict[str, str]) -> tuple[list[InboundEvent], list[dict[str, Any]]]:
    """An app batch (JSON array) or a workflow body (JSON object), as `read` returns it."""
    if isinstance(body, list):
        if len(body) > MAX_BATCH:
            raise InboundError(413, "batch_too_large",
                               f"a HubSpot batch holds at most {MAX_BATCH} events; this one has {len(body)}")
        return parse_app_batch(body)
    if isinstance(body, dict):
        where = jsonbody.lone_surrogate_path(body)
        if where is not None:  # `read` refuses this already; callers that read the body otherwise (preview)
            raise malformed(jsonbody.lone_surrogate_reason(where))
        try:
            return [parse_workflow(body, query)], []
        except InboundError:
            raise
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise malformed(f"unreadable workflow body ({type(exc).__name__})") from None
    raise malformed("expected a JSON array (app webhooks) or object (workflow action)")
