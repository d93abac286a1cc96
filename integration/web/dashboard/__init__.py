"""The operator's dashboard at /dashboard: server-rendered pages over the same Redis records the
API reads. `blueprint.py` holds the sign-in gate; each page is a module named after it."""

from __future__ import annotations

from integration.web.dashboard import (
    dispatches,  # noqa: F401
    events,  # noqa: F401
    imports,  # noqa: F401
    overview,  # noqa: F401  (each page module adds its routes)
    rules,  # noqa: F401
    suppression,  # noqa: F401
    writeback,  # noqa: F401
)
from integration.web.dashboard.blueprint import dashboard

__all__ = ["dashboard"]
