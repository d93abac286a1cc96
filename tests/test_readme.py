"""The README's examples are real: its write-back destinations load and render JSON."""

from __future__ import annotations

import json
import re

from integration.rules.loader import load_rules
from integration.writeback.body import SAMPLE, render_body
from tests.conftest import ROOT


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
