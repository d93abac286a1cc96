"""The one error type inbound code raises: an HTTP status and a precise, secret-free reason."""

from __future__ import annotations

from typing import Any


class InboundError(Exception):
    """A request the bridge refuses; `as_json()` is the body the sender gets."""

    def __init__(self, status: int, code: str, message: str, *, fields: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.headers = headers or {}  # e.g. Retry-After on a 429

    def as_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields is not None:
            error["fields"] = self.fields
        return {"error": error}


def unauthorized(message: str) -> InboundError:
    return InboundError(401, "unauthorized", message)


def malformed(message: str, fields: Any = None) -> InboundError:
    return InboundError(400, "malformed_body", message, fields=fields)


def not_configured(setting: str) -> InboundError:
    # 503, not 4xx: the sender retries, so nothing is lost while an operator sets it.
    return InboundError(503, "source_not_configured", f"this endpoint is not configured ({setting} is unset)")
