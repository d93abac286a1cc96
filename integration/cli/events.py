"""`revor-bridge events`: inbound events that could not be processed, and their retry, for operators."""

from __future__ import annotations

import json
import sys

import click
import redis

from integration.cli import EXIT_FINAL, cli, load_settings, redis_unreachable


def _connection() -> redis.Redis:
    from integration.cli.processes import redis_settings
    from integration.storage import connect

    return connect(redis_settings(load_settings()).redis_url or "")


@cli.group("events")
def events_group() -> None:
    """Inbound events: list them by status, retry a failed one."""


@events_group.command("list")
@click.option("--status", type=click.Choice(["failed", "received", "processed", "skipped"]), default="failed",
              show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def list_command(status: str, limit: int, as_json: bool) -> None:
    """Events in one status, newest first; failed ones with their error."""
    from integration.inbound.records import list_events

    try:
        found = list_events(_connection(), status, limit=limit)
    except redis.RedisError as exc:
        redis_unreachable(exc)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for item in found:
        click.echo(f"{item['source']}  {item['event_id']}  {item['status']}  attempts {item['attempts']}  "
                   f"{item['reason'] or ''}")
    if not found:
        click.echo(f"(no {status} events)", err=True)


@events_group.command("retry")
@click.argument("source")
@click.argument("event_id")
def retry_command(source: str, event_id: str) -> None:
    """Process a failed event again (its attempts start over); a running worker picks it up."""
    from integration.inbound.records import NotRetryable, retry
    from integration.inbound.store import event_key

    try:
        retry(_connection(), event_key(source, event_id))
    except LookupError:
        click.echo(f"revor-bridge: no event {event_id!r} from {source!r}", err=True)
        sys.exit(EXIT_FINAL)
    except NotRetryable as exc:
        click.echo(f"revor-bridge: {exc.args[0]}", err=True)
        sys.exit(EXIT_FINAL)
    except redis.RedisError as exc:
        redis_unreachable(exc)
    click.echo(f"queued again {source} {event_id}")
