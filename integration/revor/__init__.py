"""Talking to the Revor API: the HTTP client and its typed errors."""

from integration.revor.client import RateLimit, RetryPolicy, RevorClient, RevorResponse
from integration.revor.errors import (
    RevorConnectionError,
    RevorError,
    RevorFinalError,
    RevorInvalidPayload,
    RevorRetryableError,
)

__all__ = [
    "RateLimit",
    "RetryPolicy",
    "RevorClient",
    "RevorConnectionError",
    "RevorError",
    "RevorFinalError",
    "RevorInvalidPayload",
    "RevorResponse",
    "RevorRetryableError",
]
