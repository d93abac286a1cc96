"""`/api/v1`: what the bridge received and did, for operators (bearer ADMIN_TOKEN).

Stored deliveries never hold authentication headers (see inbound/store.py), and nothing here
returns settings, so no secret can leave through this API.
"""

from __future__ import annotations

from datetime import UTC

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from integration.dispatches import retry as dispatch_retry
from integration.dispatches import state
from integration.inbound import records as events
from integration.inbound.signatures import safe_equal
from integration.inbound.store import event_key, load_event
from integration.scheduler import units
from integration.writeback import destinations

status_api = Blueprint("status_api", __name__, url_prefix="/api/v1")


@status_api.before_request
def require_admin_token() -> ResponseReturnValue | None:
    token = current_app.extensions["revor_bridge.settings"].admin_token
    if token is None:
        return jsonify(error={"code": "api_disabled", "message": "set ADMIN_TOKEN to use /api/v1"}), 403
    header = request.headers.get("Authorization") or ""
    if header[:7].lower() != "bearer " or not safe_equal(token.get(), header[7:].strip()):
        return jsonify(error={"code": "unauthorized", "message": "send Authorization: Bearer <ADMIN_TOKEN>"}), 401
    return None


@status_api.get("/events")
def list_events() -> ResponseReturnValue:
    """Events by where they stand: `failed` (with the error) is what an operator looks for."""
    status = request.args.get("status") or "failed"
    if status not in events.LISTABLE:
        return jsonify(error={"code": "bad_request", "message": f"status must be one of {list(events.LISTABLE)}",
                              "field": "status"}), 400
    try:
        limit = min(max(int(request.args.get("limit", 100)), 1), 1000)
    except ValueError:
        return jsonify(error={"code": "bad_request", "message": "limit is a whole number", "field": "limit"}), 400
    items = [_times(item, _EVENT_TIMES) for item in events.list_events(_redis(), status, limit=limit)]
    return jsonify(items=items, count=len(items))


@status_api.post("/events/<source>/<path:event_id>/retry")
def retry_event(source: str, event_id: str) -> ResponseReturnValue:
    """Process a failed event again from the start (attempts reset). Dispatch ids come from the
    event, so whatever its earlier runs created is found again, never sent twice."""
    key = event_key(source, event_id)
    try:
        events.retry(_redis(), key)
    except LookupError:
        return jsonify(error={"code": "not_found", "message": f"no event {event_id!r} from {source!r}"}), 404
    except events.NotRetryable as exc:
        return jsonify(error={"code": "not_retryable", "message": exc.args[0]}), 409
    return jsonify(_event_view(source, event_id)), 202


@status_api.get("/events/<source>/<path:event_id>")
def event(source: str, event_id: str) -> ResponseReturnValue:
    found = _event_view(source, event_id)
    if found is None:
        return jsonify(error={"code": "not_found", "message": f"no event {event_id!r} from {source!r}"}), 404
    return jsonify(found)


def _event_view(source: str, event_id: str) -> dict | None:
    """The stored event with its processing record: attempts, the last error, and each dispatch
    it made with the state that dispatch is in."""
    found = load_event(_redis(), source, event_id)
    if found is None:
        return None
    record = events.summary(_redis(), event_key(source, event_id)) or {}
    dispatches = []
    for dispatch_id in record.get("dispatches") or []:
        one = state.load(_redis(), dispatch_id) or {}
        dispatches.append({"id": dispatch_id, "rule": one.get("rule"), "status": one.get("status"),
                           "reason": one.get("reason") or None})
    delivery = found["delivery"] and _times(found["delivery"], ("received_at",))
    return _times({**found, "attempts": record.get("attempts", 0), "error": record.get("error"),
                   "processed_at": record.get("processed_at"), "dispatches": dispatches, "delivery": delivery},
                  _EVENT_TIMES)


def _redis():
    return current_app.extensions["revor_bridge.redis"]


# Redis hashes hold text; the API answers with JSON types: counts as integers, every time as ISO 8601 UTC.
_COUNTS = ("attempt_count", "polls", "submit_attempts")
_EPOCH_TIMES = ("updated_at",)  # written as epoch seconds by the state machine's script
# Stored as epoch seconds (and shown so by the CLI and read so by the dashboard): ISO here.
_EVENT_TIMES = ("received_at", "processed_at")
_DELIVERY_TIMES = ("last_attempt_at", "dead_at")


def _iso(epoch: float | str | None) -> str | None:
    """Epoch seconds (a number or its text) as ISO 8601 UTC with milliseconds, None for none."""
    if epoch in (None, ""):
        return None
    return state.iso_now(float(epoch))


def _times(item: dict, names: tuple[str, ...]) -> dict:
    """`item` with its epoch-second times `names` (those it has) as ISO 8601 UTC."""
    return {**item, **{name: _iso(item[name]) for name in names if name in item}}


def _public(record: dict) -> dict:
    """A dispatch as the API shows it: everything but the stored request body, with JSON types."""
    shown = {k: v for k, v in record.items() if k not in ("body",)}
    for name in _COUNTS:
        if name in shown:
            shown[name] = int(shown[name]) if str(shown[name]).strip() else 0
    for name in _EPOCH_TIMES:
        if name in shown:
            shown[name] = _iso(shown[name])
    for name in [k for k in shown if k.endswith("_at")]:
        shown[name] = shown[name] or None  # "" (not yet) is null, like the write-back body says it
    return shown


def _health(name: str) -> dict:
    """A destination's health with its times as ISO 8601 UTC."""
    found = destinations.health(_redis(), name)
    rules = current_app.extensions.get("revor_bridge.rules")
    config = rules.destinations.get(name, {}) if rules else {}
    return {**found, "kind": config.get("kind", "webhook"), "open_until": _iso(found["open_until"]),
            "last_success_at": _iso(found["last_success_at"])}


@status_api.get("/dispatches")
def list_dispatches() -> ResponseReturnValue:
    status = request.args.get("status") or None
    rule = request.args.get("rule") or None
    if status is not None and status not in state.RANK:
        return jsonify(error={"code": "bad_request", "message": f"status must be one of {sorted(state.RANK)}",
                              "field": "status"}), 400
    try:
        since = float(request.args["since"]) if request.args.get("since") else None
        until = float(request.args["until"]) if request.args.get("until") else None
        limit = min(max(int(request.args.get("limit", 100)), 1), 1000)
    except ValueError:
        return jsonify(error={"code": "bad_request", "message": "since and until are epoch seconds, limit a "
                                                                "whole number"}), 400
    ids = state.list_ids(_redis(), status=status, rule=rule, since=since, until=until, limit=limit)
    items = [_public(record) for record in (state.load(_redis(), i) for i in ids) if record is not None]
    return jsonify(items=items, count=len(items))


@status_api.get("/dispatches/<dispatch_id>")
def one_dispatch(dispatch_id: str) -> ResponseReturnValue:
    record = state.load(_redis(), dispatch_id)
    if record is None:
        return jsonify(error={"code": "not_found", "message": f"no dispatch {dispatch_id!r}"}), 404
    return jsonify({**_public(record), "timeline": state.timeline(_redis(), dispatch_id)})


@status_api.post("/dispatches/<dispatch_id>/retry")
def retry_dispatch(dispatch_id: str) -> ResponseReturnValue:
    """An operator's new attempt at a failed, rejected or cancelled dispatch: a new Revor action,
    so a new Idempotency-Key (`<id>-r<attempt>`), as docs/revor.md ("Errors") advises."""
    rules = current_app.extensions.get("revor_bridge.rules")
    try:
        record = dispatch_retry.retry(_redis(), dispatch_id, rules.destination_statuses() if rules else {})
    except LookupError:
        return jsonify(error={"code": "not_found", "message": f"no dispatch {dispatch_id!r}"}), 404
    except dispatch_retry.NotRetryable as exc:
        return jsonify(error={"code": "not_retryable", "message": exc.args[0]}), 409
    return jsonify(_public(record)), 202


@status_api.get("/queues")
def queues() -> ResponseReturnValue:
    from rq import Queue

    connection = _redis()
    depths = {}
    for name in ("high", "default", "low"):
        queue = Queue(name, connection=connection, serializer="json")
        depths[name] = {"queued": queue.count, "started": queue.started_job_registry.count,
                        "scheduled": queue.scheduled_job_registry.count, "failed": queue.failed_job_registry.count}
    return jsonify(queues=depths, units=units.counts(connection))


@status_api.get("/failed-jobs")
def failed_jobs() -> ResponseReturnValue:
    from rq import Queue
    from rq.job import Job

    connection = _redis()
    registry = Queue("default", connection=connection, serializer="json").failed_job_registry
    items = []
    for job_id in registry.get_job_ids(0, 99):
        job = Job.fetch(job_id, connection=connection, serializer="json") if Job.exists(job_id, connection) else None
        if job is not None:
            info = job.latest_result()
            items.append({"id": job_id, "function": job.func_name, "args": job.args,
                          "ended_at": _iso(job.ended_at.replace(tzinfo=job.ended_at.tzinfo or UTC).timestamp())
                          if job.ended_at else None,
                          "error": (info.exc_string or "").strip().splitlines()[-1:] if info else []})
    return jsonify(items=items, count=registry.count)


def _destination_names() -> list[str]:
    rules = current_app.extensions.get("revor_bridge.rules")
    return list(rules.destinations) if rules else []


@status_api.get("/destinations")
def destination_health() -> ResponseReturnValue:
    return jsonify(items=[_health(name) for name in _destination_names()])


@status_api.get("/deliveries/dead")
def dead_letters() -> ResponseReturnValue:
    destination = request.args.get("destination") or None
    try:
        since = float(request.args["since"]) if request.args.get("since") else None
    except ValueError:
        return jsonify(error={"code": "bad_request", "message": "since is epoch seconds", "field": "since"}), 400
    items = [_times(item, _DELIVERY_TIMES)
             for item in destinations.dead_letters(_redis(), destination=destination, since=since,
                                                   destinations=_destination_names())]
    return jsonify(items=items, count=len(items))


@status_api.get("/deliveries/<message_id>")
def one_delivery(message_id: str) -> ResponseReturnValue:
    item = destinations.summary(_redis(), message_id)
    if item.get("missing"):
        return jsonify(error={"code": "not_found", "message": f"no message {message_id!r}"}), 404
    return jsonify(_times(item, _DELIVERY_TIMES))


@status_api.post("/deliveries/<message_id>/replay")
def replay_delivery(message_id: str) -> ResponseReturnValue:
    try:
        return jsonify(_times(destinations.replay(_redis(), message_id), _DELIVERY_TIMES)), 202
    except LookupError as exc:
        return jsonify(error={"code": "not_found", "message": exc.args[0]}), 404
    except PermissionError as exc:
        return jsonify(error={"code": "destination_disabled", "message": exc.args[0]}), 409


@status_api.post("/destinations/<name>/enable")
def enable_destination(name: str) -> ResponseReturnValue:
    destinations.enable(_redis(), name)
    return jsonify(_health(name))
