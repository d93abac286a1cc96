"""`revor-bridge demo`: the whole thing on this machine, nothing outside it.

At this stage: the embedded Redis, the Revor sandbox (sped up), and one dispatch per channel sent
through the real client and followed to its end, each state change kept in Redis.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from integration.cli import EXIT_FINAL, cli, load_settings
from integration.cli.revor import next_poll_in
from integration.revor import RetryPolicy, RevorClient, RevorError
from integration.sandbox.core import Faults
from integration.sandbox.server import SandboxServer
from integration.settings import SANDBOX_API_KEY
from integration.storage import EmbeddedRedis, connect
from schemas.revor import TERMINAL_JOB_STATUSES

SAMPLE_DISPATCHES = [
    {"account_id": "connect_account_sandbox_email", "channel": "email", "action": "outreach",
     "recipient": {"address": "alex@example.com", "name": "Alex"},
     "content": {"subject": "Next steps for Acme", "text": "Hi Alex, thanks for booking the demo."},
     "min_channel_task_interval_seconds": 180},
    {"account_id": "connect_account_sandbox_linkedin", "channel": "linkedin", "action": "outreach",
     "recipient": {"profile_url": "https://www.linkedin.com/in/sandbox-connected/"},
     "content": {"text": "Hi Sam, great talking today. Shall we continue here?"},
     "min_channel_task_interval_seconds": 240},
    {"account_id": "connect_account_sandbox_whatsapp", "channel": "whatsapp", "action": "outreach",
     "recipient": {"phone": "+14155552671"},
     "content": {"text": "Hi Jo, your demo is confirmed for Tuesday."},
     "min_channel_task_interval_seconds": 300},
]


@cli.command()
@click.option("--time-scale", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="How much faster the sandbox clock runs.")
@click.option("--timeout", type=click.FloatRange(min=5), default=120.0, show_default=True)
def demo(time_scale: float, timeout: float) -> None:
    """Run everything locally and show dispatches as they progress."""
    settings = load_settings()
    embedded = EmbeddedRedis(Path(settings.data_dir) / "demo").start()
    click.echo(f"embedded Redis listening at {embedded.url} (data in {embedded.folder})")
    store = connect(embedded.url, decode=True)
    sandbox = SandboxServer(faults=Faults(time_scale=time_scale)).start()
    click.echo(f"Revor sandbox listening at {sandbox.api_url}")
    ok = False
    try:
        with RevorClient(sandbox.api_url, SANDBOX_API_KEY) as client:
            ok = _run(client, store, timeout)
    finally:
        sandbox.stop()
        if embedded.started_here:
            embedded.stop()
    sys.exit(0 if ok else EXIT_FINAL)


def _run(client: RevorClient, store, timeout: float) -> bool:  # noqa: ANN001 (a redis client)
    run_id = f"demo-{int(time.time())}"
    jobs: dict[str, dict] = {}
    for number, payload in enumerate(SAMPLE_DISPATCHES, 1):
        key = f"{run_id}-{number}"
        try:
            item = client.create_dispatch(payload, key, retry=RetryPolicy(attempts=3)).data
        except RevorError as error:
            click.echo(f"  {payload['channel']:<8} rejected: {error}")
            return False
        jobs[item["id"]] = {"channel": payload["channel"], "status": None, "item": item}
        _note(store, run_id, item, payload["channel"])
        click.echo(f"  {payload['channel']:<8} {item['id']}  {item['status']}  (runs at {item['scheduled_at']})")
        jobs[item["id"]]["status"] = item["status"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waits = []
        for job_id, job in jobs.items():
            if job["status"] in TERMINAL_JOB_STATUSES:
                continue
            try:
                item = client.get_job(job_id, retry=RetryPolicy(attempts=3)).data
            except RevorError as error:
                click.echo(f"  {job['channel']:<8} {job_id}  could not be read: {error}")
                return False
            if item["status"] != job["status"]:
                job["status"] = item["status"]
                _note(store, run_id, item, job["channel"])
                click.echo(f"  {job['channel']:<8} {job_id}  {item['status']}")
            if item["status"] not in TERMINAL_JOB_STATUSES:
                waits.append(next_poll_in(item))
        if not waits:
            break
        time.sleep(min(min(waits), 0.2))
    states = {job["channel"]: job["status"] for job in jobs.values()}
    timeline = store.xlen(f"revor-bridge:demo:{run_id}")
    click.echo(f"done: {json.dumps(states)}; {timeline} state changes kept in Redis stream "
               f"revor-bridge:demo:{run_id}")
    return all(status == "succeeded" for status in states.values())


def _note(store, run_id: str, item: dict, channel: str) -> None:  # noqa: ANN001
    store.xadd(f"revor-bridge:demo:{run_id}", {"job_id": item["id"], "channel": channel, "status": item["status"]})
