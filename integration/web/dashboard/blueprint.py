"""The `/dashboard` blueprint: the session gate and CSRF check that every page sits behind.

Pages live in their own modules (overview.py, events.py, ...) and add their routes to this
blueprint; they render with `page()`, which gives every template the navigation and the CSRF
token. Nothing here runs JavaScript: forms POST and the server redirects (post/redirect/get).
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

import redis
from flask import Blueprint, Response, abort, current_app, g, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from integration.web.dashboard import auth, listing

log = logging.getLogger(__name__)
dashboard = Blueprint("dashboard", __name__, url_prefix="/dashboard",
                      template_folder="templates", static_folder="static")
dashboard.add_app_template_filter(listing.counted, "counted")  # `{{ n|counted("dispatch", "dispatches") }}`

# Endpoints reachable without a session.
OPEN_ENDPOINTS = {"dashboard.sign_in", "dashboard.sign_in_submit", "dashboard.sign_in_with_link",
                  "dashboard.sign_in_with_link_submit", "dashboard.static"}

NAV = [("dashboard.overview", "Overview"), ("dashboard.events", "Events"),
       ("dashboard.dispatches", "Dispatches"), ("dashboard.writeback", "Write-back"),
       ("dashboard.rules", "Rules"), ("dashboard.suppression", "Suppression"), ("dashboard.imports", "Imports")]

# Inline scripts and styles are refused: the pages are plain HTML forms and one stylesheet.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def redis_connection() -> Any:
    return current_app.extensions["revor_bridge.redis"]


def _admin_token() -> str | None:
    token = current_app.extensions["revor_bridge.settings"].admin_token
    return token.get() if token is not None else None


def _secure() -> bool:
    # Behind Heroku's router the app sees plain HTTP; the router says what the browser used.
    return request.is_secure or request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip() == "https"


def set_cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/dashboard", httponly=True,
                        samesite="Strict", secure=_secure())


def _safe_next(target: str | None) -> str:
    """Only a path inside the dashboard: `next` must not send a signed-in browser elsewhere, nor
    put a control character or space into the Location header (a line feed there was a 503)."""
    inside = target == "/dashboard" or target.startswith(("/dashboard/", "/dashboard?")) if target else False
    if target and inside and len(target) <= 2000 and not urlsplit(target).netloc and not _UNSAFE_IN_NEXT.search(target):
        return target
    return url_for("dashboard.overview")


_UNSAFE_IN_NEXT = re.compile(r"[\\\s\x00-\x1f\x7f-\x9f]")


def message_page(title: str, message: str, status: int) -> ResponseReturnValue:
    return render_template("dashboard/message.html", title=title, message=message, nav=[], session=None), status


@dashboard.before_request
def gate() -> ResponseReturnValue | None:
    admin_token = _admin_token()
    if admin_token is None:
        return message_page("Dashboard disabled", "Set ADMIN_TOKEN to use the dashboard.", 403)
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    session = auth.find_session(redis_connection(), request.cookies.get(auth.SESSION_COOKIE), admin_token)
    if session is None:
        if request.method in ("GET", "HEAD"):
            return redirect(url_for("dashboard.sign_in", next=request.full_path.rstrip("?")))
        return message_page("Signed out", "Your session has ended: sign in again.", 401)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        given = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token")
        if not auth.safe_equal(session.csrf, given):
            return message_page("Refused", "This form is missing its CSRF token or it is out of date. "
                                "Reload the page and try again.", 403)
    g.dashboard_session = session
    return None


@dashboard.after_app_request
def security_headers(response: Response) -> Response:
    """On every answer under /dashboard, the app's own errors too (a 404 or 405 no page route matched)."""
    if request.path == "/dashboard" or request.path.startswith("/dashboard/"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


def page(template: str, **context: Any) -> str:
    """Render a signed-in page: the navigation (pages that exist), the session and its CSRF token."""
    session = g.get("dashboard_session")
    nav = [(endpoint, label) for endpoint, label in NAV if endpoint in current_app.view_functions]
    return render_template(template, nav=nav, session=session,
                           csrf_token=session.csrf if session else "", **context)


@dashboard.errorhandler(404)
def missing(exc: Any) -> ResponseReturnValue:
    return message_page("Not found", getattr(exc, "description", None) or "Nothing here.", 404)


@dashboard.errorhandler(redis.RedisError)
def storage_unavailable(exc: redis.RedisError) -> ResponseReturnValue:
    """A page, not the API's JSON. An id in the URL that names a key of another type (a dispatch's
    `:doc`) is a page that does not exist, not an outage."""
    if isinstance(exc, redis.ResponseError) and "WRONGTYPE" in str(exc):  # in a pipeline: "Command # 1 ..."
        return message_page("Not found", "Nothing here.", 404)
    log.error("%s %s: Redis unavailable (%s); answered 503", request.method, request.path, type(exc).__name__)
    return message_page("Storage unavailable", f"Redis is unavailable ({type(exc).__name__}): the page cannot be "
                        "read. Reload it in a moment.", 503)


@dashboard.get("/sign-in")
def sign_in() -> ResponseReturnValue:
    return _sign_in_form(None, 200)


def _sign_in_form(error: str | None, status: int) -> ResponseReturnValue:
    pre = secrets.token_urlsafe(24)
    body = render_template("dashboard/sign_in.html", nav=[], session=None, csrf_token=pre, error=error,
                           next=_safe_next(request.values.get("next")))
    response = make_response(body, status)
    set_cookie(response, auth.PRESIGN_COOKIE, pre, 900)
    return response


@dashboard.post("/sign-in")
def sign_in_submit() -> ResponseReturnValue:
    admin_token = _admin_token()
    assert admin_token is not None  # the gate answered already otherwise
    if not auth.safe_equal(request.cookies.get(auth.PRESIGN_COOKIE) or "\0", request.form.get("csrf_token")):
        return _sign_in_form("The form was out of date: try again.", 403)
    if not auth.token_matches(admin_token, request.form.get("token")):
        return _sign_in_form("That token is not right.", 401)
    return _signed_in(_safe_next(request.form.get("next")))


LINK_SPENT = ("Link used or expired", "This sign-in link has been used or has expired. Sign in with ADMIN_TOKEN "
              "instead.")


@dashboard.get("/sign-in/<code>")
def sign_in_with_link(code: str) -> ResponseReturnValue:
    """A page with one button: only its POST spends the link, so a GET or HEAD by a link preview
    (chat apps, mail scanners) leaves it for the person it was printed for. The code in the URL is
    the form's secret: a cross-site page cannot know it."""
    if not auth.link_is_live(redis_connection(), code):
        return message_page(*LINK_SPENT, 403)
    return render_template("dashboard/sign_in_link.html", nav=[], session=None, code=code)


@dashboard.post("/sign-in/<code>")
def sign_in_with_link_submit(code: str) -> ResponseReturnValue:
    if not auth.use_link(redis_connection(), code):
        return message_page(*LINK_SPENT, 403)
    return _signed_in(url_for("dashboard.overview"))


def _signed_in(target: str) -> Response:
    admin_token = _admin_token()
    assert admin_token is not None
    session = auth.open_session(redis_connection(), admin_token)
    response = redirect(target)
    set_cookie(response, auth.SESSION_COOKIE, session.id, auth.SESSION_SECONDS)
    response.delete_cookie(auth.PRESIGN_COOKIE, path="/dashboard")
    return response


@dashboard.post("/sign-out")
def sign_out() -> ResponseReturnValue:
    auth.close_session(redis_connection(), g.dashboard_session.id)
    response = redirect(url_for("dashboard.sign_in"))
    response.delete_cookie(auth.SESSION_COOKIE, path="/dashboard")
    return response


def not_found(what: str) -> None:
    abort(404, description=f"{what} not found")
