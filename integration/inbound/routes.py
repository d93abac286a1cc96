"""`/webhooks/*`: one route per source. Verify, parse, store, then answer.

The order never changes: the raw body is read first (capped by MAX_CONTENT_LENGTH), the
sender is authenticated over those exact bytes before anything is parsed, the events are stored
with their dedupe keys and enqueued in one Redis transaction, and only then does the sender get
its 2xx (or Salesforce its Ack). Redis down is 503 so that every sender retries later.

Answers follow what each sender does with them (README, "Receiving CRM events"): a HubSpot app batch that
verified but holds events the bridge does not handle still gets 200, because HubSpot retries
every 4xx for a day.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from integration import metrics
from integration.inbound import generic, hubspot, jsonbody, pipedrive, salesforce
from integration.inbound.errors import InboundError, not_configured
from integration.inbound.normalize import InboundEvent
from integration.inbound.store import StorageFull, StoreResult, delivery_record, store
from integration.settings import Settings
from integration.web.read_deadline import BODY_KEY
from integration.web.request_ids import note_stored

log = logging.getLogger(__name__)
webhooks = Blueprint("webhooks", __name__, url_prefix="/webhooks")

JSON_TYPES = ("application/json",)
XML_TYPES = ("text/xml", "application/xml", "application/soap+xml")
# Retry-After, at most, when a source is at its stored-bytes ceiling (room frees up hourly).
STORAGE_FULL_RETRY_SECONDS = 3600


def _settings() -> Settings:
    return current_app.extensions["revor_bridge.settings"]


def _now() -> float:
    return current_app.extensions["revor_bridge.clock"]()


def _raw_body() -> bytes:
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    buffered = request.environ.get(BODY_KEY)  # read whole by ReadDeadline, as every body under gunicorn
    if buffered is not None:
        if len(buffered) > limit:
            raise _too_large(limit)
        return buffered
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise _too_large(limit) from None
    # A chunked body (no Content-Length) is cut at the limit without an error (werkzeug's
    # LimitedStream, under gunicorn and the threaded server alike): one more byte means it was larger.
    if request.content_length is None and len(raw) >= limit and request.environ["wsgi.input"].read(1):
        raise _too_large(limit)
    return raw


def _too_large(limit: int) -> InboundError:
    return InboundError(413, "body_too_large", f"the body is larger than {limit} bytes")


def _require_type(allowed: tuple[str, ...]) -> None:
    mimetype = request.mimetype or ""
    if mimetype not in allowed and not (allowed == JSON_TYPES and mimetype.endswith("+json")):
        raise InboundError(415, "unsupported_media_type",
                           f"Content-Type must be {' or '.join(allowed)} (got {mimetype or 'none'})")


def _json(raw: bytes) -> Any:
    return jsonbody.parse(raw)


def _store(source: str, raw: bytes, events: list[InboundEvent], skipped: list[dict[str, Any]],
           query: str | None = None) -> StoreResult:
    """`query` replaces the received query string in the stored record (Salesforce: token redacted)."""
    query = request.query_string.decode("latin-1") if query is None else query
    record = delivery_record(source, request.method, request.path, query, request.headers, raw, events, skipped)
    try:
        result = store(current_app.extensions["revor_bridge.redis"], current_app.extensions["revor_bridge.queue"],
                       source, events, record, now=_now(), max_stored_bytes=_settings().inbound_max_stored_bytes)
        note_stored(request.environ, source, result.delivery_id, [e.event["event_id"] for e in events])
        return result
    except StorageFull as full:
        # 429 + Retry-After: every sender retries it later, and Redis does not fill up meanwhile.
        log.warning("inbound %s: refused with 429: %s", source, full)
        wait = min(full.retry_after or STORAGE_FULL_RETRY_SECONDS, STORAGE_FULL_RETRY_SECONDS)
        raise InboundError(429, "storage_full", "this source reached its ceiling of stored bytes "
                           f"(INBOUND_MAX_STORED_BYTES); nothing was stored, retry in {wait} s",
                           headers={"Retry-After": str(wait)}) from None
    except redis.RedisError as exc:
        log.error("inbound %s: storage unavailable (%s); answered 503", source, type(exc).__name__)
        raise InboundError(503, "storage_unavailable", "events could not be stored; retry later") from None


def _accepted(result: StoreResult, skipped: list[dict[str, Any]]) -> Response:
    counts = result.counts
    # What json.dumps of {"ok": true, "delivery_id", new, stale, duplicate, skipped} writes (the id is
    # hex, the rest integers), without a dict and an encoder per answer: this is every sender's answer.
    return Response(f'{{"ok":true,"delivery_id":"{result.delivery_id}","new":{counts["new"]:d},'
                    f'"stale":{counts["stale"]:d},"duplicate":{counts["duplicate"]:d},"skipped":{len(skipped):d}}}\n',
                    mimetype="application/json")


@webhooks.post("/hubspot")
def hubspot_webhook() -> Response:
    settings = _settings()
    if settings.hubspot_client_secret is None:
        raise not_configured("HUBSPOT_CLIENT_SECRET")
    raw = _raw_body()
    url = hubspot.signing_url(settings.hubspot_webhook_url, _received_url(), request.query_string.decode("latin-1"))
    hubspot.verify(settings.hubspot_client_secret.get(), request.method, url, raw, request.headers,
                   int(_now() * 1000), settings.hubspot_signature_versions)
    _require_type(JSON_TYPES)
    events, skipped = hubspot.parse(hubspot.read(raw), request.args.to_dict())
    if skipped:
        log.info("hubspot: %d event(s) of a verified batch skipped: %s", len(skipped),
                 "; ".join(s["reason"] for s in skipped[:5]))
    return _accepted(_store("hubspot", raw, events, skipped), skipped)


@webhooks.post("/salesforce")
def salesforce_webhook() -> Response:
    # Every refusal here is a SOAP fault (inbound_error): the only error Salesforce reads.
    settings = _settings()
    if not settings.salesforce_org_ids:
        raise not_configured("SALESFORCE_ORG_IDS")
    if settings.salesforce_webhook_token is None:
        raise not_configured("SALESFORCE_WEBHOOK_TOKEN")
    salesforce.check_token(request.args.getlist(salesforce.TOKEN_PARAM), settings.salesforce_webhook_token.get())
    raw = _raw_body()
    _require_type(XML_TYPES)
    verify = None
    if settings.salesforce_verify_session:
        # Tests put a stand-in here (code only, never the environment) to reach a loopback server.
        fetch = current_app.extensions.get("revor_bridge.salesforce_userinfo", salesforce.fetch_userinfo)
        verify = functools.partial(salesforce.verify_session, fetch=fetch)
    events, skipped = salesforce.parse(raw, settings.salesforce_org_ids, verify)
    _store("salesforce", raw, events, skipped,
           query=salesforce.redacted_query(request.query_string.decode("latin-1")))
    return Response(salesforce.ACK, status=200, mimetype="text/xml")


@webhooks.post("/pipedrive")
def pipedrive_webhook() -> Response:
    settings = _settings()
    if not (settings.pipedrive_webhook_user and settings.pipedrive_webhook_password):
        raise not_configured("PIPEDRIVE_WEBHOOK_USER")
    pipedrive.check_auth(request.headers.get("Authorization"), settings.pipedrive_webhook_user,
                         settings.pipedrive_webhook_password.get())
    raw = _raw_body()
    _require_type(JSON_TYPES)
    event = pipedrive.parse(_json(raw))
    return _accepted(_store("pipedrive", raw, [event], []), [])


@webhooks.post("/generic/<name>")
def generic_webhook(name: str) -> Response:
    hook = name.lower()
    secret = _settings().generic_webhook_secrets.get(generic.setting_name(hook))
    if not generic.HOOK_NAME.match(hook) or secret is None:
        raise InboundError(404, "unknown_hook", "no such hook: set GENERIC_WEBHOOK_SECRET_<NAME> to create it")
    raw = _raw_body()
    signed_id = generic.authenticate(secret.get(), raw, request.headers, _now())
    _require_type(JSON_TYPES)
    id_field = _settings().generic_event_id_fields.get(generic.setting_name(hook))
    event = generic.parse(hook, _json(raw), raw, signed_id, id_field)
    return _accepted(_store(f"generic:{hook}", raw, [event], []), [])


def _received_url() -> str:
    """The URL as this server received it, query string undecoded (for HubSpot v2/v3)."""
    query = request.query_string.decode("latin-1")
    return request.host_url.rstrip("/") + request.script_root + request.path + (f"?{query}" if query else "")


# The source label of a refused request, by route (a generic hook's name only when it is configured).
SOURCES = {"webhooks.hubspot_webhook": "hubspot", "webhooks.salesforce_webhook": "salesforce",
           "webhooks.pipedrive_webhook": "pipedrive"}


def _count_rejected(error: InboundError) -> None:
    """`rejected` in /metrics: one per refused request. Not when Redis itself failed (it would
    wait on Redis again), and never at the cost of the answer."""
    if error.code == "storage_unavailable":
        return
    source = SOURCES.get(request.endpoint or "")
    if source is None:
        hook = str((request.view_args or {}).get("name", "")).lower()
        configured = generic.HOOK_NAME.match(hook) and generic.setting_name(hook) in _settings().generic_webhook_secrets
        source = f"generic:{hook}" if configured else "generic"
    try:
        current_app.extensions["revor_bridge.redis"].hincrby(metrics.KEY, metrics.event_field(source, "rejected"), 1)
    except redis.RedisError as exc:
        log.warning("inbound %s: could not count the refusal (%s)", source, type(exc).__name__)


@webhooks.errorhandler(InboundError)
def inbound_error(error: InboundError) -> tuple[Response, int]:
    _count_rejected(error)
    if error.status >= 500:
        log.warning("inbound %s: %s", request.path, error.message)
    else:
        log.info("inbound %s refused (%d %s): %s", request.path, error.status, error.code, error.message)
    if request.endpoint == "webhooks.salesforce_webhook":
        fault = salesforce.soap_fault(error.message, error.status)
        return Response(fault, mimetype="text/xml", headers=error.headers), error.status
    response = jsonify(error.as_json())
    response.headers.update(error.headers)
    return response, error.status
