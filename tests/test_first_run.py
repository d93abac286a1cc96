"""A first-time user's path: commands started together, `revor-bridge dev`, a wheel install, the errors.

Every test here runs real processes (`python -m integration ...` or the installed console
script) against real redis-server and HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import flask
import pytest
import redis
import requests

from integration.rules.loader import RulesError, load_rules
from tests.conftest import ROOT, cli_env


def _redis_servers_for(folder: Path) -> list[int]:
    """Pids of live redis-server processes working in `folder` (redis chdirs to its --dir; from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if name.startswith("redis-server") and state != "Z" and cwd == str(folder.resolve()):
            pids.append(int(entry.name))
    return sorted(pids)


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_commands_started_together_share_one_embedded_redis(tmp_path):
    """Issue 9 item 15: four commands resolving the embedded server at once get one server, not four."""
    start_at = time.time() + 1.5  # every process imports first, then all race for the server together
    code = ("import sys, time; from pathlib import Path; from integration.storage import resolve_redis_url;"
            f"time.sleep(max(0, {start_at!r} - time.time()));"
            f"url, embedded = resolve_redis_url(None, Path({str(tmp_path)!r})); print(url, embedded.pid)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=cli_env()) for _ in range(4)]
    try:
        outputs = [proc.communicate(timeout=60) for proc in procs]
        assert all(proc.returncode == 0 for proc in procs), outputs
        answers = {out.strip() for out, _ in outputs}
        servers = _redis_servers_for(tmp_path / "redis")
        assert len(answers) == 1, f"each command got its own server: {answers}"
        url, pid = answers.pop().split()
        assert servers == [int(pid)]
        assert redis.Redis.from_url(url).ping()
    finally:
        _kill_all(_redis_servers_for(tmp_path / "redis"))


# ---- issue 9 item 16: the demo from a built wheel in a fresh virtualenv (runs in CI, never skipped) ----

def _build_wheel(tmp_path: Path) -> Path:
    """The project's wheel, built offline from a copy of the sources (so no build/ lands in the repo)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("integration", "schemas"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=120, env=cli_env(PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert built.returncode == 0, "pip wheel failed (is the test extra installed? it brings `wheel`):\n" + built.stderr
    return next((tmp_path / "dist").glob("revor_bridge-*.whl"))


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new virtualenv with only the wheel installed; the pinned dependencies come from this environment."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=120,
                               env=cli_env(PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert installed.returncode == 0, installed.stderr
    # The dependencies (not the project: this environment's editable install is a .pth hook, not read here).
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(str(Path(flask.__file__).resolve().parent.parent) + "\n")
    return venv


def test_demo_runs_from_a_built_wheel_in_a_fresh_virtualenv(tmp_path):
    """`pip install` of a wheel (not editable) ships the demo's events, and the demo succeeds from any folder."""
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    shipped = {f"integration/demo_data/events/{p.name}" for p in (ROOT / "integration/demo_data/events").iterdir()}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "integration/demo_data/rules.yaml" in names

    venv = _fresh_venv(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import integration; print(integration.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, check=True).stdout
    assert where.startswith(str(venv)), f"the project was imported from outside the new venv: {where}"
    result = subprocess.run([str(venv / "bin" / "revor-bridge"), "demo", "--time-scale", "300", "--timeout", "90"],
                            capture_output=True, text=True, cwd=elsewhere, timeout=180,
                            env=cli_env(BRIDGE_DATA_DIR=str(tmp_path / "data")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for label in ("HubSpot app webhook batch", "Salesforce Outbound Message", "Pipedrive webhook", "Zapier hook",
                  "Standard Webhooks sender"):
        assert any(row.strip().startswith(label) and "-> 200" in row for row in result.stdout.splitlines()), label
    assert ('done: {"salesforce-closed-won": "succeeded", "stage-linkedin": "succeeded", '
            '"won-whatsapp": "succeeded"}') in result.stdout


# ---- issue 9 item 17: the rough edges a first run meets ----

BROKEN_RULES = """version: 1
rules:
  - name: one
    when: {source: hubspot}
    dispatch:
      account: connect_account_x
      channel: fax
      recipient: {address: "{{ contact.email }"}
      content: {subject: "Hi", text: "Hello"}
    writeback: [nowhere]
"""


def test_a_rules_file_gets_every_kind_of_problem_listed_in_one_run(tmp_path):
    """Schema errors, unknown destinations and template syntax errors together, not one kind per run."""
    path = tmp_path / "rules.yaml"
    path.write_text(BROKEN_RULES)
    with pytest.raises(RulesError) as caught:
        load_rules(path, environ={})
    assert caught.value.problems == [
        "rule 'one' dispatch.channel: Must be one of: email, linkedin, whatsapp. (line 7)",
        "rule 'one' writeback: Unknown destination(s) ['nowhere']. (line 10)",
        "rule 'one' dispatch.recipient.address: template error: unexpected '}' (line 8)",
    ]


def test_web_and_worker_refusing_a_rules_file_leave_no_embedded_redis(tmp_path):
    (tmp_path / "rules.yaml").write_text(BROKEN_RULES)
    env = cli_env(RULES_FILE=str(tmp_path / "rules.yaml"), BRIDGE_DATA_DIR=str(tmp_path / "data"))
    procs = {name: subprocess.Popen([sys.executable, "-m", "integration", name], env=env, cwd=tmp_path,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("web", "worker")}
    try:
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 2, (name, err)
            assert "Unknown destination(s) ['nowhere']" in err and "embedded Redis" not in err, (name, err)
        assert _redis_servers_for(tmp_path / "data" / "redis") == []
    finally:
        _kill_all(_redis_servers_for(tmp_path / "data" / "redis"))


def test_a_revor_error_is_printed_once(sandbox, tmp_path):
    result = subprocess.run([sys.executable, "-m", "integration", "send", "--account", "connect_account_nope",
                             "--channel", "email", "--to", "x@example.com", "--subject", "s", "--text", "t"],
                            env=cli_env(REVOR_BASE_URL=sandbox.api_url), cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("account_not_found") == 1, result.stderr


def test_the_accounts_table_lines_up(sandbox, tmp_path):
    result = subprocess.run([sys.executable, "-m", "integration", "accounts"], cwd=tmp_path, capture_output=True,
                            env=cli_env(REVOR_BASE_URL=sandbox.api_url), text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert len(rows) == 4
    starts = {tuple(m.start() for m in re.finditer(r"(?:(?<=\s\s)|^)\S", row))[:4] for row in rows}
    assert len(starts) == 1, result.stdout  # every column starts at the same offset on every row


def test_check_with_the_sandbox_down_says_how_to_start_it(tmp_path):
    from integration.storage import free_port

    result = subprocess.run([sys.executable, "-m", "integration", "check"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60,
                            env=cli_env(REVOR_BASE_URL=f"http://127.0.0.1:{free_port()}/api/v1"))
    assert result.returncode == 3  # unreachable, as the README's exit codes say (issue 9 item 5d)
    assert ("is the sandbox running? start it with `revor-bridge sandbox`, or set REVOR_API_KEY"
            in result.stdout), result.stdout


# ---- issue 9 item 15: `revor-bridge dev` runs sandbox + web + worker on one Redis, and stops them all ----

def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (read from /proc), so a test can check that none outlives it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_dev_runs_sandbox_web_and_worker_until_ctrl_c(tmp_path):
    from integration.storage import free_port

    web_port, sandbox_port, receiver_port = free_port(), free_port(), free_port()
    log = (tmp_path / "dev.log").open("w+")
    env = cli_env(PORT=str(web_port), BRIDGE_DATA_DIR=str(tmp_path / "data"), WEB_CONCURRENCY="1",
                  WRITEBACK_RETRY_SCALE="0.01",
                  CRM_STATUS_WEBHOOK_URL=f"http://127.0.0.1:{receiver_port}/revor-status")
    for name in ("RULES_FILE", "ADMIN_TOKEN"):
        env.pop(name, None)
    dev = subprocess.Popen([sys.executable, "-m", "integration", "dev", "--sandbox-port", str(sandbox_port),
                            "--time-scale", "100"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while "revor-bridge dev: running" not in (tmp_path / "dev.log").read_text():
            assert dev.poll() is None and time.monotonic() < deadline, (tmp_path / "dev.log").read_text()
            time.sleep(0.2)
        time.sleep(0.5)  # the rest of the banner
        banner = (tmp_path / "dev.log").read_text()
        token = re.search(r"-H 'X-Hook-Token: (\S+)' --data-binary @(\S+)", banner)
        admin = re.search(r"-H 'Authorization: Bearer (\S+)'", banner)
        assert token and admin, banner
        assert f"sandbox  http://127.0.0.1:{sandbox_port}/api/v1" in banner and "embedded" in banner
        family = _descendants(dev.pid)
        servers = _redis_servers_for(tmp_path / "data" / "redis")
        assert len(servers) == 1 and servers[0] in family  # one Redis, started by dev, shared by web and worker

        sample = Path(token.group(2))
        assert sample.parent == ROOT / "integration" / "demo_data" / "events"
        posted = requests.post(f"http://127.0.0.1:{web_port}/webhooks/generic/zapier", data=sample.read_bytes(),
                               headers={"Content-Type": "application/json", "X-Hook-Token": token.group(1)}, timeout=10)
        assert posted.status_code == 200 and posted.json()["new"] == 1, posted.text
        event_id = json.loads(sample.read_bytes())["event_id"]
        headers = {"Authorization": f"Bearer {admin.group(1)}"}
        deadline = time.monotonic() + 60
        while True:
            event = requests.get(f"http://127.0.0.1:{web_port}/api/v1/events/generic:zapier/{event_id}",
                                 headers=headers, timeout=10).json()
            listed = requests.get(f"http://127.0.0.1:{web_port}/api/v1/dispatches", headers=headers, timeout=10).json()
            if event.get("status") == "processed" and listed["items"] and listed["items"][0]["status"] == "succeeded":
                break
            assert time.monotonic() < deadline, (event, listed)
            time.sleep(0.3)
        assert listed["items"][0]["rule"] == "won-whatsapp"
        # Issue 9 item 4a: the example rules' write-back reaches a verifying receiver that prints each status.
        assert f"write-back crm-status -> http://127.0.0.1:{receiver_port}/revor-status" in banner
        deadline = time.monotonic() + 30
        while not re.search(r"write-back crm-status: won-whatsapp +whatsapp +\+14155550123 +succeeded",
                            (tmp_path / "dev.log").read_text()):
            assert time.monotonic() < deadline, (tmp_path / "dev.log").read_text()
            time.sleep(0.3)
        assert "bad signature" not in (tmp_path / "dev.log").read_text()
        # Issue 9 item 4d: the web process listens on 127.0.0.1 only, as the banner says.
        assert _listen_addresses(web_port) == {"127.0.0.1"}

        family |= _descendants(dev.pid)
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=60) == 0, (tmp_path / "dev.log").read_text()
        assert "revor-bridge dev: stopped" in (tmp_path / "dev.log").read_text()
        deadline = time.monotonic() + 5
        while [p for p in family if _alive(p)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in family if _alive(p)] == [], "children outlived `revor-bridge dev`"
        assert _redis_servers_for(tmp_path / "data" / "redis") == []
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        _kill_all([p for p in family | set(_redis_servers_for(tmp_path / "data" / "redis")) if _alive(p)])
        log.close()


# ---- issue 9 item 4: `dev` checks its ports first, binds loopback only, and fits its hints to the rules ----

def _listen_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, number = local.rsplit(":", 1)
            if state == "0A" and int(number, 16) == port:
                found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))) if len(address) == 8
                          else address)
    return found


@pytest.mark.parametrize("taken", ["sandbox", "web"])
def test_dev_with_a_port_in_use_says_which_setting_to_change_and_starts_nothing(tmp_path, taken):
    import socket

    from integration.storage import free_port

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy = blocker.getsockname()[1]
    web_port, sandbox_port = (free_port(), busy) if taken == "sandbox" else (busy, free_port())
    env = cli_env(PORT=str(web_port), BRIDGE_DATA_DIR=str(tmp_path / "data"),
                  CRM_STATUS_WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/revor-status")
    env.pop("RULES_FILE", None)
    try:
        result = subprocess.run([sys.executable, "-m", "integration", "dev", "--sandbox-port", str(sandbox_port)],
                                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    finally:
        blocker.close()
    assert result.returncode == 2, result.stderr
    fix = "choose another with --sandbox-port" if taken == "sandbox" else "set PORT to another"
    what = "sandbox" if taken == "sandbox" else "web process"
    assert result.stderr.splitlines() == [f"revor-bridge: port {busy} for the {what} is in use ({fix}); "
                                          "nothing was started"]
    assert "running" not in result.stderr + result.stdout
    assert not (tmp_path / "data" / "redis").exists()  # not even the embedded Redis was started


USER_RULES = """\
version: 1
rules:
  - name: mine
    when: {source: generic:crm}
    dispatch: {account: connect_account_sandbox_email, channel: email, recipient: {address: "{{ contact.email }}"},
               content: {subject: Hi, text: Hello}}
    writeback: [mine]
destinations:
  mine:
    url: http://127.0.0.1:%d/status
    secret: whsec_ZGVtby1zdGF0dXMtc2VjcmV0LTAxMjM0NTY3ODk=
"""


def test_dev_with_your_own_rules_gives_no_example_hints_and_listens_on_loopback_only(tmp_path):
    """Item 4c/4d: no Zapier/WhatsApp hint or made-up Zapier token for a user's rules, a loud line for a
    write-back destination on 127.0.0.1 that nothing serves, and gunicorn bound to 127.0.0.1."""
    from integration.storage import free_port

    web_port, sandbox_port, nobody = free_port(), free_port(), free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text(USER_RULES % nobody)
    log = (tmp_path / "dev.log").open("w+")
    env = cli_env(PORT=str(web_port), BRIDGE_DATA_DIR=str(tmp_path / "data"), WEB_CONCURRENCY="1",
                  RULES_FILE=str(rules), ADMIN_TOKEN="admin-token-0123456789")
    dev = subprocess.Popen([sys.executable, "-m", "integration", "dev", "--sandbox-port", str(sandbox_port)],
                           env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "see the dispatches:" not in (tmp_path / "dev.log").read_text():
            assert dev.poll() is None and time.monotonic() < deadline, (tmp_path / "dev.log").read_text()
            time.sleep(0.2)
        banner = (tmp_path / "dev.log").read_text()
        assert f"rules    {rules}\n" in banner
        for example_only in ("Zapier", "WhatsApp", "zapier", "example rules"):
            assert example_only not in banner, example_only
        assert (f"WARNING: write-back mine -> http://127.0.0.1:{nobody}/status: nothing listens there" in banner)
        assert _listen_addresses(web_port) == {"127.0.0.1"}
        assert _listen_addresses(sandbox_port) == {"127.0.0.1"}
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=60) == 0
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        _kill_all(_redis_servers_for(tmp_path / "data" / "redis"))
        log.close()
