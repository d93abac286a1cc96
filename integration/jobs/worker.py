"""The RQ worker class the bridge runs: Heroku's shutdown handling, quiet expected retries, and
riding out Redis outages.

`HerokuWorker` makes a job fail fast on SIGTERM (to be retried) instead of being SIGKILLed 30 s
later. On top of it, a failure the bridge expects and retries on schedule (Revor or HubSpot
briefly unavailable, a 429) is logged as one line instead of a traceback, so real errors stand
out in the logs.

Redis outages: RQ 2.12's work loop retries a lost connection only while it waits for a job; a
Redis error anywhere else (the heartbeat after a job, the suspension check, registry cleaning,
watching the work horse, the state it writes) ends the loop with "unhandled exception, quitting",
and its scheduler process dies on the first one. Here every step of the loop that touches Redis
waits for it instead (one log line per outage, back-off between probes) and the loop goes on: a
job popped before the outage is not run twice, and one lost in it is run again by its lease. The
work horse is left alone: a job that meets the outage fails like any other and is retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import StopRequested
from rq.scheduler import RQScheduler
from rq.worker import HerokuWorker

from integration.hydrate.hubspot import HubSpotError
from integration.jobs.outage import REDIS_DOWN, Outage, describe
from integration.jobs.pipeline import TransientError


class BridgeScheduler(RQScheduler):
    """RQ's scheduler (it enqueues retries when their interval is up), surviving Redis outages."""

    def work(self) -> None:
        outage = Outage(self.log, "scheduler")
        while True:
            try:
                super().work()
                return
            except REDIS_DOWN as error:
                self._connection = None  # a fresh pool once Redis is back
                if not outage.wait(error, lambda: self.connection.ping(), lambda: self._stop_requested):
                    return


class BridgeWorker(HerokuWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outage = Outage(self.log, "worker")

    # ---- Redis outages --------------------------------------------------------------------

    def _ride_out(self, error: BaseException) -> None:
        """Block until Redis answers again; a stop requested meanwhile ends the worker."""
        if not self.outage.wait(error, self.connection.ping, lambda: self._stop_requested):
            raise StopRequested()
        self._revive_scheduler()

    def _riding_out(self, call: Callable[..., Any], *args: Any) -> Any:
        """`call(*args)`, waiting out any Redis outage and trying again (never in the work horse)."""
        while True:
            try:
                return call(*args)
            except REDIS_DOWN as error:
                if self.is_horse:
                    raise
                self._ride_out(error)

    def _revive_scheduler(self) -> None:
        """RQ restarts a dead scheduler only every 10 minutes; after an outage, do it at once."""
        scheduler = self.scheduler
        if scheduler is not None and not (scheduler._process and scheduler._process.is_alive()):
            self._riding_out(scheduler.acquire_locks, True)

    def check_for_suspension(self, burst: bool) -> None:
        self._riding_out(super().check_for_suspension, burst)

    def run_maintenance_tasks(self) -> None:
        self._riding_out(super().run_maintenance_tasks)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        # Only fails before a job is popped: the heartbeat after the pop waits out an outage itself.
        return self._riding_out(super().dequeue_job_and_maintain_ttl, timeout, max_idle_time)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None or self.is_horse:
            super().heartbeat(timeout, pipeline)
            return
        self._riding_out(super().heartbeat, timeout, None)

    def execute_job(self, job: Any, queue: Any) -> None:
        try:
            super().execute_job(job, queue)
        except REDIS_DOWN as error:  # the horse has finished; its job is not run again from here
            self._ride_out(error)

    def maintain_heartbeats(self, job: Any) -> None:
        """While the horse works: a missed heartbeat must not abandon it (it goes on by itself)."""
        try:
            super().maintain_heartbeats(job)
        except REDIS_DOWN as error:
            self.outage.down(error)
        else:
            self.outage.up()

    def set_current_job_working_time(self, current_job_working_time: float, pipeline: Any = None) -> None:
        try:
            super().set_current_job_working_time(current_job_working_time, pipeline)
        except REDIS_DOWN as error:
            self.outage.down(error)

    def set_shutdown_requested_date(self) -> None:
        try:  # runs in the SIGTERM handler: an error here would surface in whatever code it interrupted
            super().set_shutdown_requested_date()
        except REDIS_DOWN as error:
            self.outage.down(error)

    def _shutdown(self) -> None:
        """SIGTERM while idle: RQ raises StopRequested from the signal handler. When that lands inside
        a log call, logging swallows it and the worker would run on until SIGKILL; the flag makes
        the loop stop after the job at hand either way."""
        self._stop_requested = True
        super()._shutdown()

    def teardown(self) -> None:
        try:
            super().teardown()
        except REDIS_DOWN as error:
            self.log.warning("worker: stopped without unregistering (Redis unreachable: %s)", describe(error))

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        """The command channel reconnects by itself; the outage is logged once by the main loop."""
        if isinstance(exc, REDIS_DOWN):
            time.sleep(2.0)
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    def _start_scheduler(self, burst: bool = False, logging_level: str | None = "INFO",
                         date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
                         log_format: str = DEFAULT_LOGGING_FORMAT) -> None:
        """RQ's own start-up of its scheduler (rq 2.12), with the scheduler that survives outages."""
        self.scheduler = BridgeScheduler(
            self.queues, connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format, log_format=log_format, serializer=self.serializer)
        self.scheduler.acquire_locks()
        if self.scheduler.acquired_locks:
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()
                finally:
                    self.scheduler.release_locks()
                    self.scheduler.register_death()
            else:
                self.scheduler.start()

    # ---- job failures ---------------------------------------------------------------------

    def handle_exception(self, job: Any, *exc_info: Any) -> None:
        error = exc_info[1]
        if isinstance(error, REDIS_DOWN):
            self.log.warning("job %s (%s): Redis unreachable (%s); run again once it is back", job.id,
                             job.func_name, describe(error))
        elif isinstance(error, TransientError) or (isinstance(error, HubSpotError) and error.retryable):
            self.log.warning("job %s (%s): %s; retried on schedule", job.id, job.func_name, error)
        else:
            super().handle_exception(job, *exc_info)
            return
        for handler in self._exc_handlers:
            if handler(job, *exc_info) is False:
                break
