"""A submit that dies after Revor accepted it but before `accepted` was recorded.

Revor has the task; the bridge's record still says `pending`. With the old engine the state
change and the tracking entry were two Redis writes, and a failure between them left an accepted
dispatch that nothing followed. Now the state change and the poll unit are one script: either
both are written or neither, and the submit unit's claim brings it back. This unit test makes
exactly that script fail once, as a Redis restart at that instant does. Everything else is real:
the Redis server, the sandbox over HTTP, the rules, the state machine and the scheduler.
"""

from __future__ import annotations

import hashlib
import time

import pytest
import redis

from integration.context import JobContext
from integration.dispatches import state
from integration.dispatches.create import create_dispatches
from integration.dispatches.submit import submit
from integration.dispatches.track import poll
from integration.scheduler import units
from integration.scheduler.runner import Run
from tests.conftest import bridge_settings, sandbox_tasks

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


class AcceptedWriteFails(redis.Redis):
    """Redis whose next state-change script to `accepted` fails (a restart at that instant)."""

    failing = False

    def _fail_now(self, script_or_sha, numkeys, args) -> None:
        transition = (state.TRANSITION, hashlib.sha1(state.TRANSITION.encode()).hexdigest())
        if AcceptedWriteFails.failing and script_or_sha in transition and "accepted" in args[numkeys:numkeys + 4]:
            AcceptedWriteFails.failing = False
            raise redis.ConnectionError("Connection closed by server.")

    def eval(self, script, numkeys, *args):
        self._fail_now(script, numkeys, args)
        return super().eval(script, numkeys, *args)

    def evalsha(self, sha, numkeys, *args):
        self._fail_now(sha, numkeys, args)
        return super().evalsha(sha, numkeys, *args)


def _run(handler, context, unit_id: str, now: float | None = None):
    """Claim the unit and run its stage, then record what comes next, as the engine does."""
    [(claimed, attempt)] = units.claim(context.redis, 1, 30, units=[unit_id], now=now)
    outcome = handler(context, Run(units.Unit.parse(claimed), attempt))
    if outcome.at is None:
        units.finish(context.redis, claimed)
    else:
        units.again(context.redis, claimed, outcome.at, counted=outcome.counted)


def test_a_submit_that_died_before_accepted_was_recorded_is_sent_once_and_followed(redis_url, redis_db, sandbox,
                                                                                       tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    context = JobContext.build(bridge_settings(redis_url, revor_base_url=sandbox.api_url, rules_file=rules))
    context.redis = AcceptedWriteFails.from_url(f"{redis_url}/1")
    try:
        event = {"source": "generic:zapier", "event_id": "zap-orphan-1", "type": "deal.stage_changed",
                 "account": None, "object": {"type": "deal", "id": "1"}, "deal": {"id": "1"},
                 "contact": {"phone": "+14155550199", "first_name": "Ada"}}
        [dispatch_id] = create_dispatches(context, "rb:event:zap-orphan-1", event, None)
        submit_unit, poll_unit = units.submit_unit(dispatch_id), units.poll_unit(dispatch_id)
        assert redis_db.zscore(units.DUE, submit_unit) is not None  # created with its submit due, in one script

        AcceptedWriteFails.failing = True
        with pytest.raises(redis.ConnectionError):
            _run(submit, context, submit_unit)
        assert len(sandbox_tasks(sandbox)) == 1  # Revor has it...
        assert state.load(redis_db, dispatch_id)["status"] == "pending"  # ...the record does not, nor a poll
        assert redis_db.zscore(units.DUE, poll_unit) is None
        assert redis_db.zscore(units.CLAIMED, submit_unit) is not None  # the claim is what brings it back

        later = time.time() + 31
        assert units.recover(redis_db, now=later) == [submit_unit]  # the clock, once the claim ran out
        assert units.attempts(redis_db, submit_unit) == 1  # its attempt count is kept
        _run(submit, context, submit_unit, now=later)
        assert state.load(redis_db, dispatch_id)["status"] == "accepted"
        assert redis_db.zscore(units.DUE, poll_unit) is not None  # accepted and followed, together
        assert len(sandbox_tasks(sandbox)) == 1  # the same Idempotency-Key: still one task

        deadline = time.monotonic() + 30  # the job is followed to its end by ordinary polls
        while state.load(redis_db, dispatch_id)["status"] != "succeeded" and time.monotonic() < deadline:
            redis_db.zadd(units.DUE, {poll_unit: 0})
            _run(poll, context, poll_unit)
            time.sleep(0.2)
        assert state.load(redis_db, dispatch_id)["status"] == "succeeded"
    finally:
        AcceptedWriteFails.failing = False
        context.redis.close()
