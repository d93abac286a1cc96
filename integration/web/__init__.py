"""The web process: `create_app()` builds the Flask app; blueprints live beside it."""

from __future__ import annotations

from flask import Flask

from integration.settings import Settings
from integration.storage import connect


def create_app(settings: Settings | None = None) -> Flask:
    """Build the web app. Settings are read here, not at import, so tests can pass their own."""
    settings = settings or Settings.from_env()
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL: missing (revor-bridge web sets it to the embedded server when unset)")
    app = Flask("revor_bridge")
    app.config["MAX_CONTENT_LENGTH"] = 512 * 1024
    app.extensions["revor_bridge.settings"] = settings
    # redis-py opens connections lazily: nothing is contacted until a request needs Redis.
    app.extensions["revor_bridge.redis"] = connect(settings.redis_url)

    from integration.web.health import health

    app.register_blueprint(health)
    return app
