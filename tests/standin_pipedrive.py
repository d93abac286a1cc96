"""A local stand-in for the Pipedrive API, enforcing what Pipedrive documents (tests only).

Served by tests/servers.py::ThreadServer on 127.0.0.1. What it enforces:
- auth: the `x-api-token` header on every request (v1 also takes the `api_token` query parameter,
  as Pipedrive documents; v2 does not); anything else -> 401 with Pipedrive's body
  `{"success": false, "error": "unauthorized access", "errorCode": 401, "error_info": ...}`.
- paths and methods: `GET /v1/users/me`, `GET /api/v2/{deal,person,organization}Fields` (cursor
  pages, `limit` at most 500), `PATCH /api/v2/{deals,persons,organizations}/{id}`, `POST /v1/notes`;
  anything else -> 404 / 405 with a Pipedrive error body.
- body shapes: a v2 update takes known top-level fields and `custom_fields` (an object); a v1-style
  body with custom keys at the top level is refused (400). A text field takes a string or null, a
  numeric field a number or null (v2 does not coerce strings). A custom key that is not a field is
  silently ignored, as Pipedrive does, and recorded in `state["ignored"]`.
- records: an id in `state["deleted"]` or missing -> 404 `{"success": false, "error": "Deal not found"}`;
  a record with `"is_deleted": True` answers 200 and stays unchanged (a soft-deleted deal).
- rate limits: `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` on every answer
  (and `x-daily-requests-left` on POST/PUT/PATCH); past `state["window_limit"]` requests in one
  window of `state["window_seconds"]` -> 429 with `Retry-After` = the window's reset.

Knobs in `state` (the lead's pipeline tests use these names):
- `deals`, `persons`, `organizations`: {id(int): {"id", "title"/"name", "custom_fields": {key: value}, ...}}
- `fields`: {"deal" | "person" | "organization": [{"key", "name", "field_type", "is_custom_field"}]}
  seeded with a few standard fields and no custom ones; `state["add_field"](object, name,
  field_type="varchar") -> key` adds a custom field with a 40-character key (deterministic).
- `notes`: list of the created notes ({"id", "content", "deal_id" | "person_id" | "org_id"}).
- `deleted`: set of record ids that answer 404 (a deal/person deleted for good).
- `fail_next`: list of (status, headers) answers given before the real ones (429s, 5xx).
- `window_limit` (None: no limit) / `window_seconds` (default 2.0, Pipedrive's window).
- `calls`: every request: {"method", "path", "args", "json", "headers"} (headers without the token).
- `ignored`: custom keys Pipedrive would have dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from typing import Any

from flask import Flask, Response, request

ERROR_INFO = "Please check developers.pipedrive.com for more information about Pipedrive API."
# Top-level keys `PATCH /api/v2/deals/{id}` documents (custom fields go in `custom_fields`).
DEAL_KEYS = {"title", "owner_id", "person_id", "org_id", "pipeline_id", "stage_id", "value", "currency",
             "add_time", "update_time", "stage_change_time", "is_deleted", "status", "probability",
             "lost_reason", "visible_to", "close_time", "won_time", "lost_time", "expected_close_date",
             "label_ids", "custom_fields"}
PERSON_KEYS = {"name", "owner_id", "org_id", "add_time", "update_time", "emails", "phones", "visible_to",
               "label_ids", "marketing_status", "custom_fields"}
ORG_KEYS = {"name", "owner_id", "add_time", "update_time", "visible_to", "label_ids", "address", "custom_fields"}
ENTITIES = {"deals": ("deal", DEAL_KEYS, "Deal"), "persons": ("person", PERSON_KEYS, "Person"),
            "organizations": ("organization", ORG_KEYS, "Organization")}
FIELD_LISTS = {"dealFields": "deal", "personFields": "person", "organizationFields": "organization"}
NUMERIC = {"double", "int", "monetary"}


def _key(obj: str, name: str) -> str:
    return hashlib.sha1(f"{obj}:{name}".encode()).hexdigest()  # 40 hex characters, like Pipedrive's


def pipedrive_standin(api_token: str) -> tuple[Flask, dict[str, Any]]:
    lock = threading.Lock()
    state: dict[str, Any] = {
        "deals": {1001: {"id": 1001, "title": "Northwind renewal", "status": "open", "is_deleted": False,
                         "person_id": 2001, "custom_fields": {}}},
        "persons": {2001: {"id": 2001, "name": "Ada Lovelace", "custom_fields": {}}},
        "organizations": {3001: {"id": 3001, "name": "Northwind Traders", "custom_fields": {}}},
        "fields": {
            "deal": [{"key": "title", "name": "Title", "field_type": "varchar", "is_custom_field": False},
                     {"key": "status", "name": "Status", "field_type": "status", "is_custom_field": False},
                     {"key": "value", "name": "Value", "field_type": "monetary", "is_custom_field": False}],
            "person": [{"key": "name", "name": "Name", "field_type": "varchar", "is_custom_field": False},
                       {"key": "emails", "name": "Email", "field_type": "varchar", "is_custom_field": False}],
            "organization": [{"key": "name", "name": "Name", "field_type": "varchar", "is_custom_field": False}],
        },
        "notes": [], "deleted": set(), "fail_next": [], "calls": [], "ignored": [],
        "window_limit": None, "window_seconds": 2.0, "window": [0.0, 0], "daily_left": 10000,
    }

    def add_field(obj: str, name: str, field_type: str = "varchar") -> str:
        key = _key(obj, name)
        state["fields"][obj].append({"key": key, "name": name, "field_type": field_type, "is_custom_field": True})
        return key

    state["add_field"] = add_field
    app = Flask("pipedrive_standin")

    def window_headers(count_it: bool) -> tuple[dict[str, str], bool]:
        """The rate-limit headers of this answer, and whether the window is used up."""
        now = time.time()
        with lock:
            start, used = state["window"]
            if now >= start + state["window_seconds"]:
                start, used = now, 0
            used += 1 if count_it else 0
            state["window"] = [start, used]
            limit = state["window_limit"]
            reset = max(1, math.ceil(start + state["window_seconds"] - now))
        shown = limit if limit is not None else 40
        over = limit is not None and used > limit
        headers = {"x-ratelimit-limit": str(shown), "x-ratelimit-remaining": str(max(0, shown - used)),
                   "x-ratelimit-reset": str(reset)}
        if request.method in ("POST", "PUT", "PATCH"):
            with lock:
                state["daily_left"] = max(0, state["daily_left"] - 1)
                headers["x-daily-requests-left"] = str(state["daily_left"])
        return headers, over

    def error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
        body = {"success": False, "error": message, "error_info": ERROR_INFO, "errorCode": status,
                "data": None, "additional_data": None, **extra}
        return Response(json.dumps(body), status, headers=headers or {}, mimetype="application/json")

    def ok(data: Any, status: int = 200, additional: Any = None) -> Response:
        body: dict[str, Any] = {"success": True, "data": data}
        if additional is not None:
            body["additional_data"] = additional
        return Response(json.dumps(body), status, mimetype="application/json")

    @app.before_request
    def gate() -> Response | None:
        body = request.get_json(silent=True)
        state["calls"].append({
            "method": request.method, "path": request.path, "args": request.args.to_dict(), "json": body,
            "headers": {k: v for k, v in request.headers.items() if k.lower() != "x-api-token"}})
        headers, over = window_headers(count_it=True)
        request.environ["standin.headers"] = headers
        token = request.headers.get("x-api-token")
        if token is None and request.path.startswith("/v1/"):
            token = request.args.get("api_token")
        if token != api_token:
            return error(401, "unauthorized access", headers)
        if state["fail_next"]:
            status, extra = state["fail_next"].pop(0)
            message = "Rate limit exceeded" if status == 429 else "Internal server error"
            return error(status, message, {**headers, **extra})
        if over:
            return error(429, "Rate limit exceeded", {**headers, "Retry-After": headers["x-ratelimit-reset"]})
        return None

    @app.after_request
    def rate_headers(response: Response) -> Response:
        for name, value in request.environ.get("standin.headers", {}).items():
            response.headers.setdefault(name, value)
        return response

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> Response:
        return error(404, "Not found")

    @app.errorhandler(405)
    def not_allowed(_exc: Exception) -> Response:
        return error(405, "Method not allowed")

    @app.get("/v1/users/me")
    def me() -> Response:
        return ok({"id": 777, "name": "Revor Bridge", "email": "bridge@example.com", "company_id": 42,
                   "company_domain": "northwind", "is_admin": 1, "active_flag": True})

    @app.get("/api/v2/<fields_path>")
    def fields_list(fields_path: str) -> Response:
        obj = FIELD_LISTS.get(fields_path)
        if obj is None:
            return error(404, "Not found")
        try:
            limit = int(request.args.get("limit", "100"))
            offset = int(request.args.get("cursor", "0"))
        except ValueError:
            return error(400, "Validation failed: limit and cursor must be integers")
        if not 1 <= limit <= 500:
            return error(400, "Validation failed: limit: must be <= 500")
        items = state["fields"][obj]
        page = [{"field_code": f["key"], "field_name": f["name"], "field_type": f.get("field_type", "varchar"),
                 "is_custom_field": bool(f.get("is_custom_field", True))} for f in items[offset:offset + limit]]
        following = offset + limit
        return ok(page, additional={"next_cursor": str(following) if following < len(items) else None})

    @app.patch("/api/v2/<entity>/<int:record_id>")
    def update(entity: str, record_id: int) -> Response:
        if entity not in ENTITIES:
            return error(404, "Not found")
        obj, allowed, noun = ENTITIES[entity]
        if not request.is_json:
            return error(415, "Unsupported media type: send application/json")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return error(400, "Validation failed: body must be a JSON object")
        unknown = sorted(set(body) - allowed)
        if unknown:
            return error(400, f"Validation failed: unknown parameter(s): {', '.join(unknown)}",
                         code="ERR_SCHEMA_VALIDATION_FAILED")
        custom = body.get("custom_fields", {})
        if not isinstance(custom, dict):
            return error(400, "Validation failed: custom_fields: must be an object")
        records = state[entity]
        record = records.get(record_id)
        if record is None or record_id in state["deleted"]:
            return error(404, f"{noun} not found")
        if record.get("is_deleted"):
            return ok(record)
        types = {f["key"]: f.get("field_type", "varchar") for f in state["fields"][obj] if f.get("is_custom_field")}
        for key, value in custom.items():
            if key not in types:
                continue
            numeric = types[key] in NUMERIC
            if value is not None and numeric and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return error(400, f"Validation failed: custom_fields.{key}: must be a number")
            if value is not None and not numeric and not isinstance(value, str):
                return error(400, f"Validation failed: custom_fields.{key}: must be a string")
        with lock:
            for key, value in custom.items():
                if key in types:
                    record["custom_fields"][key] = value
                else:
                    state["ignored"].append(key)
            for key, value in body.items():
                if key != "custom_fields":
                    record[key] = value
        return ok(record)

    @app.post("/v1/notes")
    def add_note() -> Response:
        body = request.get_json(silent=True) if request.is_json else request.form.to_dict()
        if not isinstance(body, dict):
            return error(400, "Validation failed: body must be a JSON object")
        content = body.get("content")
        if not isinstance(content, str) or not content.strip():
            return error(400, "Validation failed: content: is required")
        links = {"deal_id": "deals", "person_id": "persons", "org_id": "organizations"}
        given = [k for k in links if body.get(k) is not None] + (["lead_id"] if body.get("lead_id") else [])
        if not given:
            return error(400, "Validation failed: one of deal_id, person_id, org_id or lead_id is required")
        for link in given:
            if link == "lead_id":
                continue
            try:
                target = int(body[link])
            except (TypeError, ValueError):
                return error(400, f"Validation failed: {link}: must be an integer")
            if target not in state[links[link]] or target in state["deleted"]:
                return error(404, f"{ENTITIES[links[link]][2]} not found")
        with lock:
            note = {"id": len(state["notes"]) + 1, "content": content,
                    **{k: int(body[k]) for k in given if k != "lead_id"}}
            state["notes"].append(note)
        return ok(note, status=201)

    return app, state
