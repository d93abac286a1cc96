"""The dashboard's rules page over real HTTP: the loaded rules, and a preview that sends and writes nothing."""

from __future__ import annotations

import html
import json
import re
import textwrap

import requests

from tests.conftest import sandbox_requests, sandbox_tasks
from tests.test_dashboard_auth import csrf_of, signed_in
from tests.test_pipeline import (  # noqa: F401 - fixtures
    WRITEBACK_SECRET,
    ZAP_HEADERS,
    settle,
    stack_with_rules,
    zap,
)

RULES = textwrap.dedent("""\
    version: 1
    accounts: {wa: connect_account_sandbox_whatsapp}
    defaults: {interval_seconds: 60}
    rules:
      - name: zap-won
        when: {source: generic:zapier, type: deal.stage_changed, match: {deal.stage: closedwon}}
        dispatch:
          account: wa
          channel: whatsapp
          recipient: {phone: "{{ contact.phone }}"}
          content: {text: "Hi {{ contact.first_name }}, welcome!"}
        once_per: "{{ deal.id }}"
        writeback: [crm]
      - name: zap-lost
        when: {source: generic:zapier, match: {deal.stage: closedlost}}
        dispatch:
          account: wa
          channel: whatsapp
          recipient: {phone: "{{ contact.phone }}"}
          content: {text: "Sorry"}
      - name: loops
        when: {source: generic:zapier}
        dispatch:
          account: wa
          channel: whatsapp
          recipient: {phone: "{{ contact.phone }}"}
          content: {text: "{% for a in range(1000) %}{% for b in range(1000) %}.{% endfor %}{% endfor %}"}
    destinations:
      crm:
        url: "http://user:pw@127.0.0.1:9/status?token=hook-secret-123"
        secret: "SECRET"
    """).replace("SECRET", WRITEBACK_SECRET)


def rules_bridge(make_bridge, tmp_path, text: str = RULES):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return make_bridge(rules_file=path)


def preview(browser: requests.Session, url: str, **form: str) -> requests.Response:
    token = csrf_of(browser.get(f"{url}/dashboard/rules", timeout=10).text)
    # multipart, as the page's form sends it (a pasted event is not inflated by URL encoding)
    return browser.post(f"{url}/dashboard/rules/preview", files={k: (None, v) for k, v in
                                                                 {**form, "csrf_token": token}.items()}, timeout=30)


def result_of(page: str) -> str:
    found = re.search(r'<section class="card" id="preview-result".*?</section>', page, re.S)
    assert found, page[:500]
    return found.group(0)


def payload_of(page: str, rule: str) -> dict:
    found = re.search(rf'<pre class="payload" data-rule="{re.escape(rule)}">(.*?)</pre>', page, re.S)
    assert found, result_of(page)
    return json.loads(html.unescape(found.group(1)))


def verdict_of(page: str, rule: str) -> str:
    found = re.search(rf'<div class="preview-rule" data-rule="{re.escape(rule)}">.*?'
                      r'<span class="status [^"]+ verdict">([^<]+)</span>\s*<span class="wrap">([^<]*)</span>',
                      page, re.S)
    assert found, result_of(page)
    return f"{found.group(1)}: {html.unescape(found.group(2))}"


def redis_snapshot(redis_db) -> tuple[int, dict[bytes, bytes | None]]:
    """DBSIZE and every key with its serialized value: any write shows."""
    return redis_db.dbsize(), {key: redis_db.dump(key) for key in redis_db.keys("*")}


def test_the_rules_page_shows_each_rule_and_only_the_file_name(make_bridge, tmp_path):
    bridge = rules_bridge(make_bridge, tmp_path)
    page = signed_in(bridge.url).get(f"{bridge.url}/dashboard/rules", timeout=10).text
    assert "<strong>rules.yaml</strong>" in page and str(tmp_path) not in page
    for shown in ("zap-won", "generic:zapier", "deal.stage_changed", "whatsapp", "connect_account_sandbox_whatsapp",
                  "{{ contact.phone }}", "{{ deal.id }}", "crm", "interval 60 s"):
        assert html.escape(shown, quote=False) in page, shown
    assert "hook-secret-123" not in page and "pw@" not in page and WRITEBACK_SECRET not in page
    assert 'aria-current="page">Rules<' in page


def test_preview_shows_the_exact_payload_sends_nothing_and_writes_nothing(stack_with_rules):  # noqa: F811
    stack = stack_with_rules(RULES.replace("http://user:pw@127.0.0.1:9/status?token=hook-secret-123",
                                           "${RECEIVER_URL}"))
    url, redis_db = stack["bridge"].url, stack["redis"]
    browser = signed_in(url)
    event = zap(1).decode()
    before = redis_snapshot(redis_db)
    answer = preview(browser, url, event_json=event, source="generic:zapier")
    assert answer.status_code == 200, result_of(answer.text)
    assert redis_snapshot(redis_db) == before  # no once_per claim, no dispatch, no event: nothing at all
    assert sandbox_requests(stack["sandbox"]) == [] and stack["receiver"]["messages"] == []
    previewed = payload_of(answer.text, "zap-won")
    assert verdict_of(answer.text, "zap-won") == "would send: every condition holds"
    assert verdict_of(answer.text, "zap-lost").startswith("no match: deal.stage is 'closedwon'")
    assert verdict_of(answer.text, "loops") == ("invalid: dispatch.content.text: template loops ran more than "
                                                "10000 times")
    assert previewed["recipient"] == {"phone": "+14155550001"}
    # The same event for real: Revor receives exactly the previewed request body.
    stack["start_worker"]()
    assert stack["bridge"].post("/webhooks/generic/zapier", zap(1), ZAP_HEADERS).status_code == 200
    found = settle(stack, expected=2)
    sent = [task["body"] for task in sandbox_tasks(stack["sandbox"])]
    assert sent == [previewed]
    # The stored event previews too; its once_per key is now held by the dispatch the worker made, which is
    # this very dispatch: still "would send" (the worker would find its own dispatch), with the same id.
    dispatch_id = next(i for i, d in found.items() if d["rule"] == "zap-won")
    before = redis_snapshot(redis_db)
    stored = preview(browser, url, stored_source="generic:zapier", stored_event_id="zap-1")
    assert stored.status_code == 200, result_of(stored.text)
    assert redis_snapshot(redis_db) == before
    assert verdict_of(stored.text, "zap-won") == "would send: every condition holds"
    assert f"<dd>{dispatch_id} (the Idempotency-Key)</dd>" in stored.text
    assert payload_of(stored.text, "zap-won") == previewed
    recent = browser.get(f"{url}/dashboard/rules", timeout=10).text  # among the recent events, linked
    assert re.search(r'<a href="/dashboard/events/generic:zapier/zap-1">zap-1</a>', recent), recent
    # Another deal to the same person with a once_per key someone holds: skipped, as the worker would.
    redis_db.set("rb:once:zap-won:9002", "dsp_someone_else")
    held = preview(browser, url, event_json=zap(2).decode(), source="generic:zapier")
    assert verdict_of(held.text, "zap-won") == "skipped: once_per '9002' already used by dsp_someone_else"


def test_preview_reads_the_suppression_list(make_bridge, tmp_path, redis_db):
    from integration.rules.guards import suppress

    bridge = rules_bridge(make_bridge, tmp_path)
    suppress(redis_db, ["+1 415 555 0001"])
    browser = signed_in(bridge.url)
    before = redis_snapshot(redis_db)
    answer = preview(browser, bridge.url, event_json=zap(1).decode(), source="generic:zapier")
    assert verdict_of(answer.text, "zap-won") == "skipped: recipient is on the suppression list"
    assert payload_of(answer.text, "zap-won")["recipient"] == {"phone": "+14155550001"}
    assert redis_snapshot(redis_db) == before


def test_hostile_input_gets_a_clear_message(make_bridge, tmp_path, redis_db):
    bridge = rules_bridge(make_bridge, tmp_path)
    browser = signed_in(bridge.url)
    cases = [
        ({"event_json": "this is not json", "source": ""}, 400, "This event cannot be read: the file is neither JSON "
                                                                 "nor XML"),
        ({"event_json": "[" * 5000 + "]" * 5000, "source": "generic:zapier"}, 400, "more than 64 levels deep"),
        ({"event_json": '{"event": "x"}', "source": ""}, 400, "choose its source in the list"),
        ({"event_json": "   ", "source": ""}, 400, "Paste an event"),
        ({"event_json": zap(1).decode(), "source": "generic:../../etc"}, 400, "Choose a source from the list."),
        ({"event_json": json.dumps({"pad": "x" * 300_000}), "source": "generic:zapier"}, 400,
         "the preview takes at most 256 KB"),
        ({"stored_source": "generic:zapier", "stored_event_id": "nope"}, 404, "No stored event"),
    ]
    for form, status, message in cases:
        before = redis_snapshot(redis_db)
        answer = preview(browser, bridge.url, **form)
        assert answer.status_code == status, (form.keys(), answer.status_code, result_of(answer.text))
        assert message in html.unescape(result_of(answer.text)), (message, result_of(answer.text))
        assert "Traceback" not in answer.text
        assert redis_snapshot(redis_db) == before
    # 2 MB pasted: over the app's body limit, refused in words before anything is read
    token = csrf_of(browser.get(f"{bridge.url}/dashboard/rules", timeout=10).text)
    huge = browser.post(f"{bridge.url}/dashboard/rules/preview", timeout=30,
                        files={"csrf_token": (None, token), "source": (None, "generic:zapier"),
                               "event_json": (None, json.dumps({"pad": "x" * 2_000_000}))})
    assert huge.status_code == 413 and "An event to preview can be at most 256 KB" in huge.text
    assert huge.headers["Content-Type"].startswith("text/html")


def test_preview_needs_a_session_and_its_csrf_token(make_bridge, tmp_path):
    bridge = rules_bridge(make_bridge, tmp_path)
    form = {"event_json": zap(1).decode(), "source": "generic:zapier"}
    anonymous = requests.post(f"{bridge.url}/dashboard/rules/preview", data=form, timeout=10, allow_redirects=False)
    assert anonymous.status_code == 401
    browser = signed_in(bridge.url)
    assert browser.post(f"{bridge.url}/dashboard/rules/preview", data=form, timeout=10).status_code == 403
    assert browser.post(f"{bridge.url}/dashboard/rules/preview", data={**form, "csrf_token": "forged"},
                        timeout=10).status_code == 403


def test_without_a_rules_file_the_page_says_so(bridge):
    browser = signed_in(bridge.url)
    page = browser.get(f"{bridge.url}/dashboard/rules", timeout=10)
    assert page.status_code == 200 and "No rules file is loaded" in page.text
    answer = preview(browser, bridge.url, event_json=zap(1).decode(), source="generic:zapier")
    assert answer.status_code == 409 and "nothing to preview" in answer.text
