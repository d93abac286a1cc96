"""`/api/v1`: what the bridge received and did, for operators (bearer ADMIN_TOKEN).

Stored deliveries never hold authentication headers (see inbound/store.py), and nothing here
returns settings, so no secret can leave through this API.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from integration.inbound.signatures import safe_equal
from integration.inbound.store import load_event

status_api = Blueprint("status_api", __name__, url_prefix="/api/v1")


@status_api.before_request
def require_admin_token() -> ResponseReturnValue | None:
    token = current_app.extensions["revor_bridge.settings"].admin_token
    if token is None:
        return jsonify(error={"code": "api_disabled", "message": "set ADMIN_TOKEN to use /api/v1"}), 403
    header = request.headers.get("Authorization") or ""
    if header[:7].lower() != "bearer " or not safe_equal(token.get(), header[7:].strip()):
        return jsonify(error={"code": "unauthorized", "message": "send Authorization: Bearer <ADMIN_TOKEN>"}), 401
    return None


@status_api.get("/events/<source>/<path:event_id>")
def event(source: str, event_id: str) -> ResponseReturnValue:
    found = load_event(current_app.extensions["revor_bridge.redis"], source, event_id)
    if found is None:
        return jsonify(error={"code": "not_found", "message": f"no event {event_id!r} from {source!r}"}), 404
    return jsonify(found)
