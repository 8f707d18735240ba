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
