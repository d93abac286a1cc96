"""Does a rule's `when` hold for an event? Every answer comes with the reason, for previews.

Paths are dotted into the template view of the event (`deal.dealstage`, `contact.email`,
`previous.stage_id`, `object.type`, `account`). Values compare as numbers when both sides read
as numbers (CRMs send "12500" as text), else as text, so `deal.amount: 12500` matches "12500".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from integration.rules.templates import RenderError, Template, truthy

_ABSENT = object()
MAX_SHOWN = 80


@dataclass
class Verdict:
    matched: bool
    reason: str


def lookup(view: dict[str, Any], path: str) -> Any:
    current: Any = view
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        else:
            return _ABSENT
    return current


def _number(value: Any) -> int | float | None:
    """The value as a finite number, else None (then it compares as text).

    Integers stay exact `int`s: Python compares an int with a float exactly and never
    overflows, while `float()` of a 4,300-digit CRM number raises OverflowError. Text that only
    reads as infinite or not-a-number ("inf", "nan", "1e400") is not a number.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        for read in (int, float):
            try:
                number = read(text)
            except (ValueError, OverflowError):  # int() refuses more than 4,300 digits with ValueError
                continue
            return number if isinstance(number, int) or math.isfinite(number) else None
    return None


def _text(value: Any, show: Callable[[Any], str] = str) -> str:
    """str(value) (or repr), also for an int too long for it: Python refuses more than 4,300 digits."""
    try:
        return show(value)
    except ValueError:
        return f"<{type(value).__name__} too long to show>"


def _shown(value: Any) -> str:
    """How a value appears in a reason: its repr, cut to a readable length."""
    text = "missing" if value is _ABSENT else _text(value, repr)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def same(left: Any, right: Any) -> bool:
    if left is _ABSENT or right is _ABSENT:
        return False
    a, b = _number(left), _number(right)
    if a is not None and b is not None:
        return a == b
    if isinstance(left, bool) or isinstance(right, bool):
        return _text(left).lower() == _text(right).lower()
    return _text(left) == _text(right)


def _previous_value(view: dict[str, Any], path: str) -> Any:
    """`deal.dealstage` was what before? `previous` holds the primary object's old values."""
    field = path.split(".")[-1]
    previous = view.get("previous") or {}
    return previous.get(field, _ABSENT)


def check(view: dict[str, Any], path: str, condition: Any) -> str | None:
    """None when the condition holds, else why not."""
    value = lookup(view, path)
    shown = _shown(value)
    if isinstance(condition, list):
        return None if any(same(value, c) for c in condition) else f"{path} is {shown}, not any of {condition}"
    if not isinstance(condition, dict):
        return None if same(value, condition) else f"{path} is {shown}, not {condition!r}"
    for op, expected in condition.items():
        if op == "exists":
            present = value is not _ABSENT and value not in (None, "")
            if present != expected:
                return f"{path} is {'present' if present else 'missing'}"
        elif op == "eq" and not same(value, expected):
            return f"{path} is {shown}, not {expected!r}"
        elif op == "ne" and same(value, expected):
            return f"{path} is {expected!r}"
        elif op in ("gt", "gte", "lt", "lte"):
            number = _number(value)
            if number is None:
                return f"{path} is {shown}, not a number"
            holds = {"gt": number > expected, "gte": number >= expected, "lt": number < expected,
                     "lte": number <= expected}[op]
            if not holds:
                return f"{path} is {shown}, not {op} {expected}"
        elif op == "in" and not any(same(value, c) for c in expected):
            return f"{path} is {shown}, not in {expected}"
        elif op == "not_in" and any(same(value, c) for c in expected):
            return f"{path} is {shown}, which is excluded"
        elif op == "changed_to":
            before = _previous_value(view, path)
            if not same(value, expected):
                return f"{path} is {shown}, not {expected!r}"
            if same(before, expected):
                return f"{path} was already {expected!r}"
        elif op == "changed_from":
            before = _previous_value(view, path)
            if not same(before, expected):
                return f"{path} was {'unknown' if before is _ABSENT else _shown(before)}, not {expected!r}"
            if same(value, expected):
                return f"{path} is still {expected!r}"
    return None


def type_matches(event_type: str, patterns: list[str]) -> bool:
    """`when.type`: `deal.stage_changed`, or `*` for either part (`deal.*`, `*.created`). The
    dashboard's Type filter takes the same patterns."""
    obj, _, kind = event_type.partition(".")
    for pattern in patterns:
        p_obj, _, p_kind = pattern.partition(".")
        if p_obj in ("*", obj) and p_kind in ("*", kind):
            return True
    return False


def evaluate(when: dict[str, Any], if_template: Template | None, view: dict[str, Any]) -> Verdict:
    source, event_type = view.get("source", ""), view.get("type", "")
    if source not in when["source"]:
        return Verdict(False, f"source is {source}, rule wants {', '.join(when['source'])}")
    if not type_matches(event_type, when["type"]):
        return Verdict(False, f"type is {event_type}, rule wants {', '.join(when['type'])}")
    for path, condition in when["match"].items():
        reason = check(view, path, condition)
        if reason:
            return Verdict(False, reason)
    if if_template is not None:
        try:
            if not truthy(if_template.render(view), "if"):
                return Verdict(False, f"if is false: {if_template.source}")
        except RenderError as exc:
            return Verdict(False, f"if could not be evaluated: {exc}")
    return Verdict(True, "every condition holds")
