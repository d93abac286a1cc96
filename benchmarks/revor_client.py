"""How much the Revor client costs on top of a bare HTTP call, against the sandbox on loopback.

Prints dispatches per second through `RevorClient.create_dispatch` (validation, canonical JSON,
idempotency key, envelope parsing, typed errors) next to a bare `requests.Session.post` of the
same body to the same sandbox in the same run, and their ratio. Absolute numbers vary with the
machine; the ratio is the figure to compare.

    python -m benchmarks.revor_client [--count 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import requests

from integration.revor import RevorClient
from integration.sandbox.core import Faults
from integration.sandbox.server import SandboxServer
from integration.settings import SANDBOX_API_KEY


def payload(number: int) -> dict:
    return {"account_id": "connect_account_sandbox_email", "channel": "email", "action": "outreach",
            "recipient": {"address": f"lead{number}@example.com", "name": "Lead"},
            "content": {"subject": "Hello", "text": "Hi there"}, "min_channel_task_interval_seconds": 180}


def bare(server: SandboxServer, count: int, offset: int) -> float:
    session = requests.Session()
    headers = {"Authorization": f"Bearer {SANDBOX_API_KEY}", "Content-Type": "application/json"}
    started = time.perf_counter()
    for number in range(offset, offset + count):
        body = json.dumps(payload(number)).encode()
        response = session.post(server.api_url + "/outreach/dispatches", data=body,
                                headers={**headers, "Idempotency-Key": f"bare-{number}"}, timeout=10)
        assert response.status_code == 202, response.text
    elapsed = time.perf_counter() - started
    session.close()
    return count / elapsed


def client(server: SandboxServer, count: int, offset: int) -> float:
    with RevorClient(server.api_url, SANDBOX_API_KEY) as revor:
        started = time.perf_counter()
        for number in range(offset, offset + count):
            revor.create_dispatch(payload(number), f"client-{number}")
        return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400, help="dispatches per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is printed")
    args = parser.parse_args()
    with SandboxServer(faults=Faults(rate_limit=0)) as server:
        bare_rates, client_rates = [], []
        for round_number in range(args.rounds):
            offset = round_number * args.count
            bare_rates.append(bare(server, args.count, offset))
            client_rates.append(client(server, args.count, offset))
    bare_rate, client_rate = statistics.median(bare_rates), statistics.median(client_rates)
    print(f"bare requests.post         : {bare_rate:8.1f} dispatches/s (median of {args.rounds})")
    print(f"RevorClient.create_dispatch: {client_rate:8.1f} dispatches/s (median of {args.rounds})")
    print(f"ratio client/bare          : {client_rate / bare_rate:8.2f}")


if __name__ == "__main__":
    main()
