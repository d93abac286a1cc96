"""CSV imports: a CRM export or a spreadsheet as a source of events (`revor-bridge import`).

The pure parts read a file as a stream of rows (reader.py), map its headers to the event's common
names (formats.py) and turn each row into an event (rows.py); the runner stores those events through
the same path as webhooks, so rules, dispatch records and exactly-once hold for a list too.
"""
