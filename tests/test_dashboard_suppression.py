"""The dashboard's suppression list over real HTTP: add (each value checked), search, page, remove."""

from __future__ import annotations

import html
import re

import requests

from integration.rules.guards import is_suppressed, suppress, suppressed
from tests.test_dashboard_auth import csrf_of, signed_in

PAGE = "/dashboard/suppression"


def post(browser: requests.Session, url: str, path: str, **fields: str) -> requests.Response:
    token = csrf_of(browser.get(f"{url}{PAGE}", timeout=10).text)
    return browser.post(f"{url}{path}", data={"csrf_token": token, **fields}, timeout=10, allow_redirects=False)


def listed(page: str) -> list[str]:
    table = re.search(r'<table id="suppression-entries">.*?</table>', page, re.S)
    return [html.unescape(k) for k in re.findall(r'name="key" value="([^"]+)"', table.group(0))] if table else []


def test_add_several_values_search_and_remove(bridge, redis_db):
    browser = signed_in(bridge.url)
    added = post(browser, bridge.url, f"{PAGE}/add",
                 values="Dana@Example.com\n+1 (415) 555-0100, https://www.linkedin.com/in/Dana-Lee/?trk=x\n\n")
    assert added.status_code == 302 and added.headers["Location"] == f"{PAGE}?notice=added"
    for key in ("email:dana@example.com", "phone:+14155550100", "linkedin:https://www.linkedin.com/in/dana-lee"):
        assert is_suppressed(redis_db, key), key
    page = browser.get(bridge.url + added.headers["Location"], timeout=10).text
    assert "Added to the suppression list" in page and "3 entries in all" in page
    assert listed(page) == sorted(suppressed(redis_db))
    search = browser.get(f"{bridge.url}{PAGE}", params={"q": "DANA"}, timeout=10).text
    assert listed(search) == ["email:dana@example.com", "linkedin:https://www.linkedin.com/in/dana-lee"]
    removed = post(browser, bridge.url, f"{PAGE}/remove", key="phone:+14155550100", q="dana")
    assert removed.status_code == 302 and removed.headers["Location"] == f"{PAGE}?q=dana&notice=removed"
    assert not is_suppressed(redis_db, "phone:+14155550100")
    assert is_suppressed(redis_db, "email:dana@example.com")
    gone = post(browser, bridge.url, f"{PAGE}/remove", key="phone:+14155550100")
    assert gone.headers["Location"].endswith("notice=gone")


def test_invalid_values_are_reported_each_and_nothing_is_added(bridge, redis_db):
    browser = signed_in(bridge.url)
    answer = post(browser, bridge.url, f"{PAGE}/add",
                  values="ok@example.com\nnonsense\n12345\n<script>x</script>\n" + "y" * 400)
    assert answer.status_code == 400
    problems = re.search(r'<ul class="problems" id="suppress-problems">(.*?)</ul>', answer.text, re.S).group(1)
    items = [html.unescape(re.sub(r"<[^>]+>", "", li)) for li in re.findall(r"<li>(.*?)</li>", problems, re.S)]
    assert items == ["nonsense: not an email address, an E.164 phone number (+ and country code) or a LinkedIn "
                     "profile URL",
                     "12345: not an email address, an E.164 phone number (+ and country code) or a LinkedIn "
                     "profile URL",
                     "<script>x</script>: not an email address, an E.164 phone number (+ and country code) or a "
                     "LinkedIn profile URL",
                     "y" * 60 + "…: longer than 320 characters"]
    assert "<script>x</script>" not in answer.text  # escaped, never markup
    assert "Nothing was added" in answer.text and "ok@example.com" in answer.text  # the input is kept to fix
    assert suppressed(redis_db) == []
    empty = post(browser, bridge.url, f"{PAGE}/add", values=" \n, ")
    assert empty.status_code == 400 and "Enter at least one" in empty.text


def test_the_list_is_paginated(bridge, redis_db):
    suppress(redis_db, [f"person{n:03d}@example.com" for n in range(120)])
    browser = signed_in(bridge.url)
    first = browser.get(f"{bridge.url}{PAGE}", timeout=10).text
    third = browser.get(f"{bridge.url}{PAGE}?page=3", timeout=10).text
    everyone = sorted(suppressed(redis_db))
    assert listed(first) == everyone[:50] and listed(third) == everyone[100:]
    assert "Page 1 of 3 · 120 entries" in first and 'href="/dashboard/suppression?page=2"' in first
    filtered = browser.get(f"{bridge.url}{PAGE}?q=person11", timeout=10).text
    assert listed(filtered) == [f"email:person11{n}@example.com" for n in range(10)]
    bad = browser.get(f"{bridge.url}{PAGE}?page=nope", timeout=10)
    assert bad.status_code == 200 and "Page: expected a whole number" in bad.text


def test_posts_need_a_session_and_the_csrf_token(bridge, redis_db):
    suppress(redis_db, ["kept@example.com"])
    for path, fields in ((f"{PAGE}/add", {"values": "new@example.com"}),
                         (f"{PAGE}/remove", {"key": "email:kept@example.com"})):
        anonymous = requests.post(f"{bridge.url}{path}", data={**fields, "csrf_token": "x"}, timeout=10,
                                  allow_redirects=False)
        assert anonymous.status_code == 401
        browser = signed_in(bridge.url)
        assert browser.post(f"{bridge.url}{path}", data=fields, timeout=10, allow_redirects=False).status_code == 403
    assert suppressed(redis_db) == ["email:kept@example.com"]
