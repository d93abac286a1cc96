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
import sys
from typing import NoReturn

import click
from dotenv import load_dotenv

from integration.settings import Settings, SettingsError

EXIT_FINAL, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 1, 2, 3, 4


def load_settings() -> Settings:
    """Read `.env` (never overriding the real environment), then the settings; stop on an error."""
    load_dotenv(".env", override=False)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        click.echo(f"revor-bridge: configuration error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return settings


def redis_unreachable(exc: Exception) -> NoReturn:
    """A command whose Redis call failed: one line naming the error's kind (never the URL, which may
    hold a password) and exit 3, never a traceback."""
    click.echo(f"revor-bridge: Redis unreachable ({type(exc).__name__})", err=True)
    sys.exit(EXIT_UNREACHABLE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="revor-bridge")
def cli() -> None:
    """Revor Bridge: CRM events in, Revor outreach out."""


def main() -> None:
    from integration.cli import deliveries, demo, dev, events, processes, revor, rules  # noqa: F401  (registers the commands)

    cli(prog_name="revor-bridge")
