"""The web app factory and its health endpoints, against a real Redis."""

from __future__ import annotations

from integration.settings import Settings
from tests.conftest import free_port


def test_readyz_reports_redis(redis_url):
    from integration.web import create_app

    up = create_app(Settings(redis_url=f"{redis_url}/1")).test_client()
    assert up.get("/healthz").json == {"status": "ok"}
    assert up.get("/readyz").json == {"status": "ready", "redis": "ok", "rules": "no RULES_FILE"}
    down = create_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")).test_client()
    answer = down.get("/readyz")
    assert answer.status_code == 503
    assert answer.json == {"status": "unavailable", "redis": "unreachable (ConnectionError)"}
    assert down.get("/healthz").status_code == 200


def test_create_app_has_no_import_time_side_effects():
    import importlib
    import sys

    sys.modules.pop("integration.web", None)
    module = importlib.import_module("integration.web")
    assert not [name for name in vars(module) if name in ("app", "redis_client", "queue")]
