"""The web process: `create_app()` builds the Flask app; blueprints live beside it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from flask import Flask, Response, request
from flask.typing import ResponseReturnValue
from rq import Queue
from werkzeug.exceptions import HTTPException

from integration.inbound import salesforce
from integration.rules.loader import load_rules
from integration.settings import Settings
from integration.storage import connect
from integration.web.read_deadline import ReadDeadline, json_error
from integration.web.request_ids import RequestIds

MAX_BODY_BYTES = 512 * 1024  # HubSpot's 100-event batches are ~40 kB; Standard Webhooks advise < 20 kB
SALESFORCE_PATH = "/webhooks/salesforce"
log = logging.getLogger(__name__)


def error_body(path: str, status: int, code: str, message: str) -> tuple[bytes, str]:
    """An error answer's body and Content-Type: the app's JSON, or a SOAP 1.1 fault on Salesforce's
    endpoint (under it too), since a fault is the only error an Outbound Message reads."""
    if path.rstrip("/") == SALESFORCE_PATH or path.startswith(SALESFORCE_PATH + "/"):
        return salesforce.soap_fault(message, status), "text/xml; charset=utf-8"
    return json_error(path, status, code, message)


def _error(status: int, code: str, message: str) -> Response:
    body, content_type = error_body(request.path, status, code, message)
    return Response(body, status=status, content_type=content_type)


def create_app(settings: Settings | None = None, clock: Callable[[], float] = time.time) -> Flask:
    """Build the web app. Settings are read here, not at import, so tests can pass their own.

    `clock` is what signature windows are checked against; tests pass a fixed one to verify the
    fixtures' recorded signatures.
    """
    settings = settings or Settings.from_env()
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL: missing (revor-bridge web sets it to the embedded server when unset)")
    app = Flask("revor_bridge", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # Views get the whole body at once: a client trickling it holds a thread WEB_READ_TIMEOUT at most.
    app.wsgi_app = ReadDeadline(app.wsgi_app, settings.web_read_timeout,  # type: ignore[method-assign]
                                MAX_BODY_BYTES, render=error_body)
    app.wsgi_app = RequestIds(app.wsgi_app)  # type: ignore[method-assign]  # outermost: every answer has an id
    # redis-py connects lazily: nothing is contacted until a request needs Redis. RQ needs bytes.
    connection = connect(settings.redis_url)
    app.extensions["revor_bridge.settings"] = settings
    app.extensions["revor_bridge.redis"] = connection
    app.extensions["revor_bridge.queue"] = Queue("default", connection=connection, serializer="json")
    app.extensions["revor_bridge.clock"] = clock
    # An invalid rules file stops start-up here (RulesError names every problem).
    app.extensions["revor_bridge.rules"] = load_rules(settings.rules_file) if settings.rules_file else None

    from integration.inbound.routes import webhooks
    from integration.web.dashboard import dashboard
    from integration.web.health import health
    from integration.web.metrics import metrics
    from integration.web.status_api import status_api

    app.register_blueprint(health)
    app.register_blueprint(metrics)
    app.register_blueprint(webhooks)
    app.register_blueprint(status_api)
    app.register_blueprint(dashboard)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> ResponseReturnValue:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        code = exc.code or 500
        response = _error(code, codes.get(code, "http_error"), exc.description or "")
        if getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(redis.RedisError)
    def storage_unavailable(exc: redis.RedisError) -> ResponseReturnValue:
        if isinstance(exc, redis.ResponseError) and "WRONGTYPE" in str(exc):
            # An id in the URL that names a key of another type (`<dispatch id>:doc`): not found.
            return _error(404, "not_found", "not found")
        # Redis down or failing is an outage, not a bug: one line (no traceback), retry later.
        log.error("%s %s: Redis unavailable (%s); answered 503", request.method, request.path, type(exc).__name__)
        return _error(503, "storage_unavailable", f"Redis is unavailable ({type(exc).__name__}); retry later")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> ResponseReturnValue:
        # A bug, not the sender's fault: log it (no body, no headers) and ask for a retry.
        log.exception("unexpected error handling a request")
        return _error(503, "internal_error", "unexpected error; retry later")

    return app
