"""A submit that dies between `accepted` and tracking: the recovery run must still follow the job.

The window is a few microseconds (the state change and the `rb:track` entry are two Redis
writes), too narrow for a SIGKILL to land in on purpose, so this unit test of `submit_dispatch`
makes exactly that second write fail, as a Redis restart at that moment does. Everything else is
real: the Redis server, the sandbox over HTTP, the rules, the state machine.
"""

from __future__ import annotations

import time

import redis

from integration.dispatches import state
from integration.jobs import leases, pipeline
from integration.jobs.context import JobContext, install
from tests.conftest import bridge_settings

RULES = """\
version: 1
accounts: {wa: connect_account_sandbox_whatsapp}
rules:
  - name: won-whatsapp
    when: {source: "generic:zapier", type: deal.stage_changed}
    dispatch:
      account: wa
      channel: whatsapp
      recipient: {phone: "{{ contact.phone }}"}
      content: {text: "Hi {{ contact.first_name }}"}
      interval_seconds: 60
"""


class TrackingWriteFails(redis.Redis):
    """Redis whose ZADD to the tracking set fails while `failing` is set (a restart at that instant)."""

    failing = True

    def zadd(self, name, *args, **kwargs):
        if name == leases.TRACK and TrackingWriteFails.failing:
            raise redis.ConnectionError("Connection closed by server.")
        return super().zadd(name, *args, **kwargs)


def test_a_submit_that_died_before_tracking_is_tracked_by_its_recovery_run(redis_url, redis_db, sandbox, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    settings = bridge_settings(redis_url, revor_base_url=sandbox.api_url, rules_file=rules)
    context = JobContext.build(settings)
    context.redis = TrackingWriteFails.from_url(f"{redis_url}/1")
    install(context)
    try:
        event = {"source": "generic:zapier", "event_id": "zap-orphan-1", "type": "deal.stage_changed",
                 "account": None, "object": {"type": "deal", "id": "1"}, "deal": {"id": "1"},
                 "contact": {"phone": "+14155550199", "first_name": "Ada"}}
        [dispatch_id] = pipeline.create_dispatches(context, "rb:event:zap-orphan-1", event, None)
        TrackingWriteFails.failing = True
        try:
            pipeline.submit_dispatch(dispatch_id)
            raise AssertionError("the injected Redis failure did not happen")
        except redis.ConnectionError:
            pass
        assert state.load(redis_db, dispatch_id)["status"] == "accepted"
        assert redis_db.zscore(leases.SUBMIT, dispatch_id) is not None  # the lease brings it back
        assert redis_db.zscore(leases.TRACK, dispatch_id) is None       # ...but nothing follows the job

        TrackingWriteFails.failing = False
        assert pipeline.submit_dispatch(dispatch_id) == "accepted"      # the clock's recovery run
        assert redis_db.zscore(leases.TRACK, dispatch_id) is not None
        assert redis_db.zscore(leases.SUBMIT, dispatch_id) is None

        # The tracked job is followed to its end by the ordinary poller.
        deadline = time.monotonic() + 30
        while state.load(redis_db, dispatch_id)["status"] != "succeeded" and time.monotonic() < deadline:
            redis_db.zadd(leases.TRACK, {dispatch_id: 0})
            pipeline.poll_due()
            time.sleep(0.2)
        assert state.load(redis_db, dispatch_id)["status"] == "succeeded"
    finally:
        TrackingWriteFails.failing = True
        install(None)
        context.redis.close()
