"""Revor Bridge: CRM events in, Revor outreach out, every status written back.

Nothing here runs at import time: settings are read, connections opened and servers started
only by the entry points (`integration.cli`, `integration.web.create_app`).
"""

__version__ = "0.1.0"
