"""What the worker's units need (settings, Redis, the wake queue, rules, API clients), built once
per worker process.

The worker builds it at start-up (`revor-bridge worker`), the way flask-rq runs jobs inside an
app context; a job run by any other RQ worker builds it from the environment on first use.
Nothing is created at import time. The engine runs units on a few threads, so the HTTP clients
(each a `requests.Session`) are one per thread; Redis' client is thread-safe and shared.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis
from rq import Queue

from integration.hydrate.hubspot import HubSpotClient
from integration.metrics import process_tally
from integration.revor.client import RevorClient
from integration.rules.loader import RuleSet, load_rules
from integration.settings import Settings
from integration.storage import connect
from integration.writeback.crm.base import CrmWriter
from integration.writeback.crm.writers import build as build_writer


@dataclass
class JobContext:
    settings: Settings
    redis: redis.Redis
    queue: Queue
    rules: RuleSet | None = None
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def destinations(self) -> dict[str, list[str]]:
        """Destination name -> the statuses it wants, from the rules file."""
        if self.rules is None:
            return {}
        return self.rules.destination_statuses()

    @property
    def revor(self) -> RevorClient:
        client = getattr(self._local, "revor", None)
        if client is None:
            # Each request is tallied for /metrics; the engine adds the tally to Redis after each run.
            client = self._local.revor = RevorClient.from_settings(self.settings,
                                                                   observe=process_tally().revor_request)
        return client

    @property
    def hubspot(self) -> HubSpotClient | None:
        if self.settings.hubspot_access_token is None:
            return None
        client = getattr(self._local, "hubspot", None)
        if client is None:
            client = self._local.hubspot = HubSpotClient(self.settings.hubspot_api_base_url,
                                                         self.settings.hubspot_access_token.get())
        return client

    def crm_writer(self, kind: str) -> CrmWriter:
        """This thread's writer for a CRM destination kind (NotConfigured: its settings are missing)."""
        writers = getattr(self._local, "crm", None)
        if writers is None:
            writers = self._local.crm = {}
        if kind not in writers:
            writers[kind] = build_writer(kind, self.settings, self.redis)
        return writers[kind]

    @classmethod
    def build(cls, settings: Settings) -> JobContext:
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL: missing for the worker")
        connection = connect(settings.redis_url)
        rules = load_rules(settings.rules_file) if settings.rules_file else None
        return cls(settings, connection, Queue("default", connection=connection, serializer="json"), rules)


_current: JobContext | None = None


def install(context: JobContext) -> None:
    global _current
    _current = context


def job_context() -> JobContext:
    global _current
    if _current is None:
        _current = JobContext.build(Settings.from_env())
    return _current
