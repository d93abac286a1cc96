"""The writer class of each CRM kind, imported when first used (a webhook-only bridge loads none)."""

from __future__ import annotations

import importlib
from typing import Any

import redis

from integration.settings import Settings
from integration.writeback.crm.base import CrmWriter

CLASSES = {"hubspot": ("integration.writeback.crm.hubspot", "HubSpotWriter"),
           "salesforce": ("integration.writeback.crm.salesforce", "SalesforceWriter"),
           "pipedrive": ("integration.writeback.crm.pipedrive", "PipedriveWriter")}


def writer_class(kind: str) -> Any:
    module, name = CLASSES[kind]
    return getattr(importlib.import_module(module), name)


def build(kind: str, settings: Settings, connection: redis.Redis) -> CrmWriter:
    """A writer for `kind` (NotConfigured naming the missing setting)."""
    return writer_class(kind).from_settings(settings, connection)
