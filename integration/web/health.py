"""Liveness and readiness, for the Heroku router and load balancers."""

from __future__ import annotations

from pathlib import Path

import redis
from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


@health.get("/readyz")
def readyz() -> ResponseReturnValue:
    try:
        current_app.extensions["revor_bridge.redis"].ping()
    except redis.RedisError as exc:
        return jsonify(status="unavailable", redis=f"unreachable ({type(exc).__name__})"), 503
    rules = current_app.extensions.get("revor_bridge.rules")
    # The file name only: /readyz needs no token, and the full path tells a stranger about the host.
    loaded = f"{len(rules.rules)} rules from {Path(rules.path).name}" if rules else "no RULES_FILE"
    return jsonify(status="ready", redis="ok", rules=loaded)
