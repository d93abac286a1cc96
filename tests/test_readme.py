"""The README's examples are real: its write-back destinations load and render JSON."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

from integration.rules.loader import load_rules
from integration.writeback.body import SAMPLE, render_body
from tests.conftest import ROOT, cli_env


def test_readme_writeback_examples_load_and_render(tmp_path):
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "body: |" in b]
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
    salesforce = json.loads(render_body(ruleset.destination_bodies["salesforce-status"], SAMPLE))
    assert salesforce["opportunityId"] == "18273645501" and salesforce["detail"] == "succeeded"


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
