"""What the benchmark scripts share."""

from __future__ import annotations

import time

import requests


def wait_for(url: str, timeout: float = 30) -> None:
    """Until something answers HTTP at `url` (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise TimeoutError(url)
