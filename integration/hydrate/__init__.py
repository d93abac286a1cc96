"""Hydration: reading from a CRM the context its webhook did not carry (HubSpot sends only ids)."""
