"""The Revor API v1 client: list accounts, create a dispatch, read a job.

Why it looks the way it does (docs/revor.md):
- one pooled `requests.Session`, connect and read timeouts, no redirects followed, response
  bodies read with a size cap: Revor is an outside system and may answer anything;
- every POST carries an `Idempotency-Key`, and retries resend the *same bytes*: a re-rendered
  body under the same key would earn a 409;
- 2xx is parsed leniently, errors become typed exceptions with `code`, `request_id` and the HTTP
  status; retryable ones (timeouts, resets, 408/429/5xx) are retried here only when the caller
  passes a `RetryPolicy`, so the pipeline can leave retries to RQ instead;
- rate-limit headers are optional everywhere and exposed on every response and error.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import cache
from typing import Any

import requests
from marshmallow import ValidationError
from requests.adapters import HTTPAdapter

from integration import __version__
from integration.metrics import revor_endpoint
from integration.revor.errors import (
    RevorConnectionError,
    RevorError,
    RevorFinalError,
    RevorInvalidPayload,
    RevorRetryableError,
    classify,
)
from schemas.revor import AccountsEnvelopeSchema, DispatchSchema, ErrorEnvelopeSchema, JobEnvelopeSchema

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_RESPONSE_BYTES = 1 << 20


class RevorProtocolError(RevorRetryableError):
    """A 2xx whose body is not what the API documents (e.g. no `item.id`)."""


@dataclass(frozen=True)
class RateLimit:
    """Revor's rate-limit headers; each may be absent (docs/revor.md, "Rate limits")."""

    limit: int | None = None
    remaining: int | None = None
    window_ms: int | None = None
    user_limit: int | None = None
    user_remaining: int | None = None
    user_window_ms: int | None = None
    retry_after: float | None = None

    @classmethod
    def from_headers(cls, headers: Any) -> RateLimit:
        def number(name: str) -> int | None:
            value = headers.get(name)
            try:
                return int(float(value)) if value is not None else None
            except ValueError:
                return None

        return cls(
            limit=number("X-RateLimit-Limit"),
            remaining=number("X-RateLimit-Remaining"),
            window_ms=number("X-RateLimit-Window-Ms"),
            user_limit=number("X-User-RateLimit-Limit"),
            user_remaining=number("X-User-RateLimit-Remaining"),
            user_window_ms=number("X-User-RateLimit-Window-Ms"),
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )

    def suggested_wait(self) -> float | None:
        """How long to wait before the next call, from the headers alone, if they say."""
        if self.retry_after is not None:
            return self.retry_after
        exhausted = [
            w for r, w in ((self.remaining, self.window_ms), (self.user_remaining, self.user_window_ms))
            if r is not None and r <= 0 and w
        ]
        return max(exhausted) / 1000 if exhausted else None


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta or HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class RetryPolicy:
    """Client-side retries of retryable errors: exponential back-off with full jitter.

    `max_wait` caps any single wait, including a long Retry-After, so a CLI call never hangs
    for an hour; callers that must wait longer (the pipeline) schedule the retry themselves.
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_wait: float = 120.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def delay(self, attempt: int, error: RevorError) -> float:
        hinted = error.retry_after
        if hinted is None and isinstance(error.rate_limit, RateLimit):
            hinted = error.rate_limit.suggested_wait()
        if hinted is not None:
            return min(hinted, self.max_wait)
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class RevorResponse:
    """A successful answer: the parsed `item`/`items`, plus what callers log or pace on."""

    status: int
    request_id: str | None
    data: Any
    rate_limit: RateLimit
    attempts: int = 1


@cache
def _schema(schema: type) -> Any:
    """One instance per schema class: building one costs more than a load (they are reusable)."""
    return schema()


def dispatch_body(payload: dict[str, Any]) -> bytes:
    """Validate a dispatch and serialise it once, canonically (sorted keys, UTF-8, no spaces).

    The bytes are what the caller stores and resends on every retry under one key.
    """
    try:
        clean = _schema(DispatchSchema).load(payload)
    except ValidationError as exc:
        raise RevorInvalidPayload(exc.messages_dict) from None
    return json.dumps(clean, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class RevorClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        pool_size: int = 10,
        session: requests.Session | None = None,
        observe: Callable[[str, str, float], None] | None = None,
    ) -> None:
        """`observe(endpoint, status, seconds)` hears of every HTTP request (the worker's metrics):
        status is the HTTP status, or `error` when no answer came (connection failure, timeout)."""
        self.base_url = base_url.rstrip("/")
        self.observe = observe
        self.timeout = (connect_timeout, read_timeout)
        self.session = session or requests.Session()
        # The proxy settings (HTTPS_PROXY, NO_PROXY) are read once, here: requests would scan the
        # whole environment again on every call, a measurable share of a worker's CPU.
        self.session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        self.session.trust_env = False
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle and self.session.verify is True:  # what trust_env would have read, read once too
            self.session.verify = bundle
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": f"revor-bridge/{__version__}",
        })
        self.last_rate_limit = RateLimit()

    @classmethod
    def from_settings(cls, settings: Any, observe: Callable[[str, str, float], None] | None = None) -> RevorClient:
        return cls(
            settings.revor_base_url,
            settings.effective_revor_key.get(),
            connect_timeout=settings.revor_connect_timeout,
            read_timeout=settings.revor_read_timeout,
            observe=observe,
        )

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RevorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the three endpoints ---------------------------------------------------------------

    def list_accounts(
        self, channel: str | None = None, can_send: bool | None = None, retry: RetryPolicy = NO_RETRY
    ) -> RevorResponse:
        params: dict[str, str] = {}
        if channel:
            params["channel"] = channel
        if can_send is not None:
            params["can_send"] = "true" if can_send else "false"
        answer = self._call(retry, AccountsEnvelopeSchema, "GET", "/connect/accounts", params=params)
        # docs/revor.md, "What Revor does not say": filter client-side as well, in case the server ignored a filter.
        items = [a for a in answer.data["items"] if (not channel or a["channel"] == channel)
                 and (can_send is None or a["can_send"] == can_send)]
        return RevorResponse(answer.status, answer.request_id, items, answer.rate_limit, answer.attempts)

    def create_dispatch(
        self, payload: dict[str, Any] | bytes, idempotency_key: str, retry: RetryPolicy = NO_RETRY
    ) -> RevorResponse:
        """POST /outreach/dispatches; `payload` is a dict (validated here) or stored bytes."""
        if not IDEMPOTENCY_KEY.match(idempotency_key or ""):
            raise ValueError("idempotency key must be 1-64 characters of A-Z, a-z, 0-9, _ and -")
        body = payload if isinstance(payload, bytes) else dispatch_body(payload)
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        answer = self._call(retry, JobEnvelopeSchema, "POST", "/outreach/dispatches", data=body, headers=headers)
        return RevorResponse(answer.status, answer.request_id, answer.data["item"], answer.rate_limit,
                             answer.attempts)

    def get_job(self, job_id: str, retry: RetryPolicy = NO_RETRY) -> RevorResponse:
        if not re.match(r"^[A-Za-z0-9_.:-]{1,200}$", job_id or ""):
            raise ValueError("job id must be 1-200 characters of letters, digits and _ . : -")
        answer = self._call(retry, JobEnvelopeSchema, "GET", f"/outreach/jobs/{job_id}")
        return RevorResponse(answer.status, answer.request_id, answer.data["item"], answer.rate_limit,
                             answer.attempts)

    # ---- plumbing ------------------------------------------------------------------------

    def _call(self, policy: RetryPolicy, schema: type, method: str, path: str, **kwargs: Any) -> RevorResponse:
        """One request and its parse, repeated on retryable errors as `policy` allows."""
        attempt = 1
        while True:
            try:
                status, raw, rate_limit = self._request(method, path, **kwargs)
                data, request_id = self._parse(schema, method, path, status, raw, rate_limit)
                return RevorResponse(status, request_id, data, rate_limit, attempt)
            except RevorRetryableError as error:
                if attempt >= policy.attempts:
                    raise
                wait = policy.delay(attempt, error)
                log.warning("revor: retryable error (%s); attempt %d of %d, next in %.2f s",
                            error, attempt, policy.attempts, wait)
                policy.sleep(wait)
                attempt += 1

    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes, RateLimit]:
        url = self.base_url + path
        started, status = time.monotonic(), "error"
        try:
            response = self.session.request(
                method, url, timeout=self.timeout, allow_redirects=False, stream=True, **kwargs
            )
            status = str(response.status_code)
            raw = _read_capped(response)
        except requests.Timeout as exc:
            status = "error"  # no whole answer: a read that timed out mid-body counts as none
            raise RevorConnectionError(f"{method} {path}: timed out ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            status = "error"
            raise RevorConnectionError(f"{method} {path}: connection failed ({type(exc).__name__})") from None
        finally:
            if self.observe is not None:
                self.observe(revor_endpoint(method, path), status, time.monotonic() - started)
        rate_limit = RateLimit.from_headers(response.headers)
        self.last_rate_limit = rate_limit
        if 200 <= response.status_code < 300:
            return response.status_code, raw, rate_limit
        raise self._error(method, path, response.status_code, raw, rate_limit)

    @staticmethod
    def _error(method: str, path: str, status: int, raw: bytes, rate_limit: RateLimit) -> RevorError:
        code = request_id = None
        message = f"{method} {path} failed"
        try:
            envelope = _schema(ErrorEnvelopeSchema).load(json.loads(raw))
            code = envelope["error"]["code"]
            request_id = envelope["error"]["request_id"]
        except (ValueError, ValidationError):
            message += " (the answer was not Revor's error envelope)"
        if 300 <= status < 400:
            message += " (redirects are not followed)"
            return RevorFinalError(message, status=status, rate_limit=rate_limit)
        cls = classify(status)
        log.warning("revor: %s %s -> HTTP %d code=%s request_id=%s", method, path, status, code, request_id)
        return cls(message, status=status, code=code, request_id=request_id,
                   retry_after=rate_limit.retry_after, rate_limit=rate_limit)

    @staticmethod
    def _parse(
        schema: type, method: str, path: str, status: int, raw: bytes, rate_limit: RateLimit
    ) -> tuple[dict[str, Any], str | None]:
        try:
            data = _schema(schema).load(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            detail = exc.messages if isinstance(exc, ValidationError) else "not JSON"
            raise RevorProtocolError(
                f"{method} {path}: unexpected {status} body ({detail})", status=status, rate_limit=rate_limit
            ) from None
        return data, data.get("request_id")


def _read_capped(response: requests.Response) -> bytes:
    chunks, size = [], 0
    try:
        for chunk in response.iter_content(65536):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise RevorProtocolError(f"response larger than {MAX_RESPONSE_BYTES} bytes",
                                         status=response.status_code)
            chunks.append(chunk)
    finally:
        response.close()
    return b"".join(chunks)
