"""Dispatches: the list (filters, search, pages), one dispatch in full, and its Retry button.

The list reads the time-scored indexes of dispatches/state.py (listing.py says how a page stays
bounded); search goes through the lookup buckets (integration/lookup.py) by recipient, event id
or Revor job id, or straight to a dispatch by its id. The detail page shows what Redis holds:
the timeline, the exact request sent to Revor (the stored body, byte for byte, with its
Idempotency-Key), the Revor job as last polled, and per write-back destination what is recorded
of each status message (attempts, last outcome, dead letter). A delivered message is deleted at
its 2xx (writeback/deliver.py), so a delivered one shows as such without attempt details.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import current_app, redirect, request, url_for
from flask.typing import ResponseReturnValue

from integration import lookup
from integration.dispatches import retry as dispatch_retry
from integration.dispatches import state
from integration.inbound.store import event_key
from integration.rules.guards import classify
from integration.web.dashboard import listing
from integration.web.dashboard.blueprint import dashboard, not_found, page, redis_connection
from integration.writeback import destinations as writeback_destinations
from schemas.events import split_event_ref

CHANNELS = ("email", "linkedin", "whatsapp")
MAX_RESULTS = 100  # a search shows at most this many (newest first)
NOTICES = {"retried": ("Retried: a new attempt is pending and goes to Revor within a few seconds.", "ok"),
           "not_retryable": ("Only a failed, rejected or cancelled dispatch can be retried.", "error"),
           "suppressed": ("Not retried: the recipient is on the suppression list. Remove them there first.",
                          "error")}
EVENT_PREFIX = "rb:event:"
REVOR_PATH = "/outreach/dispatches"  # what RevorClient.create_dispatch posts to


def _rules() -> Any:
    return current_app.extensions.get("revor_bridge.rules")


def known_sources() -> list[str]:
    """The built-in sources, the configured generic hooks and the imports (`csv:<name>`) the rules name."""
    settings = current_app.extensions["revor_bridge.settings"]
    ruleset = _rules()
    imports = {source for rule in (ruleset.rules if ruleset else []) for source in rule.when.get("source", [])
               if source.startswith("csv:")}
    return ["hubspot", "salesforce", "pipedrive", *[f"generic:{name}" for name in sorted(
        settings.generic_webhook_secrets or {})], *sorted(imports)]


def source_of(key: str) -> str:
    """An event key's source (`hubspot`, `generic:zapier`, `csv:leads`); the id after it may hold colons."""
    return split_event_ref(key.removeprefix(EVENT_PREFIX))[0]


def _filters() -> dict[str, Any]:
    """The list's filters from the query string; FilterError names the first bad one."""
    args = request.args
    rule = (args.get("rule") or "").strip() or None
    if rule is not None and len(rule) > 200:
        raise listing.FilterError("Rule", "a rule name of at most 200 characters")
    query = listing.search_text(args)
    return {"status": listing.choice("Status", args.get("status"), list(state.RANK)), "rule": rule,
            "channel": listing.choice("Channel", args.get("channel"), CHANNELS),
            "source": listing.choice("Source", args.get("source"), known_sources()), "q": query,
            **listing.window(args)}


def _matches(filters: dict[str, Any], fields: dict[str, Any]) -> bool:
    """Whether a dispatch (its hash fields, or its record) passes the filters not answered by the index."""
    for name in ("status", "rule", "channel"):
        if filters[name] and fields.get(name) != filters[name]:
            return False
    return not filters["source"] or source_of(fields.get("event_key") or "") == filters["source"]


def _row(record: dict[str, Any]) -> dict[str, Any]:
    return {"id": record["id"], "status": record.get("status") or "", "rule": record.get("rule") or "",
            "channel": record.get("channel"), "recipient": lookup.recipient_term(record.get("recipient")) or "",
            "created_at": (record.get("created_at") or "").replace("T", " "),
            "updated_at": listing.iso(record.get("updated_at")), "reason": record.get("reason") or ""}


def _rows(connection: Any, ids: list[str]) -> list[dict[str, Any]]:
    return [_row(record) for record, _ in state.load_many(connection, ids) if record is not None]


def recipient_terms(query: str) -> list[str]:
    """What a recipient search looks for: the query as typed (lowercase when an email), and a
    phone as people write it (`+1 (415) 555-0123`, `0044 20 ...`) in the E.164 form a WhatsApp
    recipient is stored and indexed in (rules/build.py normalizes it with normalize_phone)."""
    terms = [lookup.normalize(query)]
    try:
        kind, _, value = classify(query).partition(":")
    except ValueError:
        return terms
    return terms + [value] if kind == "phone" and value not in terms else terms


def looks_like_local_phone(query: str) -> bool:
    """Digits with spaces, dashes or brackets but no + or 00: a number without its country code."""
    digits = re.sub(r"[\s().\-/]", "", query)
    return digits.isdigit() and 7 <= len(digits) <= 15 and not digits.startswith("00")


def _search(connection: Any, filters: dict[str, Any]) -> list[dict[str, Any]]:
    """A dispatch id, or the recipient, event id or Revor job id of dispatches (checked on each
    record: the lookup may offer a few that only share a hash prefix)."""
    query = filters["q"]
    wanted = recipient_terms(query)
    candidates = [query] if query.startswith("dsp_") else []
    candidates += [ref for ref, _ in lookup.find(connection, lookup.DISPATCHES, [
        *[(lookup.RECIPIENT, term) for term in wanted], (lookup.EVENT_ID, query), (lookup.JOB_ID, query)])]
    rows = []
    for record, _ in state.load_many(connection, list(dict.fromkeys(candidates))[:MAX_RESULTS * 2]):
        if record is None:
            continue
        hit = record["id"] == query or (record.get("crm") or {}).get("event_id") == query or \
            record.get("revor_job_id") == query or lookup.recipient_term(record.get("recipient")) in wanted
        created = float(record.get("updated_at") or 0)
        in_time = (filters["since"] is None or created >= filters["since"]) and \
            (filters["until"] is None or created <= filters["until"])
        if hit and in_time and _matches(filters, record):
            rows.append(_row(record))
    rows.sort(key=lambda row: row["updated_at"], reverse=True)
    return rows[:MAX_RESULTS]


def _index(filters: dict[str, Any]) -> str:
    """The narrowest index the filters allow (a status's, a rule's, or every dispatch's)."""
    if filters["status"]:
        return state.STATUS_INDEX + filters["status"]
    if filters["rule"]:
        return state.RULE_INDEX + filters["rule"]
    return state.ALL_INDEX


def _scan_keep(connection: Any, filters: dict[str, Any]) -> Any:
    """Per batch, one round trip for the short hash fields the filters need; a dispatch whose
    event key is too long for the hash (kept in its document) is loaded whole."""
    names = ["status", "rule", "channel", "event_key"]

    def keep(ids: list[str]) -> list[Any]:
        with connection.pipeline(transaction=False) as pipe:
            for dispatch_id in ids:
                pipe.hmget(state.key_for(dispatch_id), names)
            replies = pipe.execute()
        verdicts: list[Any] = []
        for dispatch_id, values in zip(ids, replies, strict=True):
            fields = {n: v.decode() if v is not None else None for n, v in zip(names, values, strict=True)}
            if fields["status"] is None:
                verdicts.append(None)  # gone: its index entry waits for the sweep
                continue
            if filters["source"] and fields["event_key"] is None:
                fields = state.load(connection, dispatch_id) or {}
            verdicts.append(dispatch_id if _matches(filters, fields) else None)
        return verdicts

    return keep


def _listing(connection: Any, filters: dict[str, Any]) -> dict[str, Any]:
    index = _index(filters)
    # What the index does not answer, checked record by record.
    checked = {"status": None, "rule": filters["rule"] if filters["status"] else None,
               "channel": filters["channel"], "source": filters["source"]}
    if not any(checked.values()) and filters["after"] is None:
        entries, total = listing.page_of(connection, index, filters["since"], filters["until"], filters["page"])
        pages = max(1, -(-total // listing.PAGE_SIZE))
        return {"mode": "pages", "rows": _rows(connection, [m for m, _ in entries]), "total": total,
                "pages": pages, "page": filters["page"], "beyond": filters["page"] > pages}
    scan = listing.scan(connection, [index], filters["since"], filters["until"], filters["after"],
                        _scan_keep(connection, {**filters, **checked}))
    return {"mode": "scan", "rows": _rows(connection, scan.items), "scanned": scan.scanned, "cursor": scan.cursor,
            "limited": scan.limited, "continued": filters["after"] is not None}


def _form_values() -> dict[str, str]:
    return {name: request.args.get(name, "") for name in ("q", "status", "rule", "channel", "source", "since", "until")}


@dashboard.get("/dispatches")
def dispatches() -> ResponseReturnValue:
    connection = redis_connection()
    rules = _rules()
    options = {"statuses": list(state.RANK), "rules": [r.name for r in rules.rules] if rules else [],
               "channels": CHANNELS, "sources": known_sources()}
    values = _form_values()
    try:
        filters = _filters()
    except listing.FilterError as error:
        return page("dashboard/dispatches.html", values=values, options=options, error=error, result=None,
                    notice=f"{error.field}: {error.message}", notice_kind="error", link_args={}), 400
    link_args = {k: v for k, v in values.items() if v}
    if filters["q"]:
        rows = _search(connection, filters)
        result = {"mode": "search", "rows": rows,
                  "local_phone": not rows and looks_like_local_phone(filters["q"])}
    else:
        result = _listing(connection, filters)
    return page("dashboard/dispatches.html", values=values, options=options, error=None, result=result,
                link_args=link_args, max_results=MAX_RESULTS, scan_limit=listing.SCAN_LIMIT,
                by_status=bool(filters["status"]))


def writeback_attempts(connection: Any, record: dict[str, Any], timeline: list[dict[str, Any]],
                       wanted: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Per destination of the dispatch's rule, per state change it wants: what is recorded of
    that status message (one round trip)."""
    dispatch_id = record["id"]
    names = list(record.get("writeback") or [])
    plan = []  # (destination, timeline entry, message id)
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.lrange(state.outbox_key(dispatch_id, name), 0, -1)
            pipe.get(state.outbox_key(dispatch_id, name) + ":not_before")
            for entry in timeline:
                key = state.message_key(dispatch_id, entry["sequence"], name)
                pipe.exists(key)
                pipe.hgetall(key + ":attempts")
                pipe.hgetall(key + ":dead")
                plan.append((name, entry, key.removeprefix("rb:msg:")))
        replies = iter(pipe.execute())
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        outbox = [m.decode().removeprefix("rb:msg:") for m in next(replies)]
        not_before = next(replies)
        found[name] = {"name": name, "configured": name in wanted, "wants": wanted.get(name, []),
                       "waiting": len(outbox), "next_try": listing.iso(not_before.decode()) if not_before else "",
                       "messages": [], "outbox": outbox}
    for name, entry, message_id in plan:
        exists, attempts, dead = next(replies), next(replies), next(replies)
        attempts = {k.decode(): v.decode() for k, v in attempts.items()}
        dead = {k.decode(): v.decode() for k, v in dead.items()}
        destination = found[name]
        if exists:
            outcome = "dead" if dead else ("sending" if attempts.get("sending") == "1" else "waiting")
        elif entry["status"] in destination["wants"]:
            outcome = "delivered"
        else:
            continue  # this destination does not take that status
        destination["messages"].append({
            "id": message_id, "sequence": entry["sequence"], "status": entry["status"], "outcome": outcome,
            "attempts": int(attempts.get("count") or 0), "last": attempts.get("last") or "",
            "last_at": listing.iso(attempts.get("at")), "dead_reason": dead.get("reason") or "",
            "dead_at": listing.iso(dead.get("at"))})
    return list(found.values())


def _pretty(value: Any) -> str:
    if value in (None, "", {}, []):
        return ""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


@dashboard.get("/dispatches/<dispatch_id>")
def dispatches_detail(dispatch_id: str) -> ResponseReturnValue:
    connection = redis_connection()
    [(record, timeline)] = state.load_many(connection, [dispatch_id])
    if record is None:
        not_found(f"Dispatch {dispatch_id}")
    assert record is not None
    rules = _rules()
    crm = record.get("crm") or {}
    event = None
    if crm.get("source") and crm.get("event_id"):
        key = record.get("event_key") or event_key(crm["source"], crm["event_id"])
        event = {"source": crm["source"], "event_id": crm["event_id"], "stored": bool(connection.exists(key))}
    notice, kind = NOTICES.get(request.args.get("notice") or "", (None, None))
    body = record.get("body") or ""
    return page("dashboard/dispatch.html", record=record, timeline=timeline, event=event,
                writeback=writeback_attempts(connection, record, timeline,
                                             rules.destination_statuses() if rules else {}),
                request_body=body, body_bytes=len(body.encode()), revor_path=REVOR_PATH,
                result=_pretty(record.get("result")), error_json=_pretty(record.get("error")),
                recipient=_pretty(record.get("recipient")), crm=crm, retryable=record["status"] in state.RETRYABLE_END,
                iso=listing.iso, has_writeback_page="dashboard.writeback" in current_app.view_functions,
                health={name: writeback_destinations.health(connection, name)
                        for name in (record.get("writeback") or [])},
                notice=notice, notice_kind=kind)


@dashboard.post("/dispatches/<dispatch_id>/retry")
def dispatches_retry(dispatch_id: str) -> ResponseReturnValue:
    """The Retry button: the same step as POST /api/v1/dispatches/<id>/retry."""
    rules = _rules()
    try:
        dispatch_retry.retry(redis_connection(), dispatch_id, rules.destination_statuses() if rules else {})
    except LookupError:
        not_found(f"Dispatch {dispatch_id}")
    except dispatch_retry.NotRetryable as refused:
        notice = "suppressed" if isinstance(refused, dispatch_retry.Suppressed) else "not_retryable"
        return redirect(url_for("dashboard.dispatches_detail", dispatch_id=dispatch_id, notice=notice))
    return redirect(url_for("dashboard.dispatches_detail", dispatch_id=dispatch_id, notice="retried"))
