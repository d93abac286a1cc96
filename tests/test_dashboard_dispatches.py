"""The dashboard's dispatches pages over real HTTP: a real pipeline run (bridge, worker, sandbox,
write-back receiver) for the detail page and the Retry button; dispatches recorded through the
real state machine for the list's filters, search and pages."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

import requests
from markupsafe import escape

from integration.dispatches import state
from integration.web.dashboard import listing
from tests.conftest import configure, sandbox_requests
from tests.test_dashboard_auth import csrf_of, signed_in
from tests.test_pipeline import ZAP_HEADERS, dispatches, settle, stack_with_rules, zap  # noqa: F401
from tests.test_pipeline import stack as stack  # noqa: F401  (the pipeline's fixture)

BASE = float(int(time.time()) - 86400)  # whole seconds: dispatch i is created at BASE + i (a day ago:
# a final state expires DISPATCH_RETENTION_DAYS after it is reached)


def ids_on(html: str) -> list[str]:
    return re.findall(r'<a href="/dashboard/dispatches/(dsp_[^"]+)">\1</a>', html)


def test_a_real_run_shows_in_full_and_a_failed_dispatch_is_retried(stack):
    configure(stack["sandbox"], job_failure_rate=1.0)
    stack["receiver"]["fail"] = [410]  # the first status message: the destination answers Gone
    stack["start_worker"]()
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(7), ZAP_HEADERS).status_code == 200
    dispatch_id, record = next(iter(settle(stack, expected=1).items()))
    assert record["status"] == "failed"
    url = stack["bridge"].url
    browser = signed_in(url)

    found = browser.get(f"{url}/dashboard/dispatches", params={"q": "+14155550007"}, timeout=10)
    assert ids_on(found.text) == [dispatch_id]
    # A phone as people write it (spaces, brackets, dashes, 00 for +): what the Suppression page takes.
    for spelled in ("+1 415 555 0007", " +1 (415) 555-0007 ", "+1.415.555.0007", "001 415 555 0007"):
        assert ids_on(browser.get(f"{url}/dashboard/dispatches", params={"q": spelled}, timeout=10).text) == \
            [dispatch_id], spelled
    local = browser.get(f"{url}/dashboard/dispatches", params={"q": "(415) 555-0007"}, timeout=10).text
    assert ids_on(local) == [] and "with + and the country code" in local
    listed = browser.get(f"{url}/dashboard/dispatches", timeout=10).text
    assert ids_on(listed) == [dispatch_id] and "1 dispatch, page 1 of 1." in listed
    detail = browser.get(f"{url}/dashboard/dispatches/{dispatch_id}", timeout=10)
    assert detail.status_code == 200
    page = detail.text
    stored = state.load(stack["redis"], dispatch_id)
    timeline = [entry["status"] for entry in state.timeline(stack["redis"], dispatch_id)]
    assert timeline[0] == "pending" and timeline[-1] == "failed"
    section = page.split("<h2>Timeline</h2>", 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<span class="status s-(\w+)">\1</span>', section) == timeline
    # The exact request Revor received: the stored body and its Idempotency-Key.
    sent = [r for r in sandbox_requests(stack["sandbox"]) if r["method"] == "POST"]
    assert [r["idempotency_key"] for r in sent] == [dispatch_id]
    assert f"Idempotency-Key: {dispatch_id}" in page
    assert str(escape(stored["body"])) in page
    assert stored["revor_job_id"] in page and "recipient_unreachable" in page
    # Each write-back attempt as recorded: the 410, then every later message dead-lettered.
    assert "HTTP 410" in page and "410 Gone: destination disabled" in page
    assert page.count('<span class="status s-dead">dead</span>') == len(timeline) - 1  # `pending` is not sent

    refused = browser.post(f"{url}/dashboard/dispatches/{dispatch_id}/retry", timeout=10, allow_redirects=False)
    assert refused.status_code == 403
    assert requests.post(f"{url}/dashboard/dispatches/{dispatch_id}/retry", data={"csrf_token": csrf_of(page)},
                         timeout=10, allow_redirects=False).status_code == 401  # no session
    configure(stack["sandbox"], job_failure_rate=0.0)
    retried = browser.post(f"{url}/dashboard/dispatches/{dispatch_id}/retry", data={"csrf_token": csrf_of(page)},
                           timeout=10)
    assert retried.status_code == 200 and "Retried: a new attempt is pending" in retried.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and dispatches(stack["redis"])[dispatch_id]["status"] != "succeeded":
        time.sleep(0.2)
    after = browser.get(f"{url}/dashboard/dispatches/{dispatch_id}", timeout=10).text
    assert 'id="dispatch-status">succeeded<' in after and f"Idempotency-Key: {dispatch_id}-r1" in after
    assert [r["idempotency_key"] for r in sandbox_requests(stack["sandbox"]) if r["method"] == "POST"] == \
        [dispatch_id, f"{dispatch_id}-r1"]
    # A succeeded dispatch has no Retry button, and a forged POST is refused politely.
    assert "dispatches_retry" not in after and "/retry" not in after
    again = browser.post(f"{url}/dashboard/dispatches/{dispatch_id}/retry", data={"csrf_token": csrf_of(page)},
                         timeout=10)
    assert "Only a failed, rejected or cancelled dispatch can be retried." in again.text


def seed(connection, count: int = 60) -> dict[int, str]:
    """`count` dispatches through the state machine: rules alpha/beta, channels email/whatsapp,
    sources hubspot/zapier, each accepted by Revor, then succeeded or (every fifth) failed."""
    made = {}
    for i in range(count):
        dispatch_id = f"dsp_{i:040x}"
        source = "hubspot" if i % 4 == 0 else "generic:zapier"
        create = {"rule": "alpha" if i % 2 == 0 else "beta", "channel": "email" if i % 3 == 0 else "whatsapp",
                  "event_key": f"rb:event:{source}:ev-{i}", "writeback": [], "attempt": 0,
                  "recipient": {"address": f"Person{i}@Example.com"},
                  "crm": {"source": source, "event_id": f"ev-{i}", "object_type": "deal", "object_id": str(900 + i)},
                  "body": json.dumps({"recipient": {"address": f"Person{i}@Example.com"}})}
        state.transition(connection, dispatch_id, "pending", create=create, now=BASE + i)
        state.transition(connection, dispatch_id, "accepted", fields={"revor_job_id": f"job_{i}"}, now=BASE + i + 0.1)
        state.transition(connection, dispatch_id, "failed" if i % 5 == 0 else "succeeded", now=BASE + i + 0.2)
        made[i] = dispatch_id
    return made


def listed(browser, url: str, **params) -> list[str]:
    answer = browser.get(f"{url}/dashboard/dispatches", params=params, timeout=10)
    assert answer.status_code == 200, answer.text[:500]
    return ids_on(answer.text)


def every_page(browser, url: str, **params) -> list[str]:
    """Follow the Older / Continue links to the end."""
    seen, next_params = [], dict(params)
    for _ in range(50):
        page = browser.get(f"{url}/dashboard/dispatches", params=next_params, timeout=10).text
        seen += ids_on(page)
        link = re.search(r'href="/dashboard/dispatches\?([^"]*)">(Older|Continue)<', page)
        if not link:
            return seen
        next_params = dict(pair.split("=", 1) for pair in link.group(1).replace("&amp;", "&").split("&"))
        next_params = {k: requests.utils.unquote(v) for k, v in next_params.items()}
    raise AssertionError("no end to the pages")


def utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def test_filters_search_and_pages(bridge, redis_db, monkeypatch):
    made = seed(redis_db)
    url = bridge.url
    browser = signed_in(url)
    newest_first = [made[i] for i in sorted(made, reverse=True)]

    first = browser.get(f"{url}/dashboard/dispatches", timeout=10).text
    assert "60 dispatches, page 1 of 3" in first and ids_on(first) == newest_first[:25]
    assert listed(browser, url, page=2) == newest_first[25:50]
    assert listed(browser, url, page=3) == newest_first[50:]
    beyond = browser.get(f"{url}/dashboard/dispatches", params={"page": 4000}, timeout=10)
    assert beyond.status_code == 200 and "Page 4000 is beyond the last page (3)" in beyond.text

    def expect(predicate) -> list[str]:
        return [made[i] for i in sorted(made, reverse=True) if predicate(i)]

    assert listed(browser, url, status="failed") == expect(lambda i: i % 5 == 0)
    assert every_page(browser, url, rule="alpha") == expect(lambda i: i % 2 == 0)
    assert every_page(browser, url, channel="email") == expect(lambda i: i % 3 == 0)
    assert every_page(browser, url, source="hubspot") == expect(lambda i: i % 4 == 0)
    assert every_page(browser, url, channel="whatsapp") == expect(lambda i: i % 3 != 0)  # 40: two pages
    assert every_page(browser, url, status="succeeded", rule="beta", channel="whatsapp") == \
        expect(lambda i: i % 5 != 0 and i % 2 == 1 and i % 3 != 0)
    assert listed(browser, url, since=utc(BASE + 10), until=utc(BASE + 14)) == expect(lambda i: 10 <= i <= 14)

    # Search: an email (any case, spaces around), a Revor job id, an event id, a dispatch id.
    assert listed(browser, url, q="  PERSON7@example.COM ") == [made[7]]
    assert listed(browser, url, q="job_12") == [made[12]]
    assert listed(browser, url, q="ev-33") == [made[33]]
    assert listed(browser, url, q=made[41]) == [made[41]]
    assert listed(browser, url, q="person7@example.com", status="succeeded") == [made[7]]
    assert listed(browser, url, q="person5@example.com", status="succeeded") == []  # 5 failed
    assert listed(browser, url, q="nobody@example.com") == []

    # A bounded scan: at most SCAN_LIMIT entries per page request, then "continue".
    monkeypatch.setattr(listing, "SCAN_LIMIT", 10)
    stretch = browser.get(f"{url}/dashboard/dispatches", params={"source": "hubspot"}, timeout=10).text
    assert "Scanned 10 dispatches (at most 10 per page)" in stretch and ">Continue<" in stretch
    assert ids_on(stretch) == expect(lambda i: i % 4 == 0 and i >= 50)
    assert every_page(browser, url, source="hubspot") == expect(lambda i: i % 4 == 0)


def test_hostile_filters_and_unknown_ids_get_clear_answers(bridge, redis_db):
    seed(redis_db, 3)
    url = bridge.url
    browser = signed_in(url)
    for params, message in [({"since": "yesterday"}, "From: expected a date"),
                            ({"until": "2026-13-45T99:00"}, "To: expected a date"),
                            ({"since": "9999-01-01"}, "From: expected a date between 1970 and 2106"),
                            ({"since": "2026-02-01", "until": "2026-01-01"}, "From: must be before To"),
                            ({"page": "99999999999999999999"}, "Page: expected a whole number from 1 to 100,000"),
                            ({"page": "-1"}, "Page: expected a whole number"),
                            ({"status": "exploded"}, "Status: choose one of pending"),
                            ({"channel": "fax"}, "Channel: choose one of email, linkedin, whatsapp"),
                            ({"source": "<script>"}, "Source: choose one of hubspot"),
                            ({"after": "not-a-cursor", "channel": "email"}, "Continue: the link is damaged")]:
        answer = browser.get(f"{url}/dashboard/dispatches", params=params, timeout=10)
        assert answer.status_code == 400 and message in answer.text, (params, answer.status_code, answer.text[:300])
        assert "<script>" not in answer.text
    missing = browser.get(f"{url}/dashboard/dispatches/dsp_nothing_here", timeout=10)
    assert missing.status_code == 404 and "Dispatch dsp_nothing_here not found" in missing.text
    retry = browser.post(f"{url}/dashboard/dispatches/dsp_nothing_here/retry",
                         data={"csrf_token": csrf_of(browser.get(f"{url}/dashboard/dispatches", timeout=10).text)},
                         timeout=10)
    assert retry.status_code == 404
    anonymous = requests.get(f"{url}/dashboard/dispatches", allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302 and "/dashboard/sign-in" in anonymous.headers["Location"]


def test_counts_read_in_the_singular_and_the_plural():
    """`1 dispatch`, `2 dispatches`: the `counted` filter every dashboard count goes through, and
    no page falls back to `message(s)`."""
    from pathlib import Path

    from integration.web.dashboard.listing import counted

    assert counted(1, "dispatch", "dispatches") == "1 dispatch"
    assert counted(0, "dispatch", "dispatches") == "0 dispatches"
    assert counted(12_500, "event") == "12,500 events"
    assert counted(1, "entry", "entries") == "1 entry"
    assert counted(2, "dead letter") == "2 dead letters"
    folder = Path(__file__).parent.parent / "integration" / "web" / "dashboard"
    for path in [*folder.glob("*.py"), *folder.glob("templates/dashboard/*.html")]:
        assert not re.search(r"\w\(s\)", path.read_text()), f"{path.name} writes a plural as (s)"
