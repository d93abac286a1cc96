"""What a job needs (settings, Redis, queues, API clients), built once per worker process.

The worker builds it at start-up (`revor-bridge worker`), the way flask-rq runs jobs inside an
app context; a job run by any other RQ worker builds it from the environment on first use.
Nothing is created at import time.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from rq import Queue

from integration.hydrate.hubspot import HubSpotClient
from integration.revor.client import RevorClient
from integration.rules.loader import RuleSet, load_rules
from integration.settings import Settings
from integration.storage import connect


@dataclass
class JobContext:
    settings: Settings
    redis: redis.Redis
    queue: Queue
    hubspot: HubSpotClient | None
    rules: RuleSet | None = None
    revor: RevorClient | None = None

    def destinations(self) -> dict[str, list[str]]:
        """Destination name -> the statuses it wants, from the rules file."""
        if self.rules is None:
            return {}
        return self.rules.destination_statuses()

    @classmethod
    def build(cls, settings: Settings) -> JobContext:
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL: missing for the worker")
        connection = connect(settings.redis_url)
        hubspot = None
        if settings.hubspot_access_token is not None:
            hubspot = HubSpotClient(settings.hubspot_api_base_url, settings.hubspot_access_token.get())
        rules = load_rules(settings.rules_file) if settings.rules_file else None
        return cls(settings, connection, Queue("default", connection=connection, serializer="json"), hubspot, rules,
                   RevorClient.from_settings(settings))


_current: JobContext | None = None


def install(context: JobContext) -> None:
    global _current
    _current = context


def job_context() -> JobContext:
    global _current
    if _current is None:
        _current = JobContext.build(Settings.from_env())
    return _current
