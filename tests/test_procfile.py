"""The Procfile, run as Heroku runs it: its exact `release`, `web` and `worker` commands.

Each command is read from the repository's Procfile and started by a shell, as a dyno starts it,
with a dyno's environment (`PORT`, `DYNO`, `REDIS_URL`, a Revor key and the rules in `RULES_YAML`)
against a real redis-server, a real `revor-bridge sandbox` process and a write-back receiver, all
on 127.0.0.1. The release must pass, a signed webhook posted to `$PORT` must end as a dispatch in
Revor with its status written back, and SIGTERM sent to every process of each dyno (Heroku's
shutdown) must end each one cleanly well inside the 30 s before Heroku's SIGKILL. The README's
deploy walkthrough is checked against the same files and the code it describes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from standardwebhooks import Webhook
from werkzeug.routing import RequestRedirect

from integration.settings import Secret
from integration.web import create_app
from tests.conftest import ROOT, bridge_settings, cli_env, free_port, wait_for_port
from tests.servers import ThreadServer, writeback_receiver

HOOK_SECRET = "whsec_cHJvY2ZpbGUtaG9vay1zZWNyZXQtMDEyMzQ1Njc4OQ=="
STATUS_SECRET = "whsec_cHJvY2ZpbGUtc3RhdHVzLXNlY3JldC0wMTIzNDU2Nzg="
ADMIN = "procfile-admin-token-0123456789"
HEROKU_GRACE = 30.0  # seconds between Heroku's SIGTERM and its SIGKILL
EVENT = (ROOT / "integration" / "demo_data" / "events" / "standard-webhooks-linkedin.json").read_bytes()

RULES = """version: 1
rules:
  - name: crm-linkedin
    when: {source: generic:crm, type: deal.stage_changed, match: {contact.linkedin_url: {exists: true}}}
    dispatch:
      account: connect_account_sandbox_linkedin
      channel: linkedin
      recipient: {profile_url: "{{ contact.linkedin_url }}"}
      content: {text: "Hi {{ contact.first_name }}, glad to connect!"}
      interval_seconds: 120
    writeback: [crm]
destinations:
  crm:
    url: "${CRM_STATUS_URL}"
    secret: "${CRM_STATUS_SECRET}"
"""


def procfile() -> dict[str, str]:
    """`<type>: <command>` per line, as Heroku reads the file."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {name.strip(): command.strip() for name, command in (line.split(":", 1) for line in lines if line.strip())}


def listening(port: int) -> list[str]:
    """Local addresses listening on `port` (from /proc/net/tcp and tcp6), e.g. ['0.0.0.0']."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.append("0.0.0.0" if set(address) == {"0"} and len(address) == 8 else
                             "::" if set(address) == {"0"} else address)
    return found


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(_pgid_of(p) == pgid for p in Path("/proc").iterdir() if p.name.isdigit())


def _pgid_of(entry: Path) -> int | None:
    try:
        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[2])


@pytest.fixture
def revor_sandbox_process(tmp_path: Path) -> Iterator[str]:
    """`revor-bridge sandbox` in its own process, its clock 100x; yields its API base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "integration", "sandbox", "--port", str(port),
                             "--time-scale", "100"], env=cli_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}/api/v1"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_procfile_processes_release_serve_process_and_stop_on_sigterm(redis_url, redis_db, revor_sandbox_process,
                                                                       tmp_path):
    """Issue 11 item 1: release, web and worker exactly as the Procfile writes them, on a dyno's environment."""
    commands = procfile()
    assert {"release", "web", "worker"} <= set(commands), commands
    app, received = writeback_receiver(STATUS_SECRET)
    port = free_port()
    with ThreadServer(app) as receiver:
        venv_bin = str(Path(sys.executable).parent)
        base = cli_env(
            PATH=f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}", PORT=str(port),
            REDIS_URL=f"{redis_url}/1", REVOR_API_KEY="sk-revor-sandbox", REVOR_BASE_URL=revor_sandbox_process,
            RULES_YAML=RULES, CRM_STATUS_URL=f"{receiver.url}/status", CRM_STATUS_SECRET=STATUS_SECRET,
            GENERIC_WEBHOOK_SECRET_CRM=HOOK_SECRET, ADMIN_TOKEN=ADMIN, WEB_CONCURRENCY="2")
        base.pop("RULES_FILE", None)

        def start(kind: str, dyno: str) -> subprocess.Popen[str]:
            # A dyno runs the Procfile's command with `bash -c`, in the app's folder; its own session
            # stands for the dyno, so a signal reaches every process in it, as Heroku's does.
            with (tmp_path / f"{dyno}.log").open("w") as log:
                return subprocess.Popen(["bash", "-c", commands[kind]], cwd=tmp_path, env={**base, "DYNO": dyno},
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        release = start("release", "release.1234")
        release.wait(timeout=60)
        out = (tmp_path / "release.1234.log").read_text()
        assert release.returncode == 0, out
        assert "settings: ok" in out and "rules: ok (1 rules in" in out and "revor: ok (Revor," in out, out

        dynos = {"web": start("web", "web.1"), "worker": start("worker", "worker.1")}
        if "clock" in commands:
            dynos["clock"] = start("clock", "clock.1")
        try:
            wait_for_port(port, timeout=20)
            assert listening(port) in (["0.0.0.0"], ["::"]), f"web must listen on every address: {listening(port)}"
            msg_id = f"msg_{uuid.uuid4().hex[:16]}"
            now = datetime.now(UTC)
            signature = Webhook(HOOK_SECRET).sign(msg_id, now, EVENT.decode())
            posted = requests.post(f"http://127.0.0.1:{port}/webhooks/generic/crm", data=EVENT, timeout=10,
                                   headers={"Content-Type": "application/json", "webhook-id": msg_id,
                                            "webhook-timestamp": str(int(now.timestamp())),
                                            "webhook-signature": signature})
            assert posted.status_code == 200, posted.text

            deadline = time.monotonic() + 20
            statuses: list[str] = []
            while time.monotonic() < deadline and "succeeded" not in statuses:
                statuses = [m["body"]["data"]["status"] for m in received["messages"]]
                time.sleep(0.2)
            assert "succeeded" in statuses, (statuses, received)
            listed = requests.get(f"http://127.0.0.1:{port}/api/v1/dispatches", timeout=10,
                                  headers={"Authorization": f"Bearer {ADMIN}"}).json()["items"]
            assert [(d["rule"], d["status"]) for d in listed] == [("crm-linkedin", "succeeded")]
            assert listed[0]["revor_job_id"], listed
            # More work in flight when the signal comes: a shutdown mid-batch must be as clean.
            for n in range(20):
                more = EVENT.replace(b"sam-ortiz-example", f"sam-{n}".encode())
                msg_id = f"msg_{uuid.uuid4().hex[:16]}"
                assert requests.post(f"http://127.0.0.1:{port}/webhooks/generic/crm", data=more, timeout=10, headers={
                    "Content-Type": "application/json", "webhook-id": msg_id,
                    "webhook-timestamp": str(int(now.timestamp())),
                    "webhook-signature": Webhook(HOOK_SECRET).sign(msg_id, now, more.decode())}).status_code == 200
            time.sleep(0.3)
        finally:
            for proc in dynos.values():  # Heroku signals every process of every dyno at once
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            signalled = time.monotonic()
            outcome = {}
            for kind, proc in dynos.items():
                try:
                    proc.wait(timeout=max(0.1, HEROKU_GRACE - (time.monotonic() - signalled)))
                except subprocess.TimeoutExpired:
                    pass
                outcome[kind] = (proc.returncode, time.monotonic() - signalled)
            leftovers = {kind: group_alive(proc.pid) for kind, proc in dynos.items()}
            for proc in dynos.values():
                if group_alive(proc.pid):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    logs = {path.name: path.read_text() for path in tmp_path.glob("*.log")}
    assert not [name for name, text in logs.items() if "Traceback" in text], logs
    for kind, (code, seconds) in outcome.items():
        assert code == 0 and seconds < HEROKU_GRACE, (f"{kind} exited {code} after {seconds:.1f} s", logs)
        assert not leftovers[kind], f"a process of the {kind} dyno outlived its SIGTERM"
    assert listening(port) == []


def _deploy_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## Deploy to Heroku\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_deploy_walkthrough_uses_what_the_code_reads(make_bridge):
    """Every config var, add-on, process and URL the walkthrough names is one the code knows, and
    its first-event `curl` gets the answer it shows."""
    section = _deploy_section()
    app = json.loads((ROOT / "app.json").read_text())
    set_vars = set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", " ".join(re.findall(r"heroku config:set[^\n]*(?:\n {4}.*)*",
                                                                            section))))
    assert {"REVOR_API_KEY", "ADMIN_TOKEN", "RULES_FILE", "RULES_YAML"} <= set_vars
    unknown = [name for name in set_vars if name not in app["env"] and not name.startswith("GENERIC_WEBHOOK_SECRET_")]
    assert unknown == [], unknown
    addons = re.findall(r"heroku addons:create (\S+)", section)
    assert addons and all({"plan": plan} in app["addons"] for plan in addons)
    scaled = dict(part.split("=") for part in re.search(r"heroku ps:scale ([^\n]+)", section).group(1).split())
    assert set(scaled) == set(app["formation"]) and set(scaled) <= set(procfile())

    command = re.search(r"^curl https://\S+/webhooks/generic/\S+ \\\n(?:.*\n)*?.*'\n", section, re.M).group(0)
    args = shlex.split(command.replace("\\\n", " ").replace("$(heroku config:get GENERIC_WEBHOOK_SECRET_TRY)",
                                                            "try-token-0123456789abcdef"))
    path = "/" + args[1].split("/", 3)[3]
    headers = dict(args[i + 1].split(": ", 1) for i, arg in enumerate(args) if arg == "-H")
    body = args[args.index("-d") + 1]
    bridge = make_bridge(generic_webhook_secrets={"try": Secret("try-token-0123456789abcdef")})
    answer = requests.post(bridge.url + path, data=body.encode(), headers=headers, timeout=10)
    shown = json.loads(re.search(r"The answer is `(\{.*?\})`", section).group(1).replace('"..."', '"x"'))
    assert answer.status_code == 200 and set(answer.json()) == set(shown), answer.text
    assert {k: v for k, v in answer.json().items() if k != "delivery_id"} == {k: v for k, v in shown.items()
                                                                              if k != "delivery_id"}
    event_id = json.loads(body)["event_id"]
    for url in re.findall(r"https://my-revor-bridge\.herokuapp\.com(/api/v1/\S+)", section):
        url = url.replace("try-1", event_id)
        seen = requests.get(bridge.url + url, headers={"Authorization": "Bearer admin-token-0123456789"}, timeout=10)
        assert seen.status_code == 200, (url, seen.text)

    routes = create_app(bridge_settings("redis://127.0.0.1:1")).url_map.bind("my-revor-bridge.herokuapp.com")
    documented = re.findall(r"herokuapp\.com(/(?:webhooks|dashboard)[^\s`?,)]*)", section)
    assert len(documented) >= 6
    for path in documented:
        try:
            routes.match(re.sub(r"<[^>]+>", "x", path), method="POST" if path.startswith("/webhooks") else "GET")
        except RequestRedirect:  # /dashboard -> /dashboard/
            pass
