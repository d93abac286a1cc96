"""Salesforce Outbound Messages: SOAP 1.1, authenticated by a URL token, parsed safely, acked exactly.

Salesforce signs nothing (Outbound Messages carry no signature) and the organization id is public (it is in every
Web-to-Lead form), so the org check alone lets anyone who knows the id post a message. What
authenticates is a secret token the admin pastes into the Outbound Message's endpoint URL
(`?token=`, `SALESFORCE_WEBHOOK_TOKEN`), compared in constant time before the body is parsed and
never stored or logged. Optionally the message's `SessionId` is checked against its org's identity
service, only ever on an https host under salesforce.com or force.com.

The XML parser refuses DTDs, entities and external references, so no billion-laughs body or
external entity gets expanded. The Ack acknowledges every notification of a message, so it is
sent only once all are stored; every refusal is a SOAP fault, the only error Salesforce reads.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus, urlsplit
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

import requests
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from marshmallow import ValidationError

from integration.inbound.errors import InboundError, malformed, unauthorized
from integration.inbound.normalize import InboundEvent, context_map, iso_from_ms, ms_from_any, shared_schema, validated
from schemas.inbound import SalesforceMessageSchema

NS = {"s": "http://schemas.xmlsoap.org/soap/envelope/",
      "o": "http://soap.sforce.com/2005/09/outbound",
      "xsi": "http://www.w3.org/2001/XMLSchema-instance"}

ACK = b"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
 <soapenv:Body>
  <notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">
   <Ack>true</Ack>
  </notificationsResponse>
 </soapenv:Body>
</soapenv:Envelope>
"""

OBJECT_TYPES = {"Opportunity": "deal", "Contact": "contact", "Lead": "contact", "Account": "company",
                "User": "owner"}


TOKEN_PARAM = "token"
# The identity service is asked only on these hosts, whatever URL the message names.
SESSION_HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:salesforce|force)\.com\Z")
USERINFO_PATH = "/services/oauth2/userinfo"
SESSION_TIMEOUT = (3.05, 5.0)  # connect, read: Salesforce waits 60 s for the whole answer
SESSION_ID = re.compile(r"^[\x21-\x7e]{1,2048}\Z")

# (url, session id, timeout) -> (HTTP status, JSON body or None); tests pass a local stand-in.
UserinfoFetch = Callable[[str, str, tuple[float, float]], tuple[int, Any]]


def soap_fault(message: str, status: int = 500) -> bytes:
    """A SOAP 1.1 fault: `Client` for a refusal the sender caused (4xx), `Server` otherwise."""
    code = b"soapenv:Client" if 400 <= status < 500 else b"soapenv:Server"
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n'
            b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
            b"<soapenv:Body><soapenv:Fault><faultcode>" + code + b"</faultcode><faultstring>"
            + escape(message).encode() + b"</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>\n")


def check_token(supplied: list[str], expected: str) -> None:
    """Exactly one `token` query parameter, equal to SALESFORCE_WEBHOOK_TOKEN (constant time).

    The reason never shows the expected value, nor the one supplied.
    """
    if not supplied:
        raise unauthorized("no token in the endpoint URL: add ?token=<SALESFORCE_WEBHOOK_TOKEN> to the "
                           "Outbound Message's endpoint URL")
    if len(supplied) > 1:
        raise unauthorized("more than one token in the endpoint URL")
    if not hmac.compare_digest(supplied[0].encode("utf-8", "surrogateescape"), expected.encode()):
        raise unauthorized("the token in the endpoint URL is not SALESFORCE_WEBHOOK_TOKEN")


def redacted_query(query: str) -> str:
    """The query string as received with every `token` value replaced by `***`, for storage.

    Names are compared decoded (`%74oken` is `token` to the parser too); the rest stays as sent.
    """
    parts = []
    for part in query.split("&"):
        name = part.split("=", 1)[0]
        parts.append(f"{name}=***" if unquote_plus(name) == TOKEN_PARAM else part)
    return "&".join(parts)


def read_message(raw: bytes) -> dict[str, Any]:
    """The Outbound Message as plain data, validated; 400 for anything else."""
    try:
        root = fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise malformed("XML with a DTD, entities or external references is refused") from None
    except (ParseError, ValueError) as exc:
        raise malformed(f"not well-formed XML ({exc})") from None
    notifications = root.find("s:Body/o:notifications", NS)
    if notifications is None:
        raise malformed("not a Salesforce Outbound Message: no soapenv:Body/notifications element")
    message = {
        "organization_id": notifications.findtext("o:OrganizationId", namespaces=NS),
        "action_id": notifications.findtext("o:ActionId", namespaces=NS),
        "notifications": [_notification(n) for n in notifications.findall("o:Notification", NS)],
    }
    try:
        loaded = shared_schema(SalesforceMessageSchema).load(message)
    except ValidationError as exc:
        raise malformed("the Outbound Message is incomplete", fields=exc.messages_dict) from None
    # Only the optional session check reads these; `<SessionId xsi:nil="true"/>` is no session.
    for key, tag in (("session_id", "SessionId"), ("enterprise_url", "EnterpriseUrl"), ("partner_url", "PartnerUrl")):
        loaded[key] = (notifications.findtext(f"o:{tag}", namespaces=NS) or "").strip() or None
    return loaded


def _notification(element: Element) -> dict[str, Any]:
    sobject = element.find("o:sObject", NS)
    fields: dict[str, str | None] = {}
    sobject_type = ""
    if sobject is not None:
        sobject_type = sobject.get(f"{{{NS['xsi']}}}type", "").split(":")[-1]
        for child in sobject:
            name = child.tag.split("}", 1)[-1]
            nil = child.get(f"{{{NS['xsi']}}}nil") == "true"
            fields[name] = None if nil else (child.text or "")
    return {"id": element.findtext("o:Id", namespaces=NS), "sobject_type": sobject_type, "fields": fields}


def org_allowed(org_id: str, allowed: tuple[str, ...]) -> bool:
    """15- and 18-character ids name the same org: compare the first 15 characters."""
    return any(org_id[:15] == candidate[:15] for candidate in allowed)


def common_names(object_type: str, f: dict[str, Any]) -> dict[str, Any]:
    if object_type == "deal":
        return {"name": f.get("Name"), "stage": f.get("StageName"), "amount": f.get("Amount")}
    if object_type == "contact":
        return {"email": f.get("Email"), "first_name": f.get("FirstName"), "last_name": f.get("LastName"),
                "phone": f.get("Phone") or f.get("MobilePhone")}
    if object_type in ("company",):
        return {"name": f.get("Name")}
    if object_type == "owner":
        return {"email": f.get("Email")}
    return {}


def userinfo_url(endpoint: str) -> str:
    """The identity service on the host of the message's EnterpriseUrl/PartnerUrl.

    Only an https host under salesforce.com or force.com, on the default port, qualifies: a
    forged message must not make the bridge send a request (with the session) anywhere else.
    Only the host is taken from the message; the path is ours.
    """
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        parts, port = None, None
    host = (parts.hostname or "") if parts else ""
    if (parts is None or parts.scheme != "https" or parts.username is not None or port not in (None, 443)
            or not SESSION_HOST.match(host)):
        raise InboundError(403, "session_host_refused",
                           "EnterpriseUrl/PartnerUrl is not an https URL on a host under salesforce.com or "
                           "force.com; the session was not checked and the message is refused")
    return f"https://{host}{USERINFO_PATH}"


def fetch_userinfo(url: str, session_id: str, timeout: tuple[float, float]) -> tuple[int, Any]:
    """GET the identity service with the session as bearer token; no redirects, at most 64 KiB read."""
    with requests.get(url, headers={"Authorization": f"Bearer {session_id}", "Accept": "application/json"},
                      timeout=timeout, allow_redirects=False, stream=True) as response:
        content = b""
        # iter_content (not response.raw) so that a broken read is a requests.RequestException too.
        for chunk in response.iter_content(chunk_size=8192):
            content += chunk
            if len(content) >= 64 * 1024:
                break
        try:
            return response.status_code, json.loads(content)
        except (ValueError, RecursionError):
            return response.status_code, None


def verify_session(message: dict[str, Any], fetch: UserinfoFetch = fetch_userinfo) -> None:
    """Ask the sending org's identity service whether the message's session belongs to that org.

    A refused session or another org is 403; an org that cannot be reached is 503, so Salesforce
    retries. No answer or error names the session id.
    """
    session, endpoint = message.get("session_id"), message.get("enterprise_url") or message.get("partner_url")
    if not session or not endpoint:
        raise InboundError(403, "session_missing",
                           "SALESFORCE_VERIFY_SESSION is on but the message carries no SessionId and "
                           "EnterpriseUrl/PartnerUrl: tick 'Send Session ID' on the Outbound Message")
    if not SESSION_ID.match(session):
        raise malformed("SessionId: expected 1 to 2048 printable ASCII characters")
    url = userinfo_url(endpoint)
    host = urlsplit(url).hostname
    try:
        status, body = fetch(url, session, SESSION_TIMEOUT)
    except requests.RequestException as exc:
        raise InboundError(503, "session_check_unavailable",
                           f"the session could not be checked at {host} ({type(exc).__name__}); retry later") from None
    if status in (400, 401, 403):
        raise InboundError(403, "session_invalid", f"{host} did not accept the message's SessionId (HTTP {status})")
    if status != 200 or not isinstance(body, dict):
        raise InboundError(503, "session_check_unavailable",
                           f"{host} answered the session check with HTTP {status} and no identity; retry later")
    org = body.get("organization_id")
    if not isinstance(org, str) or org[:15] != message["organization_id"][:15]:
        raise InboundError(403, "session_org_mismatch", "the SessionId belongs to another org than OrganizationId")


def parse(raw: bytes, allowed_orgs: tuple[str, ...], verify: Callable[[dict[str, Any]], None] | None = None,
          ) -> tuple[list[InboundEvent], list[dict[str, Any]]]:
    """The message's events and skipped notifications; `verify` (the session check) runs after the org check."""
    message = read_message(raw)
    org = message["organization_id"]
    if not org_allowed(org, allowed_orgs):
        raise InboundError(403, "organization_not_allowed", "OrganizationId is not in SALESFORCE_ORG_IDS")
    if verify is not None:
        verify(message)
    events: list[InboundEvent] = []
    skipped: list[dict[str, Any]] = []
    for note in message["notifications"]:
        fields = note["fields_"]
        record_id = fields.get("Id")
        if not record_id:
            skipped.append({"notification": note["id"], "reason": "no record data (deleted before delivery?)"})
            continue
        sf_type = note["sobject_type"]
        object_type = OBJECT_TYPES.get(sf_type) or sf_type.lower()
        occurred = ms_from_any(fields.get("LastModifiedDate"))
        event: dict[str, Any] = {
            "source": "salesforce", "event_id": note["id"], "type": f"{object_type}.updated",
            "object": {"type": object_type, "id": record_id},
            "occurred_at": iso_from_ms(occurred) if occurred else None,
            "properties": dict(fields), "previous": None, "account": org,
        }
        if object_type in ("deal", "contact", "company", "owner"):
            event[object_type] = context_map(record_id, fields, common_names(object_type, fields))
        events.append(InboundEvent(validated(event), occurred_ms=occurred,
                                   track_field="StageName" if object_type == "deal" and "StageName" in fields
                                   else None,
                                   extra={"sobject_type": sf_type}))
    return events, skipped
