"""The dashboard's write-back page over real HTTP: destination health, dead letters made by real failed
deliveries (a receiver answering 410 Gone), enabling the destination and replaying from the page."""

from __future__ import annotations

import html
import json
import re
import textwrap

import requests

from integration.writeback import destinations
from tests.conftest import ADMIN_TOKEN
from tests.test_dashboard_auth import csrf_of, signed_in
from tests.test_pipeline import (  # noqa: F401 - fixtures
    ZAP_HEADERS,
    settle,
    stack,
    stack_with_rules,
    zap,
)
from tests.test_writeback import wait_for

WRITEBACK = "/dashboard/writeback"


def dead_ids(page: str) -> list[str]:
    """The message ids in the dead-letter table, in the order shown."""
    table = re.search(r'<table id="dead-letters">.*?</table>', page, re.S)
    return re.findall(r'href="/dashboard/writeback/messages/([^"]+)"', table.group(0)) if table else []


def post_form(browser: requests.Session, url: str, path: str, **fields: str) -> requests.Response:
    token = csrf_of(browser.get(f"{url}{WRITEBACK}", timeout=10).text)
    return browser.post(f"{url}{path}", data={"csrf_token": token, **fields}, timeout=10, allow_redirects=False)


def test_a_410_dead_letters_are_listed_then_enabled_and_replayed_from_the_page(stack):  # noqa: F811
    stack["receiver"]["fail"] = [410] * 50  # deliveries to it run side by side: each one in flight is refused
    stack["start_worker"]()
    for number in range(9):  # three dead letters each: two pages
        assert stack["bridge"].post("/webhooks/generic/zapier", zap(number), ZAP_HEADERS).status_code == 200
    found = settle(stack, expected=9)
    redis_db, url = stack["redis"], stack["bridge"].url
    expected = {m.decode() for m in redis_db.zrange(destinations.dead_key("crm"), 0, -1)}
    assert len(expected) == sum(int(d["sequence"]) - 1 for d in found.values()) > 25
    assert stack["receiver"]["messages"] == []
    stack["receiver"]["fail"].clear()  # the receiver is back

    browser = signed_in(url)
    first = browser.get(f"{url}{WRITEBACK}", timeout=10)
    assert first.status_code == 200
    row = re.search(r'<tr id="destination-crm">.*?</tr>', first.text, re.S).group(0)
    receiver_port = stack["receiver_url"].rsplit(":", 1)[1]
    assert f"http://127.0.0.1:{receiver_port}/…" in row and "/status" not in first.text  # the path is hidden
    assert "disabled" in row and "410 Gone at" in row and ">Enable</button>" in row
    assert f">{len(expected)}</a>" in row  # dead letters, linking to the filtered list
    # Newest first, 25 a page, then the rest; each row with its dispatch, reason and attempts.
    newest = [m.decode() for m in redis_db.zrevrange(destinations.dead_key("crm"), 0, -1)]
    shown = dead_ids(first.text)
    second = browser.get(f"{url}{WRITEBACK}?destination=crm&page=2", timeout=10).text
    assert shown == newest[:25] and dead_ids(second) == newest[25:]
    assert f"Page 1 of 2 · {len(expected)} dead letters" in first.text
    assert first.text.count(">Replay</button>") == 25
    # The message that met the 410 is the oldest dead letter: page 1 or 2, by how the deliveries interleaved.
    assert "410 Gone: destination disabled" in first.text + second
    some = destinations.summary(redis_db, shown[0])
    assert f'<a href="/dashboard/dispatches/{some["dispatch_id"]}">{some["dispatch_id"]}</a>' in first.text

    # Replay while disabled: refused with a fixed notice, the message stays a dead letter.
    refused = post_form(browser, url, f"{WRITEBACK}/messages/{shown[0]}/replay")
    assert refused.status_code == 302 and refused.headers["Location"].endswith("notice=replay_disabled")
    assert "enable it first" in browser.get(url + refused.headers["Location"], timeout=10).text
    assert redis_db.zscore(destinations.dead_key("crm"), shown[0]) is not None

    # Without a session, or without the CSRF token: refused, nothing changes.
    for path in (f"{WRITEBACK}/destinations/crm/enable", f"{WRITEBACK}/messages/{shown[0]}/replay"):
        assert requests.post(f"{url}{path}", data={"csrf_token": "x"}, timeout=10,
                             allow_redirects=False).status_code == 401
        assert browser.post(f"{url}{path}", timeout=10, allow_redirects=False).status_code == 403
    assert destinations.health(redis_db, "crm")["disabled"] is True

    # The detail view: the body exactly as it would be sent.
    detail = browser.get(f"{url}{WRITEBACK}/messages/{shown[0]}", timeout=10)
    assert detail.status_code == 200 and some["dead_reason"] in html.unescape(detail.text)
    assert some["dead_reason"].startswith("destination disabled: 410 Gone at")
    exact = html.unescape(re.search(r'<pre id="message-bytes">(.*?)</pre>', detail.text, re.S).group(1))

    enabled = post_form(browser, url, f"{WRITEBACK}/destinations/crm/enable")
    assert enabled.status_code == 302 and enabled.headers["Location"].endswith("notice=enabled")
    assert destinations.health(redis_db, "crm")["disabled"] is False
    after = browser.get(url + enabled.headers["Location"], timeout=10).text
    assert "Destination enabled" in after and ">Enable</button>" not in after

    replayed = post_form(browser, url, f"{WRITEBACK}/messages/{shown[0]}/replay", destination="crm")
    assert replayed.status_code == 302
    assert replayed.headers["Location"] == f"{WRITEBACK}?destination=crm&notice=replayed"
    wait_for(lambda: len(stack["receiver"]["messages"]) == 1, what="the replayed message")
    delivered = stack["receiver"]["messages"][0]
    assert delivered["id"] == shown[0]  # the same webhook-id
    assert delivered["body"] == json.loads(exact)
    listed = browser.get(f"{url}{WRITEBACK}?destination=crm", timeout=10).text
    assert shown[0] not in dead_ids(listed) and f"Page 1 of 2 · {len(expected) - 1} dead letters" in listed
    again = post_form(browser, url, f"{WRITEBACK}/messages/{shown[0]}/replay")
    assert again.headers["Location"].endswith("notice=replay_gone")


RULES = textwrap.dedent("""\
    version: 1
    accounts: {wa: connect_account_sandbox_whatsapp}
    rules:
      - name: zap-won
        when: {source: generic:zapier}
        dispatch: {account: wa, channel: whatsapp, recipient: {phone: "+14155550100"}, content: {text: "Hi"}}
        writeback: [crm, sheet]
    destinations:
      crm:
        url: "https://user:pass@crm.example.com:8443/hooks/catch/123/abcsecret?token=qsecret"
        secret: "whsec_cGlwZWxpbmUtd3JpdGViYWNrLXNlY3JldC0wMDAx"
        on: [succeeded, failed]
      sheet:
        url: "http://[::1]:9/"
        secret: "whsec_cGlwZWxpbmUtd3JpdGViYWNrLXNlY3JldC0wMDAx"
    """)


def test_health_is_shown_without_any_secret(make_bridge, tmp_path, redis_db):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    bridge = make_bridge(rules_file=path)
    for _ in range(destinations.FAILURES_TO_OPEN):
        until = destinations.record_failure(redis_db, "crm", "HTTP 503")
    destinations.record_success(redis_db, "sheet")
    page = signed_in(bridge.url).get(f"{bridge.url}{WRITEBACK}", timeout=10).text
    crm = re.search(r'<tr id="destination-crm">.*?</tr>', page, re.S).group(0)
    assert "https://crm.example.com:8443/…" in crm
    for secret in ("user", "pass", "hooks/catch", "abcsecret", "qsecret", "whsec_"):
        assert secret not in page, secret
    assert '<span class="status s-failed">open</span>' in crm and "HTTP 503" in crm
    assert f"until {destinations_when(until)}" in crm and ">5<" in crm and "on succeeded, failed" in crm
    sheet = re.search(r'<tr id="destination-sheet">.*?</tr>', page, re.S).group(0)
    assert "http://[::1]:9/<" in sheet and "closed" in sheet and "never" not in sheet
    assert "No dead letters." in page
    browser = signed_in(bridge.url)
    for query, said in (("page=0", "Page: expected a whole number"), ("destination=nope", "Destination: choose one"),
                        ("page=201", "with all destinations, up to 200; choose a destination")):
        answer = browser.get(f"{bridge.url}{WRITEBACK}?{query}", timeout=10)
        assert answer.status_code == 200 and said in answer.text, query  # said on the page, never a 500
    assert browser_get_status(bridge.url, f"{WRITEBACK}/messages/msg_nope") == 404


def destinations_when(epoch: float) -> str:
    from integration.web.dashboard.writeback import when

    return when(epoch)


def browser_get_status(url: str, path: str) -> int:
    return signed_in(url).get(f"{url}{path}", timeout=10).status_code


def test_enabling_an_unknown_destination_is_not_found(make_bridge, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    bridge = make_bridge(rules_file=path)
    browser = signed_in(bridge.url)
    assert post_form(browser, bridge.url, f"{WRITEBACK}/destinations/elsewhere/enable").status_code == 404


CRM_RULES = textwrap.dedent("""\
    version: 1
    rules:
      - name: r
        when: {source: hubspot, type: ["deal.*"]}
        dispatch: {account: connect_account_x, channel: email, recipient: {address: a@example.com},
                   content: {subject: s, text: t}}
        writeback: [hubspot-deals, crm]
    destinations:
      crm:
        url: "https://crm.example.com/hooks/catch/123/abcsecret"
        secret: "whsec_cGlwZWxpbmUtd3JpdGViYWNrLXNlY3JldC0wMDAx"
      hubspot-deals:
        kind: hubspot
        on: [succeeded, failed]
        properties: {revor_status: "{{ data.status }}", revor_last_job_id: "{{ data.revor_job_id }}"}
        activity: {on: [failed]}
      sf-contacts:
        kind: salesforce
        record: contact
        properties: {Revor_Status__c: "{{ data.status }}"}
    """)
HS_DEAL = "18273645501"  # the HubSpot stand-in's fixture deal


def test_crm_destinations_are_shown_like_the_others_with_the_vendors_reason(make_bridge, tmp_path, redis_db):
    """Issue 13 item 7: kind, what it writes (no URL), health, Enable, and a dead letter from a real delivery
    to a deleted HubSpot deal, with HubSpot's reason, replayed from the page."""
    from rq import Queue

    from integration.context import JobContext
    from integration.dispatches import state
    from integration.dispatches.state import outbox_key
    from integration.rules.loader import load_rules
    from integration.scheduler import units
    from integration.scheduler.runner import Run
    from integration.settings import Settings
    from integration.writeback.crm.deliver import deliver_crm
    from tests.servers import ThreadServer, hubspot_standin
    from tests.test_crm_hubspot import revor_fields

    path = tmp_path / "rules.yaml"
    path.write_text(CRM_RULES)
    app, hub = hubspot_standin("pat-na1-dashboard")
    revor_fields(hub, "deals")
    hub["delete"]("deals", HS_DEAL)
    with ThreadServer(app) as server:
        settings = Settings.from_env({"HUBSPOT_ACCESS_TOKEN": "pat-na1-dashboard", "HUBSPOT_API_BASE_URL": server.url})
        ctx = JobContext(settings, redis_db, Queue("default", connection=redis_db, serializer="json"), load_rules(path))
        crm = {"source": "hubspot", "account": "24681357", "object_type": "deal", "object_id": HS_DEAL,
               "event_id": "evt-1"}
        state.transition(redis_db, "dsp_gone", "pending", create={
            "rule": "r", "channel": "email", "crm": crm, "writeback": ["hubspot-deals"],
            "recipient": {"address": "a@example.com"}, "attempt": 0}, destinations={"hubspot-deals": ["succeeded"]})
        state.transition(redis_db, "dsp_gone", "succeeded", destinations={"hubspot-deals": ["succeeded"]})
        [(unit, attempt)] = units.claim(redis_db, 1, 5, units=[units.deliver_unit("dsp_gone", "hubspot-deals")])
        deliver_crm(ctx, Run(units.Unit.parse(unit), attempt), ctx.rules.crm_destinations["hubspot-deals"])
    [dead] = destinations.dead_letters(redis_db, "hubspot-deals")
    assert dead["dead_reason"].startswith(f"deal {HS_DEAL}: HubSpot 404 OBJECT_NOT_FOUND: "), dead
    destinations.disable(redis_db, "sf-contacts", "disabled for the test")

    bridge = make_bridge(rules_file=path)
    browser = signed_in(bridge.url)
    page = browser.get(f"{bridge.url}{WRITEBACK}", timeout=10)
    assert page.status_code == 200
    text = html.unescape(page.text)
    hubspot = re.search(r'<tr id="destination-hubspot-deals">.*?</tr>', text, re.S).group(0)
    assert "HubSpot" in hubspot and "writes the event's record: revor_status, revor_last_job_id" in hubspot
    assert "(on succeeded, failed)" in hubspot and "a note on failed" in hubspot
    assert "closed" in hubspot and ">1</a>" in hubspot  # its circuit, and its one dead letter linked
    salesforce = re.search(r'<tr id="destination-sf-contacts">.*?</tr>', text, re.S).group(0)
    assert "Salesforce" in salesforce and "writes the associated contact: Revor_Status__c" in salesforce
    assert "disabled" in salesforce and ">Enable</button>" in salesforce
    webhook = re.search(r'<tr id="destination-crm">.*?</tr>', text, re.S).group(0)
    assert "webhook" in webhook and "https://crm.example.com/…" in webhook and "abcsecret" not in text
    assert "http" not in hubspot + salesforce  # a CRM destination has no URL to show
    assert dead["dead_reason"] in text and dead_ids(page.text) == [dead["id"]]

    # Every other page and API that lists destinations takes the CRM ones too.
    for other in ("/dashboard/", "/dashboard/dispatches/dsp_gone", "/dashboard/rules"):
        assert browser.get(f"{bridge.url}{other}", timeout=10).status_code == 200, other
    api = requests.get(f"{bridge.url}/api/v1/destinations", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                       timeout=10)
    assert [(d["destination"], d["kind"]) for d in api.json()["items"]] == [
        ("crm", "webhook"), ("hubspot-deals", "hubspot"), ("sf-contacts", "salesforce")]
    assert 'destination="hubspot-deals"' in requests.get(f"{bridge.url}/metrics", timeout=10).text

    detail = browser.get(f"{bridge.url}{WRITEBACK}/messages/{dead['id']}", timeout=10)
    assert detail.status_code == 200
    shown = html.unescape(detail.text)
    assert "What it writes into HubSpot" in shown and f"deal {HS_DEAL}" in shown
    assert '"revor_status": "succeeded"' in shown and "Body as it would be sent" not in shown
    assert dead["dead_reason"] in shown

    enabled = post_form(browser, bridge.url, f"{WRITEBACK}/destinations/sf-contacts/enable")
    assert enabled.status_code == 302 and destinations.health(redis_db, "sf-contacts")["disabled"] is False
    replayed = post_form(browser, bridge.url, f"{WRITEBACK}/messages/{dead['id']}/replay", destination="hubspot-deals")
    assert replayed.headers["Location"] == f"{WRITEBACK}?destination=hubspot-deals&notice=replayed"
    assert destinations.dead_letters(redis_db, "hubspot-deals") == []
    assert redis_db.lrange(outbox_key("dsp_gone", "hubspot-deals"), 0, -1) == [f"rb:msg:{dead['id']}".encode()]
