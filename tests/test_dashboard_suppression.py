"""The dashboard's suppression list over real HTTP: add (each value checked), search, page, remove."""

from __future__ import annotations

import html
import re

import requests

from integration.rules import guards
from integration.rules.guards import is_suppressed, suppress, suppressed
from tests.conftest import cli_env, revor_bridge
from tests.test_dashboard_auth import csrf_of, signed_in
from tests.test_engine import _monitor_args, monitor

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


def next_link(page: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">Next</a>', page)
    return html.unescape(found.group(1)) if found else None


def test_the_list_is_paged_by_cursor(bridge, redis_db):
    suppress(redis_db, [f"person{n:03d}@example.com" for n in range(120)])
    browser = signed_in(bridge.url)
    everyone = sorted(suppressed(redis_db))
    pages, url = [], PAGE
    while url:
        pages.append(browser.get(f"{bridge.url}{url}", timeout=10).text)
        url = next_link(pages[-1])
    assert [listed(p) for p in pages] == [everyone[:50], everyone[50:100], everyone[100:]]
    assert "1–50 of 120 entries" in pages[0] and "101–120 of 120 entries" in pages[2]
    assert next_link(pages[0]) == f"{PAGE}?after=email:person049@example.com"
    back = re.search(r'<a href="([^"]+)" rel="prev">Previous</a>', pages[2]).group(1)
    assert listed(browser.get(f"{bridge.url}{html.unescape(back)}", timeout=10).text) == everyone[50:100]
    assert 'rel="prev"' not in pages[0]
    # Remove on the third page comes back to the third page (after the entry before it).
    removed = post(browser, bridge.url, f"{PAGE}/remove", key="email:person110@example.com",
                   after="email:person099@example.com")
    assert removed.headers["Location"] == f"{PAGE}?after=email:person099@example.com&notice=removed"
    again = browser.get(bridge.url + removed.headers["Location"], timeout=10).text
    assert listed(again) == [k for k in everyone[100:] if k != "email:person110@example.com"]
    assert "101–119 of 119 entries" in again
    filtered = browser.get(f"{bridge.url}{PAGE}?q=person11", timeout=10).text
    assert listed(filtered) == [f"email:person11{n}@example.com" for n in range(10) if n != 0]
    for hostile in ("x" * 5000, "\x00", "((", "[", "-", "+"):  # a cursor is a value, never a range operator
        answer = browser.get(f"{bridge.url}{PAGE}", params={"after": hostile, "q": hostile}, timeout=10)
        assert answer.status_code == 200, hostile


def test_search_finds_entries_by_how_they_start(bridge, redis_db):
    suppress(redis_db, ["Ari.Chen@Example.com", "arielle@example.org", "mari@example.com", "+1 415 555 0100",
                        "+44 20 7946 0000", "https://www.linkedin.com/in/ari-chen/", "https://www.linkedin.com/in/dana"])
    browser = signed_in(bridge.url)

    def search(text: str) -> list[str]:
        return listed(browser.get(f"{bridge.url}{PAGE}", params={"q": text}, timeout=10).text)

    # Typed without its kind, as people know the value: each kind is searched where it starts.
    assert search("ari") == ["email:ari.chen@example.com", "email:arielle@example.org",
                             "linkedin:https://www.linkedin.com/in/ari-chen"]
    assert search("ARI.") == ["email:ari.chen@example.com"]
    assert search("+1 415") == search("1415") == ["phone:+14155550100"]
    assert search("+44") == ["phone:+442079460000"]
    assert search("linkedin.com/in/ari") == search("https://www.linkedin.com/in/ari") == [
        "linkedin:https://www.linkedin.com/in/ari-chen"]
    assert search("email:ari") == ["email:ari.chen@example.com", "email:arielle@example.org"]
    assert search("example.com") == []  # a prefix search: the start of a value, not any part of it
    page = browser.get(f"{bridge.url}{PAGE}", params={"q": "ari"}, timeout=10).text
    assert "1–3 of 3 entries matching" in page and "7 entries in all" in page


def test_cli_and_dashboard_keep_the_sorted_mirror_in_step(bridge, redis_db, redis_url):
    env = cli_env(REDIS_URL=f"{redis_url}/1")
    added = revor_bridge("suppress", "add", "Cli.One@example.com", "+1 415 555 0111", env=env)
    assert added.returncode == 0, added.stderr
    browser = signed_in(bridge.url)
    post(browser, bridge.url, f"{PAGE}/add", values="web.one@example.com\nweb.two@example.com")
    removed = revor_bridge("suppress", "remove", "web.two@example.com", env=env)
    assert removed.returncode == 0, removed.stderr
    post(browser, bridge.url, f"{PAGE}/remove", key="phone:+14155550111")

    def both() -> tuple[list[str], list[str]]:
        return (sorted(suppressed(redis_db)),
                [m.decode() for m in redis_db.zrange(guards.SUPPRESSION_SORTED, 0, -1)])

    assert both() == (["email:cli.one@example.com", "email:web.one@example.com"],) * 2
    listing = revor_bridge("suppress", "list", env=env)
    assert listing.stdout.split() == ["email:cli.one@example.com", "email:web.one@example.com"]
    assert listed(browser.get(f"{bridge.url}{PAGE}", timeout=10).text) == both()[1]


def test_a_list_stored_before_the_mirror_gets_it_once_at_first_view(bridge, redis_db, redis_url):
    entries = [f"email:old{n:05d}@example.com" for n in range(2_500)]  # more than one SSCAN batch
    redis_db.sadd(guards.SUPPRESSION_KEY, *entries)  # as a version without the mirror stored it
    browser = signed_in(bridge.url)
    first = browser.get(f"{bridge.url}{PAGE}", timeout=10).text
    assert listed(first) == entries[:50] and "1–50 of 2500 entries" in first
    assert redis_db.zcard(guards.SUPPRESSION_SORTED) == 2_500 and redis_db.exists(guards.SUPPRESSION_READY)
    with monitor(redis_url) as lines:
        browser.get(f"{bridge.url}{PAGE}", timeout=10)
    assert not [line for line in lines if b'"sscan"' in line.lower()]  # built once: not again
    # An older version still running during a deploy changes the set alone: the sweep notices
    # the counts differ and mends the mirror (adds what is missing, drops what is gone).
    redis_db.sadd(guards.SUPPRESSION_KEY, "email:late@example.com")
    redis_db.srem(guards.SUPPRESSION_KEY, entries[0], entries[1])
    assert guards.ensure_sorted(redis_db) is False  # marked complete: a view does not look again
    assert guards.ensure_sorted(redis_db, check_counts=True) is True
    assert [m.decode() for m in redis_db.zrange(guards.SUPPRESSION_SORTED, 0, -1)] == sorted(suppressed(redis_db))


WHOLE_LIST_READS = {b"SMEMBERS", b"SSCAN", b"SORT", b"SRANDMEMBER", b"ZRANGE", b"ZRANGEBYSCORE", b"ZREVRANGE",
                    b"ZSCAN", b"KEYS", b"SCAN", b"DUMP"}


def test_a_page_view_reads_no_more_than_a_page(bridge, redis_db, redis_url):
    """With the mirror built, no view (list, next page, search, previous) runs a command that reads
    the whole list: each range read has a LIMIT of a page and one."""
    suppress(redis_db, [f"person{n:04d}@example.com" for n in range(300)])
    guards.ensure_sorted(redis_db)
    browser = signed_in(bridge.url)
    with monitor(redis_url) as lines:
        for params in ({}, {"after": "email:person0100@example.com"}, {"q": "person01"},
                       {"before": "email:person0200@example.com"}, {"q": "ari", "after": "email:b"}):
            assert browser.get(f"{bridge.url}{PAGE}", params=params, timeout=10).status_code == 200
    commands = [parsed[1] for parsed in map(_monitor_args, lines) if parsed and parsed[1]]
    suppression = [args for args in commands if any(a.startswith(guards.SUPPRESSION_KEY.encode()) for a in args)]
    names = {args[0].upper() for args in suppression}
    assert names & WHOLE_LIST_READS == set(), names
    ranges = [args for args in suppression if args[0].upper() in (b"ZRANGEBYLEX", b"ZREVRANGEBYLEX")]
    assert ranges and all(args[-3].upper() == b"LIMIT" and int(args[-1]) <= 51 for args in ranges), ranges
    assert names <= {b"ZRANGEBYLEX", b"ZREVRANGEBYLEX", b"ZLEXCOUNT", b"SCARD", b"EXISTS"}, names


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
