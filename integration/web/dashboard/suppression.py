"""Suppression list: the people never contacted (emails, phones, LinkedIn profiles), as rules/guards.py keeps it.

Values are read by the same `classify` as `revor-bridge suppress add`, so `Dana@Example.com` and
`+1 (415) 555-0100` land on the spelling the worker checks. An addition is all or nothing: when one
value is not understood, the form comes back with each such value and why, and nothing is added.

Every view is bounded, however long the list: it reads the list's sorted mirror (guards.py) a page
at a time with ZRANGEBYLEX from a cursor (the last entry shown: "Next"; the first: "Previous"),
counts with ZLEXCOUNT, and a search is a prefix search on the stored spelling of each kind, so
`ari` finds `ari.chen@example.com`, `+1415` the numbers starting so, `dana-lee` the profile
`linkedin.com/in/dana-lee`. A list stored before the mirror existed gets it at the first view.
"""

from __future__ import annotations

import re
from typing import Any

from flask import redirect, request, url_for
from flask.typing import ResponseReturnValue

from integration.rules.guards import (
    SUPPRESSION_KEY,
    classify,
    ensure_sorted,
    normalize_phone,
    sorted_count,
    sorted_page,
    suppress,
    unsuppress_keys,
)
from integration.web.dashboard.blueprint import dashboard, page, redis_connection

PAGE_SIZE = 50
MAX_VALUES = 1000
MAX_VALUE_CHARS = 320  # the longest email address; LinkedIn profile URLs are far shorter
MAX_QUERY_CHARS = 200
MAX_CURSOR_CHARS = MAX_VALUE_CHARS + 40  # a recipient key: its kind, then the value
PROFILE_URL = "https://www.linkedin.com/in/"
PHONE_DIGITS = re.compile(r"^\+?[0-9]+$")
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


def search_prefixes(query: str) -> list[str]:
    """The recipient-key prefixes a search stands for ([""]: everything).

    People type a value without its kind, as they know it: the start of an email address, of a
    phone number (from its country code, + optional, spaces and dashes allowed), of a LinkedIn
    profile URL or just the profile's name. Each kind is searched where its stored spelling
    would start. A query that names its kind (`email:ari`) is searched as given.
    """
    text = query.strip().lower()
    if not text:
        return [""]
    kind, _, rest = text.partition(":")
    if kind in KINDS and rest:
        return [f"phone:{normalize_phone(rest)}" if kind == "phone" else text]
    prefixes = [f"email:{text}", f"linkedin:{text}"]
    phone = normalize_phone(text)
    if PHONE_DIGITS.match(phone):
        prefixes.append("phone:" + (phone if phone.startswith("+") else "+" + phone))
    bare = text.removeprefix("https://").removeprefix("http://").removeprefix("www.")
    if bare.startswith("linkedin.com/"):
        prefixes.append("linkedin:https://www." + bare)
    elif "/" not in bare and "@" not in bare:
        prefixes.append("linkedin:" + PROFILE_URL + bare)
    return prefixes


def _cursor(name: str) -> str | None:
    value = request.args.get(name)
    return value if value and len(value) <= MAX_CURSOR_CHARS else None


def _page(status: int = 200, **context: Any) -> ResponseReturnValue:
    query = (request.args.get("q") or "").strip()[:MAX_QUERY_CHARS]
    after, before = _cursor("after"), _cursor("before")
    connection = redis_connection()
    ensure_sorted(connection)  # once: a list stored before the mirror existed
    prefixes = search_prefixes(query)
    keys, _ = sorted_page(connection, prefixes, after=after, before=None if after else before, size=PAGE_SIZE)
    if before and not after and len(keys) < PAGE_SIZE:  # reached the start going back: the first page
        keys, _ = sorted_page(connection, prefixes, size=PAGE_SIZE)
    found = sorted_count(connection, prefixes)
    start = sorted_count(connection, prefixes, before=keys[0]) if keys else 0
    # The entry before this page: a Remove comes back to this page (after it), wherever it was reached from.
    preceding = sorted_page(connection, prefixes, before=keys[0], size=1)[0] if start else []
    text, kind = NOTICES.get(request.args.get("notice") or "", (None, None))
    notice = {"notice": text, "notice_kind": kind} if text else {}
    context.setdefault("values", "")
    return page("dashboard/suppression.html", entries=[_entry(key) for key in keys],
                total=int(connection.scard(SUPPRESSION_KEY)), found=found, query=query, first=start + 1,
                last=start + len(keys), previous=keys[0] if start > 0 else None,
                next=keys[-1] if keys and start + len(keys) < found else None,
                cursor=preceding[0] if preceding else None, max_values=MAX_VALUES, **notice, **context), status


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
    after = (request.form.get("after") or "")[:MAX_CURSOR_CHARS]  # back to the page it was on
    return redirect(url_for("dashboard.suppression", q=query or None, after=after or None,
                            notice="removed" if removed else "gone"))
