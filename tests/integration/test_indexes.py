"""Indexes of the read model: they exist, are documented, and the dashboard queries use them.

The plans are checked on a few thousand generated rows (5k organizations, 20k
interactions, 15k milestones) after ANALYZE, with the planner's defaults.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from healthscore.contracts.enums import InteractionType, MilestoneType
from healthscore.store.schema_catalog import (
    DASHBOARD_QUERIES,
    READ_MODEL_TABLES,
    SEED_INDEX_MINIMUMS,
    SERVICE_TABLES,
    TABLES,
)
from tests.conftest import DatabaseFactory

ORGANIZATIONS = 5_000
INTERACTIONS = 20_000
SEARCHED_ROW = 1234  # the subject search looks for a piece of this row's subject

EXPECTED_INDEXES = {
    "customer_health": {
        "customer_health_pkey",
        "customer_health_organization_id_key",
        "customer_health_status_score_idx",
        "customer_health_at_risk_idx",
        "customer_health_high_risk_idx",
        "customer_health_scored_at_idx",
        "customer_health_last_activity_at_idx",
        "customer_health_score_change_7d_idx",
        "customer_health_risk_factors_idx",
    },
    "success_milestones": {
        "success_milestones_pkey",
        "success_milestones_organization_id_milestone_type_key",
        "success_milestones_organization_achieved_idx",
        "success_milestones_unacknowledged_idx",
        "success_milestones_type_achieved_idx",
        "success_milestones_reward_pending_idx",
        "success_milestones_acknowledged_by_idx",
    },
    "support_interactions": {
        "support_interactions_pkey",
        "support_interactions_organization_opened_idx",
        "support_interactions_assigned_open_idx",
        "support_interactions_unassigned_open_idx",
        "support_interactions_assigned_to_idx",
        "support_interactions_subject_trgm_idx",
        "support_interactions_follow_up_due_idx",
        "support_interactions_type_opened_idx",
        "support_interactions_negative_sentiment_idx",
    },
    "organization_state": {
        "organization_state_pkey",
        "organization_state_rescore_due_idx",
    },
    "read_model_pending": {"read_model_pending_pkey", "read_model_pending_queued_at_idx"},
    "processed_events": {"processed_events_pkey", "processed_events_processed_at_idx"},
    "consumer_offsets": {"consumer_offsets_pkey"},
    "health_score_history": {"health_score_history_organization_day_key"},
    "alert_outbox": {
        "alert_outbox_pkey",
        "alert_outbox_organization_id_idx",
        "alert_outbox_pending_seq_idx",
    },
}

_TYPES = ", ".join(f"'{t.value}'" for t in InteractionType)
_MILESTONES = ", ".join(f"'{m.value}'" for m in MilestoneType)
GENERATE = f"""
SELECT setseed(0.168);
INSERT INTO organizations (id, name)
    SELECT gen_random_uuid(), 'org ' || g FROM generate_series(1, {ORGANIZATIONS}) g;
INSERT INTO user_profiles (id, role, full_name)
    SELECT gen_random_uuid(), CASE WHEN g <= 5 THEN 'admin' ELSE 'support' END, 'staff ' || g
    FROM generate_series(1, 50) g;
INSERT INTO customer_health (organization_id, health_score, churn_probability, risk_factors,
                             score_change_7d, last_activity_at, scored_at, score_model_version)
    SELECT id, round((random() * 100)::numeric, 2), round(random()::numeric, 4),
           jsonb_build_array(jsonb_build_object('factor', 'factor_' || (n % 250), 'impact', 1)),
           round((random() * 40 - 20)::numeric, 2),
           now() - random() * interval '90 days', now() - random() * interval '10 days', 'v1'
    FROM (SELECT id, row_number() OVER () AS n FROM organizations) o;
INSERT INTO support_interactions (id, organization_id, interaction_type, channel, status,
        priority, sentiment, assigned_to, subject, follow_up_required, follow_up_at,
        follow_up_completed_at, opened_at, first_event_at, last_event_at)
    SELECT gen_random_uuid(), orgs[1 + floor(r1 * {ORGANIZATIONS})::int],
           (ARRAY[{_TYPES}])[1 + floor(r2 * 15)::int],
           (ARRAY['email', 'phone', 'chat', 'video', 'in_app'])[1 + floor(r3 * 5)::int],
           CASE WHEN r4 < 0.3 THEN 'open' WHEN r4 < 0.7 THEN 'resolved' ELSE 'closed' END,
           (ARRAY['low', 'normal', 'high', 'urgent'])[1 + floor(r5 * 4)::int],
           (ARRAY['very_negative', 'negative', 'neutral', 'positive', 'very_positive'])
               [1 + floor(r6 * 5)::int],
           CASE WHEN r7 < 0.1 THEN NULL ELSE staff[1 + floor(r7 * 45)::int] END,
           'Question about ' || md5(g::text),
           r8 < 0.1,
           CASE WHEN r8 < 0.1 THEN now() + (r9 * 60 - 30) * interval '1 day' END,
           CASE WHEN r8 < 0.05 THEN now() END,
           opened, opened, opened
    FROM (SELECT g, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
                 random() AS r5, random() AS r6, random() AS r7, random() AS r8, random() AS r9,
                 now() - random() * interval '365 days' AS opened
          FROM generate_series(1, {INTERACTIONS}) g) s,
         (SELECT array_agg(id ORDER BY id) AS orgs FROM organizations) o,
         (SELECT array_agg(id ORDER BY id) AS staff FROM user_profiles WHERE role = 'support') u;
UPDATE support_interactions SET resolved_at = opened_at + random() * interval '48 hours',
       last_event_at = opened_at + interval '48 hours'
    WHERE status <> 'open';
INSERT INTO success_milestones (organization_id, milestone_type, achieved_at,
        triggering_event_id, reward_type, reward_status, acknowledged_at)
    SELECT id, (ARRAY[{_MILESTONES}])[1 + (n + k * 5) % 17], achieved, gen_random_uuid(),
           CASE WHEN r < 0.2 THEN 'badge' END,
           CASE WHEN r < 0.1 THEN 'pending' WHEN r < 0.2 THEN 'delivered' END,
           CASE WHEN a < 0.7 THEN achieved + interval '1 day' END
    FROM (SELECT o.id, o.n, k, random() AS r, random() AS a,
                 now() - random() * interval '365 days' AS achieved
          FROM (SELECT id, row_number() OVER () AS n FROM organizations) o,
               generate_series(0, 2) k) s;
ANALYZE;
"""


@dataclass
class Dataset:
    conn: asyncpg.Connection
    organization_id: Any
    support_user_id: Any


@pytest.fixture(scope="module")
async def dataset(
    database_factory: DatabaseFactory, migrated_template: str
) -> AsyncIterator[Dataset]:
    conn = await asyncpg.connect(await database_factory(template=migrated_template))
    try:
        await conn.execute(GENERATE)
        org_id = await conn.fetchval("SELECT organization_id FROM support_interactions LIMIT 1")
        support_id = await conn.fetchval(
            "SELECT assigned_to FROM support_interactions WHERE status = 'open'"
            " AND assigned_to IS NOT NULL LIMIT 1"
        )
        yield Dataset(conn, org_id, support_id)
    finally:
        await conn.close()


NOW = datetime.now(UTC)
QUERY_ARGS: dict[str, Callable[[Dataset], list[Any]]] = {
    "at_risk_organizations": lambda d: [50],
    "organizations_by_band": lambda d: ["good", 50],
    "likely_to_churn": lambda d: [50],
    "stale_scores": lambda d: [NOW - timedelta(days=9), 50],
    "inactive_organizations": lambda d: [NOW - timedelta(days=80), 50],
    "biggest_weekly_drops": lambda d: [20],
    "organizations_with_risk_factor": lambda d: [json.dumps([{"factor": "factor_7"}])],
    "support_user_open_interactions": lambda d: [d.support_user_id, 50],
    "unassigned_open_interactions": lambda d: [50],
    "organization_interactions": lambda d: [d.organization_id, 50],
    "subject_search": lambda d: [hashlib.md5(str(SEARCHED_ROW).encode()).hexdigest()[3:11]],
    "follow_ups_due": lambda d: [50],
    "interactions_of_type": lambda d: ["complaint", 50],
    "unhappy_interactions": lambda d: [50],
    "unacknowledged_milestones": lambda d: [50],
    "organization_milestones": lambda d: [d.organization_id],
    "milestone_achievers": lambda d: ["clients_10", 50],
    "rewards_to_deliver": lambda d: [50],
}


def index_names(plan: dict[str, Any]) -> set[str]:
    """Every index a plan (tree) reads."""
    names = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        names |= index_names(child)
    return names


def test_every_dashboard_query_has_arguments() -> None:
    assert {q.name for q in DASHBOARD_QUERIES} == set(QUERY_ARGS)


@pytest.mark.parametrize("query", DASHBOARD_QUERIES, ids=lambda q: q.name)
async def test_dashboard_query_uses_its_index(dataset: Dataset, query: Any) -> None:
    args = QUERY_ARGS[query.name](dataset)
    raw = await dataset.conn.fetchval(f"EXPLAIN (FORMAT JSON) {query.sql}", *args)
    plan = json.loads(raw)[0]["Plan"]
    assert query.index in index_names(plan), json.dumps(plan, indent=1)
    rows = await dataset.conn.fetch(query.sql, *args)
    assert rows, f"{query.name} returned nothing on the generated data"


async def test_subject_search_finds_the_row(dataset: Dataset) -> None:
    word = QUERY_ARGS["subject_search"](dataset)[0]
    search = next(q for q in DASHBOARD_QUERIES if q.name == "subject_search")
    rows = await dataset.conn.fetch(search.sql, word.upper())  # ILIKE: case-insensitive
    subject = "Question about " + hashlib.md5(str(SEARCHED_ROW).encode()).hexdigest()
    assert subject in {r["subject"] for r in rows}


@pytest.fixture(scope="module")
async def indexes(dataset: Dataset) -> list[asyncpg.Record]:
    return await dataset.conn.fetch(
        """SELECT t.relname AS tbl, i.relname AS name, x.indnatts AS columns,
                  x.indpred IS NOT NULL AS partial, am.amname AS method,
                  pg_get_indexdef(x.indexrelid) AS definition,
                  obj_description(x.indexrelid, 'pg_class') AS comment,
                  EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
                      AS from_constraint
           FROM pg_index x
           JOIN pg_class i ON i.oid = x.indexrelid
           JOIN pg_class t ON t.oid = x.indrelid
           JOIN pg_am am ON am.oid = i.relam
           WHERE t.relnamespace = 'public'::regnamespace AND t.relname = ANY($1::text[])""",
        list(TABLES),
    )


@pytest.mark.parametrize("table", sorted(EXPECTED_INDEXES))
def test_expected_indexes_exist(indexes: list[asyncpg.Record], table: str) -> None:
    present = {r["name"] for r in indexes if r["tbl"] == table}
    assert EXPECTED_INDEXES[table] <= present


@pytest.mark.parametrize("table", sorted(SEED_INDEX_MINIMUMS))
def test_seed_index_counts(indexes: list[asyncpg.Record], table: str) -> None:
    count = sum(1 for r in indexes if r["tbl"] == table)
    assert count >= SEED_INDEX_MINIMUMS[table]
    query_indexes = sum(1 for r in indexes if r["tbl"] == table and not r["from_constraint"])
    assert query_indexes >= SEED_INDEX_MINIMUMS[table] - 2


def test_composite_partial_and_trigram_indexes(indexes: list[asyncpg.Record]) -> None:
    read_model = [r for r in indexes if r["tbl"] in READ_MODEL_TABLES]
    dashboard_indexes = {q.index for q in DASHBOARD_QUERIES}
    composite = {r["name"] for r in read_model if r["columns"] > 1 and not r["from_constraint"]}
    assert len(composite & dashboard_indexes) >= 3
    partial = {r["name"] for r in read_model if r["partial"]}
    assert {
        "support_interactions_assigned_open_idx",
        "customer_health_at_risk_idx",
        "customer_health_high_risk_idx",
    } <= partial
    assert "WHERE (status = 'open'::text)" in next(
        r["definition"] for r in read_model if r["name"] == "support_interactions_assigned_open_idx"
    )
    trigram = next(r for r in read_model if r["name"] == "support_interactions_subject_trgm_idx")
    assert trigram["method"] == "gin"
    assert "gin_trgm_ops" in trigram["definition"]


def test_every_query_index_is_documented(indexes: list[asyncpg.Record]) -> None:
    undocumented = [
        r["name"]
        for r in indexes
        if r["tbl"] in READ_MODEL_TABLES + SERVICE_TABLES + ("user_profiles",)
        and not r["from_constraint"]
        and not (r["comment"] or "").strip()
    ]
    assert undocumented == []
    read_model_comments = [
        r["comment"] for r in indexes if r["tbl"] in READ_MODEL_TABLES and not r["from_constraint"]
    ]
    assert all(c.startswith("Serves: ") for c in read_model_comments)
