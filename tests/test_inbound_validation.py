"""The normalized event's plain check (normalize._plain_load) agrees with marshmallow's load.

Every parsed event is validated against NormalizedEventSchema; marshmallow's machinery cost a
sixth of the web's time per webhook, so a plainly valid event is checked in plain Python. It must
return exactly what marshmallow returns (same values, same key order: the stored JSON depends on
it), and defer to marshmallow (None) whenever it is not sure, so every error keeps its wording.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from integration.inbound import generic, hubspot, normalize, pipedrive
from integration.inbound.errors import InboundError
from schemas.events import NormalizedEventSchema
from tests.servers import fixture_bytes

SCHEMA = normalize.shared_schema(NormalizedEventSchema)
SPECS = normalize._plain_specs(SCHEMA)

VALID = {"source": "generic:zapier", "event_id": "e-1", "type": "deal.updated",
         "object": {"type": "deal", "id": "7"}, "occurred_at": None, "properties": {"stage": "won"},
         "previous": None, "account": None, "deal": {"id": "7", "stage": "won"}}


def marshmallow_load(event):
    try:
        return SCHEMA.load(event)
    except ValidationError:
        return None


def test_the_normalized_schema_is_one_the_plain_check_handles():
    assert SPECS is not None


@pytest.mark.parametrize("make", [
    lambda: generic.parse("zapier", json.loads(fixture_bytes("zapier-generic.json")), b"{}", None, None),
    lambda: pipedrive.parse(json.loads(fixture_bytes("pipedrive-deal-updated-v2.json"))),
    *[lambda i=i: hubspot.parse_app_batch(json.loads(fixture_bytes("hubspot-deal-propertychange-batch.json")))[0][i]
      for i in range(3)],
])
def test_parsed_events_take_the_plain_path_with_marshmallows_result(make):
    event = make().event
    loaded = normalize._plain_load(SPECS, event)
    assert loaded is not None and json.dumps(loaded) == json.dumps(SCHEMA.load(event))  # values and order


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                    st.binary(max_size=3))
values = st.one_of(scalars, st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), scalars, max_size=3))
mutations = st.dictionaries(
    st.sampled_from([*VALID, "object", "hydrate", "owner", "company", "contact", "unknown_field"]),
    st.one_of(values, st.just("__drop__"),
              st.fixed_dictionaries({"type": st.one_of(st.text(max_size=70), scalars),
                                     "id": st.one_of(st.text(max_size=3), scalars)}),
              st.sampled_from(["hubspot", "generic:a", "generic:A", "hubspot\n", "deal.created", "a.deleted\n",
                               "", "x" * 301, True, False, 1, 0, "true"])),
    max_size=4)
# Changes that keep each field's type, so that many examples are valid (and take the plain path).
typed = st.fixed_dictionaries({}, optional={
    "event_id": st.text(max_size=302), "account": st.one_of(st.none(), st.text(max_size=5)),
    "type": st.sampled_from(["deal.created", "contact.stage_changed", "Deal.updated", "deal.moved", "a_1.deleted"]),
    "object": st.fixed_dictionaries({"type": st.text(max_size=66), "id": st.text(max_size=3)}),
    "occurred_at": st.one_of(st.none(), st.text(max_size=5), st.just("__drop__")),
    "properties": st.dictionaries(st.text(max_size=3), scalars, max_size=3),
    "deal": st.one_of(st.none(), st.just("__drop__"), st.dictionaries(st.text(max_size=3), values, max_size=3)),
    "hydrate": st.one_of(st.booleans(), st.just("__drop__")), "previous": st.just("__drop__")})


@settings(max_examples=400, deadline=None)
@given(changes=st.one_of(mutations, typed))
@example(changes={"source": "hubspot\n"})  # marshmallow's Regexp matches with `$` (before a final newline)
@example(changes={"hydrate": 1})  # marshmallow's Boolean takes 1 as True: plain defers
@example(changes={"event_id": b"e-1"})  # marshmallow's String takes bytes: plain defers
@example(changes={"properties": {1: "a"}})
@example(changes={"object": {"type": "deal", "id": "7", "extra": 1}})
@example(changes={"occurred_at": "__drop__"})
def test_the_plain_check_agrees_with_marshmallow_or_defers(changes):
    event = {k: v for k, v in VALID.items()}
    for name, value in changes.items():
        if value == "__drop__":
            event.pop(name, None)
        else:
            event[name] = value
    expected, plain = marshmallow_load(event), normalize._plain_load(SPECS, event)
    if plain is not None:
        assert expected is not None and plain == expected and list(plain) == list(expected)
        assert json.dumps(plain, default=repr) == json.dumps(expected, default=repr)
    if expected is None:
        with pytest.raises(InboundError) as refused:
            normalize.validated(event)
        assert refused.value.status == 400
    else:
        assert normalize.validated(event) == expected


def test_anchored_patterns_refuse_a_trailing_line_feed():
    """Found by the importer's attack review: `$` also matches before a final "\\n", so
    `csv:a\\n` passed as a source and `contact.imported\\n` as a type; every anchored pattern now
    ends with `\\Z`."""
    import re

    from marshmallow import ValidationError

    from integration.inbound import generic, salesforce
    from integration.rules import guards
    from schemas import events, revor

    compiled = [(generic.HOOK_NAME, "zapier"), (salesforce.SESSION_HOST, "na1.salesforce.com"),
                (salesforce.SESSION_ID, "00D!abc"), (revor.E164, "+14155550100"), (guards.E164, "+14155550100"),
                (revor.EMAIL, "a@example.com"), (revor.LINKEDIN_PROFILE, "https://www.linkedin.com/in/x"),
                (re.compile(events.SOURCE_PATTERN), "csv:leads")]
    for pattern, good in compiled:
        assert pattern.match(good), (pattern.pattern, good)
        assert not pattern.match(good + "\n"), pattern.pattern
    events.EVENT_TYPE("contact.imported")
    with pytest.raises(ValidationError):
        events.EVENT_TYPE("contact.imported\n")
