"""A write-back receiver for local runs (`demo`, `dev`): the CRM side of the status webhooks.

It verifies each message's Standard Webhooks signature as a real receiver should (a bad one gets
401, so a wrong secret shows up at once) and hands every verified message on, so the user sees
each dispatch's status as the CRM would get it. One piece of code for both commands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request
from standardwebhooks import Webhook, WebhookVerificationError

# Called with the webhook-id and the verified body of each message.
OnMessage = Callable[[str, dict[str, Any]], None]


def receiver_app(secret: str, on_message: OnMessage, path: str = "/revor-status",
                 on_refused: Callable[[str], None] | None = None) -> Flask:
    """A Flask app that accepts signed status messages at `path` and passes each on (webhook-id, body)."""
    verifier = Webhook(secret)
    app = Flask("revor_bridge_receiver")

    @app.post(path)
    def status() -> Response:
        try:
            body = verifier.verify(request.get_data(), dict(request.headers))
        except WebhookVerificationError as exc:
            if on_refused is not None:
                on_refused(f"refused a message with a bad signature ({exc})")
            return Response("bad signature", 401)
        on_message(request.headers["webhook-id"], body)
        return Response("{}", 200, mimetype="application/json")

    return app


def status_line(body: dict[str, Any]) -> str:
    """One status message as a row: rule, channel, recipient, status (and the reason when there is one).

    A destination with its own `body` mapping sends its own keys; those are shown as they came.
    """
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or "status" not in data:
        return str(body)
    recipient = next(iter((data.get("recipient") or {}).values()), "")
    extra = f"  ({data['reason']})" if data.get("reason") else ""
    return f"{data.get('rule') or '':<22} {data.get('channel') or '':<9} {recipient:<45} {data['status']}{extra}"
