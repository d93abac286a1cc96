"""From a matched rule and an event to the exact Revor payload, or the reason there is none.

A plan is `ready` (a valid payload), `invalid` (a template failed or the rendered payload breaks
Revor's rules: it never reaches Revor), or `skipped` (`suppress_if`, suppression list, once_per).
The dispatch id is derived from rule, source, event id and recipient, and is the
`Idempotency-Key` later sent to Revor. A matched rule always has a dispatch id, even when its
templates fail: then the recipient may not exist, so the id uses a fixed marker in its place,
and processing the same event again finds the same `invalid` dispatch instead of a new one.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from integration.revor.client import dispatch_body
from integration.revor.errors import RevorInvalidPayload
from integration.rules.guards import normalize_phone, recipient_key
from integration.rules.loader import CompiledRule, RuleSet
from integration.rules.matching import evaluate
from integration.rules.templates import RenderError, clean_context, truthy
from schemas.revor import CHANNEL_RECIPIENT, clamp_interval


@dataclass
class Plan:
    rule: str
    matched: bool
    reason: str
    status: str | None = None  # ready | invalid | skipped, when matched
    dispatch_id: str | None = None
    payload: dict[str, Any] | None = None
    body: bytes | None = None
    once_per_key: str | None = None
    recipient_key: str | None = None
    channel: str | None = None
    account_id: str | None = None
    writeback: list[str] = field(default_factory=list)
    recipient: dict[str, str] | None = None  # as rendered, also when a later template failed

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.rule, "matched": self.matched, "reason": self.reason, "status": self.status,
                "dispatch_id": self.dispatch_id, "once_per": self.once_per_key, "dispatch": self.payload}


NO_RECIPIENT = "recipient=None"  # never a recipient key: those read `email:...`, `phone:...`, `linkedin:...`


def dispatch_id_for(rule: str, source: str, event_id: str, recipient: str | None) -> str:
    """The same rule, event and recipient always give the same id; `None` when none rendered."""
    parts = (rule, source, event_id, NO_RECIPIENT if recipient is None else recipient)
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return f"dsp_{digest[:40]}"


def _errors_text(errors: Any, prefix: str = "") -> str:
    if isinstance(errors, dict):
        return "; ".join(_errors_text(v, f"{prefix}{k}.") for k, v in errors.items())
    if isinstance(errors, list):
        return f"{prefix.rstrip('.')}: {' '.join(str(e) for e in errors)}"
    return f"{prefix.rstrip('.')}: {errors}"


def plan_rule(ruleset: RuleSet, rule: CompiledRule, view: dict[str, Any], rng: random.Random) -> Plan:
    spec = rule.dispatch
    base = Plan(rule.name, True, "every condition holds", channel=spec.channel, account_id=spec.account_id,
                writeback=list(rule.writeback))
    verdict = evaluate(rule.when, rule.if_template, view)
    if not verdict.matched:
        return Plan(rule.name, False, verdict.reason)
    max_chars = ruleset.defaults["template_max_chars"]

    def render(where: str, template: Any) -> str:
        try:
            return template.render(view, max_chars=max_chars)
        except RenderError as exc:
            raise RenderError(f"{where}: {exc}") from None

    def invalid(reason: str) -> Plan:
        base.status, base.reason = "invalid", reason
        return base

    source, event_id = view.get("source", ""), str(view.get("event_id", ""))
    base.dispatch_id = dispatch_id_for(rule.name, source, event_id, None)
    try:
        recipient = {k: render(f"dispatch.recipient.{k}", t).strip() for k, t in spec.recipient.items()}
    except RenderError as exc:
        return invalid(str(exc))
    address_field = CHANNEL_RECIPIENT[spec.channel]
    if spec.channel == "whatsapp" and address_field in recipient:
        recipient[address_field] = normalize_phone(recipient[address_field])
    who = recipient.get(address_field, "")
    base.recipient = recipient
    base.recipient_key = recipient_key(spec.channel, who) if who else None
    base.dispatch_id = dispatch_id_for(rule.name, source, event_id, base.recipient_key)
    try:
        content = {k: render(f"dispatch.content.{k}", t) for k, t in spec.content.items()}
        metadata = {k: render(f"dispatch.metadata.{k}", t)[:200] for k, t in spec.metadata.items()}
        suppressed_by_rule = rule.suppress_if is not None and truthy(render("suppress_if", rule.suppress_if),
                                                                     "suppress_if")
        once_key = render("once_per", rule.once_per).strip() if rule.once_per is not None else None
    except RenderError as exc:
        return invalid(str(exc))
    base.once_per_key = once_key
    low, high = spec.interval
    payload: dict[str, Any] = {
        "account_id": spec.account_id, "channel": spec.channel, "action": "outreach",
        "recipient": {k: v for k, v in recipient.items() if v != "" or k == address_field},
        "content": dict(content),
        "metadata": {"dispatch_id": base.dispatch_id, "rule": rule.name, "crm_source": view.get("source", ""),
                     "crm_event_id": str(view.get("event_id", ""))[:120],
                     "crm_object_type": str(view["object"].get("type", "")),
                     "crm_object_id": str(view["object"].get("id", "")), **metadata},
        "min_channel_task_interval_seconds": clamp_interval(rng.randint(low, high)),
    }
    if spec.attachments:
        payload["content"]["attachments"] = [dict(a) for a in spec.attachments]
    base.payload = payload
    if suppressed_by_rule:
        base.status, base.reason = "skipped", "suppress_if is true"
        return base
    limit = ruleset.defaults["linkedin_text_limit"]
    if spec.channel == "linkedin" and len(content.get("text", "")) > limit:
        base.status = "invalid"
        base.reason = f"LinkedIn text is {len(content['text'])} characters; invitation notes allow {limit}"
        return base
    try:
        base.body = dispatch_body(payload)
    except RevorInvalidPayload as exc:
        base.status, base.reason = "invalid", _errors_text(exc.errors)
        return base
    base.status = "ready"
    return base


def plan_event(ruleset: RuleSet, event: dict[str, Any], context: dict[str, Any] | None = None,
               rng: random.Random | None = None) -> list[Plan]:
    """Every enabled rule's verdict for this event, in file order."""
    view = clean_context(event, context)
    rng = rng or random.SystemRandom()
    return [plan_rule(ruleset, rule, view, rng) for rule in ruleset.rules if rule.enabled]
