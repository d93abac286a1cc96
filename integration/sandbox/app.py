"""HTTP in front of the sandbox: Revor's paths, envelope and headers, plus `/_sandbox` controls.

Every answer, errors included, uses Revor's envelope; nothing a client sends can produce a
Werkzeug HTML page or a traceback.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from integration.sandbox.core import RateLimited, Sandbox
from integration.sandbox.validation import Rejection

MAX_BODY_BYTES = 8 * 1024 * 1024

api = Blueprint("revor_api", __name__, url_prefix="/api/v1")
control = Blueprint("sandbox_control", __name__, url_prefix="/_sandbox")


def _sandbox() -> Sandbox:
    return current_app.extensions["revor_sandbox"]


def _request_id() -> str:
    return "req_" + uuid.uuid4().hex[:24]


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers or {}, mimetype="application/json")


def _error(status: int, code: str, detail: str = "", headers: dict[str, str] | None = None) -> Response:
    error = {"code": code, "message": code, "request_id": _request_id()}
    if detail:
        error["detail"] = detail
    return _json(status, {"ok": False, "error": error}, headers)


def _handle(action: str, **kwargs: Any) -> Response:
    """Auth, rate limit, latency, the action itself, and a line in the inspection log."""
    sandbox = _sandbox()
    started = time.time()
    rate_headers: dict[str, str] = {}
    entry: dict[str, Any] = {
        "time": started, "method": request.method, "path": request.path,
        "query": request.query_string.decode("latin-1"),
        "idempotency_key": request.headers.get("Idempotency-Key"),
    }
    dropped = False
    try:
        token, key = sandbox.authenticate(request.headers.get("Authorization"), request.headers.get("x-api-key"))
        rate_headers = sandbox.rate_limit(token, key)
        if sandbox.faults.latency_ms:
            time.sleep(sandbox.faults.latency_ms / 1000)
        if action == "accounts":
            answer = sandbox.list_accounts(key, request.args.get("channel"), request.args.get("can_send"))
        elif action == "dispatch":
            body = _read_json_body()
            entry["body"] = body
            answer = sandbox.create_dispatch(token, key, request.headers.get("Idempotency-Key"), body)
        else:
            answer = sandbox.get_job(key, kwargs["job_id"])
        response = _json(answer.status, {"ok": True, "request_id": _request_id(), **answer.body}, rate_headers)
        dropped = answer.drop_connection
    except Rejection as rejection:
        response = _error(rejection.status, rejection.code, rejection.detail, rate_headers)
    except RateLimited as limited:
        response = _error(429, "api_rate_limit_exceeded", headers=limited.headers)
    entry.update(status=response.status_code, dropped=dropped,
                 response=json.loads(response.get_data()))
    sandbox.record(entry)
    if dropped:
        _drop_connection()
    return response


def _read_json_body() -> Any:
    if request.mimetype != "application/json":
        raise Rejection(400, "invalid_content_type", "Content-Type must be application/json")
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise Rejection(400, "invalid_json", "the body is not valid UTF-8 JSON") from None


def _drop_connection() -> None:
    """Close the TCP connection without an answer: the task exists, the client never hears."""
    sock = request.environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@api.get("/connect/accounts")
def accounts() -> Response:
    return _handle("accounts")


@api.post("/outreach/dispatches")
def dispatches() -> Response:
    return _handle("dispatch")


@api.get("/outreach/jobs/<job_id>")
def job(job_id: str) -> Response:
    return _handle("job", job_id=job_id)


@control.get("/config")
def get_config() -> Response:
    return _json(200, _sandbox().config())


@control.post("/config")
def set_config() -> Response:
    changes = request.get_json(silent=True)
    if not isinstance(changes, dict):
        return _error(400, "invalid_json", "send a JSON object of settings")
    try:
        with _sandbox().lock:
            _sandbox().faults.update(changes)
    except Rejection as rejection:
        return _error(rejection.status, rejection.code, rejection.detail)
    return _json(200, _sandbox().config())


@control.post("/reset")
def reset() -> Response:
    _sandbox().reset()
    return _json(200, {"ok": True})


@control.get("/tasks")
def tasks() -> Response:
    return _json(200, {"items": _sandbox().snapshot_tasks()})


@control.get("/requests")
def requests_log() -> Response:
    return _json(200, {"items": _sandbox().snapshot_requests()})


@control.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> Response:
    try:
        return _json(200, {"item": _sandbox().cancel(job_id)})
    except Rejection as rejection:
        return _error(rejection.status, rejection.code, rejection.detail)


def create_sandbox_app(sandbox: Sandbox | None = None) -> Flask:
    app = Flask("revor_sandbox")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["revor_sandbox"] = sandbox or Sandbox()
    app.register_blueprint(api)
    app.register_blueprint(control)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        return _error(exc.code or 500, codes.get(exc.code or 500, "http_error"), exc.description or "")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:  # pragma: no cover - a bug, but still an envelope
        current_app.logger.exception("sandbox: unexpected error")
        return _error(500, "internal_error")

    return app


