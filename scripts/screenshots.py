"""Regenerate the README's dashboard screenshots: `.venv/bin/python scripts/screenshots.py`.

Needs Debian's `chromium` (apt-get install chromium) and Playwright (the `test` extra); takes
about half a minute and reaches nothing beyond 127.0.0.1. The data is made the way a user's is,
through the real pipeline: an embedded Redis in a temporary folder, the Revor sandbox (sped up,
some jobs failing), the web app, a `revor-bridge worker` process and a write-back receiver that
verifies every signature, with the example rules of `revor-bridge demo`. It posts the demo's
sample events (HubSpot, Salesforce, Pipedrive, Zapier, a Standard Webhooks sender) and a few
dozen more Zapier and Standard Webhooks events; the receiver fails the first status message
until it becomes a dead letter. Once every dispatch is final it signs in through the form and saves

    docs/screenshots/overview.png   the overview on a laptop screen (1280 wide, the whole page)
    docs/screenshots/dispatch.png   a dispatch's detail page (1280x800)

`--out DIR` writes them elsewhere. Each PNG is checked to stay under 300 KB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import requests
from standardwebhooks import Webhook

from integration.cli import stop_process_groups
from integration.cli.demo import (
    DATA,
    HUBSPOT_SECRET,
    ORG_ID,
    PIPEDRIVE,
    RECEIVER_SECRET,
    SALESFORCE_TOKEN,
    STANDARD_SECRET,
    ZAPIER_TOKEN,
    _requests,
)
from integration.cli.receiver import receiver_app
from integration.localserver import LocalServer
from integration.sandbox.core import Faults
from integration.sandbox.server import SandboxServer
from integration.settings import Secret, Settings
from integration.storage import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "screenshots-admin-token-0123456789"
MAX_BYTES = 300 * 1024
FINAL = {"succeeded", "failed", "cancelled", "rejected", "invalid", "skipped"}
FIRST = ["Dana", "Ari", "Sam", "Priya", "Jonas", "Mei", "Tomas", "Aisha", "Lucas", "Noor", "Elena", "Kofi",
         "Hana", "Mateo", "Ines", "Ravi", "Zoe", "Omar", "Greta", "Yuki"]
COMPANIES = ["Northwind", "Contoso", "Fabrikam", "Tailspin", "Adventure Works", "Litware", "Proseware",
             "Wingtip", "Woodgrove", "Alpine Ski House"]
PLANS = ["Annual plan", "Pilot", "Expansion", "Renewal", "Team seats"]


class FailFirst:
    """WSGI middleware: answers 500 to every attempt of the first status message it sees (by
    webhook-id), eight in all, so that message ends in the dead letters as on a bad day."""

    def __init__(self, app: Any, attempts: int = 8) -> None:
        self.app, self.left, self.doomed = app, attempts, None
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        webhook_id = environ.get("HTTP_WEBHOOK_ID")
        with self.lock:
            if self.doomed is None:
                self.doomed = webhook_id
            fail = webhook_id == self.doomed and self.left > 0
            if fail:
                self.left -= 1
        if fail:
            start_response("500 Internal Server Error", [("Content-Type", "application/json")])
            return [b"{}"]
        return self.app(environ, start_response)


@dataclass
class Stack:
    web: str
    connection: redis.Redis


def zapier_event(number: int) -> bytes:
    first = FIRST[number % len(FIRST)]
    company = COMPANIES[number % len(COMPANIES)]
    return json.dumps({"event": "deal.stage_changed", "event_id": f"zap-deal-{48210 + number}",
                       "deal__id": str(48210 + number), "deal__name": f"{company} - {PLANS[number % len(PLANS)]}",
                       "deal__stage": "closedwon", "contact__first_name": first,
                       "contact__email": f"{first.lower()}@{company.lower().replace(' ', '')}.example.com",
                       "contact__phone": f"+1415555{2000 + number:04d}"}).encode()


def standard_event(number: int) -> tuple[bytes, dict[str, str]]:
    first = FIRST[(number + 7) % len(FIRST)]
    company = COMPANIES[(number + 3) % len(COMPANIES)]
    body = json.dumps({"type": "deal.stage_changed", "timestamp": datetime.now(UTC).isoformat(),
                       "data": {"deal": {"id": str(9100 + number), "name": f"{company} expansion",
                                         "stage": "contractsent"},
                                "contact": {"id": f"c-{9100 + number}", "first_name": first,
                                            "linkedin_url": f"https://www.linkedin.com/in/{first.lower()}-"
                                                            f"{company.lower().replace(' ', '-')}-example/"}}})
    msg_id = f"msg_{uuid.uuid4().hex[:16]}"
    now = datetime.now(UTC)
    return body.encode(), {"Content-Type": "application/json", "webhook-id": msg_id,
                           "webhook-timestamp": str(int(now.timestamp())),
                           "webhook-signature": Webhook(STANDARD_SECRET).sign(msg_id, now, body)}


def seed(stack: Stack, zaps: int, linkedin: int, timeout: float = 120) -> None:
    """Post the demo's sample events and more, then wait until every dispatch is final and delivered."""
    posts = [(path, body, headers) for _label, path, body, headers in _requests(stack.web)]
    posts += [("/webhooks/generic/zapier", zapier_event(n), {"Content-Type": "application/json",
                                                            "X-Hook-Token": ZAPIER_TOKEN}) for n in range(zaps)]
    posts += [("/webhooks/generic/demo", *standard_event(n)) for n in range(linkedin)]
    for path, body, headers in posts:
        answer = requests.post(stack.web + path, data=body, headers=headers, timeout=10)
        if answer.status_code != 200:
            raise SystemExit(f"{path} answered {answer.status_code}: {answer.text[:200]}")
    expected = zaps + linkedin + 2  # the samples make two more (Salesforce, the Standard Webhooks one)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = requests.get(f"{stack.web}/api/v1/dispatches?limit=200", timeout=10,
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()["items"]
        if len(listed) >= expected and all(d["status"] in FINAL for d in listed) \
                and not stack.connection.keys("rb:outbox:*"):
            return
        time.sleep(0.5)
    raise SystemExit(f"the dispatches did not settle within {timeout:.0f} s")


def shoot(stack: Stack, out: Path, chromium: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.goto(stack.web + "/dashboard/sign-in")
        page.get_by_label("Admin token").fill(ADMIN_TOKEN)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Overview").wait_for()
        page.screenshot(path=out / "overview.png", full_page=True)
        # An e-mail dispatch that went through (jobs fail at random in the sandbox): else any e-mail one.
        page.goto(stack.web + "/dashboard/dispatches?channel=email&status=succeeded")
        if not page.locator("table a").count():
            page.goto(stack.web + "/dashboard/dispatches?channel=email")
        page.locator("table a").first.click()
        page.get_by_role("heading", name="Timeline").wait_for()
        page.screenshot(path=out / "dispatch.png")
        browser.close()
    shots = [out / "overview.png", out / "dispatch.png"]
    for shot in shots:
        if shot.stat().st_size > MAX_BYTES:
            raise SystemExit(f"{shot} is {shot.stat().st_size // 1024} KB: keep it under {MAX_BYTES // 1024} KB")
    return shots


@contextmanager
def running_stack(folder: Path) -> Iterator[Stack]:
    """Embedded Redis, sandbox, receiver (failing the first message), web app and a worker process."""
    from integration.web import create_app

    embedded = EmbeddedRedis(folder).start()
    sandbox = SandboxServer(faults=Faults(time_scale=400.0, rate_limit=0, job_failure_rate=0.12), seed=3).start()
    receiver = LocalServer(FailFirst(receiver_app(RECEIVER_SECRET, lambda *_: None))).start()
    destination = {"CRM_STATUS_WEBHOOK_URL": f"{receiver.url}/revor-status",
                   "CRM_STATUS_WEBHOOK_SECRET": RECEIVER_SECRET}
    os.environ.update(destination)  # the rules file names the destination through these
    settings = Settings(redis_url=embedded.url, rules_file=DATA / "rules.yaml",
                        hubspot_client_secret=Secret(HUBSPOT_SECRET), salesforce_org_ids=(ORG_ID,),
                        salesforce_webhook_token=Secret(SALESFORCE_TOKEN), pipedrive_webhook_user=PIPEDRIVE[0],
                        pipedrive_webhook_password=Secret(PIPEDRIVE[1]),
                        generic_webhook_secrets={"zapier": Secret(ZAPIER_TOKEN), "demo": Secret(STANDARD_SECRET)},
                        admin_token=Secret(ADMIN_TOKEN))
    web = LocalServer(create_app(settings)).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVOR_", "REDIS_", "HUBSPOT_"))}
    env.update(destination, REDIS_URL=embedded.url, REVOR_BASE_URL=sandbox.api_url,
               RULES_FILE=str(DATA / "rules.yaml"), REVOR_MAX_RPS="100", WRITEBACK_RETRY_SCALE="0.00001",
               LOG_LEVEL="ERROR", PYTHONUNBUFFERED="1")
    worker = subprocess.Popen([sys.executable, "-m", "integration", "worker"], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=open(folder / "worker.log", "w"))
    try:
        yield Stack(web.url, redis.Redis.from_url(embedded.url))
    finally:
        stop_process_groups([worker], grace=20)
        web.stop()
        receiver.stop()
        sandbox.stop()
        embedded.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--zapier", type=int, default=24, help="extra Zapier events (WhatsApp dispatches)")
    parser.add_argument("--linkedin", type=int, default=8, help="extra Standard Webhooks events (LinkedIn)")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is missing: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="revor-screenshots-") as folder, running_stack(Path(folder)) as stack:
        seed(stack, args.zapier, args.linkedin)
        for shot in shoot(stack, args.out.resolve(), chromium):
            print(f"{shot.relative_to(ROOT) if shot.is_relative_to(ROOT) else shot}  {shot.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
