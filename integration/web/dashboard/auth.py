"""Dashboard sign-in: ADMIN_TOKEN once, then a server-side session in Redis.

Why server-side: signing out, or rotating ADMIN_TOKEN, must end a session everywhere. A signed
cookie (Flask's default session) would stay valid until it expires. The cookie holds only a
random id; Redis holds its SHA-256 (a Redis dump leaks no usable cookie) with the session's CSRF
token and a fingerprint of the ADMIN_TOKEN it was opened with.

CSRF: every POST carries `csrf_token` (form field or X-CSRF-Token header) equal to the session's.
The sign-in form, which has no session yet, uses a double-submit cookie instead. SameSite=Strict
on both cookies is the second lock.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import redis

from integration.inbound.signatures import safe_equal

SESSION_COOKIE = "rb_dashboard"
PRESIGN_COOKIE = "rb_dashboard_signin"
SESSION_SECONDS = 12 * 3600
LINK_SECONDS = 900


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def session_key(session_id: str) -> str:
    return f"rb:dashboard:session:{_digest(session_id)}"


def link_key(code: str) -> str:
    return f"rb:dashboard:link:{_digest(code)}"


def token_fingerprint(admin_token: str) -> str:
    """Which ADMIN_TOKEN opened a session: a new token closes every older session."""
    return _digest("revor-bridge dashboard " + admin_token)[:32]


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    started: float


def open_session(connection: redis.Redis, admin_token: str) -> Session:
    session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time())
    key = session_key(session.id)
    with connection.pipeline() as pipe:
        pipe.hset(key, mapping={"csrf": session.csrf, "token": token_fingerprint(admin_token),
                                "started": f"{session.started:.3f}"})
        pipe.expire(key, SESSION_SECONDS)
        pipe.execute()
    return session


def find_session(connection: redis.Redis, session_id: str | None, admin_token: str) -> Session | None:
    if not session_id or len(session_id) > 128:
        return None
    raw = connection.hgetall(session_key(session_id))
    if not raw or not safe_equal(token_fingerprint(admin_token), raw.get(b"token")):
        return None
    return Session(session_id, raw[b"csrf"].decode(), float(raw.get(b"started") or 0))


def close_session(connection: redis.Redis, session_id: str) -> None:
    connection.delete(session_key(session_id))


def token_matches(admin_token: str, given: str | None) -> bool:
    """Compared in constant time as a whole: a refusal says nothing about which part was wrong."""
    return safe_equal(admin_token, (given or "").strip())


def sign_in_link(connection: redis.Redis, base_url: str, ttl: int = LINK_SECONDS) -> str:
    """A one-time URL that signs a browser in (what `revor-bridge demo --keep` prints).

    The code is stored hashed and consumed with GETDEL on first use, so a link that reached a log
    or a browser history after use is worthless; unused, it lapses after `ttl` seconds.
    """
    code = secrets.token_urlsafe(32)
    connection.set(link_key(code), "1", ex=ttl)
    return f"{base_url.rstrip('/')}/dashboard/sign-in/{code}"


def link_is_live(connection: redis.Redis, code: str) -> bool:
    """Looked at without using it up: a link-preview bot or mail scanner fetching the URL must not
    spend the operator's one sign-in."""
    return bool(code) and len(code) <= 128 and bool(connection.exists(link_key(code)))


def use_link(connection: redis.Redis, code: str) -> bool:
    if not code or len(code) > 128:
        return False
    return connection.getdel(link_key(code)) is not None
