"""Dry runs: which rules an event matches, why the others do not, and the exact payloads.

Takes what a sender would POST (any fixture), or an already normalized event, and parses it
with the same code the endpoints use, without authentication and without storing anything.
"""

from __future__ import annotations

import json
from typing import Any

from integration.inbound import generic, hubspot, pipedrive, salesforce
from integration.inbound.errors import InboundError
from integration.inbound.normalize import validated
from integration.rules.build import Plan, plan_event
from integration.rules.loader import RuleSet


class PreviewError(ValueError):
    pass


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
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise PreviewError(f"the file is neither JSON nor XML ({exc})") from None
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
        detail = f" {error.fields}" if error.fields else ""
        raise PreviewError(f"{error.message}{detail}") from None
    raise PreviewError("cannot tell the source: pass --source hubspot|salesforce|pipedrive|generic:NAME")


def preview(ruleset: RuleSet, event: dict[str, Any], context: dict[str, Any] | None = None) -> dict[str, Any]:
    plans: list[Plan] = plan_event(ruleset, event, context)
    return {"event": event, "rules": [plan.as_dict() for plan in plans]}
