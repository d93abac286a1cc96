"""The RQ worker class the bridge runs: Heroku's shutdown handling, quiet expected retries.

`HerokuWorker` makes a job fail fast on SIGTERM (to be retried) instead of being SIGKILLed 30 s
later. On top of it, a failure the bridge expects and retries on schedule (Revor or HubSpot
briefly unavailable, a 429) is logged as one line instead of a traceback, so real errors stand
out in the logs.
"""

from __future__ import annotations

from typing import Any

from rq.worker import HerokuWorker

from integration.hydrate.hubspot import HubSpotError
from integration.jobs.pipeline import TransientError


class BridgeWorker(HerokuWorker):
    def handle_exception(self, job: Any, *exc_info: Any) -> None:
        error = exc_info[1]
        expected = isinstance(error, TransientError) or (isinstance(error, HubSpotError) and error.retryable)
        if not expected:
            super().handle_exception(job, *exc_info)
            return
        self.log.warning("job %s (%s): %s; retried on schedule", job.id, job.func_name, error)
        for handler in self._exc_handlers:
            if handler(job, *exc_info) is False:
                break
