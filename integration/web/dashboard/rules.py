"""Rules: the loaded rules file, and a preview box that shows every rule's verdict for an event.

The preview is the same dry run as `revor-bridge preview` (integration/rules/preview.py): it sends
nothing and writes nothing to Redis. It only reads: the stored event picked, the suppression list
and the `once_per` keys (never the worker's claim), so what it says matches what the worker would do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flask import current_app, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import BuildError

from integration.inbound import records
from integration.inbound.errors import InboundError
from integration.inbound.store import load_event
from integration.rules.loader import CompiledRule, RuleSet
from integration.rules.preview import PreviewError, UnknownSource, preview, preview_payload
from integration.web.dashboard.blueprint import dashboard, message_page, page, redis_connection

# What the box takes. A webhook body may be 512 KB; a preview is read by a person: a quarter of that.
MAX_PREVIEW_BYTES = 256 * 1024
MAX_EVENT_ID_CHARS = 512
RECENT_EVENTS = 10
SUMMARY_CHARS = 120
BUILT_IN_SOURCES = ("hubspot", "salesforce", "pipedrive")


def _ruleset() -> RuleSet | None:
    return current_app.extensions.get("revor_bridge.rules")


def _sources(ruleset: RuleSet | None) -> list[str]:
    """The sources a user can choose: the built-in ones, and every generic hook the settings or rules name."""
    generic = set(current_app.extensions["revor_bridge.settings"].generic_webhook_secrets)
    for rule in ruleset.rules if ruleset else []:
        generic |= {s.split(":", 1)[1] for s in rule.when.get("source", []) if s.startswith("generic:")}
    return [*BUILT_IN_SOURCES, *(f"generic:{name}" for name in sorted(generic))]


def _cut(text: str | None) -> str:
    if not text:
        return ""
    return text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS - 1] + "…"


def _rule_view(rule: CompiledRule) -> dict[str, Any]:
    spec = rule.dispatch
    when = rule.when
    return {
        "name": rule.name, "enabled": rule.enabled,
        "sources": when.get("source", []), "types": when.get("type", []),
        "match": json.dumps(when.get("match") or {}, ensure_ascii=False, default=str) if when.get("match") else "",
        "if": _cut(rule.if_template.source if rule.if_template else None),
        "channel": spec.channel, "account": spec.account_id,
        "templates": [(f"recipient.{k}", _cut(t.source)) for k, t in spec.recipient.items()]
        + [(f"content.{k}", _cut(t.source)) for k, t in spec.content.items()]
        + [(f"attachment {a['filename']}", "") for a in spec.attachments],
        "interval": spec.interval,
        "destinations": rule.writeback,
        "once_per": _cut(rule.once_per.source if rule.once_per else None),
        "suppress_if": _cut(rule.suppress_if.source if rule.suppress_if else None),
    }


def _recent_events(connection: Any) -> list[dict[str, Any]]:
    """The newest stored events across the status indexes, read-only (the events page trims the
    indexes; a preview page must not write)."""
    with connection.pipeline(transaction=False) as pipe:
        for status in records.LISTABLE:
            pipe.zrevrange(records.STATUS_INDEX + status, 0, RECENT_EVENTS - 1, withscores=True)
        replies = pipe.execute()
    newest = sorted(((score, key.decode()) for reply in replies for key, score in reply), reverse=True)
    found: list[dict[str, Any]] = []
    for _score, key in newest:
        if any(item["key"] == key for item in found):
            continue
        item = records.summary(connection, key)
        if item is not None:
            found.append({**item, "key": key, "url": _event_url(item["source"], item["event_id"])})
        if len(found) >= RECENT_EVENTS:
            break
    return found


def _event_url(source: str, event_id: str) -> str | None:
    """The event's page on the dashboard, when that page exists."""
    try:
        return url_for("dashboard.events_detail", source=source, event_id=event_id)
    except BuildError:
        return None


def _pretty(body: str | None, payload: dict[str, Any] | None) -> str | None:
    """The exact request body (or, when none would be sent, the payload) as indented JSON."""
    if body is not None:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False, sort_keys=True)
    if payload is not None:
        return json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    return None


VERDICTS = {"ready": ("would send", "succeeded"), "skipped": ("skipped", "skipped"),
            "invalid": ("invalid", "invalid")}


def _result_view(result: dict[str, Any], ruleset: RuleSet, hydrated: bool) -> dict[str, Any]:
    event = result["event"]
    rules = []
    by_name = {rule.name: rule for rule in ruleset.rules}
    for rule in result["rules"]:
        label, css = VERDICTS.get(rule["status"] or "", ("no match", "cancelled"))
        rules.append({**rule, "verdict": label, "css": css, "destinations": by_name[rule["name"]].writeback,
                      "shown": _pretty(rule.get("request_body"), rule["dispatch"]),
                      "exact": rule.get("request_body") is not None})
    obj = event.get("object") or {}
    return {"source": event.get("source"), "event_id": event.get("event_id"), "type": event.get("type"),
            "object": f"{obj.get('type', '')} {obj.get('id', '')}".strip(), "rules": rules,
            "unhydrated": bool(event.get("hydrate")) and not hydrated}


def _page(status: int = 200, **context: Any) -> ResponseReturnValue:
    ruleset = _ruleset()
    context.setdefault("event_json", "")
    context.setdefault("source", "")
    context.setdefault("stored_source", "")
    context.setdefault("stored_event_id", "")
    return page("dashboard/rules.html", ruleset=ruleset,
                rules=[_rule_view(r) for r in ruleset.rules] if ruleset else [],
                rules_file=Path(ruleset.path).name if ruleset else None,  # the name only: paths say too much
                destinations=list(ruleset.destinations) if ruleset else [], sources=_sources(ruleset),
                recent=_recent_events(redis_connection()), max_kb=MAX_PREVIEW_BYTES // 1024, **context), status


@dashboard.get("/rules")
def rules() -> ResponseReturnValue:
    return _page()


@dashboard.post("/rules/preview")
def rules_preview() -> ResponseReturnValue:
    """Preview a pasted payload or a stored event. Renders the result (nothing changed: no redirect)."""
    ruleset = _ruleset()
    if ruleset is None:
        return _page(409, error="No rules file is loaded (set RULES_FILE or RULES_YAML): there is nothing to preview.")
    if request.form.get("stored_event_id") is not None:
        return _preview_stored(ruleset)
    text = request.form.get("event_json") or ""
    source = request.form.get("source") or ""
    keep = {"event_json": text, "source": source}
    size = len(text.encode("utf-8", "surrogatepass"))
    if not text.strip():
        return _page(400, error="Paste an event (JSON, or a Salesforce Outbound Message's XML) to preview.", **keep)
    if size > MAX_PREVIEW_BYTES:
        return _page(400, error=f"The event is {size // 1024} KB; the preview takes at most "
                                f"{MAX_PREVIEW_BYTES // 1024} KB.", event_json="", source=source)
    if source and source not in _sources(ruleset):
        return _page(400, error="Choose a source from the list.", **keep)
    try:
        found = preview_payload(ruleset, text.encode("utf-8", "surrogatepass"), source or None,
                                connection=redis_connection())
    except UnknownSource:
        return _page(400, error="Cannot tell which sender this is from: choose its source in the list.", **keep)
    except (PreviewError, InboundError) as error:
        message = error.message if isinstance(error, InboundError) else str(error)
        return _page(400, error=f"This event cannot be read: {message}", **keep)
    read_as = f"Read as {found.read_as[0]} ({found.read_as[1]})." if found.read_as else None
    return _page(results=[_result_view(r, ruleset, False) for r in found.results], read_as=read_as, **keep)


def _preview_stored(ruleset: RuleSet) -> ResponseReturnValue:
    source = (request.form.get("stored_source") or "").strip()
    event_id = (request.form.get("stored_event_id") or "").strip()
    keep = {"stored_source": source, "stored_event_id": event_id}
    if not source or not event_id or len(event_id) > MAX_EVENT_ID_CHARS or len(source) > 80:
        return _page(400, error="Give the stored event's source and event id.", **keep)
    stored = load_event(redis_connection(), source, event_id)
    if stored is None:
        return _page(404, error="No stored event with that source and event id (it may have expired).", **keep)
    event, context = stored["event"], stored.get("context")
    result = preview(ruleset, event, context, connection=redis_connection())
    shown = json.dumps(event, indent=2, ensure_ascii=False)
    return _page(results=[_result_view(result, ruleset, context is not None)], event_json=shown,
                 from_stored=True, **keep)


@dashboard.errorhandler(RequestEntityTooLarge)
def too_large(exc: RequestEntityTooLarge) -> ResponseReturnValue:
    """A form over the app's size limit (a pasted 2 MB event): say so in words, not a JSON error."""
    if request.endpoint == "dashboard.imports_upload":  # a file over the upload limit: said on the import page
        from integration.web.dashboard.imports import too_large_upload

        return too_large_upload()
    return message_page("Too large", f"That form is too large to accept. An event to preview can be at most "
                        f"{MAX_PREVIEW_BYTES // 1024} KB: go back and paste a smaller one.", 413)
