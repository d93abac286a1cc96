"""Talk to Revor directly: `accounts`, `send`, `job`."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from typing import Any

import click

from integration.cli import EXIT_FINAL, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_USAGE, cli, load_settings
from integration.revor import (
    RetryPolicy,
    RevorClient,
    RevorError,
    RevorFinalError,
    RevorInvalidPayload,
)
from integration.revor.polling import next_poll
from schemas.revor import CHANNEL_RECIPIENT, TERMINAL_JOB_STATUSES

CLI_RETRY = RetryPolicy(attempts=5, base_delay=0.5, max_delay=10, max_wait=60)


class _ReportedByTheCommand(logging.Filter):
    """Drops the client's log line for a Revor error answer: the command prints that error itself, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return " -> HTTP " not in str(record.msg)


def report_errors_once() -> None:
    """For commands that print a Revor error themselves: the client's own log line would repeat it."""
    client_log = logging.getLogger("integration.revor.client")
    if not any(isinstance(f, _ReportedByTheCommand) for f in client_log.filters):
        client_log.addFilter(_ReportedByTheCommand())


def _client() -> RevorClient:
    settings = load_settings()
    report_errors_once()
    if settings.uses_sandbox:
        click.echo(f"(REVOR_API_KEY is unset: using the Revor sandbox at {settings.revor_base_url})", err=True)
    return RevorClient.from_settings(settings)


def _fail(error: RevorError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"ok": False, **error.as_dict()}))
    else:
        click.echo(f"revor-bridge: {error}", err=True)
        if error.code == "api_key_invalid" or error.status == 401:
            click.echo("  check REVOR_API_KEY (keys start with sk-revor-)", err=True)
    sys.exit(EXIT_FINAL if isinstance(error, RevorFinalError) else EXIT_UNREACHABLE)


@cli.command()
@click.option("--channel", type=click.Choice(["email", "linkedin", "whatsapp"]), help="Only this channel.")
@click.option("--sendable", is_flag=True, help="Only accounts that can send.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def accounts(channel: str | None, sendable: bool, as_json: bool) -> None:
    """List the connected sending accounts of the Revor key."""
    with _client() as client:
        try:
            response = client.list_accounts(channel=channel, can_send=True if sendable else None, retry=CLI_RETRY)
        except RevorError as error:
            _fail(error, as_json)
    if as_json:
        click.echo(json.dumps(response.data, indent=2))
        return
    if not response.data:
        click.echo("no accounts")
    rows = [(a["account_id"], a["channel"], "can send" if a["can_send"] else f"cannot send ({a['status']})",
             str(a.get("name") or "")) for a in response.data]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
    for row in rows:  # columns as wide as their longest value, so every row lines up
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=False)) + "  " + row[3])


@cli.command()
@click.option("--account", required=True, help="Connect account id (see `revor-bridge accounts`).")
@click.option("--channel", required=True, type=click.Choice(["email", "linkedin", "whatsapp"]))
@click.option("--to", "to", required=True,
              help="Email address, LinkedIn profile URL (https://www.linkedin.com/in/...) or E.164 phone.")
@click.option("--name", help="Recipient name (email only).")
@click.option("--subject", help="Subject (email only, required there).")
@click.option("--text", required=True, help="Message text.")
@click.option("--interval", type=click.IntRange(60, 86400), default=None,
              help="min_channel_task_interval_seconds, 60..86400.")
@click.option("--idempotency-key", default=None,
              help="Repeat an earlier send safely by passing its key again (default: a new key).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def send(account: str, channel: str, to: str, name: str | None, subject: str | None, text: str,
         interval: int | None, idempotency_key: str | None, as_json: bool) -> None:
    """Create one outreach dispatch and print the Revor job id."""
    payload: dict[str, Any] = {
        "account_id": account, "channel": channel, "action": "outreach",
        "recipient": {CHANNEL_RECIPIENT[channel]: to}, "content": {"text": text},
    }
    if name:
        payload["recipient"]["name"] = name
    if subject:
        payload["content"]["subject"] = subject
    if interval is not None:
        payload["min_channel_task_interval_seconds"] = interval
    key = idempotency_key or f"cli-{uuid.uuid4().hex}"
    with _client() as client:
        try:
            response = client.create_dispatch(payload, key, retry=CLI_RETRY)
        except ValueError as exc:  # a malformed idempotency key
            raise click.BadParameter(str(exc), param_hint="--idempotency-key") from None
        except RevorInvalidPayload as error:
            for field, problem in _flatten(error.errors):
                click.echo(f"revor-bridge: invalid dispatch: {_option_for(field)}: {problem}", err=True)
            sys.exit(EXIT_USAGE)
        except RevorError as error:
            _fail(error, as_json)
    job = response.data
    if as_json:
        click.echo(json.dumps({"ok": True, "job": job, "idempotency_key": key, "request_id": response.request_id}))
    else:
        click.echo(job["id"])
        click.echo(f"  status {job['status']}, scheduled at {job['scheduled_at']}, idempotency key {key}", err=True)


def _flatten(errors: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(errors, dict):
        return [pair for key, value in errors.items() for pair in _flatten(value, f"{prefix}{key}.")]
    if isinstance(errors, list) and all(isinstance(e, str) for e in errors):
        return [(prefix.rstrip("."), " ".join(errors))]
    return [(prefix.rstrip("."), str(errors))]


def _option_for(field: str) -> str:
    """Name the CLI option behind a payload field, so the user knows what to change."""
    options = {"recipient.address": "--to", "recipient.profile_url": "--to", "recipient.phone": "--to",
               "recipient.name": "--name", "content.subject": "--subject", "content.text": "--text",
               "content.html": "--text", "account_id": "--account", "channel": "--channel"}
    return options.get(field, field)


@cli.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Poll until the job succeeds, fails or is cancelled.")
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def job(job_id: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Show one Revor job; with --wait, follow it to its end."""
    deadline = time.monotonic() + timeout
    last_status = None
    polls = 0
    with _client() as client:
        while True:
            try:
                item = client.get_job(job_id, retry=CLI_RETRY).data
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="JOB_ID") from None
            except RevorError as error:
                _fail(error, as_json)
            if not as_json and item["status"] != last_status:
                click.echo(_describe(item))
            last_status = item["status"]
            if not wait or item["status"] in TERMINAL_JOB_STATUSES:
                break
            if time.monotonic() >= deadline:
                click.echo(f"revor-bridge: job {job_id} still {item['status']} after {timeout:g} s", err=True)
                sys.exit(EXIT_TIMEOUT)
            polls += 1
            time.sleep(min(next_poll(item, polls), max(0.0, deadline - time.monotonic())))
    if as_json:
        click.echo(json.dumps(item, indent=2))
    if item["status"] in ("failed", "cancelled"):
        sys.exit(EXIT_FINAL)


def _describe(item: dict[str, Any]) -> str:
    line = f"{item['id']}  {item['status']}"
    if item["status"] in ("queued", "scheduled") and item.get("scheduled_at"):
        line += f"  (runs at {item['scheduled_at']})"
    if item.get("result"):
        line += f"  {item['result'].get('resolved_action', '')} {item['result'].get('message_id', '')}".rstrip()
    if item.get("error"):
        line += f"  error {item['error'].get('code')}"
    return line
