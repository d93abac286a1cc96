"""The dashboard in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Everything behind it is real: a redis-server, the web app over HTTP, a `revor-bridge worker`
process, the Revor sandbox, and a write-back receiver that verifies signatures and answers the
first message's every attempt with a 500, so that message lands in the dead letters for real.
The stack and the browser start once; the steps run in one test (so one test process holds them:
pytest-xdist spreads separate tests over processes), each in a fresh browser context and reported
as its own subtest.

Without `chromium` on PATH (or without Playwright) the tests are skipped with the reason; with
CI=true they fail instead, so CI can never pass without having run them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest
import requests

from integration.sandbox.core import Faults
from integration.sandbox.server import SandboxServer
from tests.conftest import ADMIN_TOKEN, bridge_settings, cli_env
from tests.servers import FIXTURES, ThreadServer, writeback_receiver

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

INSTALL = {"chromium": "install Debian's chromium package (apt-get install chromium)",
           "Playwright": "install the test extra (pip install -e '.[test]')"}
SECRET = "whsec_YnJvd3Nlci13cml0ZWJhY2stc2VjcmV0LTAwMDE="
ZAP_HEADERS = {"Content-Type": "application/json", "X-Hook-Token": "zap-fixture-token-7f3a"}
DB = 3  # not the per-test database (1): this stack lives for the whole module
FINAL = {"succeeded", "failed", "cancelled", "rejected", "invalid", "skipped"}
PEOPLE = [("dana.lee@example.com", "Dana", "Northwind Pilot"), ("ari.chen@example.com", "Ari", "Contoso Renewal"),
          ("sam.ortiz@example.com", "Sam", "Fabrikam Expansion")]

RULES = """\
version: 1
accounts:
  mail: connect_account_sandbox_email
defaults:
  interval_seconds: 60
rules:
  - name: won-email
    when:
      source: generic:zapier
      type: deal.stage_changed
      match: {deal.stage: closedwon, contact.email: {exists: true}}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "{{ contact.email }}", name: "{{ contact.first_name }}"}
      content: {subject: "Welcome, {{ deal.name }}", text: "Hi {{ contact.first_name }}, thanks!"}
    writeback: [crm]
  - name: import-welcome
    when:
      source: csv:hubspot
      type: contact.imported
      match: {contact.email: {exists: true}}
    dispatch:
      account: mail
      channel: email
      recipient: {address: "{{ contact.email }}", name: "{{ contact.first_name }}"}
      content: {subject: "Hello {{ contact.first_name }}", text: "Nice to meet you at {{ company.name }}"}
destinations:
  crm:
    url: "RECEIVER"
    secret: "SECRET"
""".replace("SECRET", SECRET)


def require(found: str | None, what: str, environ: Mapping[str, str] = os.environ) -> str:
    """`found`, or the test cannot run: skipped locally (naming what to install), failed in CI."""
    if found:
        return found
    reason = f"{what} is missing: {INSTALL[what]}"
    if environ.get("CI") == "true":
        pytest.fail(f"{reason}. CI=true: the browser test must run in CI", pytrace=False)
    pytest.skip(reason)


def test_a_missing_browser_skips_locally_and_fails_in_ci():
    with pytest.raises(pytest.skip.Exception, match="chromium is missing: install Debian's chromium package"):
        require(None, "chromium", environ={})
    with pytest.raises(pytest.fail.Exception, match="must run in CI"):
        require(None, "chromium", environ={"CI": "true"})
    assert require("/usr/bin/chromium", "chromium", environ={"CI": "true"}) == "/usr/bin/chromium"


# ---- the stack: web, worker, sandbox, receiver ----------------------------------------------

def zap(number: int, email: str, first_name: str, deal: str) -> bytes:
    return json.dumps({"event": "deal.stage_changed", "event_id": f"zap-browser-{number}",
                       "deal__id": str(7000 + number), "deal__name": deal, "deal__stage": "closedwon",
                       "contact__email": email, "contact__first_name": first_name}).encode()


def wait_for(condition: Any, what: str, timeout: float = 45) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Stack:
    def __init__(self, url: str, redis: Any, receiver: dict[str, Any], dispatch_ids: dict[str, str]) -> None:
        self.url, self.redis, self.receiver, self.dispatch_ids = url, redis, receiver, dispatch_ids


def _settled(connection: Any) -> dict[str, str] | None:
    """email -> dispatch id once every dispatch is final and every outbox is empty."""
    from integration.dispatches import state

    ids = [i.decode() for i in connection.zrange(state.ALL_INDEX, 0, -1)]
    records = [state.load(connection, i) for i in ids]
    if len(records) < len(PEOPLE) or any(r is None or r["status"] not in FINAL for r in records):
        return None
    if connection.keys("rb:outbox:*"):
        return None
    return {r["recipient"]["address"]: r["id"] for r in records if r is not None}


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    import redis

    from integration.web import create_app
    from integration.writeback import destinations

    folder = tmp_path_factory.mktemp("dashboard-browser")
    connection = redis.Redis.from_url(f"{redis_url}/{DB}")
    connection.flushdb()
    receiver_app, receiver = writeback_receiver(SECRET)
    receiver["fail"] = [500] * 8  # the first message's eight attempts: then it is a dead letter
    with SandboxServer(faults=Faults(time_scale=200.0, rate_limit=0), seed=11) as sandbox, \
            ThreadServer(receiver_app) as receiving:
        rules = folder / "rules.yaml"
        rules.write_text(RULES.replace("RECEIVER", receiving.url + "/status"))
        web = ThreadServer(create_app(bridge_settings(redis_url, redis_url=f"{redis_url}/{DB}", rules_file=rules,
                                                      data_dir=folder / "data")))
        env = cli_env(REDIS_URL=f"{redis_url}/{DB}", REVOR_BASE_URL=sandbox.api_url, RULES_FILE=str(rules),
                      BRIDGE_LEASE_SECONDS="3", REVOR_MAX_RPS="200", WRITEBACK_RETRY_SCALE="0.00001",
                      LOG_LEVEL="WARNING")
        worker = subprocess.Popen([sys.executable, "-m", "integration", "worker"], env=env, cwd=folder,
                                  stdout=subprocess.DEVNULL, stderr=open(folder / "worker.log", "w"),
                                  start_new_session=True)
        try:
            with web:
                for number, (email, name, deal) in enumerate(PEOPLE):
                    answer = requests.post(web.url + "/webhooks/generic/zapier", data=zap(number, email, name, deal),
                                           headers=ZAP_HEADERS, timeout=10)
                    assert answer.status_code == 200, answer.text
                    if number == 0:  # the rest only once the first message is dead: it takes all eight 500s
                        wait_for(lambda: destinations.dead_letters(connection, "crm"), "the dead letter")
                dispatch_ids = wait_for(lambda: _settled(connection), "the dispatches to settle")
                yield Stack(web.url, connection, receiver, dispatch_ids)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
            connection.flushdb()
            connection.close()


# ---- the browser ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = require(shutil.which("chromium"), "chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(None, "Playwright")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True)
        yield launched
        launched.close()


def new_context(browser: Browser, phone: bool = False) -> BrowserContext:
    """A fresh browser profile (no cookies): a laptop screen, or a phone's."""
    if phone:
        opened = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                     device_scale_factor=2)
    else:
        opened = browser.new_context(viewport={"width": 1280, "height": 800})
    opened.set_default_timeout(10_000)
    return opened


def sign_in(page: Page, url: str, token: str = ADMIN_TOKEN) -> Any:
    """Fill in the sign-in form as a person does; the response to the form's POST."""
    page.goto(url + "/dashboard/")
    assert "/dashboard/sign-in" in page.url
    page.get_by_label("Admin token").fill(token)
    with page.expect_response(lambda r: r.request.method == "POST" and "/sign-in" in r.url) as posted:
        page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    return posted.value


def operator(browser: Browser, stack: Stack, phone: bool = False) -> Page:
    """A page in a new browser context, signed in through the form."""
    page = new_context(browser, phone).new_page()
    sign_in(page, stack.url)
    assert page.get_by_role("heading", name="Overview").is_visible()
    return page


def no_horizontal_overflow(page: Page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


# ---- the steps: each in its own browser context, all in one test (one stack, one browser) ----

def wrong_token_refused_then_signed_in(browser: Browser, stack: Stack) -> None:
    context = new_context(browser)
    page = context.new_page()
    refused = sign_in(page, stack.url, token=ADMIN_TOKEN[:-1] + "x")
    assert refused.status == 401
    assert page.get_by_role("alert").inner_text() == "That token is not right."
    assert not [c for c in context.cookies() if c["name"] == "rb_dashboard"]
    signed = sign_in(page, stack.url)
    assert signed.status == 302
    assert page.url == stack.url + "/dashboard/"
    assert page.get_by_role("heading", name="Overview").is_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "rb_dashboard")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # the page's scripts cannot read the session


def no_session_sends_to_sign_in_and_posts_are_refused(browser: Browser, stack: Stack) -> None:
    stranger = new_context(browser)
    page = stranger.new_page()
    page.goto(stack.url + "/dashboard/")
    assert page.url.startswith(stack.url + "/dashboard/sign-in?next=")
    assert page.get_by_role("heading", name="Sign in").is_visible()
    answer = stranger.request.post(stack.url + "/dashboard/sign-out", form={"csrf_token": "guess"}, max_redirects=0)
    assert answer.status == 401


def post_without_csrf_token_refused(browser: Browser, stack: Stack) -> None:
    page = operator(browser, stack)
    # The sign-out form, with its hidden token removed in the page, as a forged form would come.
    page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Sign out").click()
    assert posted.value.status == 403
    assert page.get_by_role("heading", name="Refused").is_visible()
    # The same request replayed by the browser with its session cookie but no token: refused too.
    replayed = page.context.request.post(stack.url + "/dashboard/sign-out", form={}, max_redirects=0)
    assert replayed.status == 403
    page.goto(stack.url + "/dashboard/")
    assert page.get_by_role("heading", name="Overview").is_visible()  # still signed in


def overview_reads_on_a_phone(browser: Browser, stack: Stack) -> None:
    page = operator(browser, stack, phone=True)
    assert page.get_by_role("heading", name="Overview").is_visible()
    assert no_horizontal_overflow(page), page.evaluate("document.documentElement.scrollWidth")
    # The page links run across the screen below the brand, not down a narrow column, one per line.
    first, second = (link.bounding_box() for link in page.locator("header nav a").all()[:2])
    assert first is not None and second is not None and first["y"] == second["y"]


def dispatch_found_by_email_and_opened(browser: Browser, stack: Stack) -> None:
    from integration.dispatches import state

    dispatch_id = stack.dispatch_ids["ari.chen@example.com"]
    record = state.load(stack.redis, dispatch_id)
    assert record is not None and record["revor_job_id"]
    page = operator(browser, stack)
    page.get_by_role("link", name="Dispatches").click()
    page.get_by_label("Search").fill("ari.chen@example.com")
    page.get_by_label("Search").press("Enter")
    page.wait_for_url("**/dashboard/dispatches?*q=ari.chen*")
    links = page.locator("table a")
    assert links.all_inner_texts() == [dispatch_id]  # the one dispatch to that address, no other
    page.get_by_role("link", name=dispatch_id).click()
    assert page.get_by_role("heading", name=f"Dispatch {dispatch_id}").is_visible()
    assert page.locator("#dispatch-status").inner_text() == record["status"]
    timeline = page.locator("section", has=page.get_by_role("heading", name="Timeline")).locator("tbody tr")
    statuses = [row.locator("td").nth(2).inner_text() for row in timeline.all()]
    assert statuses == [e["status"] for e in state.timeline(stack.redis, dispatch_id)]
    assert statuses[0] == "pending" and statuses[-1] == record["status"] and "accepted" in statuses
    assert page.locator("#revor-job-id").inner_text() == record["revor_job_id"]
    sent = page.locator("#revor-request").inner_text()
    assert sent.startswith("POST /outreach/dispatches") and f"Idempotency-Key: {dispatch_id}" in sent
    assert json.loads(sent.split("\n\n", 1)[1])["recipient"] == {"address": "ari.chen@example.com", "name": "Ari"}


def dispatch_list_reads_on_a_phone(browser: Browser, stack: Stack) -> None:
    page = operator(browser, stack, phone=True)
    page.goto(stack.url + "/dashboard/dispatches")
    assert page.locator("table a").count() == len(PEOPLE)
    assert no_horizontal_overflow(page), page.evaluate("document.documentElement.scrollWidth")


def table_fits_its_card(page: Page) -> dict[str, int]:
    """The list's table and its card: widths as the browser laid them out."""
    return page.evaluate("""() => {
        const table = document.querySelector('main .card table');
        const card = table.closest('.card');
        return {table: table.scrollWidth, card: card.clientWidth, card_scroll: card.scrollWidth};
    }""")


def lists_fit_a_laptop_and_lead_with_id_and_status_on_a_phone(browser: Browser, stack: Stack) -> None:
    """At 1280x800 the events and dispatches tables fit their card (no sideways scrolling), with
    a long event id and a long reason among the rows; on a phone the id and status come first."""
    from integration.inbound import records
    from integration.inbound.store import event_key

    long_id = "zap-browser-" + "7f3a9c" * 20  # 132 characters, no space to break at
    body = json.dumps({"event": "deal.created", "event_id": long_id, "deal__id": "7999",
                       "contact__email": "nobody.in.particular@example.com"}).encode()
    answer = requests.post(stack.url + "/webhooks/generic/zapier", data=body, headers=ZAP_HEADERS, timeout=10)
    assert answer.status_code == 200, answer.text
    # Two events on one deal, the newer first: the older one is skipped with a long reason.
    for number, day in ((1, "2026-01-02"), (2, "2026-01-01")):
        body = json.dumps({"event": "deal.updated", "event_id": f"zap-browser-stale-{number}", "deal__id": "7998",
                           "occurred_at": f"{day}T00:00:00Z"}).encode()
        answer = requests.post(stack.url + "/webhooks/generic/zapier", data=body, headers=ZAP_HEADERS, timeout=10)
        assert answer.status_code == 200, answer.text
    key = event_key("generic:zapier", long_id)
    wait_for(lambda: (records.summary(stack.redis, key) or {}).get("status") == "processed", "the event")
    stale = event_key("generic:zapier", "zap-browser-stale-2")
    wait_for(lambda: (records.summary(stack.redis, stale) or {}).get("status") == "skipped", "the stale event")
    page = operator(browser, stack)
    for path in ("/dashboard/events", "/dashboard/dispatches"):
        page.goto(stack.url + path)
        widths = table_fits_its_card(page)
        assert widths["table"] <= widths["card"] and widths["card_scroll"] <= widths["card"], (path, widths)
        assert no_horizontal_overflow(page)
    page.goto(stack.url + "/dashboard/events")
    row = page.locator("main table tbody tr", has=page.get_by_role("link", name=long_id))
    # Shortened on screen; the whole id in the link and the cell's title; why it made no dispatch.
    assert row.count() == 1 and row.locator("td").first.get_attribute("title") == long_id
    assert row.locator(".why").inner_text() == "no rule matched this event"
    why = page.locator("main table .why", has_text="stale: a newer event").bounding_box()
    assert why is not None and why["width"] >= 180 and why["height"] < 60, why  # not a 70 px column of broken words
    phone = operator(browser, stack, phone=True)
    for path, first in (("/dashboard/events", "Event"), ("/dashboard/dispatches", "Dispatch")):
        phone.goto(stack.url + path)
        assert phone.locator("main table thead th").all_inner_texts()[:2] == [first, "Status"]
        assert no_horizontal_overflow(phone), phone.evaluate("document.documentElement.scrollWidth")
        status = phone.locator("main table tbody tr").first.locator(".status").bounding_box()
        assert status is not None and status["x"] + status["width"] <= 390, (path, status)


def event_previewed_with_its_payload(browser: Browser, stack: Stack) -> None:
    page = operator(browser, stack)
    page.get_by_role("link", name="Rules").click()
    event = zap(99, "lee.park@example.com", "Lee", "Woodgrove Pilot").decode()
    page.get_by_label("Source", exact=True).select_option("generic:zapier")
    page.get_by_label("Event JSON").fill(event)
    page.get_by_role("button", name="Preview").click()
    result = page.locator("#preview-result")
    verdict = result.locator(".preview-rule[data-rule=won-email]")
    assert verdict.locator(".verdict").inner_text() == "would send"
    payload = json.loads(verdict.locator("pre.payload").inner_text())
    assert payload["recipient"] == {"address": "lee.park@example.com", "name": "Lee"}
    assert payload["content"]["subject"] == "Welcome, Woodgrove Pilot"
    # A preview sends nothing and stores nothing.
    assert stack.redis.zcard("rb:dispatches:all") == len(PEOPLE)


def dead_letter_replayed_and_delivered(browser: Browser, stack: Stack) -> None:
    from integration.writeback import destinations

    (dead,) = destinations.dead_letters(stack.redis, "crm")
    assert dead["id"] not in {m["id"] for m in stack.receiver["messages"]}  # eight 500s, never delivered
    page = operator(browser, stack)
    page.get_by_role("link", name="Write-back").click()
    assert page.get_by_role("heading", name="Write-back").is_visible()
    row = page.locator("#dead-letters tr", has_text=dead["id"])
    assert "no 2xx after 8 attempts" in row.inner_text()
    row.get_by_role("button", name="Replay").click()
    assert "Queued again" in page.get_by_role("status").inner_text()
    wait_for(lambda: dead["id"] in {m["id"] for m in stack.receiver["messages"]}, "the replayed message")
    assert not destinations.dead_letters(stack.redis, "crm")
    page.reload()
    assert "No dead letters" in page.locator("main").inner_text()


def suppression_added_and_removed(browser: Browser, stack: Stack) -> None:
    from integration.rules import guards

    page = operator(browser, stack)
    page.get_by_role("link", name="Suppression").click()
    page.get_by_label("Values to suppress").fill("Ari.Chen@example.com\n+1 415 555 0199")
    page.get_by_role("button", name="Add", exact=True).click()
    assert "Added to the suppression list" in page.get_by_role("status").inner_text()
    entries = page.locator("#suppression-entries")
    assert "ari.chen@example.com" in entries.inner_text() and "+14155550199" in entries.inner_text()
    assert guards.is_suppressed(stack.redis, "email:ari.chen@example.com")  # what the pipeline reads
    page.get_by_role("button", name="Remove ari.chen@example.com").click()
    assert "Removed from the suppression list" in page.get_by_role("status").inner_text()
    assert "ari.chen@example.com" not in page.locator("main").inner_text()
    assert guards.suppressed(stack.redis) == ["phone:+14155550199"]
    page.get_by_role("button", name="Remove +14155550199").click()
    assert "The list is empty." in page.locator("main").inner_text()


def import_uploaded_previewed_confirmed_and_downloaded(browser: Browser, stack: Stack) -> None:
    """A HubSpot export through the import page: the file input, the dry run, Confirm, the page
    refreshing itself until the run is done, and the result CSV downloaded: a row per file row."""
    export = FIXTURES / "imports" / "hubspot-contacts.csv"
    page = operator(browser, stack)
    page.get_by_role("link", name="Imports").click()
    page.get_by_label("CSV file").set_input_files(str(export))
    page.get_by_label("Source", exact=True).fill("csv:hubspot")
    page.get_by_role("button", name="Upload and preview").click()
    confirm = page.get_by_role("button", name="Confirm import")
    confirm.wait_for(timeout=30_000)  # planned in the background: the page reloads itself until then
    assert page.locator("#import-would-send").inner_text() == "5"
    assert page.locator("#import-examples pre.payload").count() == 3
    assert "5 emails from account connect_account_sandbox_email" in page.locator("#import-schedule").inner_text()
    assert stack.redis.zcard("rb:dispatches:all") == len(PEOPLE)  # a dry run sends nothing
    confirm.click()
    assert "Import started" in page.get_by_role("status").inner_text()
    page.locator("#import-status", has_text="done").wait_for(timeout=45_000)  # meta refresh, no script
    assert page.locator("#import-counts [data-count=dispatched]").inner_text() == "5"
    with page.expect_download() as downloaded:
        page.get_by_role("link", name="Download result CSV").click()
    assert downloaded.value.suggested_filename == "hubspot-contacts.result.csv"
    with open(downloaded.value.path(), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    file_rows = len(export.read_text(encoding="utf-8").splitlines()) - 1
    assert [int(row["line"]) for row in rows] == list(range(2, 2 + file_rows))
    assert all(row["dispatch_id"] and row["event_id"] for row in rows)
    phone = operator(browser, stack, phone=True)
    phone.goto(page.url)
    assert no_horizontal_overflow(phone), phone.evaluate("document.documentElement.scrollWidth")
    phone.goto(stack.url + "/dashboard/imports")
    assert no_horizontal_overflow(phone), phone.evaluate("document.documentElement.scrollWidth")


def sign_out_ends_the_session(browser: Browser, stack: Stack) -> None:
    page = operator(browser, stack)
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(stack.url + "/dashboard/sign-in")
    page.goto(stack.url + "/dashboard/")
    assert page.url.startswith(stack.url + "/dashboard/sign-in?next=")
    assert page.get_by_role("heading", name="Sign in").is_visible()


STEPS = [wrong_token_refused_then_signed_in, no_session_sends_to_sign_in_and_posts_are_refused,
         post_without_csrf_token_refused, overview_reads_on_a_phone, dispatch_found_by_email_and_opened,
         dispatch_list_reads_on_a_phone, lists_fit_a_laptop_and_lead_with_id_and_status_on_a_phone,
         event_previewed_with_its_payload, dead_letter_replayed_and_delivered,
         suppression_added_and_removed, import_uploaded_previewed_confirmed_and_downloaded,
         sign_out_ends_the_session]


def test_an_operator_works_the_dashboard_in_chromium(browser, stack, subtests):
    """Every step is reported on its own (a failed one does not hide the others)."""
    for step in STEPS:
        with subtests.test(step.__name__.replace("_", " ")):
            step(browser, stack)
