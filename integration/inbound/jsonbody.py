"""Reading a webhook's JSON body: strict JSON only, with limits a hostile sender cannot crash.

Python's `json` accepts `NaN`, `Infinity` and `1e400` (which becomes infinity), none of which is
JSON (RFC 8259) and each of which breaks timestamp and number handling further on; and it
recurses once per nesting level, so a body nested 10,000 deep raises `RecursionError` instead of
a ValueError. Every one of those is the sender's mistake and gets a 400 saying which, never a
503 that the sender would retry for days.
"""

from __future__ import annotations

import json
import math
from typing import Any

from integration.inbound.errors import malformed

# No CRM payload nests anywhere near this deep (HubSpot, Pipedrive and Zapier bodies: < 10).
MAX_DEPTH = 64


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


def parse(raw: bytes) -> Any:
    """The body as Python values; raises the sender's 400 (InboundError) with the reason."""
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
    if depth(value) > MAX_DEPTH:
        raise malformed(f"the body nests arrays or objects more than {MAX_DEPTH} levels deep")
    return value
