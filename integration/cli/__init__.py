"""`revor-bridge`: the command line. One module per group of commands.

Exit codes, shared by every command:
  0  done
  1  the remote side said no (a final Revor error, a job that failed or was cancelled, a check that failed)
  2  wrong input or configuration (click's usage errors, a malformed setting)
  3  Revor or Redis could not be reached, even after retries
  4  `job --wait` gave up before the job ended
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click
from dotenv import load_dotenv

from integration import logs
from integration.settings import Settings, SettingsError

EXIT_FINAL, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 1, 2, 3, 4


RULES_YAML_FILE = "rules-from-RULES_YAML.yaml"
# The Procfile's processes: everything they write is their log (JSON lines with LOG_FORMAT=json).
LOG_ONLY_COMMANDS = ("web", "worker", "check")


def rules_from_config_var(environ: Any = os.environ) -> None:
    """RULES_YAML holds the whole rules file (a Heroku config var, for an app deployed from the
    Deploy button without a fork): write it to the data folder and point RULES_FILE at it, in
    the environment, so this process, gunicorn's workers and every child read the same file."""
    text = environ.get("RULES_YAML")
    if not text:
        return
    if environ.get("RULES_FILE"):
        configuration_error("RULES_YAML and RULES_FILE are both set: keep one", environ)
    if "\n" not in text.strip() and not text.strip().startswith("{"):
        # A rules file is block YAML over many lines; on one line (not a {...} flow mapping) its line
        # breaks were lost: a one-line form field (the Deploy button's) turns them into spaces.
        configuration_error("RULES_YAML is one line: the rules file's line breaks were lost (a one-line form "
                            "field, such as the Deploy button's, flattens it); set it from the file with "
                            "`heroku config:set RULES_YAML=\"$(cat rules.yaml)\"`", environ)
    folder = Path(environ.get("BRIDGE_DATA_DIR") or ".revor-bridge")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RULES_YAML_FILE
    path.write_text(text, encoding="utf-8")
    environ["RULES_FILE"] = str(path.resolve())


def _format_for_errors(environ: Any) -> str:
    """The log format of a process that stops before its settings are read: LOG_FORMAT when it is
    valid (it may be the bad setting), else json on a dyno (as Settings would choose), else text."""
    chosen = (environ.get("LOG_FORMAT") or "").strip().lower()
    if chosen in ("text", "json"):
        return chosen
    return "json" if (environ.get("DYNO") or "").strip() else "text"


def configuration_error(message: str, environ: Any = os.environ) -> NoReturn:
    """A setting is wrong: one line on stderr and exit 2. With JSON logs (a dyno's log drain) the
    line is one JSON object at level ERROR, like every other line of the process."""
    text = f"revor-bridge: configuration error: {message}"
    if _format_for_errors(environ) == "json":
        context = click.get_current_context(silent=True)
        logs.set_process(context.info_name if context and context.info_name else "revor-bridge")
        record = logging.LogRecord("revor_bridge", logging.ERROR, __file__, 0, text, None, None)
        text = logs.JsonFormatter(secrets=()).format(record)
    click.echo(text, err=True)
    sys.exit(EXIT_USAGE)


def report(text: str, level: int = logging.INFO, err: bool = False) -> None:
    """A line of a command's report (the release check's). Where the output is the process's log
    (JSON lines, logs.configure), one object at `level`: a failure ERROR, a warning WARNING, so a
    log drain's alert sees them; elsewhere the text as it is."""
    stream = sys.stderr if err else sys.stdout
    if isinstance(stream, logs.JsonLines):
        text = logs.JsonFormatter().format(logging.LogRecord(stream.name, level, __file__, 0, text, None, None))
    click.echo(text, err=err)


def load_settings() -> Settings:
    """Read `.env` (never overriding the real environment), then the settings; stop on an error."""
    load_dotenv(".env", override=False)
    rules_from_config_var()
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        configuration_error(str(exc))
    context = click.get_current_context(silent=True)
    process = context.info_name if context and context.info_name else "revor-bridge"
    logs.configure(settings, process, whole_output=process in LOG_ONLY_COMMANDS)
    return settings


def redis_unreachable(exc: Exception) -> NoReturn:
    """A command whose Redis call failed: one line naming the error's kind (never the URL, which may
    hold a password) and exit 3, never a traceback."""
    click.echo(f"revor-bridge: Redis unreachable ({type(exc).__name__})", err=True)
    sys.exit(EXIT_UNREACHABLE)


def stop_process_groups(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM each process's group (its gunicorn workers, a worker's clock and job), last started
    first; after `grace` seconds SIGKILL whatever is left in each group (a grandchild whose parent
    already exited included). Each process was started with `start_new_session=True`."""
    for proc in reversed(procs):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for proc in reversed(procs):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="revor-bridge")
def cli() -> None:
    """Revor Bridge: CRM events in, Revor outreach out."""


def main() -> None:
    from integration.cli import deliveries, demo, dev, events, hubspot, imports, processes, revor, rules  # noqa: F401  (registers the commands)

    cli(prog_name="revor-bridge")
