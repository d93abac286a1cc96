"""The RQ worker the bridge runs: non-forking, quiet about expected failures, riding out Redis
outages.

Non-forking (RQ's SimpleWorker): a fork per job cost more than the work of a whole batch of
units, and crash safety does not come from the fork: every unit is claimed in Redis with a
deadline (scheduler/units.py), so a worker that dies mid-job leaves claims that the clock hands
back. RQ's own scheduler is not started: the bridge schedules nothing through RQ.

SIGTERM (Heroku's shutdown): the job at hand finishes its batch and claims no more units (a
batch is bounded: seconds, not minutes), then the worker exits well inside Heroku's 30 s; a
second signal stops it at once, and the claims it leaves are handed back by the clock.

Redis outages: RQ's work loop retries a lost connection only while it waits for a job; a Redis
error anywhere else (the heartbeat after a job, the suspension check, registry cleaning, the
state it writes) ends the loop with "unhandled exception, quitting". Here every step of the loop
that touches Redis waits for it instead (one log line per outage, back-off between probes) and
the loop goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from rq.exceptions import StopRequested
from rq.worker import SimpleWorker

from integration.jobs import engine
from integration.scheduler.outage import REDIS_DOWN, Outage, describe

log = logging.getLogger(__name__)


class BridgeWorker(SimpleWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outage = Outage(self.log, "worker")
        engine.stop_requested.clear()  # a new worker in this process starts unstopped

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        """RQ's own start lines are INFO, quieted (logs.py): one line of ours instead."""
        super().bootstrap(*args, **kwargs)
        log.info("worker %s: started, listening on %s", self.name, ", ".join(self.queue_names()))

    # ---- the rules it runs, for importers (rules/fingerprint.py) ----------------------------

    def register_birth(self) -> None:
        """RQ's registration, then the fingerprint of this worker's rules: an import refuses to
        store rows planned with other rules than the workers send them with."""
        super().register_birth()
        from integration.context import job_context
        from integration.rules import fingerprint

        fingerprint.publish(self.connection, self.name, job_context().rules)

    def register_death(self) -> None:
        super().register_death()
        from integration.rules import fingerprint

        fingerprint.withdraw(self.connection, self.name)

    # ---- Redis outages --------------------------------------------------------------------

    def _ride_out(self, error: BaseException) -> None:
        """Block until Redis answers again; a stop requested meanwhile ends the worker."""
        if not self.outage.wait(error, self.connection.ping, lambda: self._stop_requested):
            raise StopRequested()

    def _riding_out(self, call: Callable[..., Any], *args: Any) -> Any:
        """`call(*args)`, waiting out any Redis outage and trying again."""
        while True:
            try:
                return call(*args)
            except REDIS_DOWN as error:
                if self.is_horse:
                    raise
                self._ride_out(error)

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
        engine.stop_requested.set()  # the batch at hand finishes; no new units are claimed
        super()._shutdown()

    def teardown(self) -> None:
        try:
            super().teardown()
        except REDIS_DOWN as error:
            self.log.warning("worker: stopped without unregistering (Redis unreachable: %s)", describe(error))
            return
        log.info("worker %s: stopped", self.name)

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        """The command channel reconnects by itself; the outage is logged once by the main loop."""
        if isinstance(exc, REDIS_DOWN):
            time.sleep(2.0)
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    # ---- job failures ---------------------------------------------------------------------

    def handle_exception(self, job: Any, *exc_info: Any) -> None:
        error = exc_info[1]
        if isinstance(error, REDIS_DOWN):
            self.log.warning("job %s (%s): Redis unreachable (%s); its units are run again once it is back",
                             job.id, job.func_name, describe(error))
        else:
            super().handle_exception(job, *exc_info)
            return
        for handler in self._exc_handlers:
            if handler(job, *exc_info) is False:
                break
