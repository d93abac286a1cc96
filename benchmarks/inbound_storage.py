"""How much Redis memory inbound requests cost: what a sender can make the bridge store.

Starts its own redis-server and the bridge's web app (in this process, on a loopback port, no
worker: events stay stored and queued, as when workers lag), and prints the growth of Redis's
`used_memory` (INFO memory) for:

- `--duplicates` posts of one generic-hook body of `--body-bytes` (one event, then duplicates:
  before issue 9 each post stored the body again, 100 x 500 KB = +55 MB);
- one signed (v3) HubSpot batch of 100 events, and whether a batch of 101 is refused;
- `--small-events` small generic events, next to what the per-source ceiling
  (INBOUND_MAX_STORED_BYTES) charged for them: the ratio grown/charged says how well the ceiling
  tracks what Redis really holds (1.0: exactly).

    python -m benchmarks.inbound_storage [--duplicates 100] [--body-bytes 500000] [--small-events 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import redis
import requests

from integration.inbound import hubspot
from integration.inbound.store import stored_bytes_key
from integration.localserver import LocalServer
from integration.settings import Secret, Settings
from integration.storage import free_port, redis_server_binary
from integration.web import create_app

TOKEN = "benchmark-hook-token-0123456789"
HUBSPOT_SECRET = "benchmark-hubspot-client-secret-0123"
# HubSpot signs the URL it posts to: the bridge's public address, as configured.
HUBSPOT_URL = "https://bridge.example.com/webhooks/hubspot"
MB = 1024 * 1024


def used_memory(connection: redis.Redis) -> int:
    """INFO memory's used_memory less the clients' buffers (mem_clients_normal): a 500 KB request
    leaves a query buffer of its size on the web app's connection until Redis shrinks it, which
    is not data the request stored."""
    memory = connection.info("memory")
    return int(memory["used_memory"]) - int(memory["mem_clients_normal"])


def charged(connection: redis.Redis, source: str) -> int:
    """What the per-source ceiling has counted for `source` so far (all hourly buckets)."""
    return sum(int(value) for value in connection.hvals(stored_bytes_key(source)))


def keyspace_bytes(connection: redis.Redis) -> int:
    """What every key holds by Redis's own count (MEMORY USAGE), unaffected by buffers freed later."""
    with connection.pipeline(transaction=False) as pipe:
        for key in connection.scan_iter(count=1000):
            pipe.memory_usage(key, samples=0)
        return sum(size or 0 for size in pipe.execute())


def measure(connection: redis.Redis, source: str, action: Callable[[], object]) -> tuple[int, int, object]:
    """Redis's used_memory growth and the ceiling's charge for `source` during `action`."""
    memory_before, charged_before = used_memory(connection), charged(connection, source)
    outcome = action()
    return used_memory(connection) - memory_before, charged(connection, source) - charged_before, outcome


def generic_body(event_id: str, deal_id: str, size: int = 0) -> bytes:
    """A generic-hook event (Zapier style), padded with a `note` to `size` bytes when given."""
    body = {"event_id": event_id, "event": "deal.updated", "deal__id": deal_id, "deal__stage": "closedwon"}
    if size:
        body["note"] = "x" * max(0, size - len(json.dumps({**body, "note": ""})))
    return json.dumps(body).encode()


def hubspot_batch(count: int, first_id: int) -> list[dict[str, object]]:
    now_ms = int(time.time() * 1000)
    return [{"eventId": first_id + n, "subscriptionId": 2718290, "portalId": 24681357, "appId": 3141592,
             "occurredAt": now_ms, "subscriptionType": "deal.propertyChange", "attemptNumber": 0,
             "objectId": 5000000 + first_id + n, "propertyName": "dealstage", "propertyValue": "closedwon",
             "changeSource": "CRM_UI"} for n in range(count)]


def post_hubspot(session: requests.Session, url: str, events: list[dict[str, object]]) -> requests.Response:
    body = json.dumps(events).encode()
    timestamp = str(int(time.time() * 1000))
    headers = {"Content-Type": "application/json", "X-HubSpot-Request-Timestamp": timestamp,
               "X-HubSpot-Signature-v3": hubspot.v3_signature(HUBSPOT_SECRET, "POST", HUBSPOT_URL, body, timestamp)}
    return session.post(f"{url}/webhooks/hubspot", data=body, headers=headers, timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duplicates", type=int, default=100, help="posts of the same large body")
    parser.add_argument("--body-bytes", type=int, default=500_000, help="size of that body (at most 512 KiB)")
    parser.add_argument("--small-events", type=int, default=1000)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="rb-storage-"))
    port = free_port()
    binary = shutil.which("redis-server") or redis_server_binary()
    redis_proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                                   "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", hubspot_client_secret=Secret(HUBSPOT_SECRET),
                        hubspot_webhook_url=HUBSPOT_URL, generic_webhook_secrets={"bench": Secret(TOKEN)})
    connection = redis.Redis(port=port)
    server = None
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                connection.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server = LocalServer(create_app(settings)).start()
        url = server.url
        hook = f"{url}/webhooks/generic/bench"
        token = {"Content-Type": "application/json", "X-Hook-Token": TOKEN}
        version = connection.info("server")["redis_version"]
        with requests.Session() as session:
            # Warm up: the store script, the queue and the lease set exist before anything is measured.
            for n in range(3):
                session.post(hook, data=generic_body(f"warm-{n}", f"w{n}"), headers=token, timeout=30)
                post_hubspot(session, url, hubspot_batch(1, 9_000_000 + n))

            batch_grown, batch_charged, batch_answer = measure(
                connection, "hubspot", lambda: post_hubspot(session, url, hubspot_batch(100, 1_000_000)))
            too_many = post_hubspot(session, url, hubspot_batch(101, 2_000_000))

            small_grown, small_charged, small_answers = measure(connection, "generic:bench", lambda: Counter(
                session.post(hook, data=generic_body(f"small-{n}", str(10_000 + n)), headers=token,
                             timeout=30).status_code for n in range(args.small_events)))

            # Last: a large request leaves Redis buffers that are freed later, whatever is measured next.
            big = generic_body("big-1", "1", args.body_bytes)
            memory_before, charged_before = used_memory(connection), charged(connection, "generic:bench")
            keys_before = keyspace_bytes(connection)
            answers = Counter([session.post(hook, data=big, headers=token, timeout=30).status_code])
            charged_first, keys_first = charged(connection, "generic:bench"), keyspace_bytes(connection)
            answers.update(session.post(hook, data=big, headers=token, timeout=30).status_code
                           for _ in range(args.duplicates - 1))
            big_grown = used_memory(connection) - memory_before
            later = max(1, args.duplicates - 1)
            per_duplicate = (keyspace_bytes(connection) - keys_first) / later
            charged_per_duplicate = (charged(connection, "generic:bench") - charged_first) / later
            stored = connection.hget("rb:event:generic:bench:big-1", "duplicates")
    finally:
        if server:
            server.stop()
        connection.close()
        redis_proc.terminate()
        redis_proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)

    print(f"Redis {version}, used_memory growth (INFO memory, less client buffers); no worker running "
          "(events stay stored and queued)")
    duplicates = int(stored) if stored is not None else "none"
    print(f"{args.duplicates} posts of one {len(big):,}-byte generic-hook body: {big_grown / MB:+.2f} MB, "
          f"{big_grown / len(big):.2f} x the body (answers {dict(answers)}; duplicates counted on the "
          f"event: {duplicates})")
    print(f"  keys (MEMORY USAGE): the first post {(keys_first - keys_before) / MB:+.2f} MB, charged "
          f"{charged_first - charged_before:,} bytes (the body twice: event and raw delivery); each duplicate "
          f"{per_duplicate:+,.0f} bytes, charged {charged_per_duplicate:,.0f}")
    batch = batch_answer.json() if batch_answer.headers.get("Content-Type", "").startswith("application/json") else {}
    counts = ", ".join(f"{batch.get(name)} {name}" for name in ("new", "duplicate", "skipped"))
    print(f"HubSpot batch of 100 events (signed v3): {batch_grown / MB:+.2f} MB, {batch_grown / 100:,.0f} bytes "
          f"per event, charged {batch_charged:,} bytes: grown/charged {batch_grown / batch_charged:.2f} "
          f"(answer {batch_answer.status_code}: {counts}); a batch of 101: {too_many.status_code}")
    print(f"{args.small_events} small generic events: {small_grown / MB:+.2f} MB, "
          f"{small_grown / args.small_events:,.0f} bytes per event (answers {dict(small_answers)})")
    print(f"charged to the per-source ceiling: {small_charged / MB:.2f} MB, {small_charged / args.small_events:,.0f}"
          f" bytes per event")
    print(f"ratio grown/charged : {small_grown / small_charged:8.2f}  (1.0: the ceiling counts what Redis holds)")


if __name__ == "__main__":
    main()
