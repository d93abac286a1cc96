"""The long-running processes (`sandbox`, `web`, `worker`) and the release check (`check`)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from urllib.parse import urlsplit

import click
import redis

from integration.cli import EXIT_FINAL, EXIT_UNREACHABLE, cli, load_settings, report
from integration.revor import RevorClient, RevorError
from integration.settings import Settings
from integration.storage import RedisUnavailable, connect, resolve_redis_url

QUEUES = ("high", "default", "low")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--time-scale", type=click.FloatRange(min=0.001), default=1.0, show_default=True,
              help="Sandbox seconds per real second: 60 makes a 180 s pacing interval pass in 3 s.")
@click.option("--rate-limit", type=click.IntRange(min=0), default=600, show_default=True,
              help="Requests per window per key before 429 (0 = unlimited).")
@click.option("--rate-window-ms", type=click.IntRange(min=1), default=60_000, show_default=True)
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0, help="Share of POSTs answered 503.")
@click.option("--drop-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Share of new dispatches whose connection drops after the task was created.")
@click.option("--latency-ms", type=click.IntRange(min=0), default=0, help="Added to every request.")
@click.option("--job-failure-rate", type=click.FloatRange(0, 1), default=0.0, help="Share of jobs that fail.")
@click.option("--seed", type=int, default=None, help="Seed for the fault dice, for repeatable runs.")
@click.option("--verbose", is_flag=True, help="Log every request.")
def sandbox(host: str, port: int, time_scale: float, rate_limit: int, rate_window_ms: int, error_rate: float,
            drop_rate: float, latency_ms: int, job_failure_rate: float, seed: int | None, verbose: bool) -> None:
    """Run the local Revor sandbox (API under /api/v1, controls under /_sandbox)."""
    import socket

    from integration.sandbox.core import Faults
    from integration.sandbox.server import GunicornSandbox

    faults = Faults(error_rate=error_rate, drop_rate=drop_rate, latency_ms=latency_ms,
                    job_failure_rate=job_failure_rate, rate_limit=rate_limit, rate_window_ms=rate_window_ms,
                    time_scale=time_scale)
    try:  # a clear line now rather than gunicorn's retries when the port is taken
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        click.echo(f"revor-bridge: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    api_url = f"http://{host}:{port}/api/v1"
    click.echo(f"Revor sandbox listening on {api_url}  (API key: sk-revor-sandbox)", err=True)
    click.echo(f"  use it with: REVOR_BASE_URL={api_url}  (leave REVOR_API_KEY unset)", err=True)
    GunicornSandbox(host, port, faults=faults, seed=seed, quiet=not verbose).run()


def redis_settings(settings: Settings) -> Settings:
    """Settings whose redis_url is set: REDIS_URL, or the embedded server (started or reused)."""
    try:
        url, embedded = resolve_redis_url(settings.redis_url, settings.data_dir)
    except RedisUnavailable as exc:
        click.echo(f"revor-bridge: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    if embedded:
        click.echo(f"(REDIS_URL is unset: embedded Redis at {url}, data in {embedded.folder})", err=True)
    return replace(settings, redis_url=url)


@cli.command()
@click.option("--host", default="0.0.0.0", show_default=True,  # noqa: S104 - a dyno must listen on every address
              help="Address to listen on (`dev` uses 127.0.0.1).")
def web(host: str) -> None:
    """Run the web process (gunicorn on $PORT: $WEB_CONCURRENCY processes of $WEB_THREADS threads)."""
    from integration.cli.rules import rules_or_exit
    from integration.web.serving import WebServer, gunicorn_options

    settings = load_settings()
    if settings.rules_file:  # before Redis: a refused start must not leave an embedded server running
        rules_or_exit(settings)  # refuse to start on an invalid rules file, with every problem listed
    settings = redis_settings(settings)
    os.environ["REDIS_URL"] = settings.redis_url or ""
    options = gunicorn_options(settings)
    options["bind"] = [f"{host}:{settings.port}"]
    WebServer(options).run()


@cli.command()
@click.option("--burst", is_flag=True, help="Stop when the queues are empty (for scripts and tests).")
def worker(burst: bool) -> None:
    """Run the worker: a non-forking RQ worker on high, default and low, and its clock."""
    from rq import Queue

    from integration.cli.rules import rules_or_exit
    from integration.context import JobContext, install

    settings = load_settings()
    if settings.rules_file:  # before Redis: a refused start must not leave an embedded server running
        rules_or_exit(settings)
    settings = redis_settings(settings)
    context = JobContext.build(settings)
    install(context)  # jobs run with these settings and clients, like flask-rq's app context
    connection = context.redis
    reachable_or_exit(connection, settings.redis_url or "")
    queues = [Queue(name, connection=connection, serializer="json") for name in QUEUES]
    clock = None
    if not burst:
        import multiprocessing

        from integration.scheduler import clock as clock_module

        # Started before the RQ worker and the engine's threads, so no thread exists when it forks.
        clock = multiprocessing.get_context("fork").Process(target=clock_module.run, args=(settings,),
                                                            name="revor-bridge-clock", daemon=True)
        clock.start()
    try:
        from integration.jobs.worker import BridgeWorker
        from integration.scheduler.outage import REDIS_DOWN, describe

        BridgeWorker(queues, connection=connection, serializer="json").work(with_scheduler=False, burst=burst)
    except REDIS_DOWN as exc:  # gone again before the loop started; in the loop, outages are waited out
        click.echo(f"revor-bridge: Redis unreachable ({describe(exc)})", err=True)
        sys.exit(EXIT_UNREACHABLE)
    finally:
        if clock is not None:
            clock.terminate()
            clock.join(timeout=5)


def reachable_or_exit(connection: redis.Redis, url: str) -> None:
    """One line and exit 3 when Redis does not answer (after redis-py's own retries)."""
    from integration.scheduler.outage import describe

    try:
        connection.ping()
    except redis.RedisError as exc:
        parts = urlsplit(url)
        where = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else "REDIS_URL"  # never the password
        click.echo(f"revor-bridge: Redis unreachable at {where} ({describe(exc)}); start it or fix REDIS_URL",
                   err=True)
        sys.exit(EXIT_UNREACHABLE)


@cli.command()
def check() -> None:
    """Validate settings and rules, reach Redis and Revor, check each rule's account and each CRM
    destination's credentials and properties (creating nothing); the release phase.

    Its report is its log on a dyno (JSON lines): a failure is a line at ERROR, a warning at WARNING."""
    from integration.cli.rules import rules_or_exit

    settings = load_settings()
    missing = production_gaps(os.environ)
    for line in missing:
        report(f"settings: {line}", logging.ERROR)
    if missing:
        sys.exit(EXIT_FINAL)
    report("settings: ok")
    failed = unreachable = False
    ruleset = None
    if settings.rules_file:
        ruleset = rules_or_exit(settings)
        report(f"rules: ok ({len(ruleset.rules)} rules in {settings.rules_file})")
        for warning in missing_source_settings(ruleset, settings):
            report(f"warning: {warning}", logging.WARNING)
    else:
        report("rules: RULES_FILE is unset: web and worker use no rules (events are stored and processed, "
               "nothing is sent); preview and dev use the example rules")
    if settings.redis_url:
        embedded_note, connection = "", connect(settings.redis_url)
    else:
        from integration.storage import EmbeddedRedis

        running = EmbeddedRedis(settings.data_dir)._running()  # noqa: SLF001 - find it, never start one here
        embedded_note = f" (REDIS_URL is unset: the embedded server at 127.0.0.1:{running[1]})" if running else ""
        connection = connect(f"redis://127.0.0.1:{running[1]}/0") if running else None
        if connection is None:
            report(f"redis: not checked: REDIS_URL is unset and no embedded server runs in "
                   f"{EmbeddedRedis(settings.data_dir).folder}; web, worker and dev start one there (a deployed "
                   "app needs REDIS_URL)", logging.WARNING)
    if connection is not None:
        try:
            connection.ping()
            report(f"redis: ok{embedded_note}")
        except redis.RedisError as exc:
            report(f"redis: unreachable ({type(exc).__name__}){embedded_note}", logging.ERROR)
            unreachable = True
    from integration.cli.revor import report_errors_once
    from integration.revor.errors import RevorConnectionError, RevorFinalError

    report_errors_once()
    revor_error: RevorError | None = None
    accounts = None
    try:
        with RevorClient.from_settings(settings) as client:
            accounts = client.list_accounts().data
        where = "sandbox" if settings.uses_sandbox else "Revor"
        sendable = sum(1 for a in accounts if a["can_send"])
        report(f"revor: ok ({where}, {len(accounts)} accounts, {sendable} can send)")
    except RevorError as error:
        revor_error = error
        report(f"revor: {error}", logging.ERROR)
        if settings.uses_sandbox and isinstance(error, RevorConnectionError):
            report(f"  REVOR_API_KEY is unset, so this is the local sandbox at {settings.revor_base_url}: "
                   "is the sandbox running? start it with `revor-bridge sandbox`, or set REVOR_API_KEY", logging.ERROR)
    if ruleset is not None:
        if accounts is not None:
            failed = _check_rule_accounts(ruleset, accounts) or failed
        elif ruleset.rules:
            report("accounts: not checked (Revor did not answer)", logging.WARNING)
        # The CRMs are checked whatever Revor said: they are another system, and a release that
        # fails on Revor should still say what else is wrong.
        failed = _check_crm_destinations(ruleset, settings, None if unreachable else connection) or failed
    if revor_error is not None:
        sys.exit(EXIT_FINAL if isinstance(revor_error, RevorFinalError) else EXIT_UNREACHABLE)
    sys.exit(EXIT_UNREACHABLE if unreachable else EXIT_FINAL if failed else 0)


def production_gaps(environ: Mapping[str, str]) -> list[str]:
    """On a dyno (`DYNO` is set), what a deployed app cannot run without, one line each: locally
    an unset REDIS_URL means the embedded server and an unset REVOR_API_KEY the sandbox on
    127.0.0.1, which on Heroku would mean a service that quietly sends nothing anywhere."""
    if not environ.get("DYNO"):
        return []
    gaps = []
    if not (environ.get("REDIS_URL") or environ.get("REDIS_TLS_URL")):
        gaps.append("REDIS_URL (or REDIS_TLS_URL) is unset: add Redis (the heroku-redis add-on sets it)")
    if not environ.get("REVOR_API_KEY"):
        gaps.append("REVOR_API_KEY is unset: without it the bridge would talk to a sandbox on 127.0.0.1 "
                    "(set your sk-revor-... key)")
    return gaps


def missing_source_settings(ruleset: object, settings: Settings) -> list[str]:
    """One line per rule source whose endpoint is not configured: its events could never arrive.

    A warning, not a failure: the endpoint answers 503 (a generic hook 404) until it is configured, and a
    deploy may come before the setting. It names the setting(s) to set and the rules that wait for it.
    """
    from integration.inbound.generic import setting_name

    needs: dict[str, list[str]] = {}
    for rule in ruleset.rules:  # type: ignore[attr-defined]
        for source in rule.when["source"]:
            needs.setdefault(source, []).append(rule.name)
    lines = []
    for source, rules in needs.items():
        if source == "hubspot":
            missing = [] if settings.hubspot_client_secret else ["HUBSPOT_CLIENT_SECRET"]
        elif source == "salesforce":
            missing = [name for name, value in (("SALESFORCE_ORG_IDS", settings.salesforce_org_ids),
                                                ("SALESFORCE_WEBHOOK_TOKEN", settings.salesforce_webhook_token))
                       if not value]
        elif source == "pipedrive":
            missing = [name for name, value in (("PIPEDRIVE_WEBHOOK_USER", settings.pipedrive_webhook_user),
                                                ("PIPEDRIVE_WEBHOOK_PASSWORD", settings.pipedrive_webhook_password))
                       if not value]
        else:
            hook = source.split(":", 1)[1]
            missing = ([] if setting_name(hook) in settings.generic_webhook_secrets
                       else [f"GENERIC_WEBHOOK_SECRET_{setting_name(hook).upper()}"])
        if missing:
            endpoint = f"/webhooks/generic/{source.split(':', 1)[1]}" if source.startswith("generic:") \
                else f"/webhooks/{source}"
            answer = "404 (no such hook)" if source.startswith("generic:") else "503"
            lines.append(f"source {source} ({', '.join(repr(r) for r in rules)}): {' and '.join(missing)} "
                         f"unset, so {endpoint} answers {answer} and these rules get no events")
    return lines


def _check_rule_accounts(ruleset: object, accounts: list[dict]) -> bool:
    """Each rule's account exists, matches its channel and can send; a status other than ok warns."""
    by_id = {a["account_id"]: a for a in accounts}
    failed = False
    for rule in ruleset.rules:  # type: ignore[attr-defined]
        spec = rule.dispatch
        account = by_id.get(spec.account_id)
        if account is None:
            report(f"rule {rule.name!r}: account {spec.account_id} does not exist for this key", logging.ERROR)
            failed = True
        elif account["channel"] != spec.channel:
            report(f"rule {rule.name!r}: account {spec.account_id} is {account['channel']}, "
                   f"the rule sends {spec.channel}", logging.ERROR)
            failed = True
        elif not account["can_send"]:
            report(f"rule {rule.name!r}: account {spec.account_id} cannot send (status {account['status']}); "
                   f"reconnect it at https://revor.ai/console/connect", logging.ERROR)
            failed = True
        else:
            warning = f" (warning: status {account['status']})" if account.get("status") not in ("ok", None) else ""
            report(f"rule {rule.name!r}: account ok{warning}", logging.WARNING if warning else logging.INFO)
    return failed


CRM_NAMES = {"hubspot": "HubSpot", "salesforce": "Salesforce", "pipedrive": "Pipedrive"}


def _check_crm_destinations(ruleset: object, settings: Settings, connection: redis.Redis | None) -> bool:
    """Each CRM destination's credentials work and every property it maps exists; one line per problem.

    Read-only: it asks each CRM for a token and its property / field lists and never creates or changes
    anything (`revor-bridge hubspot setup` creates HubSpot's). The calls take from the same rate limiters
    the workers use, when Redis answers.
    """
    from integration.writeback.crm import writers
    from integration.writeback.crm.base import NotConfigured
    from integration.writeback.crm.config import needs

    failed = False
    for name, destination in ruleset.crm_destinations.items():  # type: ignore[attr-defined]
        wanted = needs(ruleset, name)
        try:
            writer = writers.build(destination.kind, settings, connection)
        except NotConfigured as exc:
            report(f"destination {name}: {exc}", logging.ERROR)
            failed = True
            continue
        try:
            problems = writer.check(wanted)
        except Exception as exc:  # noqa: BLE001 - an answer no writer foresaw: one line, then the next destination
            problems = [f"unexpected answer from {CRM_NAMES[destination.kind]} ({type(exc).__name__})"]
        finally:
            writer.close()
        for problem in problems:
            report(f"destination {name}: {problem}", logging.ERROR)
        if problems:
            failed = True
            continue
        written = "; ".join(f"{obj}: {', '.join(props) if props else 'no properties'}" for obj, props in wanted.items())
        report(f"destination {name}: ok ({CRM_NAMES[destination.kind]}, {written})")
    return failed
