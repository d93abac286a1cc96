"""The Revor client against the Revor sandbox over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import time

import pytest

from integration.revor import (
    RetryPolicy,
    RevorClient,
    RevorConnectionError,
    RevorFinalError,
    RevorInvalidPayload,
    RevorRetryableError,
)
from schemas.revor import TERMINAL_JOB_STATUSES
from tests.conftest import configure, sandbox_requests, sandbox_tasks

EMAIL = {"account_id": "connect_account_sandbox_email", "channel": "email", "action": "outreach",
         "recipient": {"address": "alex@example.com", "name": "Alex"},
         "content": {"subject": "Quick introduction", "text": "Hi Alex"}}
LINKEDIN = {"account_id": "connect_account_sandbox_linkedin", "channel": "linkedin", "action": "outreach",
            "recipient": {"profile_url": "https://www.linkedin.com/in/test-user/"},
            "content": {"text": "Hi Alex, wanted to connect."}}
WHATSAPP = {"account_id": "connect_account_sandbox_whatsapp", "channel": "whatsapp", "action": "outreach",
            "recipient": {"phone": "+14155552671"}, "content": {"text": "Hi Alex"}}


class RecordingSleep:
    """A sleep that really sleeps and remembers how long it was asked to."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        time.sleep(seconds)


def follow(client: RevorClient, job_id: str, timeout: float = 10) -> list[str]:
    """Poll a job to its end; return the distinct statuses seen, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job(job_id).data["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in TERMINAL_JOB_STATUSES:
            return seen
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} did not end; saw {seen}")


@pytest.mark.parametrize("payload", [EMAIL, LINKEDIN, WHATSAPP], ids=["email", "linkedin", "whatsapp"])
def test_each_channel_reaches_succeeded(client, sandbox, payload):
    created = client.create_dispatch(payload, f"happy-{payload['channel']}")
    assert created.status == 202
    assert created.request_id.startswith("req_")
    assert created.data["status"] == "queued"
    assert created.data["channel"] == payload["channel"]
    seen = follow(client, created.data["id"])
    # The sandbox's clock runs 50x: on a loaded machine the first poll may already see it running.
    assert seen[-1] == "succeeded"
    order = ["queued", "scheduled", "running", "succeeded"]
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen)
    job = client.get_job(created.data["id"]).data
    assert job["result"]["status"] == "accepted"
    assert job["finished_at"] and job["started_at"]
    sent = [r for r in sandbox_requests(sandbox) if r["method"] == "POST"]
    assert sent[0]["idempotency_key"] == f"happy-{payload['channel']}"
    assert sent[0]["body"]["recipient"] == payload["recipient"]


def test_linkedin_resolves_invitation_or_direct_message(client, sandbox):
    configure(sandbox, time_scale=200.0)  # three LinkedIn tasks on one account are paced 60 s apart
    stranger = client.create_dispatch(LINKEDIN, "li-stranger").data["id"]
    connected = client.create_dispatch(
        {**LINKEDIN, "recipient": {"profile_url": "https://www.linkedin.com/in/sandbox-connected/"}}, "li-friend"
    ).data["id"]
    long_note = client.create_dispatch({**LINKEDIN, "content": {"text": "x" * 201}}, "li-long").data["id"]
    for job_id in (stranger, connected, long_note):
        follow(client, job_id)
    assert client.get_job(stranger).data["result"]["resolved_action"] == "invitation"
    assert client.get_job(connected).data["result"]["resolved_action"] == "direct_message"
    failed = client.get_job(long_note).data
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "invitation_note_too_long", "message": "invitation_note_too_long",
                               "request_id": None, "retryable": False}


def test_accounts_lists_and_filters(client):
    everything = client.list_accounts().data
    assert {a["channel"] for a in everything} == {"email", "linkedin", "whatsapp"}
    sendable_email = client.list_accounts(channel="email", can_send=True).data
    assert [a["account_id"] for a in sendable_email] == ["connect_account_sandbox_email"]
    blocked = client.list_accounts(can_send=False).data
    assert [a["status"] for a in blocked] == ["credentials"]


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [("sk-revor-wrong", 401, "api_key_invalid"), ("sk-revor-sandbox-noscope", 403, "permission_denied")],
)
def test_bad_keys_are_final(sandbox, key, status, code):
    with RevorClient(sandbox.api_url, key) as bad, pytest.raises(RevorFinalError) as caught:
        bad.list_accounts(retry=RetryPolicy(attempts=4, base_delay=0.01))
    assert (caught.value.status, caught.value.code) == (status, code)
    assert caught.value.request_id.startswith("req_")
    assert len(sandbox_requests(sandbox)) == 1  # final: not retried


def test_missing_key_is_reported(sandbox):
    with RevorClient(sandbox.api_url, "") as anonymous:
        anonymous.session.headers.pop("Authorization")
        with pytest.raises(RevorFinalError) as caught:
            anonymous.get_job("job_1")
    assert (caught.value.status, caught.value.code) == (401, "api_key_missing")


def _raw(payload: dict) -> bytes:
    return json.dumps(payload).encode()


# Bodies sent as raw bytes, bypassing the client's own schema, to see the sandbox's answers.
SANDBOX_REJECTIONS = [
    ({**EMAIL, "account_id": ""}, 400, "account_id_required"),
    ({**EMAIL, "channel": "sms"}, 400, "invalid_channel"),
    ({**EMAIL, "action": "blast"}, 400, "invalid_action"),
    ({**EMAIL, "recipient": {}}, 400, "recipient_address_required"),
    ({**EMAIL, "content": {"text": "no subject"}}, 400, "content_subject_required"),
    ({**EMAIL, "content": {"subject": "no body"}}, 400, "content_text_or_html_required"),
    ({**LINKEDIN, "recipient": {}}, 400, "recipient_profile_url_required"),
    ({**LINKEDIN, "content": {}}, 400, "content_text_or_attachment_required"),
    ({**WHATSAPP, "recipient": {}}, 400, "recipient_phone_required"),
    ({**WHATSAPP, "recipient": {"phone": "0415 555 2671"}}, 400, "invalid_recipient_phone"),
    ({**WHATSAPP, "content": {"attachments": [{"filename": "a.pdf", "contentBase64": "%%%"}]}}, 400,
     "invalid_attachment"),
    ({**WHATSAPP, "metadata": ["not", "an", "object"]}, 400, "invalid_metadata"),
    ({**WHATSAPP, "min_channel_task_interval_seconds": 86401}, 400, "invalid_min_channel_task_interval_seconds"),
    ({**EMAIL, "account_id": "connect_account_nope"}, 404, "account_not_found"),
    ({**EMAIL, "account_id": "connect_account_sandbox_linkedin"}, 409, "account_channel_mismatch"),
    ({**EMAIL, "account_id": "connect_account_sandbox_email_reconnect"}, 409, "connect_account_reconnect_required"),
]


@pytest.mark.parametrize(("body", "status", "code"), SANDBOX_REJECTIONS, ids=[c for _, _, c in SANDBOX_REJECTIONS])
def test_sandbox_rejections_are_final_errors(client, sandbox, body, status, code):
    with pytest.raises(RevorFinalError) as caught:
        client.create_dispatch(_raw(body), f"reject-{code}", retry=RetryPolicy(attempts=3, base_delay=0.01))
    assert (caught.value.status, caught.value.code) == (status, code)
    assert caught.value.retryable is False
    assert sandbox_tasks(sandbox) == []
    assert len([r for r in sandbox_requests(sandbox) if r["method"] == "POST"]) == 1


def test_sandbox_rejects_non_json(client, sandbox):
    for headers, data, code in [({"Content-Type": "text/plain"}, b"{}", "invalid_content_type"),
                                ({"Content-Type": "application/json"}, b"{not json", "invalid_json")]:
        response = client.session.post(sandbox.api_url + "/outreach/dispatches", data=data,
                                       headers={**headers, "Idempotency-Key": "x"}, timeout=5)
        assert response.status_code == 400
        assert response.json()["ok"] is False and response.json()["error"]["code"] == code


LOCAL_INVALID = [
    ({**EMAIL, "recipient": {"name": "Alex"}},
     {"recipient": {"address": ["Missing data for required field (email)."]}}),
    ({**EMAIL, "recipient": {"address": "not-an-email"}}, {"recipient": {"address": ["Not a valid email address."]}}),
    ({**EMAIL, "content": {"text": "x"}}, {"content": {"subject": ["Missing data for required field (email)."]}}),
    ({**EMAIL, "content": {"subject": "x"}}, {"content": {"text": ["Email needs text or html."]}}),
    ({**LINKEDIN, "recipient": {"profile_url": "https://www.linkedin.com/company/acme/"}},
     {"recipient": {"profile_url": ["Not a personal LinkedIn profile URL (https://www.linkedin.com/in/...)."]}}),
    ({**LINKEDIN, "content": {}}, {"content": {"text": ["Linkedin needs text or an attachment."]}}),
    ({**WHATSAPP, "recipient": {"phone": "555-1234"}},
     {"recipient": {"phone": ["Not an E.164 phone number (+14155552671)."]}}),
    ({**WHATSAPP, "content": {"attachments": [{"filename": "a.pdf"}]}},
     {"content": {"attachments": {0: {"contentBase64": ["Missing data for required field."]}}}}),
    ({**WHATSAPP, "content": {"attachments": [{"filename": "a.pdf", "contentBase64": "@@"}]}},
     {"content": {"attachments": {0: {"contentBase64": ["Not valid base64."]}}}}),
    ({**WHATSAPP, "min_channel_task_interval_seconds": 59},
     {"min_channel_task_interval_seconds": ["Must be greater than or equal to 60 and less than or equal to 86400."]}),
    ({**WHATSAPP, "min_channel_task_interval_seconds": 86401},
     {"min_channel_task_interval_seconds": ["Must be greater than or equal to 60 and less than or equal to 86400."]}),
    ({**WHATSAPP, "channel": "fax"}, {"channel": ["Must be one of: email, linkedin, whatsapp."]}),
    ({**WHATSAPP, "surprise": 1}, {"surprise": ["Unknown field."]}),
]


@pytest.mark.parametrize(("payload", "errors"), LOCAL_INVALID)
def test_client_validates_before_sending(client, sandbox, payload, errors):
    with pytest.raises(RevorInvalidPayload) as caught:
        client.create_dispatch(payload, "never-sent")
    assert caught.value.errors == errors
    assert sandbox_requests(sandbox) == []


def test_attachments_and_interval_pass_validation(client, sandbox):
    payload = {**WHATSAPP, "content": {"attachments": [{"filename": "menu.pdf", "contentBase64": "aGVsbG8="}]},
               "min_channel_task_interval_seconds": 86400}
    client.create_dispatch(payload, "with-attachment")
    assert len(sandbox_tasks(sandbox)) == 1


def test_dropped_connection_after_creation_retried_gives_one_task(client, sandbox):
    configure(sandbox, drop_rate=1.0)  # every *new* task's connection is cut after it was created
    sleep = RecordingSleep()
    response = client.create_dispatch(EMAIL, "drop-once", retry=RetryPolicy(attempts=3, base_delay=0.05, sleep=sleep))
    assert response.attempts == 2
    posts = [r for r in sandbox_requests(sandbox) if r["method"] == "POST"]
    assert [p["dropped"] for p in posts] == [True, False]
    tasks = sandbox_tasks(sandbox)
    assert len(tasks) == 1 and tasks[0]["id"] == response.data["id"]


def test_dropped_connection_without_retry_is_a_retryable_error(client, sandbox):
    configure(sandbox, drop_rate=1.0)
    with pytest.raises(RevorConnectionError) as caught:
        client.create_dispatch(EMAIL, "drop-no-retry")
    assert caught.value.retryable is True
    assert len(sandbox_tasks(sandbox)) == 1  # it landed; the caller retries with the same key


def test_many_dispatches_under_faults_make_one_task_each(client, sandbox):
    configure(sandbox, drop_rate=0.3, error_rate=0.3)
    policy = RetryPolicy(attempts=12, base_delay=0.001, max_delay=0.01)
    job_ids = []
    for number in range(30):
        payload = {**EMAIL, "recipient": {"address": f"lead{number}@example.com"}}
        job_ids.append(client.create_dispatch(payload, f"fault-{number}", retry=policy).data["id"])
    tasks = sandbox_tasks(sandbox)
    assert len(tasks) == 30 and sorted(t["id"] for t in tasks) == sorted(job_ids)
    outcomes = [(r["status"], r["dropped"]) for r in sandbox_requests(sandbox) if r["method"] == "POST"]
    assert (503, False) in outcomes and (202, True) in outcomes  # the faults really happened


def test_503_is_retryable(client, sandbox):
    configure(sandbox, error_rate=1.0)
    with pytest.raises(RevorRetryableError) as caught:
        client.create_dispatch(EMAIL, "always-503", retry=RetryPolicy(attempts=3, base_delay=0.01))
    assert caught.value.status == 503
    assert len(sandbox_requests(sandbox)) == 3
    assert sandbox_tasks(sandbox) == []


def test_429_is_waited_out_using_retry_after(client, sandbox):
    configure(sandbox, rate_limit=2, rate_window_ms=1000)
    sleep = RecordingSleep()
    policy = RetryPolicy(attempts=5, sleep=sleep)
    for number in range(4):
        client.create_dispatch({**EMAIL, "recipient": {"address": f"r{number}@example.com"}}, f"rl-{number}",
                               retry=policy)
    assert len(sandbox_tasks(sandbox)) == 4
    statuses = [r["status"] for r in sandbox_requests(sandbox)]
    assert 429 in statuses
    limited = next(r for r in sandbox_requests(sandbox) if r["status"] == 429)
    assert limited["response"]["error"]["code"] == "api_rate_limit_exceeded"
    assert sleep.calls and all(wait == 1.0 for wait in sleep.calls)  # Retry-After: 1 (whole seconds)


def test_429_without_retry_after_falls_back_to_the_window(client, sandbox):
    configure(sandbox, rate_limit=1, rate_window_ms=400, omit_retry_after=True)
    sleep = RecordingSleep()
    policy = RetryPolicy(attempts=5, sleep=sleep)
    client.list_accounts(retry=policy)
    client.list_accounts(retry=policy)
    assert sleep.calls and all(wait == pytest.approx(0.4) for wait in sleep.calls)
    assert client.last_rate_limit.limit == 1 and client.last_rate_limit.window_ms == 400


def test_rate_limit_headers_are_exposed(client):
    response = client.list_accounts()
    limit = response.rate_limit
    assert limit.limit == 600 and limit.remaining == 599 and limit.window_ms == 60000
    assert limit.user_limit == 600 and limit.user_remaining == 599 and limit.user_window_ms == 60000
    assert limit.retry_after is None


def test_same_key_same_body_replays_without_a_new_task(client, sandbox):
    first = client.create_dispatch(EMAIL, "replay-key")
    second = client.create_dispatch(EMAIL, "replay-key")
    assert first.data["id"] == second.data["id"]
    assert len(sandbox_tasks(sandbox)) == 1


def test_changed_body_under_same_key_is_a_final_409(client, sandbox):
    client.create_dispatch(EMAIL, "conflict-key")
    changed = {**EMAIL, "content": {"subject": "Quick introduction", "text": "Hi Alex, edited"}}
    with pytest.raises(RevorFinalError) as caught:
        client.create_dispatch(changed, "conflict-key", retry=RetryPolicy(attempts=5, base_delay=0.01))
    assert (caught.value.status, caught.value.code) == (409, "idempotency_conflict")
    assert len([r for r in sandbox_requests(sandbox) if r["method"] == "POST"]) == 2  # not retried
    assert len(sandbox_tasks(sandbox)) == 1


def test_key_order_does_not_change_the_body(client, sandbox):
    """The client serialises canonically, so a dict built in another order is the same request."""
    reordered = dict(reversed(list(EMAIL.items())))
    assert client.create_dispatch(EMAIL, "order").data["id"] == client.create_dispatch(reordered, "order").data["id"]


def test_pacing_spaces_tasks_per_account_and_channel(sandbox):
    configure(sandbox, time_scale=1.0)
    with RevorClient(sandbox.api_url, "sk-revor-sandbox") as revor:
        first = revor.create_dispatch({**EMAIL, "min_channel_task_interval_seconds": 120}, "pace-1").data
        second = revor.create_dispatch({**EMAIL, "recipient": {"address": "b@example.com"},
                                        "min_channel_task_interval_seconds": 120}, "pace-2").data
        other_channel = revor.create_dispatch(WHATSAPP, "pace-3").data
        job = revor.get_job(second["id"]).data
    stamp = lambda value: time.mktime(time.strptime(value[:19], "%Y-%m-%dT%H:%M:%S"))  # noqa: E731
    assert stamp(second["scheduled_at"]) - stamp(first["scheduled_at"]) in (119, 120, 121)
    assert abs(stamp(other_channel["scheduled_at"]) - stamp(first["scheduled_at"])) <= 1
    assert job["status"] in ("queued", "scheduled")


def test_jobs_are_private_to_their_owner(client, sandbox):
    job_id = client.create_dispatch(EMAIL, "mine").data["id"]
    with RevorClient(sandbox.api_url, "sk-revor-sandbox-other") as other, pytest.raises(RevorFinalError) as caught:
        other.get_job(job_id)
    assert (caught.value.status, caught.value.code) == (404, "external_api_job_not_found")


def test_failed_and_cancelled_jobs(client, sandbox):
    failing = client.create_dispatch({**EMAIL, "recipient": {"address": "sandbox-fail@example.com"}}, "f").data
    configure(sandbox, time_scale=1.0)
    cancelled = client.create_dispatch(WHATSAPP, "c").data
    answer = client.session.post(f"{sandbox.url}/_sandbox/jobs/{cancelled['id']}/cancel", timeout=5)
    assert answer.status_code == 200
    assert client.get_job(cancelled["id"]).data["status"] == "cancelled"
    configure(sandbox, time_scale=50.0)
    assert follow(client, failing["id"])[-1] == "failed"
    assert client.get_job(failing["id"]).data["error"]["retryable"] is False


def test_connection_refused_is_retryable():
    with RevorClient("http://127.0.0.1:9/api/v1", "sk-revor-x", connect_timeout=0.5) as nowhere:
        with pytest.raises(RevorConnectionError):
            nowhere.list_accounts()


def test_poll_schedule():
    from integration.revor.polling import next_poll

    now = 1_800_000_000.0
    ahead = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now + 100))
    assert next_poll({"status": "scheduled", "scheduled_at": ahead}, 0, now=now) == pytest.approx(100.5)
    assert next_poll({"status": "scheduled", "scheduled_at": ahead, "next_attempt_at": None}, 3, now=now) == \
        pytest.approx(100.5)
    past = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now - 5))
    assert [next_poll({"status": "queued", "scheduled_at": past}, n, now=now) for n in (1, 2, 3, 6, 9)] == \
        [2.0, 4.0, 8.0, 60.0, 60.0]
    assert next_poll({"status": "running", "scheduled_at": past}, 5, now=now) == 1.0
    assert next_poll({"status": "settling"}, 1, now=now) == 2.0  # unknown statuses keep being polled
