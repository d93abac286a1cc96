"""A local stand-in for the HubSpot CRM API (v3): what hydration reads and write-back writes.

It enforces what HubSpot documents, so a writer that passes here speaks HubSpot:
- `Authorization: Bearer <private app token>`; anything else -> 401 INVALID_AUTHENTICATION.
- Granted scopes (`state["scopes"]`, None = all): a call without its scope -> 403 MISSING_SCOPES
  naming the scope (crm.objects.deals.write, crm.schemas.deals.write, ...).
- Error bodies as HubSpot sends them: status "error", message, correlationId, category.
- Rate-limit headers on every answer (X-HubSpot-RateLimit-Max / -Remaining /
  -Interval-Milliseconds / -Daily / -Daily-Remaining); over `state["rate_limit"]["max"]` calls
  in one interval -> 429 TEN_SECONDLY_ROLLING.
- PATCH /crm/v3/objects/{type}/{id}: {"properties": {...}} only; a missing record -> 404
  OBJECT_NOT_FOUND; a property that does not exist -> 400 VALIDATION_ERROR naming it with
  PROPERTY_DOESNT_EXIST; a read-only one -> READ_ONLY_VALUE; an enumeration value not among the
  options -> INVALID_OPTION; a datetime that is neither ISO 8601 nor epoch ms -> INVALID_DATE.
- POST /crm/v3/objects/{type}/batch/update: {"inputs": [{"id", "properties"}]}, at most 100,
  no id twice; any bad input refuses the WHOLE batch (nothing written), with that input's error.
- POST /crm/v3/objects/notes: hs_timestamp required, associations with HUBSPOT_DEFINED types
  (214 deal, 202 contact, 190 company) to records that exist; 201 with the note.
- GET/POST /crm/v3/properties/{type} and /crm/v3/properties/{type}/groups: definitions are
  checked (name, label, type/fieldType pair, options, an existing group); 409 when it exists.

State knobs:
- `records` {"deals"|"contacts"|"companies": {id: {property: value}}} (the fixture's deal and
  contacts are there; their dicts are the ones hydration's GETs return)
- `properties` {type: {name: definition}}: HubSpot's standard ones; no Revor ones until created
- `groups` {type: {name: group}}
- `notes`: created notes, each {"id", "properties", "associations"}
- `delete(object_type, id)`: the record is gone (404 from now on)
- `fail_next`: answers to give before the real ones: (status, headers) or (status, headers, body)
- `scopes`: None (everything granted) or a set of scope names
- `rate_limit`: {"max": 100, "interval_ms": 10000} (a private app's documented burst limit)
- `delay`: seconds every answer waits; `calls`: every request (method, path, args, json,
  headers without Authorization, and `auth`)
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from flask import Flask, Response, request

TYPES = ("deals", "contacts", "companies")
NOTE_TYPES = {214: "deals", 202: "contacts", 190: "companies"}
FIELD_TYPES = {  # property type -> the fieldTypes HubSpot accepts for it
    "string": {"text", "textarea", "phonenumber", "html", "file"},
    "number": {"number", "calculation_equation"},
    "date": {"date"},
    "datetime": {"date"},
    "enumeration": {"select", "radio", "checkbox", "booleancheckbox", "calculation_equation"},
    "bool": {"booleancheckbox"},
}
NAME = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
READ_ONLY = {"hs_object_id", "createdate", "hs_lastmodifieddate", "lastmodifieddate"}
STANDARD = {
    "deals": {"dealname": "string", "dealstage": "enumeration", "pipeline": "enumeration", "amount": "number",
              "closedate": "datetime", "hubspot_owner_id": "enumeration", "description": "string",
              "createdate": "datetime", "hs_lastmodifieddate": "datetime", "hs_object_id": "number"},
    "contacts": {"email": "string", "firstname": "string", "lastname": "string", "phone": "string",
                 "mobilephone": "string", "hs_language": "enumeration", "jobtitle": "string", "company": "string",
                 "lifecyclestage": "enumeration", "hs_email_optout": "bool", "hs_linkedin_url": "string",
                 "createdate": "datetime", "lastmodifieddate": "datetime", "hs_object_id": "number"},
    "companies": {"name": "string", "domain": "string", "industry": "enumeration", "country": "string",
                  "createdate": "datetime", "hs_lastmodifieddate": "datetime", "hs_object_id": "number"},
}
STANDARD_GROUPS = {"deals": "dealinformation", "contacts": "contactinformation", "companies": "companyinformation"}


def _definition(name: str, kind: str, group: str) -> dict[str, Any]:
    field_type = {"string": "text", "number": "number", "datetime": "date", "date": "date", "bool": "booleancheckbox",
                  "enumeration": "select"}[kind]
    return {"name": name, "label": name.replace("_", " ").capitalize(), "type": kind, "fieldType": field_type,
            "groupName": group, "options": [], "hubspotDefined": True, "hidden": False,
            "modificationMetadata": {"archivable": False, "readOnlyDefinition": True,
                                     "readOnlyValue": name in READ_ONLY}}


def build(token: str, deal: dict[str, Any], contacts: dict[str, dict[str, Any]]) -> tuple[Flask, dict[str, Any]]:
    """The app and its state; `deal` and `contacts` are the hydration fixture's records."""
    lock = threading.RLock()
    ids = itertools.count(60_000_000_001)
    deals = {deal["id"]: deal}
    records: dict[str, dict[str, dict[str, Any]]] = {
        "deals": {deal["id"]: deal.setdefault("properties", {})},
        "contacts": {cid: c.setdefault("properties", {}) for cid, c in contacts.items()},
        "companies": {},
    }

    def delete(object_type: str, object_id: str) -> None:
        with lock:
            records[object_type].pop(str(object_id), None)
            if object_type == "deals":
                deals.pop(str(object_id), None)
            if object_type == "contacts":
                contacts.pop(str(object_id), None)

    state: dict[str, Any] = {
        "calls": [], "fail_next": [], "deals": deals, "delay": 0.0, "records": records,
        "properties": {t: {n: _definition(n, k, STANDARD_GROUPS[t]) for n, k in STANDARD[t].items()} for t in TYPES},
        "groups": {t: {STANDARD_GROUPS[t]: {"name": STANDARD_GROUPS[t], "label": STANDARD_GROUPS[t].title(),
                                            "displayOrder": 0, "archived": False}} for t in TYPES},
        "notes": [], "delete": delete, "scopes": None,
        "rate_limit": {"max": 100, "interval_ms": 10000}, "window": [0.0, 0], "daily": 0,
    }
    app = Flask("hubspot_standin")

    def error(status: int, category: str | None, message: str, **extra: Any) -> Response:
        body: dict[str, Any] = {"status": "error", "message": message, "correlationId": str(uuid.uuid4())}
        if category:
            body["category"] = category
        body.update(extra)
        return Response(json.dumps(body), status, mimetype="application/json")

    def answer(body: Any, status: int = 200) -> Response:
        return Response(json.dumps(body), status, mimetype="application/json")

    def scope_for() -> str | None:
        path, method = request.path, request.method
        write = method in ("POST", "PATCH", "PUT", "DELETE") and not path.endswith("/batch/read")
        if path.startswith("/crm/v3/properties/"):
            object_type = path.split("/")[4]
            return f"crm.schemas.{object_type}.{'write' if write else 'read'}"
        if path.startswith("/crm/v3/objects/notes"):
            return "crm.objects.contacts.write" if write else "crm.objects.contacts.read"
        if path.startswith("/crm/v3/objects/"):
            object_type = path.split("/")[4]
            return f"crm.objects.{object_type}.{'write' if write else 'read'}"
        if path.startswith("/crm/v3/owners"):
            return "crm.objects.owners.read"
        return None

    @app.before_request
    def check() -> Response | None:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        state["calls"].append({"method": request.method, "path": request.path, "args": request.args.to_dict(),
                               "json": request.get_json(silent=True), "headers": headers,
                               "auth": request.headers.get("Authorization")})
        if state["delay"]:
            time.sleep(state["delay"])
        if request.headers.get("Authorization") != f"Bearer {token}":
            return error(401, "INVALID_AUTHENTICATION",
                         "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
                         "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview")
        with lock:
            if state["fail_next"]:
                status, headers, *rest = state["fail_next"].pop(0)
                if rest:
                    body = rest[0]
                elif status == 429:
                    body = {"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
                            "errorType": "RATE_LIMIT", "correlationId": str(uuid.uuid4()),
                            "policyName": "TEN_SECONDLY_ROLLING"}
                else:
                    body = {"status": "error", "message": "internal error", "correlationId": str(uuid.uuid4())}
                return Response(json.dumps(body), status, headers=headers, mimetype="application/json")
            limit = state["rate_limit"]
            window = state["window"]
            now = time.monotonic()
            if now - window[0] >= limit["interval_ms"] / 1000:
                window[0], window[1] = now, 0
            window[1] += 1
            state["daily"] += 1
            if window[1] > limit["max"]:
                return error(429, None, "You have reached your ten_secondly_rolling limit.", errorType="RATE_LIMIT",
                             policyName="TEN_SECONDLY_ROLLING")
        needed = scope_for()
        if state["scopes"] is not None and needed and needed not in state["scopes"]:
            return error(403, "MISSING_SCOPES",
                         "This app hasn't been granted all required scopes to make this call. Read more about "
                         "required scopes here: https://developers.hubspot.com/scopes.",
                         errors=[{"message": "One or more of the following scopes are required.",
                                  "context": {"requiredGranularScopes": [needed]}}],
                         links={"scopes": "https://developers.hubspot.com/scopes"})
        return None

    @app.after_request
    def rate_headers(response: Response) -> Response:
        limit = state["rate_limit"]
        response.headers.setdefault("X-HubSpot-RateLimit-Max", str(limit["max"]))
        response.headers.setdefault("X-HubSpot-RateLimit-Remaining", str(max(0, limit["max"] - state["window"][1])))
        response.headers.setdefault("X-HubSpot-RateLimit-Interval-Milliseconds", str(limit["interval_ms"]))
        response.headers.setdefault("X-HubSpot-RateLimit-Daily", "250000")
        response.headers.setdefault("X-HubSpot-RateLimit-Daily-Remaining", str(max(0, 250000 - state["daily"])))
        return response

    # ---- hydration's reads (unchanged behaviour) ------------------------------------------

    @app.get("/crm/v3/objects/deals/<deal_id>")
    def get_deal(deal_id: str) -> Response:
        found = state["deals"].get(deal_id)
        if found is None:
            return error(404, "OBJECT_NOT_FOUND", "Object not found.  objectId are usually numeric.")
        return answer(found)

    @app.post("/crm/v3/objects/contacts/batch/read")
    def batch_read() -> Response:
        wanted = [i["id"] for i in request.get_json()["inputs"]]
        results = [contacts[i] for i in wanted if i in contacts]
        return answer({"status": "COMPLETE", "results": results})

    @app.get("/crm/v3/objects/contacts/<contact_id>")
    def get_contact(contact_id: str) -> Response:
        if contact_id not in contacts:
            return error(404, "OBJECT_NOT_FOUND", "Object not found.  objectId are usually numeric.")
        return answer(contacts[contact_id])

    @app.get("/crm/v3/objects/companies/<company_id>")
    def get_company(company_id: str) -> Response:
        return answer({"id": company_id, "properties": {"name": "Northwind Traders",
                                                         "domain": "northwind.example.com"}})

    @app.get("/crm/v3/owners/<owner_id>")
    def get_owner(owner_id: str) -> Response:
        return answer({"id": owner_id, "email": "rep.one@example.com", "firstName": "Rep", "lastName": "One"})

    # ---- write-back ------------------------------------------------------------------------

    def invalid_value(object_type: str, name: str, value: Any) -> dict[str, Any] | None:
        definition = state["properties"][object_type].get(name)
        if definition is None:
            return {"isValid": False, "message": f'Property "{name}" does not exist', "error": "PROPERTY_DOESNT_EXIST",
                    "name": name, "localizedErrorMessage": f'Property "{name}" does not exist'}
        if definition.get("modificationMetadata", {}).get("readOnlyValue"):
            return {"isValid": False, "message": f"{name} is a read only property; its value cannot be set.",
                    "error": "READ_ONLY_VALUE", "name": name}
        if not isinstance(value, str | int | float | bool):
            return {"isValid": False, "message": f"{value!r} is not a valid value for {name}",
                    "error": "INVALID_VALUE", "name": name}
        text = str(value)
        if text == "":
            return None  # clears it
        if definition["type"] == "enumeration" and definition.get("options"):
            allowed = [o["value"] for o in definition["options"]]
            if text not in allowed:
                return {"isValid": False, "message": f"{text} was not one of the allowed options: {allowed}",
                        "error": "INVALID_OPTION", "name": name}
        if definition["type"] in ("datetime", "date") and not text.isdigit():
            try:
                datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return {"isValid": False, "message": f"{text} is not a valid date", "error": "INVALID_DATE",
                        "name": name}
        return None

    def validate(object_type: str, properties: Any) -> Response | None:
        if not isinstance(properties, dict):
            return error(400, "VALIDATION_ERROR", "Invalid input JSON on line 1: properties must be an object")
        problems = [p for n, v in properties.items() if (p := invalid_value(object_type, n, v)) is not None]
        if problems:
            return error(400, "VALIDATION_ERROR", f"Property values were not valid: {json.dumps(problems)}")
        return None

    def not_found(object_type: str, object_ids: list[str]) -> Response:
        kind = object_type.rstrip("s").upper() if object_type != "companies" else "COMPANY"
        if len(object_ids) == 1:
            return error(404, "OBJECT_NOT_FOUND", "Object not found.  objectId are usually numeric.",
                         context={"id": object_ids})
        return error(404, "OBJECT_NOT_FOUND", f"Could not get some {kind} objects, they may be deleted or not exist. "
                     "Check that ids are valid.", context={"ids": object_ids})

    def stored(object_type: str, object_id: str) -> dict[str, Any]:
        props = records[object_type][object_id]
        return {"id": object_id, "properties": dict(props), "createdAt": "2025-12-29T16:20:00.000Z",
                "updatedAt": datetime.now().astimezone().isoformat(), "archived": False}

    @app.patch("/crm/v3/objects/<object_type>/<object_id>")
    def patch_object(object_type: str, object_id: str) -> Response:
        if object_type not in TYPES:
            return error(400, "VALIDATION_ERROR", f"Unable to infer object type from: {object_type}")
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or set(body) - {"properties", "objectWriteTraceId"}:
            return error(400, "VALIDATION_ERROR", "Invalid input JSON: expected {\"properties\": {...}}")
        with lock:
            if object_id not in records[object_type]:
                return not_found(object_type, [object_id])
            refused = validate(object_type, body.get("properties"))
            if refused is not None:
                return refused
            records[object_type][object_id].update({k: str(v) if not isinstance(v, bool) else str(v).lower()
                                                    for k, v in body["properties"].items()})
            return answer(stored(object_type, object_id))

    @app.post("/crm/v3/objects/<object_type>/batch/update")
    def batch_update(object_type: str) -> Response:
        if object_type not in TYPES:
            return error(400, "VALIDATION_ERROR", f"Unable to infer object type from: {object_type}")
        body = request.get_json(silent=True)
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) and "id" in i for i in inputs):
            return error(400, "VALIDATION_ERROR",
                         "Invalid input JSON: expected {\"inputs\": [{\"id\", \"properties\"}]}")
        if len(inputs) > 100:
            return error(400, "VALIDATION_ERROR", "Batch input is limited to 100 inputs.")
        wanted = [str(i["id"]) for i in inputs]
        if len(set(wanted)) != len(wanted):
            return error(400, "VALIDATION_ERROR", "Duplicate IDs found in batch input: "
                         + str(sorted({i for i in wanted if wanted.count(i) > 1})))
        with lock:
            missing = [i for i in wanted if i not in records[object_type]]
            if missing:
                return not_found(object_type, missing)
            for item in inputs:
                refused = validate(object_type, item.get("properties"))
                if refused is not None:
                    return refused
            started = datetime.now().astimezone().isoformat()
            for item in inputs:
                records[object_type][str(item["id"])].update({k: str(v) for k, v in item["properties"].items()})
            return answer({"status": "COMPLETE", "results": [stored(object_type, i) for i in wanted],
                           "startedAt": started, "completedAt": datetime.now().astimezone().isoformat()})

    @app.post("/oauth/v2/private-apps/get/access-token-info")
    def token_info() -> Response:
        """A private app token's portal and granted scopes (HubSpot's private apps page)."""
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or body.get("tokenKey") != token:
            return error(400, "VALIDATION_ERROR", "tokenKey is not a valid private app access token")
        every = {f"crm.{kind}.{name}.{access}" for kind in ("objects", "schemas")
                 for name in ("deals", "contacts", "companies") for access in ("read", "write")}
        return answer({"userId": 4150001, "hubId": 24681357, "appId": 2250001,
                       "scopes": sorted(every if state["scopes"] is None else state["scopes"])})

    @app.post("/crm/v3/objects/notes")
    def create_note() -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            return error(400, "VALIDATION_ERROR", "Invalid input JSON: expected {\"properties\": {...}}")
        properties = body["properties"]
        if not properties.get("hs_timestamp"):
            return error(400, "VALIDATION_ERROR", 'Property values were not valid: [{"isValid":false,"message":'
                         '"hs_timestamp is required","error":"REQUIRED_FIELD","name":"hs_timestamp"}]')
        if len(str(properties.get("hs_note_body", ""))) > 65536:
            return error(400, "VALIDATION_ERROR", "hs_note_body is limited to 65536 characters")
        associations = body.get("associations") or []
        with lock:
            for association in associations:
                target = (association.get("to") or {}).get("id") if isinstance(association, dict) else None
                types = association.get("types") if isinstance(association, dict) else None
                if target is None or not isinstance(types, list) or not types:
                    return error(400, "VALIDATION_ERROR", "Invalid association: expected {\"to\": {\"id\"}, \"types\"}")
                for kind in types:
                    if (kind.get("associationCategory") != "HUBSPOT_DEFINED"
                            or kind.get("associationTypeId") not in NOTE_TYPES):
                        return error(400, "VALIDATION_ERROR", f"Invalid association type: {json.dumps(kind)}")
                    object_type = NOTE_TYPES[kind["associationTypeId"]]
                    if str(target) not in records[object_type]:
                        return error(400, "VALIDATION_ERROR", f"One or more associations are invalid: {object_type} "
                                     f"{target} does not exist", context={"ids": [str(target)]})
            note = {"id": str(next(ids)), "properties": dict(properties), "associations": copy.deepcopy(associations)}
            state["notes"].append(note)
        now = datetime.now().astimezone().isoformat()
        return answer({"id": note["id"], "properties": note["properties"], "createdAt": now, "updatedAt": now,
                       "archived": False}, 201)

    # ---- properties and groups -------------------------------------------------------------

    @app.get("/crm/v3/properties/<object_type>")
    def list_properties(object_type: str) -> Response:
        if object_type not in TYPES:
            return error(400, "VALIDATION_ERROR", f"Unable to infer object type from: {object_type}")
        return answer({"results": list(state["properties"][object_type].values())})

    @app.post("/crm/v3/properties/<object_type>")
    def create_property(object_type: str) -> Response:
        if object_type not in TYPES:
            return error(400, "VALIDATION_ERROR", f"Unable to infer object type from: {object_type}")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return error(400, "VALIDATION_ERROR", "Invalid input JSON")
        missing = [k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)]
        if missing:
            return error(400, "VALIDATION_ERROR", f"Missing required fields: {missing}")
        name, kind = str(body["name"]), body["type"]
        if not NAME.match(name):
            return error(400, "VALIDATION_ERROR", f"Property name {name!r} must start with a lowercase letter and "
                         "contain only lowercase letters, digits and underscores")
        if kind not in FIELD_TYPES or body["fieldType"] not in FIELD_TYPES[kind]:
            return error(400, "VALIDATION_ERROR", f"fieldType {body['fieldType']!r} is not valid for type {kind!r}")
        options = body.get("options") or []
        if kind == "enumeration" and (not options or not all(isinstance(o, dict) and o.get("label") and
                                                             o.get("value") is not None for o in options)):
            return error(400, "VALIDATION_ERROR", "enumeration properties need options, each with a label and a value")
        with lock:
            if body["groupName"] not in state["groups"][object_type]:
                return error(400, "VALIDATION_ERROR", f"property group {body['groupName']} does not exist")
            if name in state["properties"][object_type]:
                return error(409, "OBJECT_ALREADY_EXISTS", f"Property named '{name}' already exists.")
            definition = {**body, "options": options, "hubspotDefined": False, "hidden": bool(body.get("hidden")),
                          "modificationMetadata": {"archivable": True, "readOnlyDefinition": False,
                                                   "readOnlyValue": False}}
            state["properties"][object_type][name] = definition
        return answer(definition, 201)

    @app.get("/crm/v3/properties/<object_type>/groups")
    def list_groups(object_type: str) -> Response:
        if object_type not in TYPES:
            return error(400, "VALIDATION_ERROR", f"Unable to infer object type from: {object_type}")
        return answer({"results": list(state["groups"][object_type].values())})

    @app.post("/crm/v3/properties/<object_type>/groups")
    def create_group(object_type: str) -> Response:
        if object_type not in TYPES:
            return error(400, "VALIDATION_ERROR", f"Unable to infer object type from: {object_type}")
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not body.get("name") or not body.get("label"):
            return error(400, "VALIDATION_ERROR", "Missing required fields: name and label")
        if not NAME.match(str(body["name"])):
            return error(400, "VALIDATION_ERROR", f"Group name {body['name']!r} is not valid")
        with lock:
            if body["name"] in state["groups"][object_type]:
                return error(409, "OBJECT_ALREADY_EXISTS", f"Property group named '{body['name']}' already exists.")
            group = {"name": body["name"], "label": body["label"], "displayOrder": body.get("displayOrder", -1),
                     "archived": False}
            state["groups"][object_type][body["name"]] = group
        return answer(group, 201)

    return app, state
