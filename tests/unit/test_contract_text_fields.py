"""The contract's length-limited text fields are refused in the producers' terms."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from healthscore.contracts import SupportEvent, UsageEvent

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _usage(**changes: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "organization_id": str(uuid.uuid4()),
        "type": "feature_used",
        "occurred_at": "2026-03-01T00:00:00Z",
        **changes,
    }


def _support(**changes: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "organization_id": str(uuid.uuid4()),
        "interaction_id": str(uuid.uuid4()),
        "action": "updated",
        "occurred_at": "2026-03-01T00:00:00Z",
        **changes,
    }


@pytest.mark.parametrize(
    ("model", "body", "field", "limit"),
    [
        (UsageEvent, _usage(feature="é" * 101), "feature", 100),
        (SupportEvent, _support(subject="é" * 501), "subject", 500),
    ],
)
def test_a_text_field_over_its_limit_is_refused_in_characters(
    model: type[BaseModel], body: dict[str, Any], field: str, limit: int
) -> None:
    # the detail goes to the dead letter's x-error-detail, which the producing team
    # reads: "at most 500 items after validation" did not say what was counted
    with pytest.raises(ValidationError) as refused:
        model.model_validate(body, context={"received_at": NOW})
    (error,) = refused.value.errors()
    assert error["loc"] == (field,)
    assert error["type"] == "string_too_long"
    assert error["msg"] == f"String should have at most {limit} characters"


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (UsageEvent, _usage(feature="é" * 100)),
        (SupportEvent, _support(subject="é" * 500)),
    ],
)
def test_a_text_field_at_its_limit_is_accepted(
    model: type[BaseModel], body: dict[str, Any]
) -> None:
    model.model_validate(body, context={"received_at": NOW})


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (UsageEvent, _usage(feature="é\x00")),
        (SupportEvent, _support(subject="é\x00")),
    ],
)
def test_a_text_field_with_nul_is_still_refused(
    model: type[BaseModel], body: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate(body, context={"received_at": NOW})
    assert refused.value.errors()[0]["type"] == "nul_character"
