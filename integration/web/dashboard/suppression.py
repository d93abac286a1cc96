"""Suppression list: the people never contacted (emails, phones, LinkedIn profiles), as rules/guards.py keeps it.

Values are read by the same `classify` as `revor-bridge suppress add`, so `Dana@Example.com` and
`+1 (415) 555-0100` land on the spelling the worker checks. An addition is all or nothing: when one
value is not understood, the form comes back with each such value and why, and nothing is added.
"""

from __future__ import annotations

import math
import re
from typing import Any

from flask import redirect, request, url_for
from flask.typing import ResponseReturnValue

from integration.rules.guards import classify, suppress, suppressed, unsuppress_keys
from integration.web.dashboard.blueprint import dashboard, page, redis_connection
from integration.web.dashboard.listing import FilterError, parse_page

PAGE_SIZE = 50
MAX_VALUES = 1000
MAX_VALUE_CHARS = 320  # the longest email address; LinkedIn profile URLs are far shorter
MAX_QUERY_CHARS = 200
SEPARATORS = re.compile(r"[\r\n,;]+")
KINDS = {"email": "Email", "phone": "Phone", "linkedin": "LinkedIn"}

NOTICES = {
    "added": ("Added to the suppression list: nobody on it is contacted.", "ok"),
    "removed": ("Removed from the suppression list.", "ok"),
    "gone": ("That entry was not on the list (removed already?).", "warn"),
}


def _values(text: str) -> list[str]:
    """One value per line (commas and semicolons also separate); blanks dropped, repeats once."""
    seen: dict[str, None] = {}
    for part in SEPARATORS.split(text):
        if part.strip():
            seen.setdefault(part.strip(), None)
    return list(seen)


def check(values: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """The recipient key of each value, and per value that is not understood, why."""
    keys, problems = [], []
    for value in values:
        if len(value) > MAX_VALUE_CHARS:
            problems.append({"value": value[:60] + "…", "reason": f"longer than {MAX_VALUE_CHARS} characters"})
            continue
        try:
            keys.append(classify(value))
        except ValueError:
            problems.append({"value": value, "reason": "not an email address, an E.164 phone number "
                                                       "(+ and country code) or a LinkedIn profile URL"})
    return keys, problems


def _entry(key: str) -> dict[str, str]:
    kind, _, value = key.partition(":")
    return {"key": key, "kind": KINDS.get(kind, kind), "value": value}


def _page(status: int = 200, **context: Any) -> ResponseReturnValue:
    query = (request.args.get("q") or "").strip()[:MAX_QUERY_CHARS]
    error = None
    try:
        number = parse_page(request.args.get("page"))
    except FilterError as exc:
        error, number = f"{exc}.", 1
    entries = suppressed(redis_connection())
    total = len(entries)
    if query:
        needle = query.lower()
        entries = [key for key in entries if needle in key.lower()]
    pages = max(1, math.ceil(len(entries) / PAGE_SIZE))
    shown = [_entry(key) for key in entries[(number - 1) * PAGE_SIZE:number * PAGE_SIZE]]
    text, kind = NOTICES.get(request.args.get("notice") or "", (None, None))
    notice = {"notice": text, "notice_kind": kind} if text else {}
    context.setdefault("values", "")
    return page("dashboard/suppression.html", entries=shown, total=total, found=len(entries), query=query,
                page_number=number, pages=pages, filter_error=error, max_values=MAX_VALUES,
                **notice, **context), status


@dashboard.get("/suppression")
def suppression() -> ResponseReturnValue:
    return _page()


@dashboard.post("/suppression/add")
def suppression_add() -> ResponseReturnValue:
    text = request.form.get("values") or ""
    values = _values(text)
    if not values:
        return _page(400, values=text, add_error="Enter at least one email address, phone number or LinkedIn URL.")
    if len(values) > MAX_VALUES:
        return _page(400, values=text, add_error=f"{len(values)} values: add at most {MAX_VALUES} at a time.")
    keys, problems = check(values)
    if problems:
        return _page(400, values=text, problems=problems,
                     add_error="Nothing was added: correct or remove the values below, then add again.")
    suppress(redis_connection(), values)
    return redirect(url_for("dashboard.suppression", notice="added"))


@dashboard.post("/suppression/remove")
def suppression_remove() -> ResponseReturnValue:
    key = (request.form.get("key") or "").strip()
    removed = unsuppress_keys(redis_connection(), [key]) if key else 0
    query = (request.form.get("q") or "").strip()[:MAX_QUERY_CHARS]
    return redirect(url_for("dashboard.suppression", q=query or None, notice="removed" if removed else "gone"))
