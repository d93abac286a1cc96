"""Salesforce Outbound Messages: SOAP 1.1, parsed safely, checked by organization, acked exactly.

There is no signature (crm-webhooks.md §2.1): the organization id is what separates our org's
messages from anyone else's, compared on the 15-character form. The XML parser refuses DTDs,
entities and external references, so no billion-laughs body or external entity gets expanded.
The Ack acknowledges every notification of a message, so it is sent only once all are stored.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from marshmallow import ValidationError

from integration.inbound.errors import InboundError, malformed
from integration.inbound.normalize import InboundEvent, context_map, iso_from_ms, ms_from_any, validated
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


def soap_fault(message: str) -> bytes:
    from xml.sax.saxutils import escape

    return (b'<?xml version="1.0" encoding="UTF-8"?>\n'
            b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
            b"<soapenv:Body><soapenv:Fault><faultcode>soapenv:Server</faultcode><faultstring>"
            + escape(message).encode() + b"</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>\n")


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
        return SalesforceMessageSchema().load(message)
    except ValidationError as exc:
        raise malformed("the Outbound Message is incomplete", fields=exc.messages_dict) from None


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


def parse(raw: bytes, allowed_orgs: tuple[str, ...]) -> tuple[list[InboundEvent], list[dict[str, Any]]]:
    message = read_message(raw)
    org = message["organization_id"]
    if not org_allowed(org, allowed_orgs):
        raise InboundError(403, "organization_not_allowed", "OrganizationId is not in SALESFORCE_ORG_IDS")
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
