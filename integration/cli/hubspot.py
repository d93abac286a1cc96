"""`revor-bridge hubspot setup`: the custom properties HubSpot write-back sets, created once."""

from __future__ import annotations

import sys

import click

from integration.cli import EXIT_FINAL, EXIT_UNREACHABLE, EXIT_USAGE, cli, load_settings
from integration.writeback.crm.base import NotConfigured
from integration.writeback.crm.hubspot import HubSpotWriter
from integration.writeback.crm.hubspot_setup import OBJECTS, SetupError, setup

EXITS = {"usage": EXIT_USAGE, "unreachable": EXIT_UNREACHABLE, "refused": EXIT_FINAL}


@cli.group("hubspot")
def hubspot_group() -> None:
    """HubSpot write-back: set up the portal for `kind: hubspot` destinations."""


@hubspot_group.command("setup")
@click.option("--object", "objects", multiple=True, type=click.Choice(OBJECTS), show_default=True,
              help="Object to create the properties on (repeat it; default: deals and contacts).")
def setup_command(objects: tuple[str, ...]) -> None:
    """Create the "Revor" property group and the revor_status, revor_last_job_id, revor_last_sent_at
    and revor_last_error properties, where missing. Running it again changes nothing.

    Needs HUBSPOT_ACCESS_TOKEN: a private app's token with the crm.schemas.deals.write and
    crm.schemas.contacts.write scopes (and .read) for the chosen objects.
    """
    settings = load_settings()
    try:
        writer = HubSpotWriter.from_settings(settings, None)
    except NotConfigured as error:
        click.echo(f"revor-bridge: {error}", err=True)
        sys.exit(EXIT_USAGE)
    try:
        for object_type in dict.fromkeys(objects or OBJECTS):
            try:
                click.echo(setup(writer, object_type).line())
            except SetupError as error:
                click.echo(f"revor-bridge: {object_type}: {error}", err=True)
                sys.exit(EXITS[error.kind])
    finally:
        writer.close()
