"""The dashboard's gate, over real HTTP: sign-in with ADMIN_TOKEN, sessions in Redis, CSRF, sign-out."""

from __future__ import annotations

import re

import pytest
import requests

from tests.conftest import ADMIN_TOKEN


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "page has no CSRF field"
    return found.group(1)


def signed_in(url: str) -> requests.Session:
    browser = requests.Session()
    form = browser.get(f"{url}/dashboard/sign-in", timeout=10)
    answer = browser.post(f"{url}/dashboard/sign-in", data={"token": ADMIN_TOKEN, "csrf_token": csrf_of(form.text)},
                          timeout=10)
    assert answer.status_code == 200 and answer.url.endswith("/dashboard/"), answer.text[:300]
    return browser


def test_pages_redirect_to_sign_in_without_a_session(bridge):
    answer = requests.get(f"{bridge.url}/dashboard/", allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/dashboard/sign-in?next=")


def test_sign_in_sets_a_strict_httponly_cookie_and_shows_the_overview(bridge):
    browser = requests.Session()
    form = browser.get(f"{bridge.url}/dashboard/sign-in", timeout=10)
    answer = browser.post(f"{bridge.url}/dashboard/sign-in", allow_redirects=False, timeout=10,
                          data={"token": ADMIN_TOKEN, "csrf_token": csrf_of(form.text), "next": "/dashboard/"})
    assert answer.status_code == 302
    cookie = [v for k, v in answer.raw.headers.items() if k.lower() == "set-cookie" and "rb_dashboard=" in v][0]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never come back
    page = browser.get(f"{bridge.url}/dashboard/", timeout=10)
    assert page.status_code == 200 and "<h1>Overview</h1>" in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_cookie_is_secure_behind_an_https_router(bridge):
    browser = requests.Session()
    form = browser.get(f"{bridge.url}/dashboard/sign-in", timeout=10)
    answer = browser.post(f"{bridge.url}/dashboard/sign-in", allow_redirects=False, timeout=10,
                          headers={"X-Forwarded-Proto": "https"},
                          data={"token": ADMIN_TOKEN, "csrf_token": csrf_of(form.text)})
    cookie = [v for k, v in answer.raw.headers.items() if k.lower() == "set-cookie" and "rb_dashboard=" in v][0]
    assert "Secure" in cookie


@pytest.mark.parametrize("token", [ADMIN_TOKEN[:-1] + "x", ADMIN_TOKEN[:8], "", ADMIN_TOKEN + "x"])
def test_a_wrong_token_is_refused_without_saying_which_part(bridge, token):
    browser = requests.Session()
    form = browser.get(f"{bridge.url}/dashboard/sign-in", timeout=10)
    answer = browser.post(f"{bridge.url}/dashboard/sign-in", data={"token": token, "csrf_token": csrf_of(form.text)},
                          allow_redirects=False, timeout=10)
    assert answer.status_code == 401
    assert "That token is not right." in answer.text
    assert "rb_dashboard=" not in answer.headers.get("Set-Cookie", "").replace("rb_dashboard_signin=", "")


def test_sign_in_form_without_its_csrf_cookie_is_refused(bridge):
    answer = requests.post(f"{bridge.url}/dashboard/sign-in", data={"token": ADMIN_TOKEN, "csrf_token": "guess"},
                           allow_redirects=False, timeout=10)
    assert answer.status_code == 403


def test_a_post_without_or_with_a_wrong_csrf_token_is_refused_and_sign_out_ends_the_session(bridge):
    browser = signed_in(bridge.url)
    token = csrf_of(browser.get(f"{bridge.url}/dashboard/", timeout=10).text)
    assert browser.post(f"{bridge.url}/dashboard/sign-out", timeout=10, allow_redirects=False).status_code == 403
    assert browser.post(f"{bridge.url}/dashboard/sign-out", data={"csrf_token": token + "x"},
                        timeout=10, allow_redirects=False).status_code == 403
    stolen = browser.cookies.get("rb_dashboard")
    out = browser.post(f"{bridge.url}/dashboard/sign-out", data={"csrf_token": token}, timeout=10,
                       allow_redirects=False)
    assert out.status_code == 302
    # The old cookie is dead on the server, not only deleted in this browser.
    replay = requests.get(f"{bridge.url}/dashboard/", cookies={"rb_dashboard": stolen}, allow_redirects=False,
                          timeout=10)
    assert replay.status_code == 302 and "/sign-in" in replay.headers["Location"]


def test_a_post_without_a_session_is_refused(bridge):
    answer = requests.post(f"{bridge.url}/dashboard/sign-out", data={"csrf_token": "x"}, allow_redirects=False,
                           timeout=10)
    assert answer.status_code == 401


def test_a_one_time_link_signs_in_once(bridge, redis_db):
    from integration.web.dashboard.auth import sign_in_link

    link = sign_in_link(redis_db, bridge.url)
    # A link preview (HEAD or GET, no cookies) looks at it: the link stays live.
    assert requests.head(link, timeout=10).status_code == 200
    page = requests.get(link, timeout=10)
    assert page.status_code == 200 and "rb_dashboard=" not in page.headers.get("Set-Cookie", "")
    browser = requests.Session()
    first = browser.post(link, timeout=10)
    assert first.status_code == 200 and "<h1>Overview</h1>" in first.text
    again = requests.post(link, timeout=10, allow_redirects=False)
    assert again.status_code == 403 and "used or has expired" in again.text
    assert requests.get(link, timeout=10).status_code == 403


def test_next_never_leaves_the_dashboard(bridge):
    browser = requests.Session()
    form = browser.get(f"{bridge.url}/dashboard/sign-in?next=//evil.example/x", timeout=10)
    answer = browser.post(f"{bridge.url}/dashboard/sign-in", allow_redirects=False, timeout=10,
                          data={"token": ADMIN_TOKEN, "csrf_token": csrf_of(form.text),
                                "next": "https://evil.example/"})
    assert answer.headers["Location"] == "/dashboard/"


def test_dashboard_is_disabled_without_admin_token(make_bridge):
    bridge = make_bridge(admin_token=None)
    answer = requests.get(f"{bridge.url}/dashboard/", allow_redirects=False, timeout=10)
    assert answer.status_code == 403 and "Set ADMIN_TOKEN" in answer.text


def test_rotating_admin_token_ends_old_sessions(make_bridge, redis_db):
    from integration.settings import Secret

    old = make_bridge()
    browser = signed_in(old.url)
    rotated = make_bridge(admin_token=Secret("a-brand-new-admin-token-0123"))
    answer = browser.get(f"{rotated.url}/dashboard/", allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    # The same cookie, sent to the same host, still opens the bridge whose token opened it.
    assert browser.get(f"{old.url}/dashboard/", allow_redirects=False, timeout=10).status_code == 200


@pytest.mark.parametrize("target", ["/dashboard/\n//evil.example", "/dashboard/\r\nSet-Cookie: x=1", "/dashboardevil",
                                    "/dashboard/\t/evil.example", "/dashboard/\\\\evil.example"])
def test_next_with_a_control_character_or_only_the_prefix_signs_in_to_the_overview(bridge, target):
    browser = requests.Session()
    form = browser.get(f"{bridge.url}/dashboard/sign-in", timeout=10)
    answer = browser.post(f"{bridge.url}/dashboard/sign-in", allow_redirects=False, timeout=10,
                          data={"token": ADMIN_TOKEN, "csrf_token": csrf_of(form.text), "next": target})
    assert answer.status_code == 302 and answer.headers["Location"] == "/dashboard/", answer.text[:200]


def test_every_dashboard_answer_carries_the_security_headers(bridge):
    """The app's own errors too: no page route matched (404), a method no route takes (405)."""
    browser = signed_in(bridge.url)
    for answer in (browser.get(f"{bridge.url}/dashboard/no-such-page", timeout=10),
                   requests.get(f"{bridge.url}/dashboard/%3Cscript%3E", timeout=10),
                   browser.delete(f"{bridge.url}/dashboard/", timeout=10)):
        assert answer.status_code in (404, 405)
        assert "frame-ancestors 'none'" in answer.headers.get("Content-Security-Policy", ""), answer.headers
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in requests.get(f"{bridge.url}/healthz", timeout=10).headers


def test_an_id_naming_a_key_of_another_type_is_not_found_not_an_outage(bridge, redis_db):
    browser = signed_in(bridge.url)
    token = csrf_of(browser.get(f"{bridge.url}/dashboard/", timeout=10).text)
    redis_db.set("rb:dispatch:dsp_0123:doc", "{}")
    redis_db.hset("rb:msg:msg_dsp_0123_1_crm:attempts", "count", 1)
    for answer in (browser.get(f"{bridge.url}/dashboard/dispatches/dsp_0123:doc", timeout=10),
                   browser.post(f"{bridge.url}/dashboard/dispatches/dsp_0123:doc/retry", data={"csrf_token": token},
                                timeout=10),
                   browser.get(f"{bridge.url}/dashboard/writeback/messages/msg_dsp_0123_1_crm:attempts", timeout=10)):
        assert answer.status_code == 404 and "<h1>Not found</h1>" in answer.text, answer.text[:200]


def test_redis_down_answers_a_503_page(make_bridge):
    from integration.storage import free_port

    bridge = make_bridge(redis_url=f"redis://127.0.0.1:{free_port()}/1")
    answer = requests.get(f"{bridge.url}/dashboard/events", cookies={"rb_dashboard": "some-session"}, timeout=10)
    assert answer.status_code == 503 and answer.headers["Content-Type"].startswith("text/html")
    assert "Redis is unavailable (ConnectionError)" in answer.text and "Traceback" not in answer.text
    assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
