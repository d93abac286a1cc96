"""Dispatches: their state in Redis (state.py) and the shared rate limits for outside APIs (limits.py)."""
