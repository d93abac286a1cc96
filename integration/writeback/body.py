"""The body of a status message: the default (README, "Write-back"), or the destination's own `body` mapping.

A `body` lets one bridge feed a HubSpot workflow trigger, a Zapier catch hook or a Salesforce
Apex REST endpoint in the shape each expects. It is a mapping (nested mappings and lists
allowed) whose string leaves are templates rendered in the same sandbox as rule templates; they
see `type`, `timestamp` and `data` (the default body's fields). The bridge renders each leaf on
its own and JSON-encodes the result itself, so a CRM value such as `x", "dealstage": "closedwon`
is one string value and can never add a key or change the structure.

- A leaf that is exactly one `{{ expression }}` keeps its value's JSON type: `"{{ data.sequence }}"`
  is the number 4, `"{{ data.recipient }}"` the recipient object, `"{{ data.reason }}"` null when
  there is none. A string value stays a string, whatever it contains (it is never parsed).
- Any other string leaf (text around the expression, several expressions) renders to a string.
- Numbers, booleans and null in the mapping are sent as they are.

The rules loader renders every body once against a sample message and refuses the file if a
leaf fails.
"""

from __future__ import annotations

import json
import math
from typing import Any

from jinja2 import Undefined, UndefinedError

from integration.rules.templates import Record, RenderError, Template

SAMPLE = {
    "type": "dispatch.succeeded", "timestamp": "2026-01-01T12:00:08.000Z",
    "data": {"dispatch_id": "dsp_sample", "sequence": 4, "status": "succeeded", "previous_status": "running",
             "rule": "sample-rule", "channel": "email", "revor_job_id": "job_sample",
             "crm": {"source": "hubspot", "account": "24681357", "object_type": "deal", "object_id": "18273645501",
                     "event_id": "evt_sample"},
             "recipient": {"address": "alex@example.com"}, "scheduled_at": "2026-01-01T12:00:00.000Z",
             "finished_at": "2026-01-01T12:00:08.000Z", "result": {"message_id": "message_sample"},
             "error": None, "reason": None},
}
MAX_DEPTH = 32


class BodyError(RenderError):
    """A body leaf failed; `path` is where in the body (keys and list indexes)."""

    def __init__(self, path: tuple[Any, ...], reason: str) -> None:
        self.path, self.reason = path, reason
        where = ".".join(["body", *(str(p) for p in path)])
        super().__init__(f"{where}: {reason}")


class BodyTemplate:
    """A destination body: the mapping from the rules file with each string leaf compiled.

    `leaves` maps the same shape with `Template` objects (compiled by the rules loader, so syntax
    errors are reported with the leaf's YAML line) in place of the strings.
    """

    def __init__(self, leaves: dict[str, Any]) -> None:
        self.leaves = leaves

    @classmethod
    def from_mapping(cls, spec: dict[str, Any]) -> BodyTemplate:
        """Compile every string leaf (TemplateSyntaxError on the first bad one)."""
        return cls(_compile(spec))

    def render(self, context: dict[str, Any]) -> dict[str, Any]:
        return _render(self.leaves, context, ())


def _compile(spec: Any) -> Any:
    if isinstance(spec, dict):
        return {k: _compile(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_compile(v) for v in spec]
    if isinstance(spec, str):
        return Template(spec, native=True)
    return spec


def _render(node: Any, context: dict[str, Any], path: tuple[Any, ...]) -> Any:
    if isinstance(node, dict):
        return {k: _render(v, context, (*path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_render(v, context, (*path, i)) for i, v in enumerate(node)]
    if isinstance(node, Template):
        try:
            return json_value(node.value(context), path)
        except BodyError:
            raise
        except RenderError as exc:
            raise BodyError(path, str(exc)) from None
    return node


def json_value(value: Any, path: tuple[Any, ...] = (), depth: int = 0) -> Any:
    """A rendered value as plain JSON data: str, int, float, bool, None, list, dict; else BodyError."""
    if depth > MAX_DEPTH:
        raise BodyError(path, f"the value is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Undefined):
        try:
            value._fail_with_undefined_error()
        except UndefinedError as exc:
            raise BodyError(path, str(exc)) from None
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return str(value)  # Markup and other str subclasses become plain text
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BodyError(path, f"{value} is not a JSON number")
        return value
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise BodyError(path, "a mapping in the body needs text keys")
        return {k: json_value(v, path, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v, path, depth + 1) for v in value]
    raise BodyError(path, f"the expression gives a {type(value).__name__}, not a JSON value "
                          f"(text, number, true/false, null, list or mapping; add `| list` to a sequence)")


def _records(name: str, values: dict[str, Any]) -> Record:
    """Nested mappings as Records, so a missing value is named in full: `data.crm.nothing has no value`."""
    return Record(name, {k: _records(f"{name}.{k}", v) if isinstance(v, dict) else v for k, v in values.items()})


def render_body(template: BodyTemplate | None, message_body: dict[str, Any]) -> bytes:
    """The exact bytes to sign and send; RenderError (a BodyError naming the leaf) when a leaf fails.

    Always ASCII JSON: every non-ASCII character is a \\u escape. A CRM value can hold a lone
    surrogate ("\\ud800" is valid JSON text), which has no UTF-8 form; written as an escape it
    is sent like any other value and the signature covers exactly the bytes sent, instead of
    an encoding error that would hold up every later message to that destination.
    """
    if template is None:
        return json.dumps(message_body, separators=(",", ":")).encode("ascii")
    rendered = template.render({"type": message_body.get("type"), "timestamp": message_body.get("timestamp"),
                                "data": _records("data", message_body.get("data") or {})})
    return json.dumps(rendered, separators=(",", ":"), allow_nan=False).encode("ascii")


def check_template(template: BodyTemplate) -> BodyError | None:
    """None when the body renders for a sample message, else why not (and which leaf)."""
    try:
        render_body(template, SAMPLE)
    except BodyError as exc:
        return exc
    except RenderError as exc:
        return BodyError((), str(exc))
    return None
