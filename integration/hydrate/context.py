"""The context around a HubSpot event: its deal, contact, company and owner, read from the CRM API.

HubSpot's app webhooks carry ids only, so rules that speak of `deal.amount` or `contact.email`
need these reads. Every call first takes a token from the shared per-portal limiter, so all
workers together stay inside the portal's rate limit; short 429 waits are served in place, long
ones go back to the event's schedule (the caller gives it its next attempt time).
"""

from __future__ import annotations

import time
from typing import Any

from integration.dispatches.limits import Limiter
from integration.hydrate.hubspot import HubSpotClient, HubSpotError, association_ids, properties_of
from integration.inbound.hubspot import context_for

MAX_INLINE_WAIT = 10.0


def with_rate_limit_waits(call: Any, limiter: Limiter, attempts: int = 3) -> Any:
    """Short 429 waits are served in place; long ones go back to the event's schedule. Either
    way the shared limiter is paused, so every worker slows down for this portal."""
    for attempt in range(attempts):
        try:
            return call()
        except HubSpotError as error:
            if error.retryable and error.status == 429:
                limiter.pause(error.wait or 10.0)
            short = error.retryable and error.wait is not None and error.wait <= MAX_INLINE_WAIT
            if not short or attempt == attempts - 1:
                raise
            time.sleep(error.wait)
    raise AssertionError("unreachable")


class _Paced:
    """A HubSpot client whose every call first takes a token from the shared per-portal limiter."""

    def __init__(self, client: HubSpotClient, limiter: Limiter | None) -> None:
        self.client, self.limiter = client, limiter

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def paced(*args: Any, **kwargs: Any) -> Any:
            if self.limiter is not None and not self.limiter.acquire(max_wait=MAX_INLINE_WAIT):
                raise HubSpotError("shared HubSpot rate limit: waiting", status=429, retryable=True,
                                   wait=self.limiter.paused_for() or 1.0)
            return method(*args, **kwargs)

        return paced


def hydrate_hubspot(client: HubSpotClient, event: dict[str, Any], limiter: Limiter | None = None) -> dict[str, Any]:
    """The deal, contact, company and owner around a HubSpot event, as flat context maps."""
    client = _Paced(client, limiter)  # type: ignore[assignment]
    object_type, object_id = event["object"]["type"], event["object"]["id"]
    context: dict[str, Any] = {}
    contact_ids: list[str] = []
    company_ids: list[str] = []
    extra = event.get("_extra") or {}
    if object_type == "deal":
        deal = client.get_deal(object_id)
        props = properties_of(deal)
        context["deal"] = context_for("deal", object_id, props)
        contact_ids = association_ids(deal, "contacts") or list(extra.get("associated_contact_ids") or [])
        company_ids = association_ids(deal, "companies") or list(extra.get("associated_company_ids") or [])
        owner_id = props.get("hubspot_owner_id")
        if owner_id:
            context["owner"] = _owner(client, str(owner_id))
    elif object_type == "contact":
        contact = client.get_contact(object_id)
        context["contact"] = context_for("contact", object_id, properties_of(contact))
        company_ids = association_ids(contact, "companies")
    elif object_type == "company":
        context["company"] = context_for("company", object_id, properties_of(client.get_company(object_id)))
    if contact_ids:
        by_id = {str(c.get("id")): c for c in client.read_contacts(contact_ids)}
        contacts = [context_for("contact", cid, properties_of(by_id[cid])) for cid in contact_ids if cid in by_id]
        if contacts:
            context["contact"] = contacts[0]
            context["contacts"] = contacts
    if company_ids and "company" not in context:
        context["company"] = context_for("company", company_ids[0],
                                         properties_of(client.get_company(company_ids[0])))
    return context


def _owner(client: HubSpotClient, owner_id: str) -> dict[str, Any] | None:
    """Owners need their own scope; a missing one leaves the owner out rather than failing."""
    try:
        owner = client.get_owner(owner_id)
    except HubSpotError as error:
        if error.retryable:
            raise
        return {"id": owner_id}
    props = {k: owner.get(k) for k in ("email", "firstName", "lastName") if owner.get(k) is not None}
    return context_for("owner", owner_id, {**props, "first_name": props.get("firstName"),
                                           "last_name": props.get("lastName")})
