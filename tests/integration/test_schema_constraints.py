"""Every CHECK, key, cascade, trigger and generated column of the schema, on a real server."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from healthscore.store.schema_catalog import TABLES
from tests.conftest import DatabaseFactory
from tests.utils import schema_builders as b

BAD_CHECK_VALUES: dict[str, tuple[str, list[dict[str, Any]]]] = {
    # constraint -> (table, overrides that each break exactly that constraint)
    "user_profiles_role_check": ("user_profiles", [{"role": "owner"}, {"role": "Admin"}]),
    "customer_health_health_score_check": (
        "customer_health",
        [{"health_score": Decimal("100.01")}, {"health_score": Decimal("-0.01")}],
    ),
    **{
        f"customer_health_{column}_check": (
            "customer_health",
            [{column: Decimal("100.01")}, {column: Decimal("-0.01")}],
        )
        for column in (
            "engagement_score",
            "adoption_score",
            "milestone_score",
            "support_score",
            "growth_score",
        )
    },
    "customer_health_churn_probability_check": (
        "customer_health",
        [{"churn_probability": Decimal("1.0001")}, {"churn_probability": Decimal("-0.0001")}],
    ),
    "customer_health_risk_factors_check": (
        "customer_health",
        [{"risk_factors": "{}"}, {"risk_factors": '"x"'}, {"risk_factors": "null"}],
    ),
    "customer_health_feature_usage_check": (
        "customer_health",
        [{"feature_usage": "[]"}, {"feature_usage": "1"}],
    ),
    "customer_health_active_users_30d_check": ("customer_health", [{"active_users_30d": -1}]),
    "customer_health_open_interactions_check": ("customer_health", [{"open_interactions": -1}]),
    "customer_health_milestones_achieved_check": (
        "customer_health",
        [{"milestones_achieved": 18}, {"milestones_achieved": -1}],
    ),
    "success_milestones_milestone_type_check": (
        "success_milestones",
        [{"milestone_type": "clients_100"}, {"milestone_type": ""}],
    ),
    "success_milestones_reward_type_check": ("success_milestones", [{"reward_type": "cash"}]),
    "success_milestones_reward_value_check": (
        "success_milestones",
        [{"reward_value": Decimal("-0.01")}],
    ),
    "success_milestones_reward_status_check": ("success_milestones", [{"reward_status": "lost"}]),
    "success_milestones_reward_status_presence_check": (
        "success_milestones",
        [{"reward_type": None}, {"reward_status": None}],
    ),
    "success_milestones_reward_delivered_at_check": (
        "success_milestones",
        [
            {"reward_delivered_at": b.T0},
            {"reward_delivered_at": b.T0, "reward_status": "declined"},
            {"reward_delivered_at": b.T0, "reward_type": None, "reward_status": None},
        ],
    ),
    "success_milestones_acknowledged_by_check": (
        "success_milestones",
        [{"acknowledged_by": uuid.uuid4(), "acknowledged_at": None}],
    ),
    "support_interactions_interaction_type_check": (
        "support_interactions",
        [{"interaction_type": "chit_chat"}],
    ),
    "support_interactions_channel_check": ("support_interactions", [{"channel": "fax"}]),
    "support_interactions_status_check": ("support_interactions", [{"status": "pending"}]),
    "support_interactions_priority_check": ("support_interactions", [{"priority": "critical"}]),
    "support_interactions_sentiment_check": ("support_interactions", [{"sentiment": "angry"}]),
    "support_interactions_outcome_check": ("support_interactions", [{"outcome": "won"}]),
    "support_interactions_subject_check": ("support_interactions", [{"subject": "é" * 1501}]),
    "support_interactions_field_event_times_check": (
        "support_interactions",
        [{"field_event_times": "[]"}],
    ),
    "support_interactions_event_count_check": (
        "support_interactions",
        [{"event_count": 0}, {"event_count": -3}],
    ),
    "support_interactions_event_times_check": (
        "support_interactions",
        [{"first_event_at": b.T0 + timedelta(seconds=1), "last_event_at": b.T0}],
    ),
    "consumer_offsets_partition_check": ("consumer_offsets", [{"partition": -1}]),
    "consumer_offsets_next_offset_check": ("consumer_offsets", [{"next_offset": -1}]),
    "health_score_history_health_score_check": (
        "health_score_history",
        [{"health_score": Decimal("100.5")}, {"health_score": Decimal("-1")}],
    ),
    "health_score_history_churn_probability_check": (
        "health_score_history",
        [{"churn_probability": Decimal("1.5")}],
    ),
    "health_score_history_risk_level_check": (
        "health_score_history",
        [{"risk_level": "extreme"}],
    ),
    "health_score_history_cause_check": ("health_score_history", [{"cause": "manual"}]),
    "alert_outbox_kind_check": ("alert_outbox", [{"kind": "risk_lowered"}]),
    "alert_outbox_episode_check": ("alert_outbox", [{"episode": 0}]),
    "alert_outbox_publish_attempts_check": ("alert_outbox", [{"publish_attempts": -1}]),
    "dead_letter_outbox_publish_attempts_check": (
        "dead_letter_outbox",
        [{"publish_attempts": -1}],
    ),
    "read_model_pending_version_check": ("read_model_pending", [{"version": 0}]),
    "shadow_health_health_score_check": (
        "shadow_health",
        [{"health_score": Decimal("100.5")}, {"health_score": Decimal("-1")}],
    ),
    "shadow_health_churn_probability_check": (
        "shadow_health",
        [{"churn_probability": Decimal("1.5")}],
    ),
    "shadow_health_risk_level_check": ("shadow_health", [{"risk_level": "extreme"}]),
    "shadow_alerts_kind_check": ("shadow_alerts", [{"kind": "risk_lowered"}]),
    "shadow_alerts_trigger_check": ("shadow_alerts", [{"trigger": "hunch"}]),
    "shadow_alerts_episode_check": ("shadow_alerts", [{"episode": 0}]),
    "alert_outcomes_kind_check": ("alert_outcomes", [{"kind": "risk_lowered"}]),
    "alert_outcomes_outcome_check": ("alert_outcomes", [{"outcome": "resolved"}]),
    "score_quality_summary_singleton_check": ("score_quality_summary", [{"singleton": False}]),
    "score_quality_summary_counts_check": (
        "score_quality_summary",
        [
            {"episodes_churned": -1},
            {"episodes_retained": -1},
            {"episodes_pending": -1},
            {"churners": -1, "churners_alerted": 0},
            {"churners_alerted": 5},  # more alerted churners than churners
        ],
    ),
    "score_quality_summary_quartiles_check": (
        "score_quality_summary",
        [{"lead_days_quartiles": [1.0, 2.0]}],
    ),
    # counts per table, an object: never a list of the rows removed
    "erased_organizations_rows_removed_object": (
        "erased_organizations",
        [{"rows_removed": json.dumps([1, 2])}, {"rows_removed": json.dumps("all")}],
    ),
}

# CHECKs on generated columns: no value can be written; they guard the functions
GENERATED_COLUMN_CHECKS = {
    "customer_health_health_status_check": "health_band(score numeric)",
    "customer_health_risk_level_check": "risk_level_for(probability numeric)",
}


@pytest.fixture(scope="module")
async def schema_db(
    database_factory: DatabaseFactory, migrated_template: str
) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(await database_factory(template=migrated_template))
    try:
        yield conn
    finally:
        await conn.close()


def valid_row(table: str, organization_id: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    if table == "user_profiles":
        return b.user_profile(**overrides)
    if table == "consumer_offsets":
        return b.consumer_offset(**overrides)
    if table == "score_models":
        return b.score_model(**overrides)
    if table == "shadow_models":
        return b.shadow_model(**overrides)
    if table == "replay_runs":
        return b.replay_run(**overrides)
    if table == "dead_letter_outbox":
        return b.dead_letter(**overrides)
    if table == "dead_letters_withheld":
        return b.dead_letter_withheld(**overrides)
    if table == "score_quality_summary":
        return b.score_quality_summary(**overrides)
    if table == "erased_organizations":
        return b.erased_organization(**overrides)
    if table == "health_feed_tombstones_owed":
        return b.health_feed_tombstone_owed(organization_id, **overrides)
    return b.ORGANIZATION_CHILDREN[table](organization_id, **overrides)


async def new_organization(conn: asyncpg.Connection) -> uuid.UUID:
    org = b.organization()
    await b.insert_row(conn, "organizations", org)
    organization_id: uuid.UUID = org["id"]
    return organization_id


async def test_every_check_constraint_has_a_bad_value_case(schema_db: asyncpg.Connection) -> None:
    names = await schema_db.fetch(
        """SELECT conname FROM pg_constraint
           WHERE contype = 'c' AND conrelid::regclass::text = ANY($1::text[])""",
        list(TABLES),
    )
    assert {r["conname"] for r in names} == set(BAD_CHECK_VALUES) | set(GENERATED_COLUMN_CHECKS)


@pytest.mark.parametrize("table", TABLES)
async def test_valid_rows_are_accepted(schema_db: asyncpg.Connection, table: str) -> None:
    async with schema_db.transaction():
        org_id = await new_organization(schema_db)
        if table == "health_feed_tombstones_owed":
            # owed only for an erased organization (its foreign key)
            await b.insert_row(
                schema_db, "erased_organizations", b.erased_organization(organization_id=org_id)
            )
        if table != "organizations":
            await b.insert_row(schema_db, table, valid_row(table, org_id))


@pytest.mark.parametrize("constraint", sorted(BAD_CHECK_VALUES))
async def test_check_constraint_rejects_bad_values(
    schema_db: asyncpg.Connection, constraint: str
) -> None:
    table, bad_cases = BAD_CHECK_VALUES[constraint]
    for overrides in bad_cases:
        tx = schema_db.transaction()
        await tx.start()
        try:
            org_id = await new_organization(schema_db)
            row = valid_row(table, org_id, **overrides)
            with pytest.raises(asyncpg.CheckViolationError) as raised:
                await b.insert_row(schema_db, table, row)
            assert raised.value.constraint_name == constraint, overrides
        finally:
            await tx.rollback()


@pytest.mark.parametrize("constraint", sorted(GENERATED_COLUMN_CHECKS))
async def test_generated_column_checks_guard_the_band_functions(
    schema_db: asyncpg.Connection, constraint: str
) -> None:
    function = GENERATED_COLUMN_CHECKS[constraint]
    tx = schema_db.transaction()
    await tx.start()
    try:
        await schema_db.execute(
            f"CREATE OR REPLACE FUNCTION {function} RETURNS text"
            " LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT 'bogus' $$"
        )
        org_id = await new_organization(schema_db)
        with pytest.raises(asyncpg.CheckViolationError) as raised:
            await b.insert_row(schema_db, "customer_health", b.customer_health(org_id))
        # both generated columns are checked; whichever the function feeds fails
        assert raised.value.constraint_name == constraint
    finally:
        await tx.rollback()


@contextlib.asynccontextmanager
async def rolled_back(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction that is always rolled back, so the module database stays clean."""
    tx = conn.transaction()
    await tx.start()
    try:
        yield
    finally:
        await tx.rollback()


async def test_one_health_row_per_organization(schema_db: asyncpg.Connection) -> None:
    async with rolled_back(schema_db):
        org_id = await new_organization(schema_db)
        await b.insert_row(schema_db, "customer_health", b.customer_health(org_id))
        with pytest.raises(asyncpg.UniqueViolationError) as raised:
            await b.insert_row(schema_db, "customer_health", b.customer_health(org_id))
        assert raised.value.constraint_name == "customer_health_organization_id_key"


async def test_each_milestone_once_per_organization(schema_db: asyncpg.Connection) -> None:
    async with rolled_back(schema_db):
        org_id = await new_organization(schema_db)
        other_id = await new_organization(schema_db)
        await b.insert_row(schema_db, "success_milestones", b.success_milestone(org_id))
        await b.insert_row(schema_db, "success_milestones", b.success_milestone(other_id))
        await b.insert_row(
            schema_db,
            "success_milestones",
            b.success_milestone(org_id, milestone_type="clients_10"),
        )
        with pytest.raises(asyncpg.UniqueViolationError) as raised:
            await b.insert_row(schema_db, "success_milestones", b.success_milestone(org_id))
        assert (
            raised.value.constraint_name == "success_milestones_organization_id_milestone_type_key"
        )


async def test_every_reference_to_organizations_cascades(schema_db: asyncpg.Connection) -> None:
    rows = await schema_db.fetch(
        """SELECT conrelid::regclass::text AS tbl, confdeltype::text AS on_delete
           FROM pg_constraint WHERE contype = 'f' AND confrelid = 'organizations'::regclass"""
    )
    assert {r["tbl"]: r["on_delete"] for r in rows} == {
        table: "c" for table in b.ORGANIZATION_CHILDREN if table != "processed_events"
    }


async def test_deleting_an_organization_removes_its_rows_everywhere(
    schema_db: asyncpg.Connection,
) -> None:
    async with rolled_back(schema_db):
        doomed = await b.insert_organization_with_children(schema_db)
        kept = await b.insert_organization_with_children(schema_db)

        async def counts(org_id: uuid.UUID) -> dict[str, int]:
            return {
                table: await schema_db.fetchval(
                    f"SELECT count(*) FROM {table} WHERE organization_id = $1", org_id
                )
                for table in b.ORGANIZATION_CHILDREN
            }

        assert set((await counts(doomed.organization_id)).values()) == {1}
        await schema_db.execute("DELETE FROM organizations WHERE id = $1", doomed.organization_id)

        after = await counts(doomed.organization_id)
        # the dedupe table has no foreign key (hot path); retention purges it
        assert after.pop("processed_events") == 1
        assert set(after.values()) == {0}
        assert set((await counts(kept.organization_id)).values()) == {1}


async def test_deleting_a_user_keeps_their_interactions_and_milestones(
    schema_db: asyncpg.Connection,
) -> None:
    async with rolled_back(schema_db):
        org_id = await new_organization(schema_db)
        admin = b.user_profile(role="admin")
        await b.insert_row(schema_db, "user_profiles", admin)
        interaction = b.support_interaction(org_id, assigned_to=admin["id"])
        await b.insert_row(schema_db, "support_interactions", interaction)
        # acknowledged_by comes from the verified identity (0023): log in as the admin
        token = await schema_db.fetchval("SELECT app_mint_token($1)", admin["id"])
        await schema_db.execute("SELECT app_login($1)", token)
        await b.insert_row(
            schema_db,
            "success_milestones",
            b.success_milestone(org_id, acknowledged_at=b.T0, acknowledged_by=admin["id"]),
        )
        acknowledged_by = (
            "SELECT acknowledged_by FROM success_milestones WHERE organization_id = $1"
        )
        assert await schema_db.fetchval(acknowledged_by, org_id) == admin["id"]
        await schema_db.execute("DELETE FROM user_profiles WHERE id = $1", admin["id"])
        assert (
            await schema_db.fetchval(
                "SELECT assigned_to FROM support_interactions WHERE id = $1", interaction["id"]
            )
            is None
        )
        row = await schema_db.fetchrow(
            "SELECT acknowledged_at, acknowledged_by FROM success_milestones"
            " WHERE organization_id = $1",
            org_id,
        )
        assert row is not None
        assert (row["acknowledged_at"], row["acknowledged_by"]) == (b.T0, None)


UPDATED_AT_TABLES = {
    # table -> (key column, a column to change, its new value)
    "organizations": ("id", "name", "Renamed"),
    "user_profiles": ("id", "role", "admin"),
    "customer_health": ("organization_id", "health_score", Decimal("10")),
    "success_milestones": ("organization_id", "acknowledged_at", b.T0),
    "support_interactions": ("organization_id", "status", "resolved"),
}


async def test_updated_at_triggers_exist_exactly_on_the_timestamped_read_model(
    schema_db: asyncpg.Connection,
) -> None:
    rows = await schema_db.fetch(
        """SELECT tgrelid::regclass::text AS tbl FROM pg_trigger
           WHERE NOT tgisinternal AND tgfoid = 'set_updated_at()'::regprocedure"""
    )
    assert sorted(r["tbl"] for r in rows) == sorted(UPDATED_AT_TABLES)


@pytest.mark.parametrize("table", sorted(UPDATED_AT_TABLES))
async def test_update_moves_updated_at(migrated_database: str, table: str) -> None:
    key, column, value = UPDATED_AT_TABLES[table]
    conn = await asyncpg.connect(migrated_database)
    try:
        rows = await b.insert_organization_with_children(conn)
        key_value = rows.user_id if table == "user_profiles" else rows.organization_id
        select = f"SELECT created_at, updated_at, clock_timestamp() AS now FROM {table}"
        before = await conn.fetchrow(f"{select} WHERE {key} = $1", key_value)
        assert before is not None
        assert before["created_at"] == before["updated_at"] < before["now"]

        # a second transaction, later on the clock; an explicit updated_at is overridden
        await conn.execute(
            f"UPDATE {table} SET {column} = $2, updated_at = '2000-01-01' WHERE {key} = $1",
            key_value,
            value,
        )
        after = await conn.fetchrow(f"{select} WHERE {key} = $1", key_value)
        assert after is not None
        assert after["created_at"] == before["created_at"]
        assert before["now"] < after["updated_at"] < after["now"]
    finally:
        await conn.close()


async def test_health_band_and_risk_level_are_generated_and_follow_updates(
    schema_db: asyncpg.Connection,
) -> None:
    async with rolled_back(schema_db):
        org_id = await new_organization(schema_db)
        await b.insert_row(
            schema_db,
            "customer_health",
            b.customer_health(
                org_id, health_score=Decimal("80"), churn_probability=Decimal("0.2499")
            ),
        )
        query = "SELECT health_status, risk_level FROM customer_health WHERE organization_id = $1"
        assert await b.fetch_tuple(schema_db, query, org_id) == ("excellent", "low")
        await schema_db.execute(
            "UPDATE customer_health SET health_score = 39.99, churn_probability = 0.75"
            " WHERE organization_id = $1",
            org_id,
        )
        assert await b.fetch_tuple(schema_db, query, org_id) == ("critical", "critical")


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("customer_health", "health_status", "excellent"),
        ("customer_health", "risk_level", "low"),
        ("support_interactions", "resolution_time_minutes", Decimal("1")),
    ],
)
async def test_generated_columns_cannot_be_written(
    schema_db: asyncpg.Connection, table: str, column: str, value: Any
) -> None:
    async with rolled_back(schema_db):
        org_id = await new_organization(schema_db)
        with pytest.raises(asyncpg.GeneratedAlwaysError):
            await b.insert_row(schema_db, table, valid_row(table, org_id, **{column: value}))


@pytest.mark.parametrize(
    ("opened", "resolved", "minutes"),
    [
        (b.T0, b.T0 + timedelta(minutes=90), Decimal("90.00")),
        (b.T0, b.T0 + timedelta(seconds=61), Decimal("1.02")),
        (b.T0, b.T0 + timedelta(days=2, hours=3, minutes=10, seconds=7), Decimal("3070.12")),
        (b.T0, b.T0, Decimal("0.00")),
        (None, b.T0, None),
        (b.T0, None, None),
    ],
)
async def test_resolution_time_minutes_is_generated(
    schema_db: asyncpg.Connection, opened: Any, resolved: Any, minutes: Decimal | None
) -> None:
    async with rolled_back(schema_db):
        org_id = await new_organization(schema_db)
        row = b.support_interaction(org_id, opened_at=opened, resolved_at=resolved)
        await b.insert_row(schema_db, "support_interactions", row)
        assert (
            await schema_db.fetchval(
                "SELECT resolution_time_minutes FROM support_interactions WHERE id = $1",
                row["id"],
            )
            == minutes
        )


async def test_resolution_time_follows_a_late_opened_event(
    schema_db: asyncpg.Connection,
) -> None:
    """An interaction whose resolved event came before its opened event."""
    async with rolled_back(schema_db):
        org_id = await new_organization(schema_db)
        row = {
            "id": uuid.uuid4(),
            "organization_id": org_id,
            "status": "resolved",
            "resolved_at": b.T0 + timedelta(minutes=30),
            "first_event_at": b.T0 + timedelta(minutes=30),
            "last_event_at": b.T0 + timedelta(minutes=30),
        }
        await b.insert_row(schema_db, "support_interactions", row)
        query = (
            "SELECT interaction_type, channel, priority, event_count, field_event_times::text,"
            " follow_up_required, resolution_time_minutes FROM support_interactions WHERE id = $1"
        )
        assert await b.fetch_tuple(schema_db, query, row["id"]) == (
            None,
            None,
            "normal",
            1,
            "{}",
            False,
            None,
        )
        await schema_db.execute(
            "UPDATE support_interactions SET opened_at = $2, interaction_type = 'bug_report',"
            " channel = 'chat', first_event_at = $2, event_count = 2 WHERE id = $1",
            row["id"],
            b.T0,
        )
        assert await schema_db.fetchval(
            "SELECT resolution_time_minutes FROM support_interactions WHERE id = $1", row["id"]
        ) == Decimal("30.00")


async def test_customer_health_defaults(schema_db: asyncpg.Connection) -> None:
    async with rolled_back(schema_db):
        org_id = await new_organization(schema_db)
        await b.insert_row(
            schema_db,
            "customer_health",
            {
                "organization_id": org_id,
                "health_score": Decimal("50"),
                "churn_probability": Decimal("0.5"),
                "scored_at": b.T0,
                "score_model_version": "v1",
            },
        )
        row = await schema_db.fetchrow(
            "SELECT risk_factors::text, feature_usage::text, engagement_score, active_users_30d,"
            " milestones_achieved, previous_score, id IS NOT NULL AS has_id"
            " FROM customer_health WHERE organization_id = $1",
            org_id,
        )
        assert row is not None
        assert tuple(row) == ("[]", "{}", Decimal("0.00"), 0, 0, None, True)


async def test_placeholder_organization_needs_only_an_id(schema_db: asyncpg.Connection) -> None:
    async with rolled_back(schema_db):
        org_id = uuid.uuid4()
        await schema_db.execute(
            "INSERT INTO organizations (id) VALUES ($1) ON CONFLICT DO NOTHING", org_id
        )
        row = await schema_db.fetchrow(
            "SELECT name, plan, created_at = now() AS fresh FROM organizations WHERE id = $1",
            org_id,
        )
        assert row is not None
        assert tuple(row) == (None, None, True)
