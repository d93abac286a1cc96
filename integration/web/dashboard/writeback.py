"""Write-back: each destination's health, its dead letters, replay, and enabling a disabled destination.

The actions are the ones `/api/v1` and `revor-bridge deliveries` use (writeback/destinations.py:
`replay`, `enable`), so a replay from here keeps the message's webhook-id like any other.
A destination's URL is shown as scheme, host and port only: its user, password, path and query
can each hold the receiver's secret (a Zapier catch hook's path is one). A CRM destination (kind
hubspot, salesforce or pipedrive) has no URL: it shows which record and which properties it writes,
and a message's page shows the write it makes instead of a webhook body.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, redirect, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.routing import BuildError

from integration.rules.loader import RuleSet
from integration.rules.templates import RenderError
from integration.web.dashboard.blueprint import dashboard, not_found, page, redis_connection
from integration.web.dashboard.listing import FilterError, parse_page
from integration.web.dashboard.listing import iso as when
from integration.writeback import destinations
from integration.writeback.body import render_body
from integration.writeback.crm.config import CrmDestination, NotWritable, plan
from schemas.rules import STATES

PAGE_SIZE = 25
MERGED_PAGES = 200

KIND_NAMES = {"webhook": "webhook", "hubspot": "HubSpot", "salesforce": "Salesforce", "pipedrive": "Pipedrive"}
RECORD_TEXT = {"event": "the event's record", "contact": "the associated contact", "deal": "the associated deal"}

NOTICES = {
    "replayed": ("Queued again: it is delivered within seconds, with its webhook-id unchanged.", "ok"),
    "enabled": ("Destination enabled and its circuit closed. Replay its dead letters below.", "ok"),
    "replay_disabled": ("That destination is disabled: enable it first, then replay.", "error"),
    "replay_gone": ("That message is not a dead letter any more (replayed already, or expired).", "error"),
}


def _ruleset() -> RuleSet | None:
    return current_app.extensions.get("revor_bridge.rules")


def _names() -> list[str]:
    ruleset = _ruleset()
    return list(ruleset.destinations) if ruleset else []


def shown_url(url: str) -> str:
    """`https://hooks.example.com/…`: scheme, host and port; the rest hidden (it may be the secret)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    more = (parts.path not in ("", "/")) or bool(parts.query)
    return f"{parts.scheme}://{host}{port}/" + ("…" if more else "")


def dispatch_url(dispatch_id: str) -> str | None:
    """The dispatch's page on the dashboard, when that page exists."""
    try:
        return url_for("dashboard.dispatches_detail", dispatch_id=dispatch_id)
    except BuildError:
        return None


def _notice() -> dict[str, str]:
    text, kind = NOTICES.get(request.args.get("notice") or "", (None, None))
    return {"notice": text, "notice_kind": kind} if text else {}


def _destination_view(connection: Any, name: str, config: dict[str, Any], now: float) -> dict[str, Any]:
    health = destinations.health(connection, name)
    open_until = health["open_until"]
    on = "on every status" if set(config["on"]) >= set(STATES) else "on " + ", ".join(config["on"])
    kind = config.get("kind") or "webhook"
    activity = config.get("activity") or {}
    return {**health, "name": name, "kind": kind, "kind_text": KIND_NAMES.get(kind, kind),
            "url": shown_url(config["url"]) if kind == "webhook" and config.get("url") else "",
            "record_text": RECORD_TEXT.get(config.get("record") or "event", ""),
            "properties": list(config.get("properties") or {}),
            "activity_on": list(activity.get("on") or []),
            "on_text": on, "custom_body": config.get("body") is not None,
            "open_until_text": when(open_until) if health["circuit"] == "open" else "",
            "open_for": max(0, math.ceil((open_until or 0) - now)),
            "last_success_text": when(health["last_success_at"])}


@dashboard.get("/writeback")
def writeback() -> ResponseReturnValue:
    connection = redis_connection()
    ruleset = _ruleset()
    configured = ruleset.destinations if ruleset else {}
    names = list(configured)
    now = time.time()
    chosen = request.args.get("destination") or ""
    error = None
    if chosen and chosen not in names:
        error, chosen = "Destination: choose one from the list.", ""
    try:
        number = parse_page(request.args.get("page"))
    except FilterError as exc:
        error, number = f"{exc}.", 1
    if not chosen and len(names) > 1 and number > MERGED_PAGES:
        # Merging destinations reads every page before this one from each: bounded, one destination is not.
        error, number = f"Page: with all destinations, up to {MERGED_PAGES}; choose a destination to go further.", 1
    items, total = destinations.dead_letter_page(connection, [chosen] if chosen else names, number, PAGE_SIZE)
    for item in items:
        item["dead_at_text"] = when(item["dead_at"])
        item["dispatch_url"] = dispatch_url(item["dispatch_id"]) if not item.get("missing") else None
    pages = max(1, math.ceil(total / PAGE_SIZE))
    return page("dashboard/writeback.html",
                destinations=[_destination_view(connection, n, c, now) for n, c in configured.items()],
                names=names, chosen=chosen, items=items, total=total, page_number=number, pages=pages,
                filter_error=error, has_rules=ruleset is not None, failures_to_open=destinations.FAILURES_TO_OPEN,
                **_notice())


@dashboard.get("/writeback/messages/<message_id>")
def writeback_message(message_id: str) -> ResponseReturnValue:
    connection = redis_connection()
    item = destinations.summary(connection, message_id)
    if item.get("missing"):
        not_found("Message")
    ruleset = _ruleset()
    configured = ruleset.destinations if ruleset else {}
    crm = ruleset.crm_destinations.get(item["destination"]) if ruleset else None
    body_text, body_error, pretty, write = None, None, None, None
    if crm is not None:
        write, body_error = _crm_write(connection, crm, message_id)
    else:
        try:
            sent = render_body(ruleset.destination_bodies.get(item["destination"]) if ruleset else None, item["body"])
            body_text = sent.decode("ascii")
            pretty = json.dumps(json.loads(sent), indent=2, ensure_ascii=False)
        except RenderError as exc:
            body_error = str(exc)
    dead_at = connection.zscore(destinations.dead_key(item["destination"]), message_id)
    return page("dashboard/writeback_message.html", item=item, exact=body_text, pretty=pretty,
                body_error=body_error, known=item["destination"] in configured, crm=crm, write=write,
                kind_text=KIND_NAMES.get(crm.kind, crm.kind) if crm else "",
                dead_at_text=when(dead_at), last_attempt_text=when(item["last_attempt_at"]),
                dispatch_url=dispatch_url(item["dispatch_id"]), **_notice())


def _crm_write(connection: Any, destination: CrmDestination,
               message_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """What a CRM destination writes for this message (record, properties, activity), or why it cannot."""
    raw = connection.get(f"rb:msg:{message_id}")
    if raw is None:
        return None, "the message expired"
    try:
        write = plan(destination, json.loads(raw))
    except NotWritable as exc:
        return None, str(exc)
    activity = write.activity
    return {"record": f"{write.sobject or write.object} {write.object_id}",
            "properties": json.dumps(write.properties, indent=2, ensure_ascii=False) if write.properties else "",
            "activity": {"subject": activity.subject, "body": activity.body} if activity else None}, None


def _back(notice: str) -> ResponseReturnValue:
    """Post/redirect/get to the list, keeping its destination filter (one of the known names only)."""
    chosen = request.form.get("destination") or ""
    return redirect(url_for("dashboard.writeback", destination=chosen if chosen in _names() else None,
                            notice=notice))


@dashboard.post("/writeback/messages/<message_id>/replay")
def writeback_replay(message_id: str) -> ResponseReturnValue:
    try:
        destinations.replay(redis_connection(), message_id)
    except LookupError:
        return _back("replay_gone")
    except PermissionError:
        return _back("replay_disabled")
    return _back("replayed")


@dashboard.post("/writeback/destinations/<name>/enable")
def writeback_enable(name: str) -> ResponseReturnValue:
    if name not in _names():
        not_found("Destination")
    destinations.enable(redis_connection(), name)
    return _back("enabled")
