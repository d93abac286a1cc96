"""Rules from the command line: `preview` (a dry run) and `suppress` (the global suppression list)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
import redis

from integration.cli import EXIT_USAGE, cli, load_settings, redis_unreachable, report
from integration.rules.guards import suppress as add_suppressions
from integration.rules.guards import suppressed, unsuppress
from integration.rules.loader import RulesError, RuleSet, load_rules
from integration.rules.preview import PreviewError, preview_payload
from integration.settings import Settings

EXAMPLE_RULES = Path(__file__).resolve().parent.parent / "demo_data" / "rules.yaml"


def rules_or_exit(settings: Settings, path: str | None = None, *, lenient_destinations: bool = False) -> RuleSet:
    """The rules, or every problem printed and exit 2. `lenient_destinations` is for `preview`, which sends
    nothing: unset `${VAR}` in destinations become placeholders, said in one warning line."""
    chosen = Path(path) if path else settings.rules_file
    if chosen is None:
        click.echo("revor-bridge: no rules file: set RULES_FILE or pass --rules", err=True)
        sys.exit(EXIT_USAGE)
    try:
        ruleset = load_rules(chosen, lenient_destinations=lenient_destinations)
        for warning in ruleset.warnings:
            report(f"(warning: {warning})", logging.WARNING, err=True)
        return ruleset
    except RulesError as error:
        report(f"revor-bridge: invalid rules file {error.path}:", logging.ERROR, err=True)
        for problem in error.problems:
            report(f"  {problem}", logging.ERROR, err=True)
        sys.exit(EXIT_USAGE)


@cli.command("preview")
@click.argument("event_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--source", help="hubspot, salesforce, pipedrive or generic:NAME (guessed when omitted).")
@click.option("--rules", "rules_path", help="Rules file (default: $RULES_FILE, else the bundled example).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def preview_command(event_file: str, source: str | None, rules_path: str | None, as_json: bool) -> None:
    """Dry run: which rules match EVENT_FILE, and the exact Revor payloads. Sends nothing."""
    settings = load_settings()
    if not rules_path and settings.rules_file is None:
        rules_path = str(EXAMPLE_RULES)
        click.echo(f"(RULES_FILE is unset: using the example rules {EXAMPLE_RULES})", err=True)
    ruleset = rules_or_exit(settings, rules_path, lenient_destinations=True)
    try:
        found = preview_payload(ruleset, Path(event_file).read_bytes(), source, file_name=Path(event_file).name)
    except PreviewError as error:  # the parser's message already says how to pass --source
        click.echo(f"revor-bridge: {event_file}: {error}", err=True)
        sys.exit(EXIT_USAGE)
    if found.read_as is not None:
        name, why = found.read_as
        click.echo(f"(no --source: reading it as {name}, {why}; pass --source generic:NAME to choose)", err=True)
    results = found.results
    if as_json:
        click.echo(json.dumps(results[0] if len(results) == 1 else results, indent=2))
        return
    for result in results:
        event = result["event"]
        click.echo(f"event {event['source']} {event['type']} {event['object']['type']} {event['object']['id']} "
                   f"(id {event['event_id']})")
        if event.get("hydrate"):
            click.echo("  note: this event is hydrated from HubSpot in the worker; the preview shows it as sent")
        for rule in result["rules"]:
            if not rule["matched"]:
                click.echo(f"  - {rule['name']}: no match: {rule['reason']}")
                continue
            click.echo(f"  + {rule['name']}: {rule['status']}"
                       + (f": {rule['reason']}" if rule["status"] != "ready" else ""))
            if rule["dispatch"]:
                click.echo(f"    dispatch id {rule['dispatch_id']} (the Idempotency-Key)"
                           + (f", once per {rule['once_per']!r}" if rule["once_per"] else ""))
                for line in json.dumps(rule["dispatch"], indent=2, ensure_ascii=False).splitlines():
                    click.echo(f"    {line}")


@cli.group("suppress")
def suppress_group() -> None:
    """The global suppression list: emails, phones and LinkedIn profiles never contacted."""


def _redis() -> redis.Redis:
    from integration.cli.processes import redis_settings
    from integration.storage import connect

    return connect(redis_settings(load_settings()).redis_url or "", decode=True)


def _change(values: tuple[str, ...], action: str) -> None:
    try:
        connection = _redis()
        keys = add_suppressions(connection, list(values)) if action == "add" else unsuppress(connection, list(values))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="VALUES") from None
    except redis.RedisError as exc:
        redis_unreachable(exc)
    for key in keys:
        click.echo(f"{'suppressed' if action == 'add' else 'removed'} {key}")


@suppress_group.command("add")
@click.argument("values", nargs=-1, required=True)
def suppress_add(values: tuple[str, ...]) -> None:
    """Never contact these (emails, E.164 phones, LinkedIn profile URLs)."""
    _change(values, "add")


@suppress_group.command("remove")
@click.argument("values", nargs=-1, required=True)
def suppress_remove(values: tuple[str, ...]) -> None:
    """Allow these again."""
    _change(values, "remove")


@suppress_group.command("list")
def suppress_list() -> None:
    """Show the suppression list."""
    try:
        entries = suppressed(_redis())
    except redis.RedisError as exc:
        redis_unreachable(exc)
    for entry in entries:
        click.echo(entry)
    if not entries:
        click.echo("(empty)", err=True)
