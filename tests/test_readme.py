"""The README's examples are real: its write-back destinations load and render the JSON they show."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import requests

from integration.rules.loader import load_rules
from integration.storage import free_port
from integration.web import create_app
from integration.writeback.body import SAMPLE, BodyTemplate, render_body
from tests.conftest import ROOT, bridge_settings, cli_env
from tests.servers import ThreadServer


def test_readme_writeback_examples_load_and_render(tmp_path):
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if re.search(r"^    body:$", b, re.M)]
    assert len(blocks) == 3
    destinations = "".join(b.replace("destinations:\n", "") for b in blocks)
    rules = ("version: 1\nrules:\n  - name: r\n    when: {source: hubspot}\n    dispatch: {account: connect_account_x, "
             "channel: whatsapp, recipient: {phone: x}, content: {text: x}}\ndestinations:\n" + destinations)
    path = tmp_path / "rules.yaml"
    path.write_text(rules)
    env = {name: "value" for name in re.findall(r"\$\{([A-Z_]+)\}", destinations)}
    env.update({k: "whsec_c2FtcGxlLXNlY3JldC1mb3ItdGhlLXJlYWRtZQ==" for k in env if k.endswith("SECRET")})
    env.update({k: "https://example.com/hook" for k in env if k.endswith("URL")})
    ruleset = load_rules(path, environ=env)
    assert set(ruleset.destination_bodies) == {"hubspot-status", "zapier-status", "salesforce-status"}
    hubspot = json.loads(render_body(ruleset.destination_bodies["hubspot-status"], SAMPLE))
    assert hubspot == {"hs_object_id": "18273645501", "outreach_status": "succeeded", "outreach_channel": "email",
                       "outreach_sequence": 4, "outreach_reason": ""}
    zapier = json.loads(render_body(ruleset.destination_bodies["zapier-status"], SAMPLE))
    assert zapier == {"deal_id": "18273645501", "status": "succeeded", "channel": "email",
                      "recipient": "alex@example.com", "finished_at": "2026-01-01T12:00:08.000Z",
                      "dispatch_id": "dsp_sample"}
    salesforce = json.loads(render_body(ruleset.destination_bodies["salesforce-status"], SAMPLE))
    assert salesforce == {"opportunityId": "18273645501", "status": "succeeded", "sequence": 4, "detail": "succeeded"}


def test_readme_body_rules_hold():
    """The claims in "Body templates": a lone expression keeps its type, `| string` makes text, null stays null."""
    readme = (ROOT / "README.md").read_text()
    for claim in ('`"{{ data.sequence }}"` sends the number `4`', '`"{{ data.reason }}"` `null`',
                  '`"{{ data.sequence | string }}"`'):
        assert claim in readme
    body = BodyTemplate.from_mapping({"n": "{{ data.sequence }}", "s": "{{ data.sequence | string }}",
                                      "r": "{{ data.reason }}", "o": "{{ data.recipient }}",
                                      "t": "Revor: {{ data.status }}"})
    assert json.loads(render_body(body, SAMPLE)) == {"n": 4, "s": "4", "r": None, "o": {"address": "alex@example.com"},
                                                    "t": "Revor: succeeded"}


def test_every_preview_example_in_the_readme_works_as_written():
    """Issue 9 item 17: every `revor-bridge preview FILE ...` in the README runs; every sample file it names has one."""
    readme = (ROOT / "README.md").read_text()
    commands = [shlex.split(line)[2:] for line in re.findall(r"^revor-bridge preview [^`\n]+$", readme, re.M)]
    named = set(re.findall(r"(?:tests/fixtures|integration/demo_data/events)/[\w.-]+\.(?:json|xml)", readme))
    assert len(commands) >= 10
    assert {args[0] for args in commands} >= named, "a sample file the README names has no preview example"
    for args in commands:
        assert (ROOT / args[0]).is_file(), args[0]
    env = cli_env(RULES_FILE="")
    env.pop("RULES_FILE")
    runs = [(args, subprocess.Popen([sys.executable, "-m", "integration", "preview", *args], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) for args in commands]
    for args, proc in runs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"revor-bridge preview {' '.join(args)}:\n{err}"
        assert out.startswith("event "), out
        assert "Traceback" not in err


def _docs() -> dict[str, str]:
    pages = [ROOT / "README.md", ROOT / "tests" / "fixtures" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return {str(page.relative_to(ROOT)): page.read_text() for page in pages}


def test_the_docs_stand_on_their_own():
    """Issue 9 item 18: no page names files that are not in the repository, and every relative link resolves."""
    docs = _docs()
    assert "docs/revor.md" in docs
    for name, text in docs.items():
        for outside in ("DESIGN.md", "DESIGN's", "revor-api.md", "../shared", "../reference", "shared folder"):
            assert outside not in text, f"{name} names {outside!r}"
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (ROOT / name).parent / target.split("#")[0]
            assert path.exists(), f"{name} links to {target}, which does not exist"
    assert "[docs/revor.md](docs/revor.md)" in docs["README.md"]


def test_health_endpoints_answer_as_the_readme_says(make_bridge):
    """Issue 9 item 18: `/healthz` and `/readyz` as documented, with Redis up and with Redis unreachable."""
    readme = (ROOT / "README.md").read_text()
    rows = {m[0]: m[1] for m in re.findall(r"^\| `GET (/healthz|/readyz)` \|[^|]+\|(.+)\|$", readme, re.M)}
    documented = {path: [json.loads(b) for b in re.findall(r"`(\{.*?\})`", row)] for path, row in rows.items()}
    assert documented["/healthz"] == [{"status": "ok"}]
    ready, unavailable = documented["/readyz"]
    bridge = make_bridge()
    assert requests.get(bridge.url + "/healthz", timeout=5).json() == {"status": "ok"}
    answer = requests.get(bridge.url + "/readyz", timeout=5)
    assert answer.status_code == 200 and answer.json() == {**ready, "rules": "no RULES_FILE"}
    with ThreadServer(create_app(bridge_settings(f"redis://127.0.0.1:{free_port()}"))) as down:
        assert requests.get(down.url + "/healthz", timeout=5).status_code == 200
        answer = requests.get(down.url + "/readyz", timeout=10)
        assert answer.status_code == 503 and answer.json() == unavailable


def test_readme_template_limits_match_the_code():
    from integration.rules import templates as t

    readme = " ".join((ROOT / "README.md").read_text().split())
    claims = (f"{t.MAX_ITERATIONS:,} loop iterations and {t.MAX_SECONDS:g} s per render",
              f"`range` up to {t.MAX_RANGE:,} items",
              f"up to {t.MAX_INT_ARGUMENT:,}, integers up to {t.MAX_INT_BITS:,} bits",
              f"longer than {t.MAX_STRING_CHARS:,} characters, no list longer than {t.MAX_LIST_ITEMS:,} items",
              f"at most {t.MAX_BUILT_CHARS:,} characters in all",
              f"`template builds a string longer than {t.MAX_STRING_CHARS} characters`")
    for claim in claims:
        assert claim in readme, claim


# ---- issue 9 items 1, 2, 3, 7: what a first-time user reads holds ----------------------------------------

def _rules_example() -> str:
    section = (ROOT / "README.md").read_text().split("\n## Rules\n", 1)[1]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def test_the_readme_rules_example_dispatches_for_a_contact_without_the_opt_out_property(tmp_path):
    """Item 1: `suppress_if` on a property most contacts lack must not make every dispatch `invalid`."""
    from integration.rules.preview import preview

    (tmp_path / "rules.yaml").write_text(_rules_example())
    (tmp_path / "brochure.pdf").write_bytes(b"%PDF-1.4 brochure")
    ruleset = load_rules(tmp_path / "rules.yaml", environ={
        "CRM_STATUS_WEBHOOK_URL": "https://crm.example.com/revor-status",
        "CRM_STATUS_WEBHOOK_SECRET": "whsec_ZGVtby1zdGF0dXMtc2VjcmV0LTAxMjM0NTY3ODk="})
    event = {"source": "hubspot", "event_id": "e1", "type": "deal.stage_changed",
             "object": {"type": "deal", "id": "18273645501"}, "occurred_at": None,
             "properties": {"dealstage": "appointmentscheduled"}, "previous": None, "account": "24681357",
             "deal": {"id": "18273645501", "dealname": "Northwind Pilot", "dealstage": "appointmentscheduled",
                      "amount": "12500", "pipeline": "default"},
             "contact": {"id": "1", "email": "dana.lee@example.com", "firstname": "Dana"}}
    [rule] = preview(ruleset, event)["rules"]
    assert (rule["name"], rule["matched"], rule["status"]) == ("demo-booked", True, "ready"), rule
    assert rule["dispatch"]["recipient"] == {"address": "dana.lee@example.com", "name": "Dana"}
    opted_out = {**event, "contact": {**event["contact"], "hs_email_optout": "true"}}
    [rule] = preview(ruleset, opted_out)["rules"]
    assert rule["status"] == "skipped", rule


def test_the_readme_secret_recipe_makes_a_secret_the_rules_accept(tmp_path):
    """Item 2: the command the README (and the error) gives really makes a valid destination secret."""
    from schemas.rules import MAKE_SECRET, whsec_secret

    readme = (ROOT / "README.md").read_text()
    assert f"```sh\n{MAKE_SECRET}\n```" in readme
    program, flag, code = shlex.split(MAKE_SECRET)
    assert (program, flag) == ("python", "-c")
    made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert made.startswith("whsec_")
    whsec_secret(made)  # raises if the recipe were wrong


def test_an_unconfigured_generic_hook_answers_as_the_readme_says(bridge):
    """Item 3: 404 `unknown_hook` for a hook nobody configured; the README says so, not "503"."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert ("`/webhooks/generic/<name>` exists only once `GENERIC_WEBHOOK_SECRET_<NAME>` is set, and until then "
            "answers 404 `unknown_hook`") in readme
    answer = requests.post(bridge.url + "/webhooks/generic/nobody", data=b"{}",
                           headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_hook"


def test_bare_commands_come_after_the_readme_says_how_to_get_them_on_path():
    """Item 7a: `revor-bridge ...` is not on PATH after the quick start; the README says so before using it."""
    readme = (ROOT / "README.md").read_text()
    told = readme.index("`source .venv/bin/activate`")
    first_bare = re.search(r"^(?:revor-bridge|python) ", readme, re.M).start()
    assert told < first_bare
    assert told < readme.index("## What works today")


def test_every_setting_in_env_example_is_in_the_configuration_table_and_back():
    """Item 7b: .env.example and the README's Configuration table list the same settings."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("\n## Configuration\n", 1)[1].split("\n### ", 1)[0]
    documented = {name for row in re.findall(r"^\| (`.+?) \|", table, re.M)
                  for name in re.findall(r"`([A-Z_<>]+)`", row)}
    patterns = [re.compile("^" + name.replace("<NAME>", "[A-Z0-9_]+") + "$") for name in documented]
    example = set(re.findall(r"^# ?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert "WRITEBACK_TIMEOUT_SECONDS" in example
    missing = sorted(name for name in example if not any(p.match(name) for p in patterns))
    assert missing == [], f"in .env.example, not in the README's Configuration table: {missing}"
    for name in documented:
        pattern = re.compile("^" + name.replace("<NAME>", "[A-Z0-9_]+") + "$")
        assert any(pattern.match(e) for e in example), f"in the README's table, not in .env.example: {name}"


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_table_of_contents_lists_every_section_in_order():
    readme = (ROOT / "README.md").read_text()
    contents = readme[readme.index("## Contents\n"):readme.index("## Quick start")]
    rest = readme.replace(contents, "")
    headings = [(len(hashes), text) for hashes, text in re.findall(r"^(##+) (.+)$", rest, re.M)]
    listed = re.findall(r"^( *)- \[(.+)\]\(#(.+)\)$", contents, re.M)
    assert [(len(indent) // 2 + 2, text) for indent, text, _ in listed] == headings
    assert all(anchor == _github_anchor(text) for _, text, anchor in listed)
