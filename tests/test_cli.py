"""The `revor-bridge` commands as a user runs them: real processes, real sockets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import cli_env, free_port, revor_bridge, wait_for_port


@pytest.fixture
def sandbox_process() -> Iterator[str]:
    """`revor-bridge sandbox` in its own process; yields its API base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "integration", "sandbox", "--port", str(port),
                             "--time-scale", "1"], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}/api/v1"
    finally:
        # SIGTERM, as a process manager stops it: a shell that starts the suite in the background
        # makes its children ignore SIGINT, and such a sandbox would never see a Ctrl-C.
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_send_then_job_wait_reaches_succeeded(sandbox_process, tmp_path):
    env = cli_env(REVOR_BASE_URL=sandbox_process)
    sent = revor_bridge("send", "--account", "connect_account_sandbox_email", "--channel", "email",
                        "--to", "alex@example.com", "--name", "Alex", "--subject", "Hello", "--text", "Hi Alex",
                        "--interval", "180", env=env, cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.strip()
    assert job_id.startswith("job_")
    assert "using the Revor sandbox" in sent.stderr
    waited = revor_bridge("job", job_id, "--wait", "--timeout", "30", env=env, cwd=tmp_path)
    assert waited.returncode == 0, waited.stderr
    lines = waited.stdout.strip().splitlines()
    # How far the job got before `job --wait` started depends on the machine's load (the sandbox
    # keeps a job queued for 1 s); what must hold is one line per status, in lifecycle order.
    order = ["queued", "scheduled", "running", "succeeded"]
    statuses = [line.split()[1] for line in lines]
    assert all(line.startswith(f"{job_id}  ") for line in lines), lines
    assert statuses[-1] == "succeeded" and statuses == sorted(set(statuses), key=order.index), statuses
    shown = revor_bridge("job", job_id, "--json", env=env, cwd=tmp_path)
    assert json.loads(shown.stdout)["status"] == "succeeded"


def test_accounts_lists_sandbox_accounts(sandbox_process, tmp_path):
    env = cli_env(REVOR_BASE_URL=sandbox_process)
    listed = revor_bridge("accounts", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 4
    sendable = revor_bridge("accounts", "--channel", "linkedin", "--sendable", env=env, cwd=tmp_path)
    assert sendable.stdout.split()[0] == "connect_account_sandbox_linkedin"


def test_send_json_and_repeat_with_the_same_key(sandbox_process, tmp_path):
    env = cli_env(REVOR_BASE_URL=sandbox_process)
    args = ("send", "--account", "connect_account_sandbox_whatsapp", "--channel", "whatsapp",
            "--to", "+14155552671", "--text", "Hi", "--idempotency-key", "cli-repeat-1", "--json")
    first = json.loads(revor_bridge(*args, env=env, cwd=tmp_path).stdout)
    second = json.loads(revor_bridge(*args, env=env, cwd=tmp_path).stdout)
    assert first["ok"] and first["job"]["id"] == second["job"]["id"]
    changed = revor_bridge(*[a if a != "Hi" else "Hello" for a in args], env=env, cwd=tmp_path)
    assert changed.returncode == 1
    assert json.loads(changed.stdout)["code"] == "idempotency_conflict"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("send", "--account", "a", "--channel", "email", "--to", "x@example.com", "--text", "t"), 2,
         "invalid dispatch: --subject: Missing data for required field (email)."),
        (("send", "--account", "a", "--channel", "whatsapp", "--to", "555", "--text", "t"), 2,
         "invalid dispatch: --to: Not an E.164 phone number"),
        (("send", "--account", "a", "--channel", "fax", "--to", "x", "--text", "t"), 2,
         "Invalid value for '--channel'"),
        (("send", "--account", "a", "--channel", "email", "--to", "x@example.com", "--subject", "s",
          "--text", "t", "--interval", "30"), 2, "Invalid value for '--interval'"),
        (("send", "--account", "a", "--channel", "email", "--to", "x@example.com", "--subject", "s",
          "--text", "t", "--idempotency-key", "has spaces"), 2, "Invalid value for --idempotency-key"),
        (("send", "--account", "connect_account_nope", "--channel", "email", "--to", "x@example.com",
          "--subject", "s", "--text", "t"), 1, "HTTP 404 code=account_not_found"),
        (("job", "job_does_not_exist"), 1, "HTTP 404 code=external_api_job_not_found"),
        (("job", "../../etc/passwd"), 2, "Invalid value for JOB_ID"),
    ],
)
def test_wrong_input_gets_a_clear_error_and_exit_code(sandbox_process, tmp_path, args, code, message):
    result = revor_bridge(*args, env=cli_env(REVOR_BASE_URL=sandbox_process), cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_setting_stops_with_one_line(tmp_path):
    result = revor_bridge("accounts", env=cli_env(REVOR_API_KEY="not-a-key"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("revor-bridge: configuration error: REVOR_API_KEY: malformed, "
                                     "expected a key starting with 'sk-revor-'")


def test_env_file_is_read_but_the_environment_wins(tmp_path, sandbox_process):
    (tmp_path / ".env").write_text(f"REVOR_BASE_URL={sandbox_process}\nPORT=abc\n")
    broken = revor_bridge("accounts", env=cli_env(), cwd=tmp_path)
    assert broken.returncode == 2 and "PORT: malformed" in broken.stderr
    fixed = revor_bridge("accounts", "--json", env=cli_env(PORT="8001"), cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr


def test_unreachable_revor_exits_3(tmp_path):
    result = revor_bridge("accounts", env=cli_env(REVOR_BASE_URL=f"http://127.0.0.1:{free_port()}/api/v1"),
                          cwd=tmp_path, timeout=120)
    assert result.returncode == 3
    assert "connection failed" in result.stderr


def test_check_reports_each_part(sandbox_process, redis_url, tmp_path):
    result = revor_bridge("check", env=cli_env(REVOR_BASE_URL=sandbox_process, REDIS_URL=redis_url), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "settings: ok",
        "rules: RULES_FILE is unset: web and worker use no rules (events are stored and processed, nothing is sent); "
        "preview and dev use the example rules",
        "redis: ok", "revor: ok (sandbox, 4 accounts, 3 can send)"]


def test_check_on_a_dyno_fails_without_redis_or_a_revor_key_one_line_each(sandbox_process, redis_url, tmp_path):
    """On Heroku (DYNO set) an unset REDIS_URL or REVOR_API_KEY is not "local mode": the release
    check fails and says what is missing, instead of passing against a sandbox on 127.0.0.1."""
    bare = revor_bridge("check", env=cli_env(DYNO="release.1", LOG_FORMAT="text", REVOR_BASE_URL=sandbox_process),
                        cwd=tmp_path)  # on a dyno the lines are JSON by default (tests/test_logs.py)
    assert bare.returncode == 1, bare.stdout + bare.stderr
    assert bare.stdout.splitlines() == [
        "settings: REDIS_URL (or REDIS_TLS_URL) is unset: add Redis (the heroku-redis add-on sets it)",
        "settings: REVOR_API_KEY is unset: without it the bridge would talk to a sandbox on 127.0.0.1 "
        "(set your sk-revor-... key)"]
    keyless = revor_bridge("check", env=cli_env(DYNO="release.1", LOG_FORMAT="text", REDIS_URL=redis_url,
                                                 REVOR_BASE_URL=sandbox_process), cwd=tmp_path)
    assert keyless.returncode == 1 and "REDIS_URL" not in keyless.stdout and "REVOR_API_KEY" in keyless.stdout
    ready = revor_bridge("check", env=cli_env(DYNO="release.1", LOG_FORMAT="text", REDIS_URL=redis_url,
                                              REVOR_API_KEY="sk-revor-sandbox",
                                              REVOR_BASE_URL=sandbox_process), cwd=tmp_path)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert ready.stdout.splitlines()[0] == "settings: ok" and "revor: ok" in ready.stdout


def test_rules_yaml_is_the_whole_rules_file_in_one_config_var(sandbox_process, redis_url, tmp_path):
    """For a Deploy-button app that was never forked: the rules file travels in RULES_YAML."""
    rules = "version: 1\nrules:\n" + SOURCES_RULES.split("rules:\n", 1)[1].split("  - name: from-salesforce")[0]
    result = revor_bridge("check", env=cli_env(RULES_YAML=rules, REVOR_BASE_URL=sandbox_process, REDIS_URL=redis_url,
                                               BRIDGE_DATA_DIR=str(tmp_path / "data")), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    written = tmp_path / "data" / "rules-from-RULES_YAML.yaml"
    assert f"rules: ok (1 rules in {written})" in result.stdout and written.read_text() == rules
    both = revor_bridge("check", env=cli_env(RULES_YAML=rules, RULES_FILE=str(written)), cwd=tmp_path)
    assert both.returncode == 2
    assert both.stderr.strip() == "revor-bridge: configuration error: RULES_YAML and RULES_FILE are both set: keep one"
    broken = revor_bridge("check", env=cli_env(RULES_YAML="version: 1\nrules: [{name: x}]\n",
                                               BRIDGE_DATA_DIR=str(tmp_path / "data")), cwd=tmp_path)
    assert broken.returncode != 0 and "rules-from-RULES_YAML.yaml" in broken.stdout + broken.stderr
    # Pasted into a one-line form field (the Deploy button's), the line breaks became spaces.
    flattened = revor_bridge("check", env=cli_env(RULES_YAML=rules.replace("\n", " "),
                                                  BRIDGE_DATA_DIR=str(tmp_path / "flat")), cwd=tmp_path)
    assert flattened.returncode == 2 and flattened.stdout == "", flattened.stdout + flattened.stderr
    assert flattened.stderr.startswith("revor-bridge: configuration error: RULES_YAML is one line: the rules "
                                       "file's line breaks were lost"), flattened.stderr
    assert 'heroku config:set RULES_YAML="$(cat rules.yaml)"' in flattened.stderr
    assert not (tmp_path / "flat").exists()


SOURCES_RULES = """\
version: 1
rules:
""" + "".join(f"""\
  - name: from-{name.replace(':', '-')}
    when: {{source: "{name}"}}
    dispatch: {{account: connect_account_sandbox_email, channel: email, recipient: {{address: x@example.com}},
               content: {{subject: s, text: t}}}}
""" for name in ("hubspot", "salesforce", "pipedrive", "generic:zapier-eu", "generic:ok"))


def test_check_warns_about_rule_sources_whose_endpoint_is_not_configured(sandbox_process, redis_url, tmp_path):
    """Issue 9 item 5a: a rule for a source nobody configured gets no events; check names the setting."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(SOURCES_RULES)
    env = cli_env(REVOR_BASE_URL=sandbox_process, REDIS_URL=redis_url, RULES_FILE=str(rules),
                  SALESFORCE_ORG_IDS="00D5e000000Fxq2EAC", GENERIC_WEBHOOK_SECRET_OK="token-0123456789abcdef")
    result = revor_bridge("check", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr  # a warning: the endpoints wait, nothing is lost
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: source hubspot ('from-hubspot'): HUBSPOT_CLIENT_SECRET unset, so /webhooks/hubspot answers 503 "
        "and these rules get no events",
        "warning: source salesforce ('from-salesforce'): SALESFORCE_WEBHOOK_TOKEN unset, so /webhooks/salesforce "
        "answers 503 and these rules get no events",
        "warning: source pipedrive ('from-pipedrive'): PIPEDRIVE_WEBHOOK_USER and PIPEDRIVE_WEBHOOK_PASSWORD unset, "
        "so /webhooks/pipedrive answers 503 and these rules get no events",
        "warning: source generic:zapier-eu ('from-generic-zapier-eu'): GENERIC_WEBHOOK_SECRET_ZAPIER_EU unset, so "
        "/webhooks/generic/zapier-eu answers 404 (no such hook) and these rules get no events",
    ]


def test_check_without_redis_url_checks_the_running_embedded_server_or_says_why_not(sandbox_process, tmp_path):
    """Issue 9 item 5b: with REDIS_URL unset, check pings the embedded server if one runs, and never starts one."""
    from integration.storage import EmbeddedRedis

    env = cli_env(REVOR_BASE_URL=sandbox_process, BRIDGE_DATA_DIR=str(tmp_path / "data"))
    alone = revor_bridge("check", env=env, cwd=tmp_path)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert (f"redis: not checked: REDIS_URL is unset and no embedded server runs in {tmp_path / 'data' / 'redis'}; "
            "web, worker and dev start one there (a deployed app needs REDIS_URL)") in alone.stdout.splitlines()
    assert not (tmp_path / "data" / "redis" / "redis.pid").exists()
    embedded = EmbeddedRedis(tmp_path / "data").start()
    try:
        shared = revor_bridge("check", env=env, cwd=tmp_path)
        assert shared.returncode == 0, shared.stdout + shared.stderr
        assert (f"redis: ok (REDIS_URL is unset: the embedded server at 127.0.0.1:{embedded.port})"
                in shared.stdout.splitlines())
    finally:
        embedded.stop()


def test_check_exits_3_when_revor_or_redis_cannot_be_reached(sandbox_process, tmp_path):
    """Issue 9 item 5d: unreachable is exit 3, as the README's exit codes say (a failed check is 1)."""
    nowhere = f"http://127.0.0.1:{free_port()}/api/v1"
    revor = revor_bridge("check", env=cli_env(REVOR_BASE_URL=nowhere), cwd=tmp_path, timeout=120)
    assert revor.returncode == 3, revor.stdout + revor.stderr
    redis_down = revor_bridge("check", env=cli_env(REVOR_BASE_URL=sandbox_process,
                                                   REDIS_URL=f"redis://127.0.0.1:{free_port()}"), cwd=tmp_path,
                              timeout=120)
    assert redis_down.returncode == 3, redis_down.stdout + redis_down.stderr
    assert "redis: unreachable (ConnectionError)" in redis_down.stdout


def test_demo_runs_the_whole_service_to_succeeded_on_every_channel(tmp_path):
    result = revor_bridge("demo", env=cli_env(BRIDGE_DATA_DIR=str(tmp_path / "data")), cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ('done: {"salesforce-closed-won": "succeeded", "stage-linkedin": "succeeded", '
            '"won-whatsapp": "succeeded"}') in result.stdout
    for line in ("HubSpot app webhook batch", "Salesforce Outbound Message", "Pipedrive webhook", "Zapier hook",
                 "Standard Webhooks sender"):
        assert any(row.strip().startswith(line) and "-> 200" in row for row in result.stdout.splitlines()), line
    received = [row.split() for row in result.stdout.splitlines() if row.startswith("  ") and row.split()[-1:] in (
        ["accepted"], ["running"], ["succeeded"])]
    assert {r[1] for r in received} == {"email", "linkedin", "whatsapp"}
    assert "embedded Redis   redis://127.0.0.1:" in result.stdout


def test_help_for_every_command(tmp_path):
    """The installed entry point answers once as a process; every command's help is read in this
    process (twelve interpreter starts took over a minute on a loaded machine)."""
    from click.testing import CliRunner

    from integration.cli import cli, deliveries, demo, dev, events, imports, processes, revor, rules  # noqa: F401

    result = revor_bridge("--help", env=cli_env(), cwd=tmp_path)
    assert result.returncode == 0 and "Usage: revor-bridge" in result.stdout
    commands = ("sandbox", "accounts", "send", "job", "web", "worker", "check", "demo", "dev", "preview",
                "suppress", "deliveries", "import")
    assert set(commands) <= set(cli.commands), sorted(set(commands) - set(cli.commands))
    for command in commands:
        answer = CliRunner().invoke(cli, [command, "--help"], prog_name="revor-bridge")
        assert answer.exit_code == 0 and "Usage: revor-bridge" in answer.output, (command, answer.output)


def test_web_serves_health_and_worker_runs_a_burst(redis_url, tmp_path):
    import requests

    port = free_port()
    env = cli_env(REDIS_URL=redis_url, PORT=str(port), WEB_CONCURRENCY="1")
    web = subprocess.Popen([sys.executable, "-m", "integration", "web"], env=env, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, timeout=30)
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json() == {
            "status": "ready", "redis": "ok", "rules": "no RULES_FILE"}
    finally:
        web.terminate()
        web.wait(timeout=30)
    assert web.returncode == 0
    burst = revor_bridge("worker", "--burst", env=env, cwd=tmp_path)
    assert burst.returncode == 0, burst.stderr


def test_deliveries_destinations_prints_a_table_or_json(redis_url, redis_db, tmp_path):
    """Issue 9 item 8: a table a person can read (not raw JSON lines), `--json` for scripts, times in ISO."""
    import re

    from integration.writeback import destinations

    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules: []\ndestinations:\n" + "".join(
        f"  {name}:\n    url: http://127.0.0.1:9/status\n    secret: whsec_ZGVtby1zdGF0dXMtc2VjcmV0LTAxMjM0NTY3ODk=\n"
        for name in ("crm-status", "other")))
    destinations.record_success(redis_db, "crm-status")
    for _ in range(destinations.FAILURES_TO_OPEN):
        destinations.record_failure(redis_db, "crm-status", "HTTP 503")
    env = cli_env(REDIS_URL=f"{redis_url}/1", RULES_FILE=str(rules))
    table = revor_bridge("deliveries", "destinations", env=env, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    header, crm, other = table.stdout.splitlines()
    assert header.split("  ")[0] == "DESTINATION" and "DEAD LETTERS" in header and "LAST ERROR" in header
    assert re.match(r"^crm-status +circuit open until \d{4}-\d\d-\d\dT[\d:.]+Z +5 +0 +\d{4}-\d\d-\d\dT[\d:.]+Z +"
                    r"HTTP 503$", crm), crm
    assert re.match(r"^other +ok +0 +0 +never$", other), other
    assert header.index("FAILURES") == crm.index(" 5 ") + 1 == other.index(" 0 ") + 1  # columns line up
    as_json = json.loads(revor_bridge("deliveries", "destinations", "--json", env=env, cwd=tmp_path).stdout)
    assert [item["destination"] for item in as_json] == ["crm-status", "other"]
    assert as_json[0]["consecutive_failures"] == 5 and as_json[0]["last_success_at"].endswith("Z")
