"""Ingest rate of POST /webhooks/generic/<name> with valid Standard Webhooks signatures.

Both servers run under gunicorn with the same settings, in the same run, against one loopback
load generator: the bridge (verify, parse, normalise, dedupe, store in Redis, enqueue) and a
bare Flask endpoint that only answers. Each request carries a new `webhook-id`, so every one is
a new event that is really stored (no duplicate short-cut). Prints requests per second for each,
the median over alternating rounds, and the ratio bridge/bare; the target is at least 0.5.

    python -m benchmarks.ingest_generic [--requests 2000] [--rounds 3] [--workers 2] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import requests
from standardwebhooks import Webhook

from benchmarks.common import wait_for
from integration.storage import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + "YmVuY2htYXJrLXNlY3JldC1iZW5jaG1hcmstc2VjcmV0"  # base64 of 32 bytes




def gunicorn(app: str, port: int, workers: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
         "--log-level", "warning"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def signed_requests(count: int, offset: int) -> list[tuple[bytes, dict[str, str]]]:
    webhook = Webhook(SECRET)
    now = datetime.now(UTC)
    prepared = []
    for number in range(offset, offset + count):
        body = json.dumps({"type": "deal.stage_changed", "timestamp": now.isoformat(),
                           "data": {"deal": {"id": str(100000 + number), "name": f"Deal {number}",
                                             "stage": "closedwon", "amount": "12500"},
                                    "contact": {"id": str(number), "email": f"lead{number}@example.com",
                                                "first_name": "Lead"}}})
        msg_id = f"msg_bench_{number}"
        headers = {"Content-Type": "application/json", "webhook-id": msg_id,
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": webhook.sign(msg_id, now, body)}
        prepared.append((body.encode(), headers))
    return prepared


def load(url: str, prepared: list[tuple[bytes, dict[str, str]]], clients: int) -> float:
    """Send every prepared request from `clients` threads; requests per second."""
    chunks = [prepared[i::clients] for i in range(clients)]
    failures: list[str] = []

    def run(chunk: list[tuple[bytes, dict[str, str]]]) -> None:
        with requests.Session() as session:
            for body, headers in chunk:
                answer = session.post(url, data=body, headers=headers, timeout=30)
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=run, args=(chunk,)) for chunk in chunks]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return len(prepared) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers for both servers")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="rb-bench-"))
    redis_port, bridge_port, bare_port = free_port(), free_port(), free_port()
    binary = shutil.which("redis-server") or redis_server_binary()
    redis_proc = subprocess.Popen([binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(folder),
                                   "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVOR_", "GENERIC_WEBHOOK_"))}
    env.update(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", GENERIC_WEBHOOK_SECRET_BENCH=SECRET)
    servers = [gunicorn("integration.web:create_app()", bridge_port, args.workers, env),
               gunicorn("benchmarks.bare_app:create_app()", bare_port, args.workers, env)]
    try:
        wait_for(f"http://127.0.0.1:{bridge_port}/healthz")
        wait_for(f"http://127.0.0.1:{bare_port}/webhooks/generic/bench")
        warm = signed_requests(100, 10**7)
        load(f"http://127.0.0.1:{bridge_port}/webhooks/generic/bench", warm, args.clients)
        load(f"http://127.0.0.1:{bare_port}/webhooks/generic/bench", warm, args.clients)
        bare_rates, bridge_rates = [], []
        for round_number in range(args.rounds):
            prepared = signed_requests(args.requests, round_number * args.requests)
            bare_rates.append(load(f"http://127.0.0.1:{bare_port}/webhooks/generic/bench", prepared, args.clients))
            bridge_rates.append(load(f"http://127.0.0.1:{bridge_port}/webhooks/generic/bench", prepared,
                                     args.clients))
        stored = subprocess.run([shutil.which("redis-cli") or str(Path(binary).with_name("redis-cli")), "-p",
                                 str(redis_port), "--scan", "--pattern", "rb:event:generic:bench:*"],
                                capture_output=True, text=True).stdout.split()
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
        redis_proc.terminate()
        redis_proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
    bare, bridge = statistics.median(bare_rates), statistics.median(bridge_rates)
    expected = args.requests * args.rounds + 100
    print(f"requests per round: {args.requests}, rounds: {args.rounds}, gunicorn workers: {args.workers}, "
          f"client threads: {args.clients}")
    print(f"events stored by the bridge: {len(stored)} of {expected} sent")
    print(f"bare Flask endpoint : {bare:8.1f} requests/s (median)")
    print(f"bridge ingest       : {bridge:8.1f} requests/s (median)")
    print(f"ratio bridge/bare   : {bridge / bare:8.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
