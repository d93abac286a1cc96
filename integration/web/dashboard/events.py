"""Events: the list (filters, search, pages), one event in full, and the Retry button of a failed one.

Events are listed from their outcome indexes (`rb:events:status:<status>`, inbound/records.py),
merged newest first when no status is chosen (listing.py bounds each page). Search finds an event
by its id (each configured source's key is tried: no index needed), or through the lookup buckets
(integration/lookup.py) by its object's id or an email in the event or its hydrated context,
which the worker writes when it records the event's outcome.

The detail page shows the stored delivery (its headers as stored: authentication headers and
signatures are never kept, inbound/store.py), the normalized event, the hydrated context, and
the dispatches the event made with their state, or why it made none.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import current_app, redirect, request, url_for
from flask.typing import ResponseReturnValue

from integration import lookup
from integration.dispatches import state
from integration.inbound import records
from integration.inbound.store import _is_secret_header, event_key, load_event
from integration.rules.matching import type_matches
from integration.web.dashboard import listing
from integration.web.dashboard.blueprint import dashboard, not_found, page, redis_connection
from integration.web.dashboard.dispatches import known_sources, source_of

MAX_RESULTS = 100
# What the Type filter takes: an event type, or a pattern as a rule's `when.type` writes it.
TYPE_PATTERN = re.compile(r"^(?:[a-z][a-z0-9_]*|\*)\.(?:[a-z][a-z0-9_]*|\*)$")
NO_RULES = "no rules loaded"  # in the reason a worker without RULES_FILE records
NOTICES = {"retried": ("Retried: the event is due again and a worker processes it within a few seconds.", "ok"),
           "not_retryable": ("Only a failed event can be retried.", "error")}


def _filters() -> dict[str, Any]:
    args = request.args
    kind = (args.get("type") or "").strip() or None
    if kind is not None and len(kind) > 100:
        raise listing.FilterError("Type", "an event type of at most 100 characters, like deal.stage_changed")
    if kind is not None and not TYPE_PATTERN.match(kind):
        raise listing.FilterError("Type", "expected an event type like deal.stage_changed, or a pattern like "
                                  "deal.* or *.created (as in a rule's when.type)")
    query = listing.search_text(args)
    return {"source": listing.choice("Source", args.get("source"), known_sources()), "type": kind,
            "status": listing.choice("Status", args.get("status"), list(records.LISTABLE)), "q": query,
            **listing.window(args)}


def outcome(status: str, reason: str | None, dispatches: int) -> str:
    """Why an event ended as it did, in the same words in the list and on its page: a processed
    event that made no dispatch had no rule match it (unless no rules were loaded at all)."""
    if status in ("failed", "skipped"):
        return reason or "no reason recorded"
    if status == "processed" and not dispatches and NO_RULES not in (reason or ""):
        return f"no rule matched this event ({reason})" if reason else "no rule matched this event"
    return reason or ""


def _row(key: str, summary: dict[str, Any]) -> dict[str, Any]:
    item = summary.get("object") or {}
    received, processed = listing.iso(summary.get("received_at")), listing.iso(summary.get("processed_at"))
    status, made = summary.get("status") or "", len(summary.get("dispatches") or [])
    return {"source": source_of(key), "event_id": summary.get("event_id") or key.rsplit(":", 1)[-1],
            "type": summary.get("type") or "", "object": f"{item.get('type', '')} {item.get('id', '')}".strip(),
            "status": status, "received_at": received, "processed_at": processed,
            "time": processed or received,  # the list's one time: processed, or received while it waits
            "times": f"received {received}" + (f", processed {processed}" if processed else ""),
            "dispatches": made, "reason": outcome(status, summary.get("reason"), made),
            "attempts": summary.get("attempts") or 0}


def _matches(filters: dict[str, Any], key: str, summary: dict[str, Any] | None) -> bool:
    if summary is None:
        return False
    if filters["source"] and source_of(key) != filters["source"]:
        return False
    if filters["status"] and summary.get("status") != filters["status"]:
        return False
    return not filters["type"] or type_matches(str(summary.get("type") or ""), [filters["type"]])


def _rows(connection: Any, keys: list[str]) -> list[dict[str, Any]]:
    return [_row(key, found) for key, found in zip(keys, records.summaries(connection, keys), strict=True)
            if found is not None]


def _search(connection: Any, filters: dict[str, Any]) -> list[dict[str, Any]]:
    """An event id (tried under each configured source), an object id or an email; each candidate
    is checked against its stored event and context."""
    query = filters["q"]
    wanted = lookup.normalize(query)
    keys = [event_key(source, query) for source in known_sources()]
    keys += [lookup.EVENT_PREFIX + ref for ref, _ in lookup.find(connection, lookup.EVENTS, [
        (lookup.OBJECT_ID, query), (lookup.EMAIL, query)])]
    keys = list(dict.fromkeys(keys))[:MAX_RESULTS * 2]
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, ["event", "context"])
        stored = pipe.execute()
    hits = []
    for key, (event_raw, context_raw) in zip(keys, stored, strict=True):
        if event_raw is None:
            continue
        event = json.loads(event_raw)
        context = json.loads(context_raw) if context_raw else None
        if event.get("event_id") == query or str((event.get("object") or {}).get("id")) == query or \
                wanted in lookup.emails_in(event, context, limit=50):
            hits.append(key)
    summaries = records.summaries(connection, hits)
    rows = []
    for key, found in zip(hits, summaries, strict=True):
        if not _matches(filters, key, found):
            continue
        assert found is not None
        moment = found.get("processed_at") or found.get("received_at") or 0
        if (filters["since"] is None or moment >= filters["since"]) and \
                (filters["until"] is None or moment <= filters["until"]):
            rows.append((moment, _row(key, found)))
    rows.sort(key=lambda item: item[0], reverse=True)
    return [row for _, row in rows[:MAX_RESULTS]]


def _listing(connection: Any, filters: dict[str, Any]) -> dict[str, Any]:
    statuses = [filters["status"]] if filters["status"] else list(records.LISTABLE)
    indexes = [records.STATUS_INDEX + status for status in statuses]
    if len(indexes) == 1 and not filters["source"] and not filters["type"] and filters["after"] is None:
        entries, total = listing.page_of(connection, indexes[0], filters["since"], filters["until"], filters["page"])
        pages = max(1, -(-total // listing.PAGE_SIZE))
        return {"mode": "pages", "rows": _rows(connection, [m for m, _ in entries]), "total": total,
                "pages": pages, "page": filters["page"], "beyond": filters["page"] > pages}

    def keep(keys: list[str]) -> list[Any]:
        if filters["source"]:
            keys_to_load = [k for k in keys if source_of(k) == filters["source"]]
        else:
            keys_to_load = keys
        loaded = dict(zip(keys_to_load, records.summaries(connection, keys_to_load), strict=True))
        return [key if key in loaded and _matches(filters, key, loaded[key]) else None for key in keys]

    scan = listing.scan(connection, indexes, filters["since"], filters["until"], filters["after"], keep)
    return {"mode": "scan", "rows": _rows(connection, scan.items), "scanned": scan.scanned, "cursor": scan.cursor,
            "limited": scan.limited, "continued": filters["after"] is not None}


def _form_values() -> dict[str, str]:
    return {name: request.args.get(name, "") for name in ("q", "source", "type", "status", "since", "until")}


@dashboard.get("/events")
def events() -> ResponseReturnValue:
    connection = redis_connection()
    options = {"sources": known_sources(), "statuses": list(records.LISTABLE)}
    values = _form_values()
    try:
        filters = _filters()
    except listing.FilterError as error:
        return page("dashboard/events.html", values=values, options=options, result=None, link_args={},
                    notice=f"{error.field}: {error.message}", notice_kind="error"), 400
    link_args = {k: v for k, v in values.items() if v}
    result = {"mode": "search", "rows": _search(connection, filters)} if filters["q"] else \
        _listing(connection, filters)
    return page("dashboard/events.html", values=values, options=options, result=result, link_args=link_args,
                max_results=MAX_RESULTS, scan_limit=listing.SCAN_LIMIT)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _body(delivery: dict[str, Any]) -> str:
    """The stored body, pretty-printed when it is JSON (as received otherwise)."""
    text = delivery.get("body") or ""
    if delivery.get("body_encoding") == "utf-8" and text.lstrip()[:1] in ("{", "["):
        try:
            return _pretty(json.loads(text))
        except ValueError:
            pass
    return text


def _why_none(found: dict[str, Any], summary: dict[str, Any]) -> str:
    status = found["status"]
    if status == "received":
        return f"Not processed yet ({listing.counted(summary.get('attempts') or 0, 'attempt')} so far)."
    why = outcome(status, found.get("reason"), len(summary.get("dispatches") or []))
    if status in ("failed", "skipped"):
        return f"It ended {status}: {why}."
    return f"Processed: {why}."


@dashboard.get("/events/<source>/<path:event_id>")
def events_detail(source: str, event_id: str) -> ResponseReturnValue:
    connection = redis_connection()
    found = load_event(connection, source, event_id)
    if found is None:
        not_found(f"Event {event_id} from {source}")
    assert found is not None
    summary = records.summary(connection, event_key(source, event_id)) or {}
    made = []
    for dispatch_id, (record, _) in zip(summary.get("dispatches") or [],
                                        state.load_many(connection, summary.get("dispatches") or []), strict=True):
        made.append({"id": dispatch_id, "exists": record is not None, "status": (record or {}).get("status") or "",
                     "rule": (record or {}).get("rule") or "", "reason": (record or {}).get("reason") or ""})
    delivery = found.get("delivery") or {}
    headers = [(k, v) for k, v in (delivery.get("headers") or {}).items() if not _is_secret_header(k)]
    notice, kind = NOTICES.get(request.args.get("notice") or "", (None, None))
    return page("dashboard/event.html", event=found, summary=summary, made=made, why_none=_why_none(found, summary),
                delivery=delivery, headers=headers, body=_body(delivery), normalized=_pretty(found["event"]),
                sender=_pretty(found["sender"]) if found.get("sender") else "",
                context=_pretty(found["context"]) if found.get("context") is not None else None,
                error=summary.get("error"), iso=listing.iso, source=source, event_id=event_id,
                has_rules_page="dashboard.rules" in current_app.view_functions, notice=notice, notice_kind=kind)


@dashboard.post("/events/<source>/<path:event_id>/retry")
def events_retry(source: str, event_id: str) -> ResponseReturnValue:
    """The Retry button: the same step as POST /api/v1/events/<source>/<id>/retry."""
    try:
        records.retry(redis_connection(), event_key(source, event_id))
    except LookupError:
        not_found(f"Event {event_id} from {source}")
    except records.NotRetryable:
        return redirect(url_for("dashboard.events_detail", source=source, event_id=event_id, notice="not_retryable"))
    return redirect(url_for("dashboard.events_detail", source=source, event_id=event_id, notice="retried"))
