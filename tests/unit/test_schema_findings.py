"""Each disagreement found between the published JSON Schemas and the decoder
(tests/unit/test_schema_conformance.py searches for them), pinned."""

from __future__ import annotations

from typing import Any

import pytest

from healthscore.service.ingest.decode import Decoded, Rejection
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
