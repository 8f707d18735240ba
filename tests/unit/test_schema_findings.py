"""Each disagreement found between the published JSON Schemas and the decoder
(tests/unit/test_schema_conformance.py searches for them), pinned."""

from __future__ import annotations

from typing import Any

import pytest

from healthscore.service.ingest.decode import Decoded, Rejection
from healthscore.service.ingest.pipeline import payload_digest
from tests.utils.schema_instances import (
    BASES,
    JUDGES,
    PROFILE,
    TOPICS,
    decide,
    named_fields,
    schema_of,
)

# --------------------------------------------------------------------------- findings


@pytest.mark.parametrize(
    ("base", "change"),
    [
        (1, {"channel": None}),
        (1, {"interaction_type": None}),
        (2, {"follow_up_at": None}),
    ],
)
def test_a_field_an_action_requires_is_required_by_the_schema(
    base: int, change: dict[str, Any]
) -> None:
    """`opened` without its type or channel, `follow_up_scheduled` without its time: the
    service refuses them (`missing_field`), so the schema must, naming the field; it
    listed them as optional and a producer's CI passed such an event."""
    topic, body = BASES[base]
    (name,) = change
    for mutant in ({**body, **change}, {k: v for k, v in body.items() if k != name}):
        outcome = decide(topic, mutant)
        assert isinstance(outcome, Rejection) and outcome.reason == "missing_field"
        assert not JUDGES[topic].agree(mutant)
        assert named_fields(JUDGES[topic].errors(mutant)) == {name}
    # the rule is the action's alone: another action may leave the field out
    other = {**body, **change, "action": "updated"}
    assert isinstance(decide(topic, other), Decoded) and JUDGES[topic].agree(other)


@pytest.mark.parametrize("quantity", [2.0, 1e3, 1000000.0, 1.0e0])
def test_an_integral_number_written_with_a_fraction_is_an_integer(quantity: float) -> None:
    """JSON has one number type and JSON Schema's `integer` is any number whose fraction
    is zero: `"quantity": 2.0` (a serializer holding a float) is valid under the
    schema, and was dead-lettered as wrong_type. It is the integer, the same event
    (and payload digest) as `"quantity": 2`."""
    topic, body = BASES[0]
    as_float = {**body, "quantity": quantity}
    assert JUDGES[topic].agree(as_float)
    outcome = decide(topic, as_float)
    assert isinstance(outcome, Decoded), outcome
    as_integer = decide(topic, {**body, "quantity": int(quantity)})
    assert isinstance(as_integer, Decoded)
    assert outcome.event == as_integer.event
    assert type(outcome.event.quantity) is int  # type: ignore[union-attr]
    assert payload_digest(outcome) == payload_digest(as_integer)


@pytest.mark.parametrize(
    ("quantity", "reason"),
    [
        (1.5, "wrong_type"),
        (0.0, "out_of_range"),
        (1000001.0, "out_of_range"),
        (1e20, "out_of_range"),
    ],
)
def test_a_fraction_or_a_number_out_of_range_is_still_refused(quantity: float, reason: str) -> None:
    topic, body = BASES[0]
    mutant = {**body, "quantity": quantity}
    assert not JUDGES[topic].agree(mutant)
    outcome = decide(topic, mutant)
    assert isinstance(outcome, Rejection) and outcome.reason == reason, outcome
    assert outcome.detail.startswith("quantity: ")


def _formatted_fields(topic: str) -> dict[str, str]:
    """Top-level field -> the `format` of its string (uuid or date-time), from the schema."""
    found = {}
    for name, node in schema_of(topic)["properties"].items():
        for branch in [node, *node.get("anyOf", [])]:
            if "format" in branch:
                found[name] = branch["format"]
    return found


@pytest.mark.parametrize("topic", TOPICS)
def test_the_schema_refuses_a_malformed_id_or_time_without_asserting_formats(topic: str) -> None:
    """In JSON Schema 2020-12 `format` is an annotation unless the validator is told to
    assert it, and most are not (jsonschema's default, ajv without ajv-formats): the
    schemas said ids and times by `format` alone, so such a CI passed `"event_id": "5"`
    and `"occurred_at": "yesterday"`, which the service dead-letters. Each such field
    now carries a `pattern` as well."""
    fields = _formatted_fields(topic)
    assert {"event_id", "organization_id", "occurred_at"} <= set(fields)
    base = next(body for t, body in BASES if t == topic)
    for name in fields:
        for odd in ("5", "yesterday", "2025-03-01", "0b7f4a4e-3d0c-4a53-9c6e"):
            mutant = {**base, name: odd}
            assert not JUDGES[topic].annotating.is_valid(mutant), (name, odd)
            assert named_fields(list(JUDGES[topic].annotating.iter_errors(mutant))) == {name}
            outcome = decide(topic, mutant)
            assert isinstance(outcome, Rejection) and outcome.detail.startswith(f"{name}: ")
    milestones = {**base, "milestones": {"first_referral": "yesterday"}}
    assert topic != PROFILE or not JUDGES[topic].annotating.is_valid(milestones)


# --------------------------------------------------------------------------- review 36c

_OTHER_EVENTS = {
    "type": "login",
    "quantity": 1,
    "feature": "reports",
    "user_id": "5d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    "interaction_id": "7e6d5c4b-3a29-4817-a6f5-e4d3c2b1a090",
    "action": "opened",
    "interaction_type": "check_in",
}
_PROFILE_FACTS: dict[str, dict[str, Any]] = {
    "none": {},
    "created_at_null": {"created_at": None},
    "milestones_empty": {"milestones": {}},
    "both_empty": {"created_at": None, "milestones": {}},
    "created_at": {"created_at": "2023-05-01T00:00:00Z"},
    "a_milestone": {"milestones": {"first_client_added": "2023-06-01T12:00:00-04:00"}},
}


@pytest.mark.parametrize("facts", _PROFILE_FACTS)
@pytest.mark.parametrize("field", _OTHER_EVENTS)
def test_a_profile_with_another_topics_fields_is_refused_by_the_schema_too(
    field: str, facts: str
) -> None:
    """A profile without a creation time or a milestone that has a usage or support
    event's field is such an event sent to the wrong topic: the service refused it and
    the schema took it (review 36c, F3). The schema now says it (if/then), and a field
    present with null no longer counts for either (a CRM writing every field it has)."""
    bare = {k: v for k, v in BASES[4][1].items() if k not in ("created_at", "milestones")}
    says_something = facts in ("created_at", "a_milestone")
    for value in (_OTHER_EVENTS[field], None):
        profile = {**bare, **_PROFILE_FACTS[facts], field: value}
        valid = JUDGES[PROFILE].agree(profile)
        outcome = decide(PROFILE, profile)
        assert valid == (says_something or value is None), profile
        assert isinstance(outcome, Decoded) == valid, (profile, outcome)
        if not valid:
            assert isinstance(outcome, Rejection) and outcome.reason == "invalid_field"
            assert outcome.detail.startswith("(message): ") and f"({field})" in outcome.detail
            assert named_fields(JUDGES[PROFILE].errors(profile)) == {field}


def test_the_profile_schema_names_every_field_of_another_topic() -> None:
    schema = schema_of(PROFILE)
    (rule,) = schema["allOf"]
    assert set(rule["then"]["properties"]) == set(_OTHER_EVENTS)
    for name in _OTHER_EVENTS:
        assert f"`{name}`" in schema["description"], name


def test_unique_items_sits_in_the_array_branch_of_cleared() -> None:
    """Beside the anyOf with null, `uniqueItems` made Ajv's strict mode refuse to compile
    the support schema (review 36c, F4): a keyword of arrays where no type is array."""
    for topic in TOPICS:
        for node in _walk(schema_of(topic)):
            for keyword in ("uniqueItems", "minItems", "maxItems"):
                if keyword in node:
                    assert node.get("type") == "array", (topic, keyword, node)
    topic, body = BASES[3]
    twice = {**body, "cleared": ["assigned_to", "assigned_to"]}
    assert not JUDGES[topic].agree(twice)
    assert named_fields(JUDGES[topic].errors(twice)) == {"cleared"}
    outcome = decide(topic, twice)
    assert isinstance(outcome, Rejection) and outcome.detail.startswith("cleared: ")


def _walk(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


@pytest.mark.parametrize(
    ("leap_second", "applied"),
    [
        ("2016-12-31T23:59:60Z", True),
        ("2017-01-01T05:44:60+05:45", True),
        ("2017-01-01T12:44:60+12:45", True),
        ("2016-12-31T23:44:60-00:15", True),
        ("2016-12-31T23:59:60+05:45", False),
    ],
)
def test_a_leap_second_at_any_offset_is_valid_where_the_service_applies_it(
    leap_second: str, applied: bool
) -> None:
    """23:59:60 UTC written at +05:45 is 05:44:60: the pattern took second 60 only in a
    minute ending in 9, so it refused what the service applies (review 36c, F5); and it
    took `23:59:60+05:45` (18:14 UTC), which the service refuses. The formats are not
    asserted here: jsonschema's date-time check knows no leap second."""
    for topic, body in BASES:
        for name in ("occurred_at", "follow_up_at", "created_at"):
            if body.get(name) is None or (topic, name) == (PROFILE, "occurred_at"):
                continue  # (a profile's times lie before its occurred_at)
            mutant = {**body, name: leap_second}
            assert JUDGES[topic].annotating.is_valid(mutant) == applied, (topic, name)
            outcome = decide(topic, mutant)
            assert isinstance(outcome, Decoded) == applied, (topic, name, outcome)
            if not applied:
                assert isinstance(outcome, Rejection) and outcome.reason == "invalid_field"
                assert outcome.detail.startswith(f"{name}: ")
