"""Storage: Redis bytes per finished dispatch, against the 3 KB target (issue 10).

Starts its own redis-server and a write-back receiver (a separate process answering 204), then
takes `--dispatches` dispatches to `succeeded` through the bridge's own code: each from a Zapier
event parsed by the generic hook's parser and planned by a real rules file (body rendered and
stored by `create_dispatches`), then `accepted`, `scheduled`, `running` and `succeeded` through
`state.transition` with the fields the submit and poll stages write (Revor itself is left out:
it stores nothing in Redis), and every status message (one per state but `pending`) delivered
to the receiver by the engine's `deliver` handler, signed, over HTTP. It prints Redis's
`used_memory` (INFO memory, less client buffers) grown per finished dispatch, as bytes and as a
ratio to the 3 KB target, and what is left per key pattern: how many keys, their MEMORY USAGE
per finished dispatch and their encodings (the dispatch hash should be a `listpack`: see
integration/dispatches/state.py for the layout and why).

    python -m benchmarks.storage [--dispatches 10000] [--processes 4]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis

from benchmarks.common import wait_for
from integration.context import JobContext
from integration.dispatches import state
from integration.dispatches.create import create_dispatches
from integration.inbound import generic
from integration.scheduler import units
from integration.scheduler.runner import DONE, Engine
from integration.settings import Settings
from integration.storage import free_port, redis_server_binary
from integration.writeback.deliver import deliver

TARGET_BYTES = 3 * 1024
BATCH = 500
SECRET = "whsec_c3RvcmFnZS1iZW5jaG1hcmstd3JpdGViYWNrLTAx"
RULES = """\
version: 1
accounts:
  mail: connect_account_benchmark_email
rules:
  - name: zap-won
    when: {source: generic:zapier, type: deal.stage_changed, match: {deal.stage: closedwon}}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "{{ contact.email }}", name: "{{ contact.first_name }}"}
      content:
        subject: "Welcome aboard, {{ contact.first_name }}"
        text: "Hi {{ contact.first_name }}, thank you for choosing us for {{ deal.name }}. Reply any time."
    writeback: [crm]
destinations:
  crm:
    url: "RECEIVER_URL"
    secret: "SECRET"
"""


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(port: int) -> None:
    ThreadingHTTPServer(("127.0.0.1", port), _Receiver).serve_forever()


def used_memory(connection: redis.Redis) -> int:
    """used_memory less the clients' buffers (mem_clients_normal), which are not stored data."""
    memory = connection.info("memory")
    return int(memory["used_memory"]) - int(memory["mem_clients_normal"])


def zapier_event(number: int) -> tuple[str, dict]:
    body = {"event": "deal.stage_changed", "event_id": f"zap-deal-{number}-{uuid.uuid4().hex[:12]}",
            "occurred_at": "2026-01-01T11:59:55Z", "deal__id": str(18273645501 + number),
            "deal__name": f"Northwind Pilot {number} - Annual plan", "deal__stage": "closedwon",
            "deal__amount": "12500", "contact__email": f"dana.lee+{number}@example.com",
            "contact__first_name": "Dana", "contact__last_name": "Lee"}
    raw = json.dumps(body).encode()
    event = generic.parse("zapier", body, raw, None, None).event
    return f"rb:event:generic:zapier:{event['event_id']}", event


def finish(ctx: JobContext, dispatch_id: str) -> None:
    """From pending to succeeded with what submit.py and track.py record on the way."""
    connection, wanted = ctx.redis, ctx.destinations()
    retention = ctx.settings.dispatch_retention_seconds
    submit = units.submit_unit(dispatch_id)
    units.claim(connection, 1, 30, units=[submit])  # as the engine does before running it
    connection.hset(state.key_for(dispatch_id), "submit_attempts", 1)
    job_id = f"job_{uuid.uuid4()}"
    request_id = f"req_{uuid.uuid4().hex[:24]}"
    scheduled = state.iso_now(time.time() + 120)
    state.transition(connection, dispatch_id, "accepted", destinations=wanted, request_id=request_id,
                     fields={"revor_job_id": job_id, "scheduled_at": scheduled, "accepted_at": state.iso_now(),
                             "request_id": request_id}, retention=retention)
    units.finish(connection, submit)
    fields: dict = {"revor_status": "scheduled", "scheduled_at": scheduled, "started_at": "", "finished_at": "",
                    "attempt_count": 0}
    for status in ("scheduled", "running", "succeeded"):
        connection.hincrby(state.key_for(dispatch_id), "polls", 1)
        fields = {**fields, "revor_status": status}
        if status in ("running", "succeeded"):
            fields.update(started_at=scheduled, attempt_count=1)
        if status == "succeeded":
            fields.update(finished_at=state.iso_now(), result={
                "account_id": "connect_account_benchmark_email", "channel": "email", "action": "outreach",
                "resolved_action": "email.send", "message_id": f"message_{job_id[4:16]}", "status": "accepted"})
        state.transition(connection, dispatch_id, status, fields=fields, destinations=wanted,
                         request_id=f"req_{uuid.uuid4().hex[:24]}", retention=retention)


def _engine(ctx: JobContext, settings: Settings) -> Engine:
    # Submits are this script's own business (finish()); one another process's engine claims
    # meanwhile is simply done.
    return Engine(ctx.redis, {units.DELIVER: lambda run: deliver(ctx, run), units.SUBMIT: lambda run: DONE},
                  hold_seconds=settings.lease_seconds, threads=settings.worker_threads, budget=3600)


def make(settings: Settings, first: int, stop: int) -> None:
    """Dispatches number `first` to `stop`, finished and their messages delivered (one process)."""
    ctx = JobContext.build(settings)
    engine = _engine(ctx, settings)
    for start in range(first, stop, BATCH):
        for number in range(start, min(start + BATCH, stop)):
            event_key, event = zapier_event(number)
            for dispatch_id in create_dispatches(ctx, event_key, event, None):
                finish(ctx, dispatch_id)
        engine.drain()  # delivers this batch's status messages
    engine.close()


def deliver_the_rest(settings: Settings, timeout: float = 60) -> None:
    """Deliver what the makers left: a delivery one process had claimed when another found it due
    waits a second more, by which time its own drain may have ended."""
    ctx = JobContext.build(settings)
    engine = _engine(ctx, settings)
    deadline = time.monotonic() + timeout
    while ctx.redis.zcard(units.DUE) + ctx.redis.zcard(units.CLAIMED) and time.monotonic() < deadline:
        engine.drain()
        time.sleep(0.5)
    engine.close()


def key_patterns(connection: redis.Redis) -> tuple[Counter, Counter, dict[str, Counter]]:
    """Per shape of key left (ids replaced by <id>): how many, their MEMORY USAGE in total, and
    their encodings (a dispatch hash should be a `listpack`, see dispatches/state.py)."""
    shapes: Counter = Counter()
    sizes: Counter = Counter()
    encodings: dict[str, Counter] = {}
    for key in connection.scan_iter(count=1000):
        shape = re.sub(r"dsp_[0-9a-f]+", "<id>", key.decode())
        shape = re.sub(r"^(rb:find:[a-z]+:)\d+$", r"\1<bucket>", shape)  # integration/lookup.py's buckets
        shapes[shape] += 1
        with connection.pipeline(transaction=False) as pipe:
            pipe.memory_usage(key, samples=0)
            pipe.object("encoding", key)
            size, encoding = pipe.execute()
        sizes[shape] += int(size or 0)
        encodings.setdefault(shape, Counter())[(encoding or b"?").decode()] += 1
    return shapes, sizes, encodings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dispatches", type=int, default=10000)
    parser.add_argument("--processes", type=int, default=4, help="processes making dispatches side by side")
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rb-storage-"))
    redis_port, receiver_port = free_port(), free_port()
    binary = shutil.which("redis-server") or redis_server_binary()
    server = subprocess.Popen([binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    receiver = multiprocessing.get_context("fork").Process(target=_serve, args=(receiver_port,), daemon=True)
    receiver.start()
    try:
        rules = folder / "rules.yaml"
        rules.write_text(RULES.replace("RECEIVER_URL", f"http://127.0.0.1:{receiver_port}/status")
                         .replace("SECRET", SECRET))
        settings = Settings(redis_url=f"redis://127.0.0.1:{redis_port}/0", rules_file=rules)
        connection = redis.Redis(port=redis_port)
        for _ in range(100):
            try:
                connection.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        wait_for(f"http://127.0.0.1:{receiver_port}/")  # any answer: it listens
        before = used_memory(connection)
        started = time.monotonic()
        share = -(-args.dispatches // args.processes)
        makers = [multiprocessing.get_context("fork").Process(
            target=make, args=(settings, first, min(first + share, args.dispatches)))
            for first in range(0, args.dispatches, share)]
        for maker in makers:
            maker.start()
        for maker in makers:
            maker.join()
        deliver_the_rest(settings)
        took = time.monotonic() - started
        finished = sum(connection.zcard(state.STATUS_INDEX + s) for s in state.TERMINAL)
        left = connection.zcard(units.DUE) + connection.zcard(units.CLAIMED)
        grown = used_memory(connection) - before
        per = grown / max(1, finished)
        print(f"dispatches finished: {finished} of {args.dispatches} in {took:.1f} s; units left: {left}")
        print(f"Redis used_memory grown: {grown:,} bytes = {per:,.0f} bytes per finished dispatch "
              f"(target {TARGET_BYTES:,}: ratio {per / TARGET_BYTES:.2f})")
        print("keys left, by shape: count, MEMORY USAGE per finished dispatch, encoding")
        shapes, sizes, encodings = key_patterns(connection)
        for shape, count in shapes.most_common(12):
            kinds = ", ".join(f"{name} {n}" for name, n in encodings[shape].most_common())
            print(f"  {count:>7}  {sizes[shape] / max(1, finished):>7,.0f} B  {shape}  ({kinds})")
        if args.keep:
            print(f"Redis kept at redis://127.0.0.1:{redis_port}; Enter ends")
            input()
    finally:
        receiver.terminate()
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
