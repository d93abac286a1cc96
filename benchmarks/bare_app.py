"""The baseline for the ingest benchmark: a bare Flask endpoint that does nothing but answer.

It gets the bridge's body-reading middleware (`ReadDeadline`, as `integration.web.create_app`
wraps it) and is served by the same gunicorn setup (`benchmarks.serve`), so that what the
benchmark's ratio compares is the bridge's own work, not the serving around it.
"""

from __future__ import annotations

from flask import Flask

from integration.settings import Settings
from integration.web import MAX_BODY_BYTES
from integration.web.read_deadline import ReadDeadline


def create_app() -> Flask:
    app = Flask("bare")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.wsgi_app = ReadDeadline(app.wsgi_app, Settings.from_env().web_read_timeout,  # type: ignore[method-assign]
                                MAX_BODY_BYTES)

    @app.post("/webhooks/generic/<name>")
    def generic(name: str) -> tuple[str, int]:
        return '{"ok": true}', 200

    return app
