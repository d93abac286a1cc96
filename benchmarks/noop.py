"""A job that does nothing: the baseline for RQ's own job rate."""


def noop() -> None:
    return None
