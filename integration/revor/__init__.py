"""Talking to the Revor API: the HTTP client and its typed errors."""

from integration.revor.client import RateLimit, RevorClient, RevorResponse, RetryPolicy
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
