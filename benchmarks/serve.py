"""Serve any WSGI app the way `revor-bridge web` serves the bridge, for the benchmarks.

The ingest benchmark compares the bridge with a bare endpoint: both must run under the same
server (gunicorn with `integration.web.serving`'s options and worker class, access log and query
redaction included), or the ratio measures the servers rather than the apps. `--stock-gthread`
swaps in gunicorn's own gthread worker (same threads and options) to see what the custom worker
costs. Settings (WEB_THREADS, WEB_READ_TIMEOUT) come from the environment, as in production.

    python -m benchmarks.serve benchmarks.bare_app:create_app() --port 8001 --workers 2 [--stock-gthread]
"""

from __future__ import annotations

import argparse
from typing import Any

from gunicorn.util import import_app

from integration.settings import Settings
from integration.web.serving import WebServer, gunicorn_options


class AppServer(WebServer):
    """`WebServer` with the app named by an import string ("module:callable()") instead of the bridge."""

    def __init__(self, app: str, options: dict[str, Any]) -> None:
        self.app_spec = app
        super().__init__(options)

    def load(self) -> Any:
        return import_app(self.app_spec)  # in each worker, after the fork


def serving_options(port: int, workers: int, stock_gthread: bool = False) -> dict[str, Any]:
    """Production's gunicorn options on 127.0.0.1:`port`, with `workers` processes."""
    options = gunicorn_options(Settings.from_env())
    options.update(bind=[f"127.0.0.1:{port}"], workers=workers)
    if stock_gthread:
        options["worker_class"] = "gthread"
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", help='import string, e.g. "integration.web:create_app()"')
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stock-gthread", action="store_true", help="gunicorn's own gthread worker")
    args = parser.parse_args()
    AppServer(args.app, serving_options(args.port, args.workers, args.stock_gthread)).run()


if __name__ == "__main__":
    main()
