"""`python -m integration` is `revor-bridge`."""

from integration.cli import main

main()
