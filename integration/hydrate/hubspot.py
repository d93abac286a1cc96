"""A small HubSpot CRM API client for hydration: a deal with its contacts and company.

It only ever calls `HUBSPOT_API_BASE_URL`, and only with ids that are plain digits, so nothing
in an event can steer it to another URL or path. 429 and 5xx are retryable: the error carries
how long to wait, from `Retry-After` or HubSpot's `X-HubSpot-RateLimit-Interval-Milliseconds`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from integration import __version__
from integration.revor.client import parse_retry_after

DEAL_PROPERTIES = ("dealname", "dealstage", "pipeline", "amount", "closedate", "hubspot_owner_id")
CONTACT_PROPERTIES = ("email", "firstname", "lastname", "phone", "mobilephone", "hs_language", "jobtitle",
                      "company", "hs_email_optout", "hs_linkedin_url")
COMPANY_PROPERTIES = ("name", "domain", "industry", "country")
HUBSPOT_ID = re.compile(r"^[0-9]{1,20}\Z")  # \Z: "$" would let a trailing newline through
MAX_RESPONSE_BYTES = 2 << 20


class HubSpotError(Exception):
    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 wait: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.wait = wait


class HubSpotClient:
    def __init__(self, base_url: str, token: str, timeout: tuple[float, float] = (5.0, 20.0)) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(max_retries=0))
        self.session.mount("https://", HTTPAdapter(max_retries=0))
        self.session.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json",
                                     "User-Agent": f"revor-bridge/{__version__}"})

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, self.base_url + path, timeout=self.timeout,
                                            allow_redirects=False, stream=True, **kwargs)
            raw = response.raw.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
            response.close()
        except requests.RequestException as exc:
            raise HubSpotError(f"{method} {path}: {type(exc).__name__}", retryable=True) from None
        status = response.status_code
        if len(raw) > MAX_RESPONSE_BYTES:
            raise HubSpotError(f"{method} {path}: response over {MAX_RESPONSE_BYTES} bytes", status=status)
        if status == 429 or status >= 500:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            interval = response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds")
            if wait is None and interval and interval.isdigit() and status == 429:
                wait = int(interval) / 1000
            raise HubSpotError(f"{method} {path}: HTTP {status}", status=status, retryable=True, wait=wait)
        if not 200 <= status < 300:
            raise HubSpotError(f"{method} {path}: HTTP {status}", status=status)
        try:
            return json.loads(raw)
        except ValueError:
            raise HubSpotError(f"{method} {path}: the answer is not JSON", status=status, retryable=True) from None

    def get_deal(self, deal_id: str) -> dict[str, Any]:
        _check_id(deal_id)
        return self._call("GET", f"/crm/v3/objects/deals/{deal_id}",
                          params={"properties": ",".join(DEAL_PROPERTIES), "associations": "contacts,companies"})

    def get_contact(self, contact_id: str) -> dict[str, Any]:
        _check_id(contact_id)
        return self._call("GET", f"/crm/v3/objects/contacts/{contact_id}",
                          params={"properties": ",".join(CONTACT_PROPERTIES), "associations": "companies"})

    def get_company(self, company_id: str) -> dict[str, Any]:
        _check_id(company_id)
        return self._call("GET", f"/crm/v3/objects/companies/{company_id}",
                          params={"properties": ",".join(COMPANY_PROPERTIES)})

    def read_contacts(self, contact_ids: list[str]) -> list[dict[str, Any]]:
        ids = [i for i in contact_ids if HUBSPOT_ID.match(i)][:100]
        if not ids:
            return []
        answer = self._call("POST", "/crm/v3/objects/contacts/batch/read",
                            json={"properties": list(CONTACT_PROPERTIES), "inputs": [{"id": i} for i in ids]})
        return list(answer.get("results") or []) if isinstance(answer, dict) else []

    def get_owner(self, owner_id: str) -> dict[str, Any]:
        _check_id(owner_id)
        return self._call("GET", f"/crm/v3/owners/{owner_id}")


def _check_id(value: str) -> None:
    if not HUBSPOT_ID.match(str(value)):
        raise HubSpotError(f"not a HubSpot id: {str(value)[:40]!r}")


def association_ids(record: dict[str, Any], kind: str) -> list[str]:
    results = ((record.get("associations") or {}).get(kind) or {}).get("results") or []
    return [str(r.get("id")) for r in results if isinstance(r, dict) and r.get("id") is not None]


def properties_of(record: Any) -> dict[str, Any]:
    props = record.get("properties") if isinstance(record, dict) else None
    return dict(props) if isinstance(props, dict) else {}
