"""`revor-bridge deliveries`: write-back dead letters and destination health, for operators."""

from __future__ import annotations

import json
import sys
from datetime import datetime

import click
import redis

from integration.cli import EXIT_FINAL, cli, load_settings, redis_unreachable
from integration.writeback import destinations as dest


def _context() -> tuple[redis.Redis, list[str]]:
    from integration.cli.processes import redis_settings
    from integration.cli.rules import rules_or_exit
    from integration.storage import connect

    settings = redis_settings(load_settings())
    names = list(rules_or_exit(settings).destinations) if settings.rules_file else []
    return connect(settings.redis_url or ""), names


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise click.BadParameter("use epoch seconds or ISO-8601, e.g. 2026-11-27T10:00:00Z",
                                 param_hint="--since") from None


def _names(destination: str | None, known: list[str]) -> list[str]:
    if destination:
        return [destination]
    if not known:
        raise click.UsageError("name a --destination (or set RULES_FILE so all its destinations are used)")
    return known


@cli.group("deliveries")
def deliveries() -> None:
    """Write-back deliveries: dead letters, replay, destination health."""


@deliveries.command("list")
@click.option("--destination", help="Only this destination.")
@click.option("--since", help="Dead-lettered since (epoch seconds or ISO-8601).")
@click.option("--json", "as_json", is_flag=True)
def list_command(destination: str | None, since: str | None, as_json: bool) -> None:
    """Messages in the dead-letter lists."""
    try:
        connection, known = _context()
        found = dest.dead_letters(connection, destinations=_names(destination, known), since=_since(since))
    except redis.RedisError as exc:
        redis_unreachable(exc)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for item in found:
        click.echo(f"{item['id']}  {item['destination']}  {item['type']}  attempts {item['attempts']}  "
                   f"{item['dead_reason']}")
    if not found:
        click.echo("(no dead letters)", err=True)


@deliveries.command("show")
@click.argument("message_id")
def show_command(message_id: str) -> None:
    """One message: its body, attempts and why it is a dead letter."""
    connection, _ = _context()
    item = dest.summary(connection, message_id)
    if item.get("missing"):
        click.echo(f"revor-bridge: no message {message_id!r}", err=True)
        sys.exit(EXIT_FINAL)
    click.echo(json.dumps(item, indent=2))


@deliveries.command("replay")
@click.argument("message_ids", nargs=-1)
@click.option("--destination", help="Replay every dead letter of this destination.")
@click.option("--since", help="With --destination: only those dead-lettered since then.")
def replay_command(message_ids: tuple[str, ...], destination: str | None, since: str | None) -> None:
    """Send dead letters again, keeping their webhook-id (by id, or all of a destination)."""
    connection, known = _context()
    ids = list(message_ids)
    if destination:
        ids += [m["id"] for m in dest.dead_letters(connection, destination=destination, since=_since(since),
                                                    limit=10_000)]
    if not ids:
        raise click.UsageError("give MESSAGE_IDS or --destination")
    failed = False
    for message_id in ids:
        try:
            dest.replay(connection, message_id)
            click.echo(f"queued again {message_id}")
        except (LookupError, PermissionError) as exc:
            click.echo(f"revor-bridge: {exc.args[0]}", err=True)
            failed = True
    sys.exit(EXIT_FINAL if failed else 0)


@deliveries.command("enable")
@click.argument("destination")
def enable_command(destination: str) -> None:
    """Enable a destination again after it answered 410 Gone (and close its circuit)."""
    connection, _ = _context()
    dest.enable(connection, destination)
    click.echo(f"enabled {destination}; replay its dead letters with: revor-bridge deliveries replay "
               f"--destination {destination}")


def _iso(epoch: float | None) -> str | None:
    from integration.dispatches.state import iso_now

    return iso_now(epoch) if epoch else None


HEALTH_COLUMNS = ("DESTINATION", "STATE", "FAILURES", "DEAD LETTERS", "LAST SUCCESS", "LAST ERROR")


def _health_row(item: dict) -> tuple[str, ...]:
    if item["disabled"]:
        where = f"disabled: {item['disabled_reason']}" if item["disabled_reason"] else "disabled"
    elif item["circuit"] == "open":
        where = f"circuit open until {item['open_until']}"
    else:
        where = "ok"
    return (item["destination"], where, str(item["consecutive_failures"]), str(item["dead_letters"]),
            item["last_success_at"] or "never", item["last_error"] or "")


@deliveries.command("destinations")
@click.option("--destination", help="Only this destination.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def destinations_command(destination: str | None, as_json: bool) -> None:
    """Health of each destination: circuit, failures, disabled, dead letters."""
    connection, known = _context()
    try:
        items = [dest.health(connection, name) for name in _names(destination, known)]
    except redis.RedisError as exc:
        redis_unreachable(exc)
    items = [{**item, "open_until": _iso(item["open_until"]), "last_success_at": _iso(item["last_success_at"])}
             for item in items]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    rows = [HEALTH_COLUMNS, *(_health_row(item) for item in items)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEALTH_COLUMNS) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())
