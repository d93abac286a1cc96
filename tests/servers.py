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
    """A local stand-in for the HubSpot CRM API, serving the hydration fixture.

    `state["fail_next"]` holds (status, headers) answers to give before the real ones, so tests
    can inject 429s; `state["delay"]` slows every answer (seconds); `state["calls"]` records
    every request.
    """
    data = json.loads(fixture_bytes("hubspot-crm-deal-with-contacts.json"))
    deal = data["response"]
    contacts = {c["id"]: c for c in data["follow_up_response"]["results"]}
    state: dict[str, Any] = {"calls": [], "fail_next": [], "deals": {deal["id"]: deal}, "delay": 0.0}
    app = Flask("hubspot_standin")

    @app.before_request
    def check() -> Response | None:
        state["calls"].append({"method": request.method, "path": request.path, "args": request.args.to_dict(),
                               "auth": request.headers.get("Authorization")})
        if state["delay"]:
            time.sleep(state["delay"])
        if request.headers.get("Authorization") != f"Bearer {token}":
            return Response(json.dumps({"status": "error", "category": "INVALID_AUTHENTICATION"}), 401,
                            mimetype="application/json")
        if state["fail_next"]:
            status, headers = state["fail_next"].pop(0)
            return Response(json.dumps({"status": "error", "policyName": "TEN_SECONDLY_ROLLING"}), status,
                            headers=headers, mimetype="application/json")
        return None

    @app.get("/crm/v3/objects/deals/<deal_id>")
    def get_deal(deal_id: str) -> Response:
        found = state["deals"].get(deal_id)
        if found is None:
            return Response(json.dumps({"status": "error", "category": "OBJECT_NOT_FOUND"}), 404,
                            mimetype="application/json")
        return Response(json.dumps(found), mimetype="application/json")

    @app.post("/crm/v3/objects/contacts/batch/read")
    def batch_read() -> Response:
        ids = [i["id"] for i in request.get_json()["inputs"]]
        results = [contacts[i] for i in ids if i in contacts]
        return Response(json.dumps({"status": "COMPLETE", "results": results}), mimetype="application/json")

    @app.get("/crm/v3/objects/contacts/<contact_id>")
    def get_contact(contact_id: str) -> Response:
        if contact_id not in contacts:
            return Response("{}", 404, mimetype="application/json")
        return Response(json.dumps(contacts[contact_id]), mimetype="application/json")

    @app.get("/crm/v3/objects/companies/<company_id>")
    def get_company(company_id: str) -> Response:
        return Response(json.dumps({"id": company_id, "properties": {"name": "Northwind Traders",
                                                                     "domain": "northwind.example.com"}}),
                        mimetype="application/json")

    @app.get("/crm/v3/owners/<owner_id>")
    def get_owner(owner_id: str) -> Response:
        return Response(json.dumps({"id": owner_id, "email": "rep.one@example.com", "firstName": "Rep",
                                    "lastName": "One"}), mimetype="application/json")

    return app, state


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
