"""`revor-bridge dev`: the sandbox, the web process and a worker on this machine, until Ctrl-C.

What a Procfile runner would do, without one: every process uses one Redis (REDIS_URL, else the
embedded server, started once here and handed to the others), the example rules unless
RULES_FILE is set, and the sandbox unless REVOR_API_KEY is set. Each child runs in a session of
its own, so a Ctrl-C reaches this command only and the children are stopped in order (SIGTERM to
each process group, SIGKILL after a grace period): nothing is left running.

Everything listens on 127.0.0.1 only. Every port is checked before anything starts, so a port in
use is one line naming the option or setting to change, not a half-started set of processes.
With the example rules, their write-back destination (on 127.0.0.1) is served here by the same
verifying receiver as the demo's, which prints each status message; a destination of your own on
127.0.0.1 where nothing listens is pointed out in the banner.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from integration.cli import EXIT_FINAL, EXIT_UNREACHABLE, EXIT_USAGE, cli, load_settings, stop_process_groups
from integration.cli.receiver import receiver_app, status_line
from integration.localserver import LocalServer
from integration.storage import EmbeddedRedis, RedisUnavailable

if TYPE_CHECKING:
    from integration.rules.loader import RuleSet

EVENTS = Path(__file__).resolve().parent.parent / "demo_data" / "events"
STOP_GRACE_SECONDS = 20.0
START_TIMEOUT_SECONDS = 60.0


@dataclass
class Child:
    """One process `dev` started, and the loopback port it should listen on (None: it listens nowhere)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int | None = None


class _Stop(Exception):
    """SIGTERM (or SIGINT) arrived: stop the children and exit."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _spawn(name: str, args: list[str], env: dict[str, str], port: int | None = None) -> Child:
    # A session of its own: Ctrl-C in the terminal reaches `dev` only, which then stops each child in order.
    proc = subprocess.Popen([sys.executable, "-m", "integration", *args], env=env, start_new_session=True)
    return Child(name, proc, port)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


@dataclass
class LocalDestination:
    """A write-back destination on this machine (an http URL on 127.0.0.1)."""

    name: str
    url: str
    port: int
    path: str
    secret: str


def _local_destinations(ruleset: RuleSet) -> list[LocalDestination]:
    found = []
    for name, destination in ruleset.destinations.items():
        if destination.get("kind", "webhook") != "webhook":
            continue  # a CRM destination writes through the CRM's API: nothing to receive here
        parts = urlsplit(destination["url"])
        if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
            found.append(LocalDestination(name, destination["url"], parts.port or 80, parts.path or "/",
                                          destination["secret"]))
    return found


def _port_free(port: int) -> bool:
    """Whether 127.0.0.1:`port` can be listened on (as gunicorn and the sandbox will, SO_REUSEADDR included)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports_or_exit(wanted: list[tuple[str, int, str]]) -> None:
    """Every (what, port, how to change it) free and distinct, else one line naming the fix and exit 2."""
    problems, seen = [], {}
    for what, port, fix in wanted:
        if port in seen:
            problems.append(f"the {what} and the {seen[port]} both want port {port} ({fix})")
        elif not _port_free(port):
            problems.append(f"port {port} for the {what} is in use ({fix})")
        seen.setdefault(port, what)
    if problems:
        click.echo("revor-bridge: " + "; ".join(problems) + "; nothing was started", err=True)
        sys.exit(EXIT_USAGE)


def _start_receiver(destination: LocalDestination) -> LocalServer:
    """The demo's verifying receiver on the destination's port, printing each status message it gets."""
    seen: set[str] = set()

    def on_message(message_id: str, body: dict[str, Any]) -> None:
        if message_id not in seen:  # a retried delivery is the same message
            seen.add(message_id)
            click.echo(f"  write-back {destination.name}: {status_line(body)}", err=True)

    def on_refused(reason: str) -> None:
        click.echo(f"  write-back {destination.name}: {reason}", err=True)

    app = receiver_app(destination.secret, on_message, destination.path, on_refused=on_refused)
    return LocalServer(app, port=destination.port).start()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait_until_listening(children: list[Child]) -> Child | None:
    """Wait for every child's port; the first child that exited instead, or None when all listen."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    pending = [c for c in children if c.port]
    while pending and time.monotonic() < deadline:
        for child in children:
            if child.proc.poll() is not None:
                return child
        pending = [c for c in pending if not _listening(c.port or 0)]
        time.sleep(0.1)
    return pending[0] if pending else None


@cli.command()
@click.option("--sandbox-port", type=click.IntRange(1, 65535), default=None,
              help="Port of the sandbox [default: the port of REVOR_BASE_URL, else 8765].")
@click.option("--time-scale", type=click.FloatRange(min=0.001), default=1.0, show_default=True,
              help="Sandbox seconds per real second (60 makes a 180 s pacing interval pass in 3 s).")
def dev(sandbox_port: int | None, time_scale: float) -> None:
    """Run the sandbox, web and a worker together on one Redis until Ctrl-C (local development)."""
    from integration.cli.rules import EXAMPLE_RULES, rules_or_exit

    settings = load_settings()
    example = settings.rules_file is None
    rules_file = settings.rules_file or EXAMPLE_RULES
    ruleset = rules_or_exit(settings, str(rules_file))  # before anything starts: an invalid file leaves nothing running
    local = _local_destinations(ruleset)
    served = local if example else []  # the example rules' receiver is dev's; yours is yours to run
    port = sandbox_port or urlsplit(settings.revor_base_url).port or 8765
    wanted = [("sandbox", port, "choose another with --sandbox-port")] if settings.uses_sandbox else []
    wanted.append(("web process", settings.port, "set PORT to another"))
    wanted += [(f"write-back receiver of {d.name}", d.port, "set CRM_STATUS_WEBHOOK_URL to another "
                "http://127.0.0.1:<port>/revor-status") for d in served]
    _ports_or_exit(wanted)  # before Redis and the children: a taken port leaves nothing running

    env = dict(os.environ, RULES_FILE=str(rules_file), PYTHONUNBUFFERED="1")
    notes: list[str] = []
    if not settings.admin_token:
        env["ADMIN_TOKEN"] = f"dev-{secrets.token_urlsafe(18)}"
        notes.append(f"ADMIN_TOKEN={env['ADMIN_TOKEN']}  (made up for this run; set ADMIN_TOKEN to choose)")
    if example and "zapier" not in settings.generic_webhook_secrets:
        env["GENERIC_WEBHOOK_SECRET_ZAPIER"] = f"dev-{secrets.token_urlsafe(18)}"
        notes.append(f"GENERIC_WEBHOOK_SECRET_ZAPIER={env['GENERIC_WEBHOOK_SECRET_ZAPIER']}  (made up for this run)")

    embedded = None
    if settings.redis_url:
        redis_line = f"{settings.redis_url.split('@')[-1]}  (REDIS_URL)"
    else:
        try:
            embedded = EmbeddedRedis(settings.data_dir).start()
        except RedisUnavailable as exc:
            click.echo(f"revor-bridge: {exc}", err=True)
            sys.exit(EXIT_UNREACHABLE)
        env["REDIS_URL"] = embedded.url
        redis_line = f"{embedded.url}  (embedded, data in {embedded.folder})"

    children: list[Child] = []
    receivers: list[LocalServer] = []
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        receivers = [_start_receiver(d) for d in served]
        if settings.uses_sandbox:
            env["REVOR_BASE_URL"] = f"http://127.0.0.1:{port}/api/v1"
            children.append(_spawn("sandbox", ["sandbox", "--port", str(port), "--time-scale", str(time_scale)],
                                   env, port))
        children.append(_spawn("web", ["web", "--host", "127.0.0.1"], env, settings.port))
        children.append(_spawn("worker", ["worker"], env))
        failed = _wait_until_listening(children)
        if failed is None:  # a child that lost a race for its port exits just after another took it
            time.sleep(0.3)
            failed = next((c for c in children if c.proc.poll() is not None), None)
        if failed is not None:
            state = "exited" if failed.proc.poll() is not None else "does not listen"
            click.echo(f"revor-bridge: {failed.name} {state}; stopping the others", err=True)
            code = EXIT_FINAL
            return
        web = f"http://127.0.0.1:{settings.port}"
        click.echo("\n".join(_banner(settings, env, rules_file, example, redis_line, web, children[-1], notes,
                                     local, served)), err=True)
        while True:
            for child in children:
                if child.proc.poll() is not None:
                    click.echo(f"revor-bridge: {child.name} exited with code {child.proc.returncode}; "
                               "stopping the others", err=True)
                    code = EXIT_FINAL
                    return
            time.sleep(0.2)
    except _Stop:
        click.echo("revor-bridge dev: stopping", err=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean stop short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_process_groups([child.proc for child in children], STOP_GRACE_SECONDS)
        for receiver in receivers:
            receiver.stop()
        if embedded is not None and embedded.started_here:
            embedded.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        click.echo("revor-bridge dev: stopped", err=True)
        sys.exit(code)


def _banner(settings: Any, env: dict[str, str], rules_file: Path, example: bool, redis_line: str, web: str,
            worker: Child, notes: list[str], local: list[LocalDestination],
            served: list[LocalDestination]) -> list[str]:
    """Where everything listens, and what to try: the example's sample event only with the example rules."""
    lines = [
        "", "revor-bridge dev: running (Ctrl-C stops everything)",
        f"  redis    {redis_line}",
        f"  sandbox  {env['REVOR_BASE_URL']}" if settings.uses_sandbox else "  revor    REVOR_API_KEY is set: "
        f"the real Revor API at {settings.revor_base_url}",
        f"  web      {web}  (webhooks under /webhooks/..., status API under /api/v1)",
        f"  worker   pid {worker.proc.pid}",
        f"  rules    {rules_file}" + ("  (RULES_FILE is unset: the example rules)" if example else ""),
    ]
    for destination in served:
        lines.append(f"  write-back {destination.name} -> {destination.url}  (a receiver run by dev: it verifies "
                     "each signature and prints each status message below)")
    for destination in local:
        if destination not in served and not _listening(destination.port):
            lines.append(f"  WARNING: write-back {destination.name} -> {destination.url}: nothing listens there, so "
                         "every status message to it fails and is retried; start your receiver")
    lines += [f"  {note}" for note in notes]
    status = f"  curl -s {web}/api/v1/dispatches -H 'Authorization: Bearer {env['ADMIN_TOKEN']}'"
    if example:
        sample = EVENTS / "zapier-won-deal.json"
        lines += ["", "post a sample event (a Zapier hook the example rules turn into a WhatsApp message):",
                  f"  curl -s {web}/webhooks/generic/zapier -H 'Content-Type: application/json' "
                  f"-H 'X-Hook-Token: {env['GENERIC_WEBHOOK_SECRET_ZAPIER']}' --data-binary @{sample}"]
    else:
        lines += ["", f"post your events to {web}/webhooks/hubspot, /webhooks/salesforce?token=..., "
                  "/webhooks/pipedrive or /webhooks/generic/<name> (`revor-bridge check` names any setting "
                  "your rules' sources need); try your rules without posting: revor-bridge preview EVENT_FILE"]
    return [*lines, "see the dispatches:", status, ""]
