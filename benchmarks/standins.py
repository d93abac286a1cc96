"""Minimal outside systems for the pipeline benchmark, served by `benchmarks.serve` in their own
processes: a HubSpot CRM API that knows every deal, and a write-back receiver that notes when
each status message arrived.

Both are as cheap as a WSGI app can be (no Flask), so that on a small machine the benchmark
measures the bridge, not its stand-ins.

    python -m benchmarks.serve "benchmarks.standins:hubspot_app()" --port 8002 --workers 1
    python -m benchmarks.serve "benchmarks.standins:receiver_app()" --port 8003 --workers 1
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]
DEAL_PATH = re.compile(r"^/crm/v3/objects/deals/(\d+)$")
BATCH_UPDATE = "/crm/v3/objects/deals/batch/update"


def _json(start_response: StartResponse, status: str, body: Any) -> Iterable[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def contact_for(deal_id: str) -> str:
    """Each deal has its own contact (so each event its own recipient): the deal id with a 9 in front."""
    return "9" + deal_id


def hubspot_app() -> Callable[..., Iterable[bytes]]:
    """Deals (any numeric id, stage closedwon, one contact, no owner) and the contacts batch read:
    the two calls that hydrating a deal event costs."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        found = DEAL_PATH.match(path)
        if method == "GET" and found:
            deal_id = found.group(1)
            return _json(start_response, "200 OK", {
                "id": deal_id, "properties": {"dealname": f"Deal {deal_id}", "dealstage": "closedwon",
                                              "amount": "12500", "hs_object_id": deal_id},
                "associations": {"contacts": {"results": [{"id": contact_for(deal_id), "type": "deal_to_contact"}]}}})
        if method == "POST" and path == "/crm/v3/objects/contacts/batch/read":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            inputs = json.loads(environ["wsgi.input"].read(length) or b"{}").get("inputs") or []
            results = [{"id": i["id"], "properties": {"email": f"lead{i['id']}@example.com", "firstname": "Lead",
                                                      "hs_object_id": i["id"]}} for i in inputs]
            return _json(start_response, "200 OK", {"status": "COMPLETE", "results": results})
        return _json(start_response, "404 Not Found", {"status": "error", "category": "OBJECT_NOT_FOUND"})

    return app


def receiver_app() -> Callable[..., Iterable[bytes]]:
    """POST /status answers 200 at once and notes (arrival time, webhook-id); GET /times lists them.
    Signatures are not checked: the receiver's own cost is not the bridge's."""
    arrivals: list[tuple[float, str]] = []
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/status":
            moment = time.time()
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            with lock:
                arrivals.append((moment, environ.get("HTTP_WEBHOOK_ID", "")))
            return _json(start_response, "200 OK", {})
        if environ["PATH_INFO"] == "/times":
            with lock:
                return _json(start_response, "200 OK", {"items": list(arrivals)})
        return _json(start_response, "404 Not Found", {})

    return app


def hubspot_write_app(latency_ms: float = 0.0) -> Callable[..., Iterable[bytes]]:
    """HubSpot's deal updates as write-back uses them: `PATCH .../deals/<id>` and the batch update,
    each answered after `latency_ms` (the round trip to HubSpot); GET /stats counts requests and
    properties written, POST /stats/reset zeroes them."""
    counts = {"requests": 0, "writes": 0, "batches": 0}
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        if path == "/stats":
            with lock:
                if method == "POST":
                    counts.update(requests=0, writes=0, batches=0)
                return _json(start_response, "200 OK", dict(counts))
        body = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)) or b"{}")
        if latency_ms:
            time.sleep(latency_ms / 1000)
        found = DEAL_PATH.match(path)
        if method == "PATCH" and found:
            with lock:
                counts["requests"] += 1
                counts["writes"] += 1
            return _json(start_response, "200 OK", {"id": found.group(1), "properties": body.get("properties")})
        if method == "POST" and path == BATCH_UPDATE:
            inputs = body.get("inputs") or []
            with lock:
                counts["requests"] += 1
                counts["batches"] += 1
                counts["writes"] += len(inputs)
            return _json(start_response, "200 OK", {"status": "COMPLETE", "results": [
                {"id": i["id"], "properties": i.get("properties")} for i in inputs]})
        return _json(start_response, "404 Not Found", {"status": "error", "category": "OBJECT_NOT_FOUND"})

    return app
