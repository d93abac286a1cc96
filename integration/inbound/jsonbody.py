"""Reading a webhook's JSON body: strict JSON only, with limits a hostile sender cannot crash.

Python's `json` accepts `NaN`, `Infinity` and `1e400` (which becomes infinity), none of which is
JSON (RFC 8259) and each of which breaks timestamp and number handling further on; and it
recurses once per nesting level, so a body nested 10,000 deep raises `RecursionError` instead of
a ValueError. Every one of those is the sender's mistake and gets a 400 saying which, never a
503 that the sender would retry for days.

JSON also lets a string escape half of a UTF-16 surrogate pair (`"\\ud800"`). Python decodes it
into a str that has no UTF-8 form, so the first Redis key or argument built from it (an event id,
a record id, an account) raised UnicodeEncodeError in redis-py: a 503 for a body that can never
succeed. RFC 8259 (section 8.2) leaves such strings' meaning undefined; the reader refuses them
anywhere, keys included, naming where (a HubSpot app batch checks each item itself, so that one
broken item is skipped and the other 99 are stored: see hubspot.parse_app_batch).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from integration.inbound.errors import malformed

# No CRM payload nests anywhere near this deep (HubSpot, Pipedrive and Zapier bodies: < 10).
MAX_DEPTH = 64
# A lone surrogate can only come from a \\u escape (UTF-8 cannot encode one: such bytes already
# fail the decode), so a body without one of these escapes needs no walk.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # in a decoded str, a proper pair is one astral character
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _NotJson(ValueError):
    """A literal Python's parser accepts but JSON does not."""


def _constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotJson(f"the number {text[:40]} is out of range")
    return number


def depth(value: Any) -> int:
    """How deeply arrays and objects nest in `value` (a scalar is 0); iterative, so never recursion-limited."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        current, level = stack.pop()
        if isinstance(current, dict | list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            children = current.values() if isinstance(current, dict) else current
            stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _step(path: str, key: str | int) -> str:
    """`path` one level down, in JSONPath-like form; any odd key is written as ASCII JSON text."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if _NAME.fullmatch(key) else f"{path}[{json.dumps(key)}]"


def lone_surrogate_path(value: Any, root: str = "$") -> str | None:
    """Where the first string (key or value) holding a lone UTF-16 surrogate is, in document order:
    `$.deal.id`, or `a key in $.deal` (the path is ASCII, so it can be logged and answered); None
    when there is none. Iterative, like `depth`."""
    stack: list[tuple[Any, str]] = [(value, root)]
    while stack:
        current, path = stack.pop()
        if isinstance(current, str):
            if _SURROGATE.search(current):
                return path
        elif isinstance(current, dict):
            for key in current:
                if _SURROGATE.search(key):
                    return f"a key in {path}"
            stack.extend((child, _step(path, key)) for key, child in reversed(current.items()))
        elif isinstance(current, list):
            stack.extend((child, _step(path, index)) for index, child in reversed(list(enumerate(current))))
    return None


def lone_surrogate_reason(where: str) -> str:
    return (f"the body holds a lone UTF-16 surrogate (half of a \\uD800-\\uDFFF pair, which no text can "
            f"hold) at {where}")


def parse(raw: bytes, *, items_checked_by_caller: bool = False) -> Any:
    """The body as Python values; raises the sender's 400 (InboundError) with the reason.

    With `items_checked_by_caller`, a top-level array's items are not searched for lone surrogates:
    the caller checks each item with `lone_surrogate_path` (a HubSpot batch skips just that item).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed("the body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_finite_float)
    except RecursionError:
        raise malformed(f"the body nests arrays or objects more than {MAX_DEPTH} levels deep") from None
    except _NotJson as exc:
        raise malformed(f"the body is not valid JSON ({exc})") from None
    except ValueError as exc:  # JSONDecodeError, and integers longer than Python converts (4300 digits)
        raise malformed(f"the body is not valid JSON ({exc})") from None
    # Each level opens a bracket: a body with few of them (every webhook) needs no walk.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and depth(value) > MAX_DEPTH:
        raise malformed(f"the body nests arrays or objects more than {MAX_DEPTH} levels deep")
    if _SURROGATE_ESCAPE.search(text):
        where = None if items_checked_by_caller and isinstance(value, list) else lone_surrogate_path(value)
        if where is not None:
            raise malformed(lone_surrogate_reason(where), fields={where: ["A lone UTF-16 surrogate: send text "
                                                                          "that is valid Unicode."]})
    return value
