"""A local stand-in for a Salesforce org's REST API, enforcing what Salesforce documents.

Served by `tests.servers.ThreadServer` on 127.0.0.1. What it enforces:

- `POST /services/oauth2/token` (form-encoded, client-credentials grant only): a wrong client id
  answers 400 `invalid_client_id`, a wrong secret 400 `invalid_client`, another grant 400
  `unsupported_grant_type`. The answer has no `expires_in` (Salesforce gives none).
- every `/services/data/...` call needs `Authorization: Bearer <a token it issued and did not
  expire>`, else 401 `[{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]`;
  only API version `v{version}` exists; error bodies are JSON arrays of {message, errorCode, fields};
  every answer carries `Sforce-Limit-Info: api-usage=n/m` and counts one call.
- `PATCH .../sobjects/{SObject}/{Id}` -> 204; unknown sObject or record 404 NOT_FOUND, a deleted
  record 404 ENTITY_IS_DELETED, an unknown field 400 INVALID_FIELD ("No such column ..."), a
  read-only field 400 INVALID_FIELD_FOR_INSERT_UPDATE.
- `PATCH .../composite/sobjects` -> 200 with one SaveResult per record ({id, success, errors:
  [{statusCode, message, fields}]}); more than 200 records, a record without attributes.type or
  id, or an unknown field answer 400 for the whole request; allOrNone true rolls everything back.
- `POST .../sobjects/Task` -> 201 {id, success, errors}; WhoId must be a Contact/Lead, WhatId
  anything else (400 FIELD_INTEGRITY_EXCEPTION), Subject at most 255 (400 STRING_TOO_LONG).
- `GET .../sobjects/{SObject}/describe` -> {name, fields: [{name, updateable, ...}]}.
- when api-usage reaches its limit: 403 REQUEST_LIMIT_EXCEEDED "TotalRequests Limit exceeded.".

Knobs in `state`:
- `records`: {"Opportunity": {id: {field: value}}, "Contact": {...}, "Account": {...}, "Lead": {...}},
  seeded with OPPORTUNITY_ID, CONTACT_ID, ACCOUNT_ID, LEAD_ID.
- `fields`: {"Opportunity": set(names), ...}, standard fields plus REVOR_FIELDS on the four
  record types (discard one to make it "missing"); `read_only`: set of field names never updateable.
- `tasks`: list of created Task bodies (with their "Id"); `deleted`: set of record ids.
- `expire_tokens()`: every token issued so far answers 401 INVALID_SESSION_ID from now on.
- `tokens_issued`: how many tokens the token endpoint gave out.
- `fail_next`: list of (status, json_body) answered, in order, before real API answers.
- `api_usage`: [used, limit] reported in Sforce-Limit-Info (used grows by one per API call).
- `instance_url`: what the token answer gives as instance_url (None: this server's own URL).
- `calls`: every request: {"method", "path", "json", "form" (client_secret blanked), "headers"
  (Authorization left out), "auth_ok"}.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from typing import Any

from flask import Flask, Response, request

OPPORTUNITY_ID = "006Dn00000A1b2cIAA"
CONTACT_ID = "003Dn00000B2c3dIAA"
ACCOUNT_ID = "001Dn00000C3d4eIAA"
LEAD_ID = "00QDn00000D4e5fIAA"
REVOR_FIELDS = ("Revor_Status__c", "Revor_Last_Job_Id__c", "Revor_Last_Sent_At__c", "Revor_Last_Error__c")
SYSTEM_FIELDS = {"Id", "IsDeleted", "CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById",
                 "SystemModstamp"}
STANDARD_FIELDS = {
    "Opportunity": {"Name", "StageName", "Amount", "CloseDate", "AccountId", "Description", "OwnerId"},
    "Contact": {"FirstName", "LastName", "Email", "Phone", "MobilePhone", "AccountId", "Description", "OwnerId"},
    "Account": {"Name", "Website", "Industry", "Description", "OwnerId"},
    "Lead": {"FirstName", "LastName", "Company", "Email", "Phone", "Status", "Description", "OwnerId"},
}
TASK_FIELDS = {"Subject", "Description", "Status", "ActivityDate", "WhatId", "WhoId", "Priority", "OwnerId"}
MAX_COLLECTION = 200
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers=headers or {}, mimetype="application/json")


def _error(status: int, code: str, message: str, fields: list[str] | None = None) -> Response:
    return _json([{"message": message, "errorCode": code, "fields": fields or []}], status)


def salesforce_standin(client_id: str, client_secret: str, version: str = "62.0") -> tuple[Flask, dict[str, Any]]:
    lock = threading.Lock()
    valid: set[str] = set()
    state: dict[str, Any] = {
        "records": {
            "Opportunity": {OPPORTUNITY_ID: {"Name": "Northwind renewal", "StageName": "Negotiation/Review",
                                             "AccountId": ACCOUNT_ID}},
            "Contact": {CONTACT_ID: {"FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@example.com",
                                     "AccountId": ACCOUNT_ID}},
            "Account": {ACCOUNT_ID: {"Name": "Northwind Traders"}},
            "Lead": {LEAD_ID: {"FirstName": "Grace", "LastName": "Hopper", "Company": "Navy"}},
        },
        "fields": {name: SYSTEM_FIELDS | fields | set(REVOR_FIELDS) for name, fields in STANDARD_FIELDS.items()}
        | {"Task": SYSTEM_FIELDS | TASK_FIELDS},
        "read_only": set(SYSTEM_FIELDS),
        "tasks": [],
        "deleted": set(),
        "tokens_issued": 0,
        "fail_next": [],
        "api_usage": [18, 15000],
        "instance_url": None,
        "calls": [],
    }

    def expire_tokens() -> None:
        with lock:
            valid.clear()

    state["expire_tokens"] = expire_tokens
    app = Flask("salesforce_standin")
    prefix = f"/services/data/v{version}"

    def sobject_of_id(record_id: str) -> str | None:
        for sobject, records in state["records"].items():
            if record_id in records:
                return sobject
        return None

    def unknown_fields(sobject: str, body: dict[str, Any]) -> Response | None:
        known = {f.lower(): f for f in state["fields"].get(sobject, set())}
        for name in body:
            if name.lower() not in known:
                return _error(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject}")
        for name in body:
            if known[name.lower()] in state["read_only"]:
                return _error(400, "INVALID_FIELD_FOR_INSERT_UPDATE",
                              f"Unable to create/update fields: {known[name.lower()]}. Please check the security "
                              "settings of this field and verify that it is read/write for your profile or "
                              "permission set.", [known[name.lower()]])
        return None

    @app.before_request
    def record_and_authorize() -> Response | None:
        form = {k: ("***" if k == "client_secret" else v) for k, v in request.form.items()}
        body = request.get_json(silent=True) if request.is_json else None
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        auth = request.headers.get("Authorization", "")
        with lock:
            ok = auth.startswith("Bearer ") and auth.removeprefix("Bearer ") in valid
            state["calls"].append({"method": request.method, "path": request.path, "json": body, "form": form,
                                   "headers": headers, "auth_ok": ok})
        if request.path == "/services/oauth2/token":
            return None
        if not ok:
            return _error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        with lock:
            used, limit = state["api_usage"]
            if used >= limit:
                return _error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
            state["api_usage"] = [used + 1, limit]
            if state["fail_next"]:
                status, failure = state["fail_next"].pop(0)
                return _json(failure, status)
        if not request.path.startswith(prefix + "/"):
            return _error(404, "NOT_FOUND", "The requested resource does not exist")
        return None

    @app.after_request
    def limit_info(response: Response) -> Response:
        if request.path.startswith("/services/data/"):
            used, limit = state["api_usage"]
            response.headers["Sforce-Limit-Info"] = f"api-usage={used}/{limit}"
        return response

    @app.post("/services/oauth2/token")
    def token() -> Response:
        if request.mimetype != "application/x-www-form-urlencoded":
            return _json({"error": "invalid_request",
                          "error_description": "must use application/x-www-form-urlencoded"}, 400)
        if request.form.get("grant_type") != "client_credentials":
            return _json({"error": "unsupported_grant_type", "error_description": "grant type not supported"}, 400)
        if request.form.get("client_id") != client_id:
            return _json({"error": "invalid_client_id", "error_description": "client identifier invalid"}, 400)
        if not secrets.compare_digest(request.form.get("client_secret", ""), client_secret):
            return _json({"error": "invalid_client", "error_description": "invalid client credentials"}, 400)
        access = "00DDn000000Org1!" + secrets.token_urlsafe(24)
        with lock:
            valid.add(access)
            state["tokens_issued"] += 1
        own = request.host_url.rstrip("/")
        return _json({"access_token": access, "signature": secrets.token_urlsafe(16), "scope": "api",
                      "instance_url": state["instance_url"] or own,
                      "id": f"{own}/id/00DDn000000Org1AAA/005Dn000000Run1AAA", "token_type": "Bearer",
                      "issued_at": "1767268800000"})

    @app.patch(f"{prefix}/sobjects/<sobject>/<record_id>")
    def update(sobject: str, record_id: str) -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        with lock:
            if sobject not in state["fields"] or sobject == "Task":
                return _error(404, "NOT_FOUND", "The requested resource does not exist")
            if record_id in state["deleted"]:
                return _error(404, "ENTITY_IS_DELETED", "entity is deleted")
            if record_id not in state["records"].get(sobject, {}):
                return _error(404, "NOT_FOUND", "The requested resource does not exist")
            refused = unknown_fields(sobject, body)
            if refused is not None:
                return refused
            state["records"][sobject][record_id].update(body)
        return Response(status=204)

    @app.patch(f"{prefix}/composite/sobjects")
    def update_collection() -> Response:
        body = request.get_json(silent=True)
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or not records:
            return _error(400, "JSON_PARSER_ERROR", "records is required")
        if len(records) > MAX_COLLECTION:
            return _error(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records "
                          "into this call")
        all_or_none = bool(body.get("allOrNone", False))
        with lock:
            results: list[dict[str, Any]] = []
            changes: list[tuple[str, str, dict[str, Any]]] = []
            for record in records:
                attributes = record.get("attributes") if isinstance(record, dict) else None
                sobject = attributes.get("type") if isinstance(attributes, dict) else None
                if not sobject or not isinstance(record.get("id"), str):
                    return _error(400, "INVALID_FIELD", "Each record needs an attributes map with a type and an id")
                if sobject not in state["fields"]:
                    return _error(400, "INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
                fields = {k: v for k, v in record.items() if k not in ("attributes", "id")}
                refused = unknown_fields(sobject, fields)
                if refused is not None:
                    return refused
                record_id = record["id"]
                if record_id in state["deleted"]:
                    results.append({"success": False, "errors": [
                        {"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted", "fields": []}]})
                elif record_id not in state["records"].get(sobject, {}):
                    results.append({"success": False, "errors": [
                        {"statusCode": "INVALID_CROSS_REFERENCE_KEY", "message": "invalid cross reference id",
                         "fields": []}]})
                else:
                    results.append({"id": record_id, "success": True, "errors": []})
                    changes.append((sobject, record_id, fields))
            if all_or_none and not all(r["success"] for r in results):
                rolled = {"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                          "message": "Record rolled back because not all records were valid and the request was "
                                     "using AllOrNone header", "fields": []}
                return _json([r if not r["success"] else {"id": r["id"], "success": False, "errors": [rolled]}
                              for r in results])
            for sobject, record_id, fields in changes:
                state["records"][sobject][record_id].update(fields)
        return _json(results)

    @app.post(f"{prefix}/sobjects/Task")
    def create_task() -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        with lock:
            refused = unknown_fields("Task", body)
            if refused is not None:
                return refused
            for key, label, persons in (("WhoId", "Name ID", True), ("WhatId", "Related To ID", False)):
                ref = body.get(key)
                if ref is None:
                    continue
                if ref in state["deleted"]:
                    return _error(400, "ENTITY_IS_DELETED", "entity is deleted", [key])
                kind = sobject_of_id(str(ref))
                if kind is None or (kind in ("Contact", "Lead")) != persons:
                    return _error(400, "FIELD_INTEGRITY_EXCEPTION", f"{label}: id value of incorrect type: {ref}",
                                  [key])
            if len(str(body.get("Subject", ""))) > 255:
                return _error(400, "STRING_TOO_LONG", "Subject: data value too large", ["Subject"])
            if "ActivityDate" in body and not DATE.fullmatch(str(body["ActivityDate"])):
                return _error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of date from VALUE_STRING value "
                              f"{body['ActivityDate']}")
            task_id = f"00TDn{len(state['tasks']) + 1:010d}AAA"
            state["tasks"].append({"Id": task_id, **body})
        return _json({"id": task_id, "success": True, "errors": []}, 201)

    @app.get(f"{prefix}/sobjects/<sobject>/describe")
    def describe(sobject: str) -> Response:
        with lock:
            if sobject not in state["fields"]:
                return _error(404, "NOT_FOUND", "The requested resource does not exist")
            fields = [{"name": name, "updateable": name not in state["read_only"], "type": "string",
                       "label": name.replace("__c", "").replace("_", " ")} for name in sorted(state["fields"][sobject])]
        return _json({"name": sobject, "label": sobject, "updateable": True, "fields": fields})

    return app, state
