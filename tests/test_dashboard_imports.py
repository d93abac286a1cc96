"""The dashboard's import page over real HTTP: upload a CRM export, read its dry run, confirm, watch
the run finish through a real worker and the Revor sandbox, download the result CSV.

Everything is real: redis-server, `revor-bridge worker` processes, the sandbox, the web app on a
loopback port (and `revor-bridge web` itself, SIGKILLed mid-import, for the interrupted run).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import requests

from integration.imports import reader, runs
from tests.conftest import ADMIN_TOKEN, sandbox_tasks
from tests.servers import FIXTURES
from tests.test_dashboard_auth import csrf_of, signed_in
from tests.test_pipeline import _stack, dispatches, settle
from tests.test_web_serving import web_process

IMPORTS = FIXTURES / "imports"
RULES = """\
version: 1
accounts: {mail: connect_account_sandbox_email}
defaults: {interval_seconds: 60}
rules:
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
  - name: slow-followup
    when: {source: csv:slow, type: contact.imported}
    dispatch:
      account: mail
      channel: email
      interval_seconds: 86400
      recipient: {address: "{{ contact.email }}"}
      content: {subject: "Still there?", text: "One a day"}
"""
# The HubSpot contacts export (5 rows, lines 2-6), a row with two cells too many (line 7, bad) and a
# row whose address is no address (line 8: its dispatch is invalid).
EXPORT = (IMPORTS / "hubspot-contacts.csv").read_bytes() + (
    b"26054,Too,Many,too.many@example.com,,,Lead,,Acme,2025-02-03 10:00,surplus,more\n"
    b"26055,No,Address,not an address,,,Lead,,Acme,2025-02-03 10:00\n")
HEADER = b"Record ID,First Name,Last Name,Email,Phone Number,Company Name\n"


@pytest.fixture
def imports_stack(tmp_path, make_bridge, redis_url, redis_db):
    """The pipeline tests' stack (sandbox, worker processes) and a web app whose BRIDGE_DATA_DIR is
    the test's own folder."""
    with _stack(tmp_path, make_bridge, redis_url, redis_db, RULES, {"REVOR_MAX_RPS": "1000"}) as stack:
        stack["bridge"] = make_bridge(rules_file=tmp_path / "rules.yaml", data_dir=tmp_path / "data")
        stack["data"] = tmp_path / "data"
        yield stack


def upload(browser: requests.Session, url: str, name: str, data: bytes, source: str = "csv:hubspot",
           **fields: str) -> requests.Response:
    form = browser.get(f"{url}/dashboard/imports", timeout=10)
    return browser.post(f"{url}/dashboard/imports", files={"file": (name, data, "text/csv")},
                        data={"csrf_token": csrf_of(form.text), "source": source, **fields}, timeout=60)


def wait_for_page(browser: requests.Session, url: str, marker: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = browser.get(url, timeout=10).text
        if marker in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{marker!r} never showed on {url}:\n{text[:3000]}")


def confirm(browser: requests.Session, run_url: str, **fields: str) -> requests.Response:
    page = browser.get(run_url, timeout=10)
    return browser.post(f"{run_url}/start", data={"csrf_token": csrf_of(page.text), **fields}, timeout=10)


def counts_on(page: str) -> dict[str, int]:
    return {name: int(value.replace(",", "")) for name, value in re.findall(r'data-count="(\w+)">([\d,]+)', page)}


def result_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def leftovers(folder: Path) -> list[str]:
    """Part files of uploads (a refused or cut-off upload leaves none)."""
    return sorted(p.name for p in folder.rglob("*.part")) if folder.exists() else []


def test_upload_dry_run_confirm_watch_and_download_the_result(imports_stack):
    stack = imports_stack
    url = stack["bridge"].url
    stack["start_worker"]()
    browser = signed_in(url)
    listing = browser.get(f"{url}/dashboard/imports", timeout=10)
    assert listing.status_code == 200 and ">Imports</a>" in listing.text and 'value="csv:hubspot"' in listing.text
    uploaded = upload(browser, url, "hubspot-contacts.csv", EXPORT)
    run = runs.run_id("csv:hubspot", hashlib.sha256(EXPORT).hexdigest())
    run_url = f"{url}/dashboard/imports/{run}"
    assert uploaded.status_code == 200 and uploaded.url == run_url, uploaded.text[:2000]
    # The dry run, planned in the background: nothing stored, nothing sent.
    page = wait_for_page(browser, run_url, "Confirm import")
    assert '<meta http-equiv="refresh"' not in page  # only while planning or running
    assert 'id="import-would-send">5<' in page
    assert "7 read, 6 events, 1 bad" in page and "hubspot format" in page and "Record ID" in page
    assert re.search(r'data-verdict="would_send">5<.*data-verdict="invalid">1<', page, re.S)
    assert "12 cells where the header has 10 columns" in page and "line 7)" in page  # grouped, with its line
    assert page.count('<pre class="payload">') == 3
    assert "&#34;address&#34;: &#34;emailmaria@hubspot.com&#34;" in page  # the exact body (escaped HTML)
    assert "5 emails from account connect_account_sandbox_email at 60 s apart" in page
    assert 'name="understand"' not in page  # minutes, not days: no box to tick
    assert not stack["redis"].keys("rb:import:*") and not stack["redis"].keys("rb:event:*")
    assert sandbox_tasks(stack["sandbox"]) == []
    # Confirm twice in a row: one import.
    first, second = confirm(browser, run_url), confirm(browser, run_url)
    assert first.status_code == 200 and "Import started" in first.text
    assert second.status_code == 200 and ("running already" in second.text or "imported already" in second.text)
    done = wait_for_page(browser, run_url, 'id="import-status">done<')
    assert '<meta http-equiv="refresh"' not in done
    assert counts_on(done) == {"read": 7, "stored": 6, "dispatched": 5, "invalid": 1, "skipped": 0, "no_match": 0,
                               "failed": 0, "repeated": 0, "duplicate": 0, "bad": 1}
    assert re.search(r"<td class=\"num\">7</td><td class=\"wrap\">12 cells where the header has 10 columns", done)
    found = settle(stack, expected=6)
    tasks = [t["body"]["metadata"]["dispatch_id"] for t in sandbox_tasks(stack["sandbox"])]
    assert len(tasks) == len(set(tasks)) == 5
    assert sorted(tasks) == sorted(k for k, v in found.items() if v["status"] != "invalid")
    assert all(dispatch_id in done for dispatch_id in found)  # the run's dispatches, listed by line
    # The result CSV: a row per file row, in file order, as `revor-bridge import` writes it.
    download = browser.get(f"{run_url}/result.csv", timeout=30)
    assert download.status_code == 200 and download.headers["Content-Type"].startswith("text/csv")
    assert download.headers["Content-Disposition"] == 'attachment; filename="hubspot-contacts.result.csv"'
    rows = result_rows(download.text)
    assert [int(r["line"]) for r in rows] == list(range(2, 9))
    by_line = {int(r["line"]): r for r in rows}
    assert by_line[2]["event_id"] == "51" and found[by_line[2]["dispatch_id"]]["status"] == by_line[2]["status"]
    assert by_line[7]["status"] == "bad" and "12 cells" in by_line[7]["reason"]
    assert by_line[8]["status"] == "invalid" and by_line[8]["dispatch_id"] in found
    assert {r["dispatch_id"] for r in rows if r["dispatch_id"]} == set(found)
    # The same file again, and Confirm again: nothing is sent twice.
    assert upload(browser, url, "again.csv", EXPORT).url == run_url
    assert "imported already" in confirm(browser, run_url).text
    time.sleep(0.5)
    assert len(sandbox_tasks(stack["sandbox"])) == 5
    listing = browser.get(f"{url}/dashboard/imports", timeout=10).text
    assert f'href="/dashboard/imports/{run}">hubspot-contacts.csv<' in listing and 's-done">done<' in listing
    assert leftovers(stack["data"]) == []


def test_posts_need_a_session_and_the_csrf_token(imports_stack):
    url = imports_stack["bridge"].url
    browser = signed_in(url)
    files = {"file": ("hubspot-contacts.csv", EXPORT, "text/csv")}
    refused = browser.post(f"{url}/dashboard/imports", files=files, data={"source": "csv:hubspot"}, timeout=10)
    assert refused.status_code == 403 and "CSRF" in refused.text
    stranger = requests.post(f"{url}/dashboard/imports", files=files, data={"source": "csv:hubspot"}, timeout=10)
    assert stranger.status_code == 401
    run = runs.run_id("csv:hubspot", hashlib.sha256(EXPORT).hexdigest())
    assert browser.post(f"{url}/dashboard/imports/{run}/start", data={}, timeout=10).status_code == 403
    stranger = requests.post(f"{url}/dashboard/imports/{run}/start", data={"csrf_token": "x"}, timeout=10)
    assert stranger.status_code == 401
    assert leftovers(imports_stack["data"]) == [] and not (imports_stack["data"] / "imports" / run).exists()
    assert browser.get(f"{url}/dashboard/imports/{run}", timeout=10).status_code == 404  # never uploaded


@pytest.mark.parametrize("name", ["contacts.xlsx", "contacts.json", "logo.png"])
def test_a_file_that_is_not_csv_gets_the_readers_one_line(imports_stack, name):
    url = imports_stack["bridge"].url
    path = IMPORTS / name
    with pytest.raises(reader.NotCsv) as expected:
        reader.open_table(path)
    answer = upload(signed_in(url), url, name, path.read_bytes())
    assert answer.status_code == 400
    error = re.search(r'id="import-error">([^<]*)<', answer.text)
    assert error and error.group(1) == f"{name}: {expected.value}".replace("'", "&#39;").replace('"', "&#34;")
    assert "\n" not in str(expected.value)
    assert not list((imports_stack["data"] / "imports").glob("imp_*")) and leftovers(imports_stack["data"]) == []


def test_form_errors_name_the_field(imports_stack):
    url = imports_stack["bridge"].url
    browser = signed_in(url)
    for fields, message in (({"source": "hubspot"}, "Source: expected csv:&lt;name&gt;"),
                            ({"type": "contact"}, "Type: "), ({"format": "excel"}, "Format: choose one"),
                            ({"id_column": "Nope"}, "id column")):
        answer = upload(browser, url, "hubspot-contacts.csv", EXPORT, **{"source": "csv:hubspot", **fields})
        assert answer.status_code == 400 and message in answer.text, (fields, answer.text[:3000])
    form = browser.get(f"{url}/dashboard/imports", timeout=10)
    empty = browser.post(f"{url}/dashboard/imports", data={"csrf_token": csrf_of(form.text), "source": "csv:x"},
                         timeout=10)
    assert empty.status_code == 400 and "File: choose a CSV file" in empty.text


def test_an_oversized_upload_is_refused_with_a_clear_message(imports_stack):
    """Over the limit by its Content-Length (refused before it is read), or a file just over the
    limit inside a body that is not (read and dropped): the same message, no file left behind."""
    from integration.web.dashboard.imports import FORM_SLACK, UPLOAD_MAX_BYTES

    url = imports_stack["bridge"].url
    browser = signed_in(url)
    row = b"1,Ann,Lee,ann@example.com,,Acme\n"
    for size in (UPLOAD_MAX_BYTES + 10, UPLOAD_MAX_BYTES + FORM_SLACK + 1024):
        big = HEADER + row * ((size - len(HEADER)) // len(row) + 1)
        answer = upload(browser, url, "big.csv", big)
        assert answer.status_code == 413, answer.text[:500]
        assert "over the browser&#39;s limit of 50 MB" in answer.text and "revor-bridge import FILE" in answer.text
        assert leftovers(imports_stack["data"]) == []
        assert not list((imports_stack["data"] / "imports").glob("imp_*"))


def test_a_schedule_over_7_days_needs_the_i_understand_box(imports_stack):
    """Eight emails a day apart from one account: about 8 days. Confirm without the box (the
    command's --yes) stores nothing; with it, the import starts."""
    stack = imports_stack
    url = stack["bridge"].url
    stack["start_worker"]()
    browser = signed_in(url)
    data = hubspot_rows(8)
    run_url = upload(browser, url, "slow.csv", data, source="csv:slow").url
    page = wait_for_page(browser, run_url, "Confirm import")
    assert "8 emails from account connect_account_sandbox_email at 86400 s apart: about 8 days" in page
    assert "I understand it takes about 8 days" in page and 'name="understand"' in page
    refused = confirm(browser, run_url)
    assert "tick the box" in refused.text and not stack["redis"].keys("rb:import:*")
    started = confirm(browser, run_url, understand="yes")
    assert "Import started" in started.text
    done = wait_for_page(browser, run_url, 'id="import-status">done<')
    assert counts_on(done)["dispatched"] == 8


def test_revor_bridge_web_takes_an_upload_over_512_kb_and_refuses_one_over_the_limit(tmp_path, redis_url, redis_db):
    """Through gunicorn (`revor-bridge web`): a 2 MB file is more than the app's 512 KB for a
    webhook and is taken; a body over the limit by its Content-Length gets the page's message."""
    from integration.web.dashboard.imports import FORM_SLACK, UPLOAD_MAX_BYTES

    row = b"1,Ann,Lee,ann@example.com,,Acme\n"
    env = {"ADMIN_TOKEN": ADMIN_TOKEN, "BRIDGE_DATA_DIR": str(tmp_path / "data"), "LOG_LEVEL": "WARNING"}
    with web_process(tmp_path, redis_url, **env) as web:
        browser = signed_in(web.url)
        medium = HEADER + b"".join(row.replace(b"1,", f"{n},".encode(), 1) for n in range(1, 70_000))
        assert len(medium) > 2 * 1024 * 1024
        taken = upload(browser, web.url, "medium.csv", medium, source="csv:medium")
        assert taken.status_code == 200 and "/dashboard/imports/imp_" in taken.url, taken.text[:500]
        assert "69,999 read" in wait_for_page(browser, taken.url, "Confirm import")
        big = HEADER + row * ((UPLOAD_MAX_BYTES + FORM_SLACK) // len(row) + 10)
        refused = upload(browser, web.url, "big.csv", big)
        assert refused.status_code == 413 and "over the browser&#39;s limit of 50 MB" in refused.text
    assert leftovers(tmp_path / "data") == []


def hubspot_rows(count: int) -> bytes:
    return HEADER + b"".join(f"{n},First{n},Last{n},lead{n}@example.com,,Acme\n".encode() for n in range(1, count + 1))


def test_a_web_process_killed_mid_import_shows_it_interrupted_and_continue_sends_each_row_once(imports_stack,
                                                                                              redis_url):
    """`revor-bridge web` SIGKILLed while its import waits for the workers (none runs yet: it stops
    at --max-pending 1000 stored); a new web process shows the run interrupted; Continue resumes it
    from the checkpoint, and every row is sent once."""
    stack = imports_stack
    data = hubspot_rows(1200)
    run = runs.run_id("csv:hubspot", hashlib.sha256(data).hexdigest())
    env = {"ADMIN_TOKEN": ADMIN_TOKEN, "RULES_FILE": str(stack["tmp"] / "rules.yaml"),
           "BRIDGE_DATA_DIR": str(stack["data"]), "WEB_CONCURRENCY": "1", "LOG_LEVEL": "WARNING"}
    with contextlib.suppress(ProcessLookupError), web_process(stack["tmp"], redis_url, "web1", **env) as web:
        browser = signed_in(web.url)
        run_url = f"{web.url}/dashboard/imports/{run}"
        assert upload(browser, web.url, "big-list.csv", data).url == run_url
        page = wait_for_page(browser, run_url, "Confirm import")
        assert 'id="import-would-send">1,200<' in page
        assert "Import started" in confirm(browser, run_url).text
        deadline = time.monotonic() + 30
        while (found := runs.load(stack["redis"], run)) is None or found.counts["stored"] < 1000:
            assert time.monotonic() < deadline, found
            time.sleep(0.1)
        time.sleep(0.3)
        running = browser.get(run_url, timeout=10).text
        assert 'id="import-status">running<' in running and '<meta http-equiv="refresh" content="2">' in running
        assert 'id="import-continue"' not in running
        os.killpg(web.proc.pid, signal.SIGKILL)
        web.proc.wait()
    found = runs.load(stack["redis"], run)
    assert found.status == "running" and found.checkpoint == 1001 and found.counts["stored"] == 1000
    shutil.rmtree(stack["data"] / "imports" / run)  # a dyno restarts on a fresh disk: the upload is gone
    with web_process(stack["tmp"], redis_url, "web2", **env) as web:
        browser = signed_in(web.url)
        run_url = f"{web.url}/dashboard/imports/{run}"
        page = browser.get(run_url, timeout=10).text
        assert 'id="import-status">interrupted<' in page and "stopped after line 1,001" in page
        assert '<meta http-equiv="refresh"' not in page and 'id="import-continue"' not in page
        assert "This server does not have the file" in page
        assert "upload the same file" in confirm(browser, run_url).text  # Continue without the file: said
        assert upload(browser, web.url, "big-list.csv", data).url == run_url  # the same file again: the same run
        page = browser.get(run_url, timeout=10).text
        assert 'id="import-status">interrupted<' in page and 'id="import-continue"' in page
        listing = browser.get(f"{web.url}/dashboard/imports", timeout=10).text
        assert 's-interrupted">interrupted<' in listing
        stack["start_worker"]()
        assert "Continuing from the checkpoint" in confirm(browser, run_url).text
        done = wait_for_page(browser, run_url, 'id="import-status">done<', timeout=120)
        assert counts_on(done) == {"read": 1200, "stored": 1200, "dispatched": 1200, "invalid": 0, "skipped": 0,
                                   "no_match": 0, "failed": 0, "repeated": 0, "duplicate": 0, "bad": 0}
        rows = result_rows(browser.get(f"{run_url}/result.csv", timeout=60).text)
        assert [int(r["line"]) for r in rows] == list(range(2, 1202))
    # Each row's task reaches Revor once (their runs are spaced by the rule's interval: not waited for).
    deadline = time.monotonic() + 120
    while len(tasks := [t["body"]["metadata"]["dispatch_id"] for t in sandbox_tasks(stack["sandbox"])]) < 1200:
        assert time.monotonic() < deadline, len(tasks)
        time.sleep(0.5)
    time.sleep(0.5)
    tasks = [t["body"]["metadata"]["dispatch_id"] for t in sandbox_tasks(stack["sandbox"])]
    assert len(tasks) == len(set(tasks)) == 1200 and set(tasks) == set(dispatches(stack["redis"]))
