"""Dry runs: which rules an event matches, why the others do not, and the exact payloads.

Takes what a sender would POST (any fixture), or an already normalized event, and parses it
with the same code the endpoints use, without authentication and without storing anything.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from integration.inbound import generic, hubspot, jsonbody, pipedrive, salesforce
from integration.inbound.errors import InboundError
from integration.inbound.normalize import validated
from integration.rules.build import Plan, plan_event
from integration.rules.guards import ONCE_PREFIX, SUPPRESSION_KEY
from integration.rules.loader import RuleSet

# Automation tools whose hooks usually post to /webhooks/generic/<their name>: a file named after one is theirs.
KNOWN_HOOK_NAMES = ("zapier", "make", "n8n")


class PreviewError(ValueError):
    pass


class UnknownSource(PreviewError):
    """The payload could be from several senders: the user has to say which."""


def _field_list(fields: Any) -> str:
    """marshmallow's messages as a reader wants them: ` (a.b: expected a string; c: missing)`."""
    if not fields:
        return ""
    parts: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for name, inner in value.items():
                walk(f"{prefix}.{name}" if prefix else str(name), inner)
        elif isinstance(value, list | tuple):
            parts.append(f"{prefix}: " + "; ".join(str(m) for m in value) if prefix else "; ".join(map(str, value)))
        else:
            parts.append(f"{prefix}: {value}" if prefix else str(value))

    walk("", fields)
    return " (" + "; ".join(parts) + ")"


def _looks_normalized(body: Any) -> bool:
    return isinstance(body, dict) and {"source", "event_id", "type", "object"} <= set(body)


def events_from_payload(raw: bytes, source: str | None) -> list[dict[str, Any]]:
    """Normalized events from a raw sender payload (or a normalized event), as the endpoint makes them."""
    try:
        if source == "salesforce" or (source is None and raw.lstrip().startswith(b"<")):
            message = salesforce.read_message(raw)
            events, _ = salesforce.parse(raw, (message["organization_id"],))
            out = []
            for item in events:
                if item.track_field:  # a preview has no memory: the stage counts as changed
                    item.event["type"] = f"{item.event['object']['type']}.stage_changed"
                out.append(item.event)
            return out
        try:  # the endpoints' own reader: strict JSON, bounded nesting, no lone surrogates
            body = jsonbody.parse(raw)
        except InboundError as error:
            if error.message.startswith(("the body is not valid JSON", "the body is not UTF-8")):
                raise PreviewError(f"the file is neither JSON nor XML ({error.message})") from None
            raise
        if _looks_normalized(body) and source is None:
            return [validated({k: v for k, v in body.items() if k != "_extra"})]
        if source == "hubspot" or (source is None and (isinstance(body, list) or (
                isinstance(body, dict) and ({"dealId", "vid", "canonical-vid", "hs_object_id"} & set(body))))):
            events, skipped = hubspot.parse(body, {})
            if not events and skipped:
                raise PreviewError(f"no HubSpot event in the file: {skipped[0]['reason']}")
            return [e.event for e in events]
        if source == "pipedrive" or (source is None and isinstance(body, dict) and "meta" in body):
            return [pipedrive.parse(body).event]
        if source and source.startswith("generic:"):
            return [generic.parse(source.split(":", 1)[1], body, raw, None, None).event]
    except InboundError as error:
        raise PreviewError(f"{error.message}{_field_list(error.fields)}") from None
    raise UnknownSource("cannot tell the source: pass --source hubspot|salesforce|pipedrive|generic:NAME")


def guess_generic_source(file_name: str | None, raw: bytes) -> tuple[str, str] | None:
    """(generic:NAME, why) for a generic hook's payload the parser cannot place, or None.

    The Standard Webhooks envelope (`type`, `timestamp`, `data`) is read as `generic:standard`; a file
    whose name starts with a known automation tool (`zapier-won-deal.json`) as that tool's hook.
    """
    first_word = re.split(r"[-_.\s]", (file_name or "").lower(), maxsplit=1)[0]
    if first_word in KNOWN_HOOK_NAMES:
        return f"generic:{first_word}", f"from the file name {file_name!r}"
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past Python's recursion limit
        return None
    if isinstance(body, dict) and {"type", "timestamp", "data"} <= set(body) and isinstance(body["data"], dict):
        return "generic:standard", "from its Standard Webhooks envelope (type, timestamp, data)"
    return None


@dataclass
class PayloadPreview:
    results: list[dict[str, Any]]  # one `preview()` per event in the payload (a HubSpot batch holds several)
    read_as: tuple[str, str] | None = None  # (generic:NAME, why) when no source was given and one was guessed


def preview_payload(ruleset: RuleSet, raw: bytes, source: str | None, file_name: str | None = None,
                    connection: Any = None) -> PayloadPreview:
    """What `revor-bridge preview` and the dashboard's preview box both do with a pasted payload: parse it
    as the endpoint would (guessing a generic hook's source when none is given), then `preview()` each event.
    Raises PreviewError with a message for the user."""
    try:
        return PayloadPreview([preview(ruleset, event, connection=connection)
                               for event in events_from_payload(raw, source)])
    except PreviewError:
        guessed = guess_generic_source(file_name, raw) if source is None else None
        if guessed is None:
            raise
    try:
        events = events_from_payload(raw, guessed[0])
    except PreviewError as again:
        raise PreviewError(f"read as {guessed[0]} ({guessed[1]}): {again}") from None
    return PayloadPreview([preview(ruleset, event, connection=connection) for event in events], guessed)


def preview(ruleset: RuleSet, event: dict[str, Any], context: dict[str, Any] | None = None,
            connection: Any = None) -> dict[str, Any]:
    """Every rule's verdict and payload for one event. Sends nothing and writes nothing.

    With `connection` (the dashboard has Redis at hand) a `ready` rule is also checked against what the
    worker's guards would say, by reading only: the suppression list (SISMEMBER) and whether another
    dispatch holds its `once_per` key (GET, never the worker's SET NX claim). Each rule then also has
    `request_body`: the exact JSON the bridge would POST to Revor (canonical, as stored and resent).
    """
    plans: list[Plan] = plan_event(ruleset, event, context)
    rules = [plan.as_dict() for plan in plans]
    if connection is not None:
        for shown, plan in zip(rules, plans, strict=True):
            shown["request_body"] = plan.body.decode("utf-8") if plan.body is not None else None
            skipped = _guard_reason(connection, plan) if plan.status == "ready" else None
            if skipped:
                shown["status"], shown["reason"] = "skipped", skipped
    return {"event": event, "rules": rules}


def _guard_reason(connection: Any, plan: Plan) -> str | None:
    """Why the worker would skip a ready plan, read-only; the same checks as dispatches/create.py."""
    suppressed = bool(plan.recipient_key and connection.sismember(SUPPRESSION_KEY, plan.recipient_key))
    holder = connection.get(once_key(plan)) if plan.once_per_key and not suppressed else None
    return guard_verdict(plan, suppressed, holder)


def once_key(plan: Plan) -> str:
    """The Redis key holding the dispatch that claimed a ready plan's `once_per` value."""
    return f"{ONCE_PREFIX}{plan.rule}:{plan.once_per_key}"


def guard_verdict(plan: Plan, suppressed: bool, holder: Any) -> str | None:
    """The worker's guards decided from what Redis holds (its SISMEMBER and the once_per holder's GET),
    apart from reading them: the import's dry run reads them for many rows in one pipeline."""
    if suppressed:
        return "recipient is on the suppression list"
    holder = holder.decode() if isinstance(holder, bytes) else holder
    if plan.once_per_key and holder is not None and holder != plan.dispatch_id:
        return f"once_per {plan.once_per_key!r} already used by {holder}"
    return None
