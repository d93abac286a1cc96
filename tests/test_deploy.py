"""What a Heroku deploy reads besides the code: requirements.txt must say what pyproject.toml says.

Heroku's Python buildpack installs from requirements.txt (a uv.lock, poetry.lock or Pipfile.lock
would do too), never from pyproject.toml alone, so a pin changed in one and not the other would
deploy something no test ran.
"""

from __future__ import annotations

import tomllib

from tests.conftest import ROOT


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_requirements_txt_pins_exactly_what_pyproject_pins_and_installs_the_project():
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    listed = _requirements()
    assert listed[-1] == "."  # the project itself: the `revor-bridge` command of the Procfile
    assert sorted(listed[:-1]) == sorted(pinned)
    assert all("==" in line for line in listed[:-1])  # exact pins, as in pyproject.toml


def test_the_procfile_runs_the_release_check():
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert procfile == {"web": "revor-bridge web", "worker": "revor-bridge worker", "release": "revor-bridge check"}


def test_app_json_describes_every_setting_and_provisions_redis_and_both_processes():
    """The Deploy button's form: every setting the code reads (but those Heroku and its Redis
    add-on set) with a description; ADMIN_TOKEN generated; heroku-redis; a web and a worker."""
    import json
    import re

    app = json.loads((ROOT / "app.json").read_text())
    read = set(re.findall(r'env\.\w+\("([A-Z_]+)"', (ROOT / "integration" / "settings.py").read_text()))
    set_by_heroku = {"REDIS_URL", "REDIS_TLS_URL", "PORT", "DYNO", "BRIDGE_DATA_DIR"}
    assert sorted(read - set_by_heroku - set(app["env"])) == []
    assert all(len(item["description"]) > 20 for item in app["env"].values())
    assert app["env"]["ADMIN_TOKEN"]["generator"] == "secret"
    assert app["env"]["REVOR_API_KEY"]["required"] is True
    assert {"plan": "heroku-redis"} in app["addons"]
    assert set(app["formation"]) == {"web", "worker"}
