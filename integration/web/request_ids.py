"""A request id for every request: on each log line of the request, in the access log and in the
answer's `X-Request-Id` header, so a sender's support ticket leads to the lines of its request.

Heroku's router sends `X-Request-Id` (a UUID, or the client's own id of 20 to 200 characters):
a sane incoming id is kept, so the router's log and ours name the same request; anything else
(missing, too long, characters a log reader could trip on) is replaced by a fresh one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from integration import logs

REQUEST_ID_KEY = "revor_bridge.request_id"  # in the WSGI environ, for gunicorn's access log
STORED_KEY = "revor_bridge.stored"  # what a webhook request stored, for the same access line
HEADER = "X-Request-Id"
_SANE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+/=_.:-]{0,199}$")


def request_id(incoming: str | None) -> str:
    """The incoming id if it is sane, else a new one."""
    return incoming if incoming and _SANE.match(incoming) else uuid.uuid4().hex


def note_stored(environ: dict[str, Any], source: str, delivery_id: str, event_ids: list[str]) -> None:
    """What a webhook request stored, for its access line (web/serving.py): its source, the
    delivery and its event id(s), so the line of the request leads to the worker's lines about
    each event. No line of its own: one line per request, the access line, is enough."""
    fields: dict[str, Any] = {"source": source, "delivery_id": delivery_id, "events": len(event_ids)}
    if len(event_ids) == 1:
        fields["event_id"] = event_ids[0]
    elif event_ids:
        fields["event_ids"] = event_ids  # a HubSpot batch holds at most 100
    environ[STORED_KEY] = fields


class RequestIds:
    """WSGI middleware, outermost: refusals by the body reader (408, 413) get an id too."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        chosen = environ[REQUEST_ID_KEY] = request_id(environ.get("HTTP_X_REQUEST_ID"))

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if not any(name.lower() == HEADER.lower() for name, _ in headers):
                headers = [*headers, (HEADER, chosen)]
            return start_response(status, headers, exc_info)

        with logs.bind(request_id=chosen):
            return self.app(environ, start)
