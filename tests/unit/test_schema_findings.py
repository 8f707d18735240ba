"""Each disagreement found between the published JSON Schemas and the decoder
(tests/unit/test_schema_conformance.py searches for them), pinned."""

from __future__ import annotations

from typing import Any

import pytest

from healthscore.service.ingest.decode import Decoded, Rejection
from healthscore.service.ingest.pipeline import payload_digest
from tests.utils.schema_instances import BASES, JUDGES, decide, named_fields

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
