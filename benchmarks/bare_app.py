"""The baseline for the ingest benchmark: a bare Flask endpoint that does nothing but answer."""

from __future__ import annotations

from flask import Flask


def create_app() -> Flask:
    app = Flask("bare")

    @app.post("/webhooks/generic/<name>")
    def generic(name: str) -> tuple[str, int]:
        return '{"ok": true}', 200

    return app
