"""Typed Revor errors and the retry classification of docs/revor.md ("Errors").

Callers branch on the class (`RevorRetryableError` vs `RevorFinalError`) and on `status` /
`code`, never on the message. Every error carries Revor's `request_id`, which support asks for.
"""

from __future__ import annotations

from typing import Any


class RevorError(Exception):
    """Any failure talking to Revor."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        rate_limit: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after
        self.rate_limit = rate_limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "error": type(self).__name__,
            "retryable": self.retryable,
            "status": self.status,
            "code": self.code,
            "request_id": self.request_id,
            "message": self.message,
        }

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code:
            parts.append(f"code={self.code}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class RevorRetryableError(RevorError):
    """Timeouts, dropped connections, 408, 429 and 5xx: retry with the same key and body."""

    retryable = True


class RevorConnectionError(RevorRetryableError):
    """No HTTP answer at all (refused, reset, timed out). The request may or may not have landed."""


class RevorFinalError(RevorError):
    """400, 401, 403, 404, 409 and other 4xx: retrying the same request cannot succeed."""


class RevorInvalidPayload(RevorFinalError):
    """The payload broke the dispatch schema locally; it was never sent. `errors` says where."""

    def __init__(self, errors: dict[str, Any]) -> None:
        super().__init__(f"invalid dispatch payload: {errors}", code="invalid_payload")
        self.errors = errors


RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def classify(status: int) -> type[RevorError]:
    """The error class for a non-2xx HTTP status, per docs/revor.md ("Errors")."""
    if status in RETRYABLE_STATUSES or status >= 500:
        return RevorRetryableError
    return RevorFinalError
