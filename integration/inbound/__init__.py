"""Inbound: verify, parse and normalise what CRMs and hooks send, then store it durably.

One module per source (`hubspot.py`, `salesforce.py`, `pipedrive.py`, `generic.py`) does the
source's own authentication and turns its payload into normalized events; `store.py` writes them
to Redis with their dedupe keys and enqueues the work in one transaction; `routes.py` is the
Flask blueprint that ties them together and chooses each answer.
"""
