"""The enum CHECK constraints list exactly the values of the StrEnum classes."""

from __future__ import annotations

import re
from enum import StrEnum

import asyncpg
import pytest

from healthscore.contracts import enums as e
from healthscore.store.schema_catalog import TABLES

ENUM_CHECKS: dict[str, type[StrEnum]] = {
    "user_profiles_role_check": e.UserRole,
    "customer_health_health_status_check": e.HealthStatus,
    "customer_health_risk_level_check": e.RiskLevel,
    "success_milestones_milestone_type_check": e.MilestoneType,
    "success_milestones_reward_type_check": e.RewardType,
    "success_milestones_reward_status_check": e.RewardStatus,
    "support_interactions_interaction_type_check": e.InteractionType,
    "support_interactions_channel_check": e.Channel,
    "support_interactions_status_check": e.InteractionStatus,
    "support_interactions_priority_check": e.Priority,
    "support_interactions_sentiment_check": e.Sentiment,
    "support_interactions_outcome_check": e.Outcome,
    "health_score_history_risk_level_check": e.RiskLevel,
    "health_score_history_cause_check": e.HistoryCause,
    "alert_outbox_kind_check": e.AlertKind,
    "shadow_health_risk_level_check": e.RiskLevel,
    "shadow_alerts_kind_check": e.AlertKind,
    "shadow_alerts_trigger_check": e.AlertTrigger,
    "alert_outcomes_kind_check": e.AlertKind,
    "alert_outcomes_outcome_check": e.AlertOutcome,
}

# CHECK (col IN ('a', 'b')) is stored as ((col = ANY (ARRAY['a'::text, 'b'::text])))
_ANY_ARRAY = re.compile(r"^CHECK \(\(\(?(?P<column>\w+) = ANY \(ARRAY\[(?P<items>.*)\]\)\)\)$")
_ITEM = re.compile(r"^'((?:[^']|'')*)'::text$")


def parse_any_array(definition: str) -> tuple[str, list[str]]:
    """The column and the listed values of an `IN (...)` CHECK definition."""
    match = _ANY_ARRAY.match(definition)
    assert match is not None, definition
    values = []
    for item in match["items"].split(", "):
        item_match = _ITEM.match(item)
        assert item_match is not None, (definition, item)
        values.append(item_match.group(1).replace("''", "'"))
    return match["column"], values


def test_parser_reads_postgres_rendering() -> None:
    assert parse_any_array("CHECK ((channel = ANY (ARRAY['email'::text, 'in_app'::text])))") == (
        "channel",
        ["email", "in_app"],
    )


@pytest.fixture
async def enum_constraints(migrated_database: str) -> dict[str, str]:
    conn = await asyncpg.connect(migrated_database)
    try:
        rows = await conn.fetch(
            """SELECT conname, pg_get_constraintdef(oid) AS definition FROM pg_constraint
               WHERE contype = 'c' AND conrelid::regclass::text = ANY($1::text[])
                 AND pg_get_constraintdef(oid) LIKE '%= ANY (ARRAY[%'""",
            list(TABLES),
        )
    finally:
        await conn.close()
    return {row["conname"]: row["definition"] for row in rows}


async def test_every_enum_check_is_known(enum_constraints: dict[str, str]) -> None:
    assert set(enum_constraints) == set(ENUM_CHECKS)


@pytest.mark.parametrize("constraint", sorted(ENUM_CHECKS))
async def test_enum_check_lists_exactly_the_enum_values(
    enum_constraints: dict[str, str], constraint: str
) -> None:
    column, values = parse_any_array(enum_constraints[constraint])
    enum = ENUM_CHECKS[constraint]
    assert constraint.endswith(f"_{column}_check")
    assert values == [member.value for member in enum]


def test_seed_counts() -> None:
    """The seed's design report: 17 milestone types, 15 interaction types."""
    assert len(e.MilestoneType) == 17
    assert len(e.InteractionType) == 15
    assert set(e.Channel) == {"email", "phone", "chat", "video", "in_app"}
