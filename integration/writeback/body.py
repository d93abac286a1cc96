"""The body of a status message: DESIGN.md's default, or the destination's own Jinja template.

A template lets one bridge feed a HubSpot workflow trigger, a Zapier catch hook or a Salesforce
Apex REST endpoint in the shape each expects. It renders in the same sandbox as rule templates,
sees `type`, `timestamp` and `data` (the default body's fields), and must produce JSON: the
rules loader renders every template once against a sample message and refuses the file if the
result is not JSON.
"""

from __future__ import annotations

import json
from typing import Any

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


def render_body(template: Template | None, message_body: dict[str, Any]) -> bytes:
    """The exact bytes to sign and send; RenderError when a template fails or is not JSON."""
    if template is None:
        return json.dumps(message_body, separators=(",", ":")).encode()
    data = {k: Record(k, v) if isinstance(v, dict) else v for k, v in (message_body.get("data") or {}).items()}
    text = template.render({"type": message_body.get("type"), "timestamp": message_body.get("timestamp"),
                            "data": Record("data", data)})
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise RenderError(f"the body template rendered invalid JSON ({exc.msg} at line {exc.lineno} "
                          f"column {exc.colno})") from None
    return json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode()


def check_template(template: Template) -> str | None:
    """None when the template renders JSON for a sample message, else why not."""
    try:
        render_body(template, SAMPLE)
    except RenderError as exc:
        return str(exc)
    return None
