"""`revor-bridge demo`: the whole service on this machine, nothing outside it.

Starts the embedded Redis, the Revor sandbox (sped up), the web app, a worker process, and a
write-back receiver that verifies every status message's signature; posts the bundled sample
events (a HubSpot batch, a Salesforce Outbound Message, a Pipedrive webhook, a Zapier hook and a
Standard Webhooks sender) to the real endpoints, signed as each sender signs; and shows every
dispatch's state changes as the receiver gets them, with the example rules deciding.

With `--keep` it does not end there: everything stays up with what the demo stored, and it
prints a one-time sign-in link to the dashboard, so the run can be looked at (and retried,
replayed, previewed) in a browser until Ctrl-C or SIGTERM stops it all. All three sample dispatches
succeed, which leaves most of the dashboard empty, so the kept run adds what goes wrong in real
life (`_seed`): a dispatch whose Revor job fails, an invalid one, a skipped one (a suppressed
recipient) and dead letters (a second CRM webhook that answers 410 Gone, in the kept run's own
copy of the example rules); and it prints a `curl` that posts one's own event to the Zapier hook.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import requests
from flask import Response
from standardwebhooks import Webhook

from integration.cli import EXIT_FINAL, cli, load_settings, stop_process_groups
from integration.cli.receiver import receiver_app, status_line
from integration.inbound import hubspot
from integration.localserver import LocalServer
from integration.sandbox.core import Faults
from integration.sandbox.server import SandboxServer
from integration.settings import Secret
from integration.storage import EmbeddedRedis

DATA = Path(__file__).resolve().parent.parent / "demo_data"
EVENTS = DATA / "events"
RECEIVER_SECRET = "whsec_ZGVtby1zdGF0dXMtc2VjcmV0LTAxMjM0NTY3ODk="
HUBSPOT_SECRET = "demo-hubspot-client-secret"
ZAPIER_TOKEN = "demo-zapier-token-0123456789"
STANDARD_SECRET = "whsec_ZGVtby1zdGFuZGFyZC13ZWJob29rcy1zZWNyZXQ="
ORG_ID = "00D5e000000Fxq2EAC"
SALESFORCE_TOKEN = "demo-salesforce-token-0123456789"
PIPEDRIVE = ("demo-pipedrive", "demo-pipedrive-password")
FINAL = {"succeeded", "failed", "cancelled", "rejected", "invalid", "skipped"}
OWN_HOOK = "/webhooks/generic/zapier"
GONE_PATH = "/gone"  # the kept run's second write-back destination: a CRM webhook deleted since (410)
SUPPRESSED_PHONE = "+1 415 555 0177"
# `demo --keep` only: a lost deal's contact gets a last e-mail, and its status goes to that second
# webhook, so the Write-back page has a disabled destination and dead letters to replay.
KEEP_RULE = """
  # `revor-bridge demo --keep` adds this rule (the demo's own copy of these rules): its status
  # messages go to crm-archive, a CRM webhook that answers 410 Gone (see the Write-back page).
  - name: lost-followup
    when:
      source: generic:zapier
      type: deal.stage_changed
      match:
        deal.stage: closedlost
        contact.email: {exists: true}
    dispatch:
      account: sales-email
      channel: email
      recipient: {address: "{{ contact.email }}"}
      content:
        subject: "Thanks for considering us"
        text: "We are here whenever {{ deal.name }} comes back."
    writeback: [crm-archive]
"""


def _requests(web: str) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """The sample events, each signed or authenticated the way its sender does it."""
    now = int(time.time())
    batch = (EVENTS / "hubspot-deal-batch.json").read_bytes()
    ts = str(now * 1000)
    standard = (EVENTS / "standard-webhooks-linkedin.json").read_bytes()
    msg_id = f"msg_demo_{uuid.uuid4().hex[:12]}"
    moment = datetime.fromtimestamp(now, UTC)
    import base64

    basic = base64.b64encode(":".join(PIPEDRIVE).encode()).decode()
    return [
        ("HubSpot app webhook batch", "/webhooks/hubspot", batch,
         {"Content-Type": "application/json", "X-HubSpot-Request-Timestamp": ts,
          "X-HubSpot-Signature-v3": hubspot.v3_signature(HUBSPOT_SECRET, "POST", web + "/webhooks/hubspot", batch,
                                                         ts)}),
        ("Salesforce Outbound Message", f"/webhooks/salesforce?token={SALESFORCE_TOKEN}",
         (EVENTS / "salesforce-closed-won.xml").read_bytes(), {"Content-Type": "text/xml; charset=utf-8"}),
        ("Pipedrive webhook", "/webhooks/pipedrive", (EVENTS / "pipedrive-deal-stage.json").read_bytes(),
         {"Content-Type": "application/json", "Authorization": f"Basic {basic}"}),
        ("Zapier hook", "/webhooks/generic/zapier", (EVENTS / "zapier-won-deal.json").read_bytes(),
         {"Content-Type": "application/json", "X-Hook-Token": ZAPIER_TOKEN}),
        ("Standard Webhooks sender", "/webhooks/generic/demo", standard,
         {"Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(now),
          "webhook-signature": Webhook(STANDARD_SECRET).sign(msg_id, moment, standard.decode())}),
    ]


def _keep_rules(folder: Path, receiver: str) -> Path:
    """The example rules with KEEP_RULE and its destination (the receiver's GONE_PATH), written
    to the demo's data folder: the bundled file, and the default demo, stay as they are."""
    text = (DATA / "rules.yaml").read_text()
    marker = "\ndestinations:\n"
    if marker not in text:
        raise click.ClickException("the example rules have no `destinations:` section to add the kept run's to")
    destination = (f"  crm-archive:\n    url: \"{receiver}{GONE_PATH}\"\n"
                   "    secret: \"${CRM_STATUS_WEBHOOK_SECRET}\"\n    on: [succeeded, failed]\n")
    path = folder / "rules-keep.yaml"
    path.write_text(text.replace(marker, KEEP_RULE + marker + destination, 1))
    return path


def _zapier_event(event_id: str, deal: str, stage: str, **contact: str) -> dict[str, str]:
    """An event as "Webhooks by Zapier" sends it (flat keys), like the sample zapier-won-deal.json."""
    return {"event": "deal.stage_changed", "event_id": event_id, "deal__id": deal, "deal__name": f"Deal {deal}",
            "deal__stage": stage, **{f"contact__{k}": v for k, v in contact.items()}}


def own_event_curl(web: str) -> str:
    """A ready command that posts one's own event to the Zapier hook; the rule won-whatsapp picks it up."""
    body = json.dumps(_zapier_event("my-first-event", "my-deal-1", "closedwon", first_name="Alex",
                                    phone="+14155550142"))
    return (f"curl -X POST '{web}{OWN_HOOK}' -H 'Content-Type: application/json' "
            f"-H 'X-Hook-Token: {ZAPIER_TOKEN}' -d '{body}'")


def _final(seen: dict[str, dict[str, Any]], lock: threading.Lock) -> int:
    """How many dispatches the CRM (the receiver) has seen final."""
    with lock:
        return sum(1 for d in seen.values() if d.get("status") in FINAL)


def _seed(web: str, redis_url: str, admin: str, timeout: float, received: Callable[[], int]) -> None:
    """`--keep`: after the sample events, what goes wrong in real life, so every dashboard page has
    something to show: a failed dispatch (the sandbox fails a recipient containing "sandbox-fail"),
    an invalid one (a phone that is no number), a skipped one (a suppressed number) and dead letters
    (lost-followup's status messages to the webhook that answers 410). Waits until they are final."""
    import redis as redis_lib

    from integration.rules.guards import suppress

    with redis_lib.Redis.from_url(redis_url) as connection:
        suppress(connection, [SUPPRESSED_PHONE])
    zapier = [_zapier_event("demo-invalid", "5001", "closedwon", first_name="Kim", phone="ask at the front desk"),
              _zapier_event("demo-skipped", "5002", "closedwon", first_name="Lou", phone=SUPPRESSED_PHONE),
              _zapier_event("demo-lost", "5003", "closedlost", first_name="Max", email="max.lost@example.com")]
    for event in zapier:
        requests.post(web + OWN_HOOK, json=event, headers={"X-Hook-Token": ZAPIER_TOKEN}, timeout=10)
    failing = json.dumps({"type": "deal.stage_changed", "timestamp": datetime.now(UTC).isoformat(),
                          "data": {"deal": {"id": "5004", "name": "Fabrikam trial", "stage": "contractsent"},
                                   "contact": {"id": "c-5004", "first_name": "Pat",
                                               "linkedin_url": "https://www.linkedin.com/in/sandbox-fail-pat/"}}})
    msg_id, moment = f"msg_demo_{uuid.uuid4().hex[:12]}", datetime.now(UTC)
    requests.post(web + "/webhooks/generic/demo", data=failing, timeout=10,
                  headers={"Content-Type": "application/json", "webhook-id": msg_id,
                           "webhook-timestamp": str(int(moment.timestamp())),
                           "webhook-signature": Webhook(STANDARD_SECRET).sign(msg_id, moment, failing)})
    headers = {"Authorization": f"Bearer {admin}"}
    wanted = {"failed", "invalid", "skipped"}
    deadline = time.monotonic() + timeout
    while True:
        listed = requests.get(f"{web}/api/v1/dispatches", headers=headers, timeout=10).json()["items"]
        dead = requests.get(f"{web}/api/v1/deliveries/dead", headers=headers, timeout=10).json()["items"]
        statuses = {d["status"] for d in listed}
        # 7 dispatches: the 3 samples' and these 4; 6 statuses at the CRM (lost-followup's go to crm-archive)
        if (wanted <= statuses and dead and len(listed) >= 7 and all(d["status"] in FINAL for d in listed)
                and received() >= 6) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    click.echo("\nadded for the dashboard (what goes wrong in real life):")
    for status, why in (("failed", 'the sandbox fails every recipient containing "sandbox-fail"'),
                        ("invalid", "the phone is no number"),
                        ("skipped", f"{SUPPRESSED_PHONE} is on the suppression list")):
        rules = sorted(d["rule"] for d in listed if d["status"] == status)
        click.echo(f"  {status:<12} {', '.join(rules) or '(not yet)':<22} {why}")
    click.echo(f"  {'dead letters':<12} {len(dead):<22} lost-followup's status messages to crm-archive, "
               "a CRM webhook that answers 410 Gone")


@cli.command()
@click.option("--time-scale", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="How much faster the sandbox clock runs.")
@click.option("--timeout", type=click.FloatRange(min=10), default=120.0, show_default=True)
@click.option("--keep", is_flag=True,
              help="Afterwards keep everything running and print a dashboard sign-in link, until Ctrl-C.")
def demo(time_scale: float, timeout: float, keep: bool) -> None:
    """Run everything locally and show dispatches as they progress."""
    from integration.web import create_app

    settings = load_settings()
    # The dashboard and /api/v1 need a token: the user's own, else one made up for this run.
    admin = settings.admin_token.get() if settings.admin_token else secrets.token_urlsafe(24)
    embedded = EmbeddedRedis(Path(settings.data_dir) / "demo").start()
    click.echo(f"embedded Redis   {embedded.url}  (data in {embedded.folder})")
    import redis as redis_lib

    redis_lib.Redis.from_url(embedded.url).flushdb()  # each demo starts from a clean slate
    sandbox = SandboxServer(faults=Faults(time_scale=time_scale)).start()
    click.echo(f"Revor sandbox    {sandbox.api_url}")
    lock = threading.Lock()
    seen: dict[str, dict[str, Any]] = {}

    def on_message(message_id: str, body: dict[str, Any]) -> None:
        data = body["data"]
        with lock:
            if message_id in seen.setdefault(data["dispatch_id"], {}).setdefault("messages", set()):
                return
            seen[data["dispatch_id"]]["messages"].add(message_id)
            seen[data["dispatch_id"]]["status"] = data["status"]
            click.echo(f"  {status_line(body)}")

    receiving = receiver_app(RECEIVER_SECRET, on_message)
    if keep:  # the kept run's second write-back destination: a CRM webhook deleted since
        receiving.add_url_rule(GONE_PATH, "gone", lambda: Response("gone", 410), methods=["POST"])
    receiver = LocalServer(receiving).start()
    click.echo(f"write-back       {receiver.url}/revor-status (verifies signatures)")
    rules = _keep_rules(Path(settings.data_dir) / "demo", receiver.url) if keep else DATA / "rules.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVOR_", "REDIS_", "HUBSPOT_", "GENERIC_",
                                                                       "PIPEDRIVE_", "SALESFORCE_"))}
    env.update(REDIS_URL=embedded.url, REVOR_BASE_URL=sandbox.api_url, RULES_FILE=str(rules),
               CRM_STATUS_WEBHOOK_URL=f"{receiver.url}/revor-status", CRM_STATUS_WEBHOOK_SECRET=RECEIVER_SECRET,
               HUBSPOT_CLIENT_SECRET=HUBSPOT_SECRET, SALESFORCE_ORG_IDS=ORG_ID,
               SALESFORCE_WEBHOOK_TOKEN=SALESFORCE_TOKEN, PIPEDRIVE_WEBHOOK_USER=PIPEDRIVE[0],
               PIPEDRIVE_WEBHOOK_PASSWORD=PIPEDRIVE[1], GENERIC_WEBHOOK_SECRET_ZAPIER=ZAPIER_TOKEN,
               GENERIC_WEBHOOK_SECRET_DEMO=STANDARD_SECRET, ADMIN_TOKEN=admin, LOG_LEVEL="ERROR",
               PYTHONUNBUFFERED="1")
    os.environ.update({k: env[k] for k in ("CRM_STATUS_WEBHOOK_URL", "CRM_STATUS_WEBHOOK_SECRET")})
    web_settings = replace(settings, redis_url=embedded.url, rules_file=rules,
                           hubspot_client_secret=Secret(HUBSPOT_SECRET), hubspot_webhook_url=None,
                           salesforce_org_ids=(ORG_ID,),
                           salesforce_webhook_token=Secret(SALESFORCE_TOKEN), pipedrive_webhook_user=PIPEDRIVE[0],
                           pipedrive_webhook_password=Secret(PIPEDRIVE[1]),
                           generic_webhook_secrets={"zapier": Secret(ZAPIER_TOKEN), "demo": Secret(STANDARD_SECRET)},
                           admin_token=Secret(admin))
    web = LocalServer(create_app(web_settings)).start()
    click.echo(f"web              {web.url}")
    log_path = Path(settings.data_dir) / "demo" / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "integration", "worker"], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=log_path.open("w"),
                              preexec_fn=_stopped_with_this_process())
    click.echo(f"worker           pid {worker.pid}, log in {log_path}")
    ok = False
    if keep:  # from here Ctrl-C and SIGTERM end the run through the `finally`, which stops everything
        _stop_on_signals()
    try:
        click.echo("\nsending the sample events:")
        for label, path, body, headers in _requests(web.url):
            answer = requests.post(web.url + path, data=body, headers=headers, timeout=10)
            summary = answer.json() if answer.headers.get("Content-Type", "").startswith("application/json") \
                else {"ack": "SOAP Ack" if b"<Ack>true</Ack>" in answer.content else answer.text[:60]}
            click.echo(f"  {label:<28} {path.split('?')[0]:<26} -> {answer.status_code} {json.dumps(summary)}")
        click.echo("\ndispatches as the CRM receives their status (rule, channel, recipient, status):")
        ok = _wait(seen, lock, web.url, timeout, admin)
        if keep:
            _seed(web.url, embedded.url, admin, timeout, lambda: _final(seen, lock))
            ok = _keep_running(web.url, admin, embedded.url, worker, log_path) and ok
    except _Stop:
        click.echo("\nstopping ...")
    finally:
        if keep:  # a second Ctrl-C must not cut the clean-up short and leave a process behind
            for number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(number, signal.SIG_IGN)
        stop_process_groups([worker], grace=20)
        web.stop()
        receiver.stop()
        sandbox.stop()
        if embedded.started_here:
            embedded.stop()
    sys.exit(0 if ok else EXIT_FINAL)


PR_SET_PDEATHSIG = 1  # prctl(2)


def _stopped_with_this_process() -> Callable[[], None] | None:
    """Linux: a child set up by this runs until its parent dies, then gets SIGTERM from the kernel.

    The demo stops its worker itself on Ctrl-C or SIGTERM; but killed outright (kill -9, a closed
    terminal's SIGHUP) it cannot, and the worker, in a session of its own, ran on: the next demo
    reuses the same embedded Redis, where that worker (pointing at the dead sandbox) took units.
    prctl is looked up here, before the fork: the child only makes one call (what a preexec
    function should do in a process with threads). Elsewhere: None (nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_up() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the demo died before the call
            os.kill(os.getpid(), signal.SIGTERM)

    return set_up


class _Stop(Exception):  # noqa: N818 - a request, not an error
    """Ctrl-C or SIGTERM during `demo --keep`."""


def _stop_on_signals() -> None:
    """Both signals raise `_Stop` in the main thread. Set explicitly: a shell that starts a job in
    the background makes it ignore SIGINT, and SIGTERM's default would skip every clean-up."""
    def stop(*_: object) -> None:
        raise _Stop

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, stop)


def _keep_running(web: str, admin: str, redis_url: str, worker: subprocess.Popen, log_path: Path) -> bool:
    """Print how to look at the run, then wait for Ctrl-C or SIGTERM (`_Stop`); False if the worker died."""
    import redis as redis_lib

    from integration.web.dashboard.auth import sign_in_link

    with redis_lib.Redis.from_url(redis_url) as connection:
        link = sign_in_link(connection, web)
    click.echo("\neverything keeps running; look around:")
    click.echo(f"  dashboard        {link}")
    click.echo("                   (a one-time link that signs this browser in; it lapses after 15 minutes "
               f"unused: then sign in at {web}/dashboard/sign-in)")
    click.echo(f"  ADMIN_TOKEN      {admin}")
    click.echo(f"  status API       curl -H 'Authorization: Bearer {admin}' {web}/api/v1/dispatches")
    click.echo(f"  your own event   POST {web}{OWN_HOOK} with the header X-Hook-Token: {ZAPIER_TOKEN}")
    click.echo("                   (the rule won-whatsapp picks up a won deal with a phone; change event_id and "
               "deal__id to post another):")
    click.echo(f"  {own_event_curl(web)}")
    click.echo("press Ctrl-C to stop everything")
    while worker.poll() is None:
        time.sleep(0.5)
    click.echo(f"\nthe worker exited (code {worker.returncode}); its log is in {log_path}; stopping", err=True)
    return False


def _wait(seen: dict[str, dict[str, Any]], lock: threading.Lock, web: str, timeout: float, admin: str) -> bool:
    headers = {"Authorization": f"Bearer {admin}"}
    deadline = time.monotonic() + timeout
    expected = 3  # the example rules match one Salesforce, one Zapier and one Standard Webhooks event
    while time.monotonic() < deadline:
        with lock:
            done = len(seen) >= expected and all(d.get("status") in FINAL for d in seen.values())
        if done:
            break
        time.sleep(0.2)
    listed = requests.get(f"{web}/api/v1/dispatches", headers=headers, timeout=10).json()["items"]
    states = {d["rule"]: d["status"] for d in listed}
    click.echo(f"\ndone: {json.dumps(states, sort_keys=True)}")
    click.echo("events without a dispatch are explained by `revor-bridge preview` (e.g. the HubSpot batch needs "
               "hydration with HUBSPOT_ACCESS_TOKEN to know the contact).")
    return len(states) >= expected and all(s == "succeeded" for s in states.values())
