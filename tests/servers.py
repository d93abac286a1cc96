"""Real HTTP servers on 127.0.0.1 for tests: the bridge's web app and a HubSpot API stand-in."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from integration.localserver import LocalServer

FIXTURES = Path(__file__).resolve().parent / "fixtures"


class ThreadServer(LocalServer):
    """Any WSGI app on a free loopback port (the same server the sandbox and the demo use)."""


class Clock:
    """A settable clock for signature windows; the fixtures were signed around 2026-01-01T12:00Z."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def signatures() -> dict[str, Any]:
    return json.loads((FIXTURES / "signatures.json").read_text())


def hubspot_standin(token: str) -> tuple[Flask, dict[str, Any]]:
    """A local stand-in for the HubSpot CRM API, serving the hydration fixture and taking
    write-back (tests/standin_hubspot.py says what it enforces and every state knob).

    `state["fail_next"]` holds (status, headers) answers to give before the real ones, so tests
    can inject 429s; `state["delay"]` slows every answer (seconds); `state["calls"]` records
    every request.
    """
    from tests.standin_hubspot import build

    data = json.loads(fixture_bytes("hubspot-crm-deal-with-contacts.json"))
    contacts = {c["id"]: c for c in data["follow_up_response"]["results"]}
    return build(token, data["response"], contacts)


def writeback_receiver(secret: str) -> tuple[Flask, dict[str, Any]]:
    """A CRM-side receiver that verifies Standard Webhooks signatures with the `standardwebhooks`
    package and records every message. `state["fail"]` is a list of statuses to answer first."""
    from standardwebhooks import Webhook, WebhookVerificationError

    verifier = Webhook(secret)
    state: dict[str, Any] = {"messages": [], "refused": 0, "fail": [], "attempts": 0, "delay": 0.0, "times": []}
    lock = threading.Lock()
    app = Flask("writeback_receiver")

    @app.post("/status")
    def receive() -> Response:
        if state["delay"]:
            time.sleep(state["delay"])
        with lock:
            state["attempts"] += 1
            state["times"].append((time.time(), request.headers.get("webhook-id")))
            if state["fail"]:
                answer = state["fail"].pop(0)
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                return Response("{}", status, headers=headers, mimetype="application/json")
        try:
            body = verifier.verify(request.get_data(), dict(request.headers))
        except WebhookVerificationError:
            with lock:
                state["refused"] += 1
            return Response("{}", 401, mimetype="application/json")
        with lock:
            state["messages"].append({"id": request.headers["webhook-id"], "body": body})
        return Response("{}", 200, mimetype="application/json")

    return app, state
