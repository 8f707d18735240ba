"""Valid rows of every schema table, for the schema tests.

Each builder returns a dict of column -> value that satisfies every constraint
of its table; a test overrides single columns to break one constraint at a
time. `insert_row` writes such a dict with bound parameters.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from healthscore.core.scoring.state import OrganizationState, pack_state

T0 = datetime(2025, 8, 1, 12, 0, tzinfo=UTC)

Row = dict[str, Any]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def insert_row(conn: asyncpg.Connection, table: str, values: Mapping[str, Any]) -> None:
    columns = ", ".join(quote_ident(c) for c in values)
    params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await conn.execute(
        f"INSERT INTO {quote_ident(table)} ({columns}) VALUES ({params})", *values.values()
    )


def organization(**overrides: Any) -> Row:
    return {"id": uuid.uuid4(), "name": "Acme Weddings", "plan": "pro", **overrides}


def user_profile(**overrides: Any) -> Row:
    user_id = uuid.uuid4()
    return {
        "id": user_id,
        "organization_id": None,
        "email": f"{user_id.hex[:8]}@example.com",
        "full_name": "Pat Example",
        "role": "member",
        **overrides,
    }


def customer_health(organization_id: uuid.UUID, **overrides: Any) -> Row:
    return {
        "organization_id": organization_id,
        "health_score": Decimal("72.50"),
        "engagement_score": Decimal("70"),
        "adoption_score": Decimal("65"),
        "milestone_score": Decimal("40"),
        "support_score": Decimal("90"),
        "growth_score": Decimal("55"),
        "churn_probability": Decimal("0.1200"),
        "risk_factors": json.dumps([{"factor": "few_logins", "value": 2, "impact": 3.5}]),
        "feature_usage": json.dumps({"forms": 12}),
        "active_users_30d": 4,
        "open_interactions": 1,
        "milestones_achieved": 3,
        "last_activity_at": T0,
        "scored_at": T0,
        "score_model_version": "v1",
        **overrides,
    }


def success_milestone(organization_id: uuid.UUID, **overrides: Any) -> Row:
    return {
        "organization_id": organization_id,
        "milestone_type": "first_client_added",
        "achieved_at": T0,
        "triggering_event_id": uuid.uuid4(),
        "health_score_impact": Decimal("2.5"),
        "reward_type": "badge",
        "reward_value": Decimal("0"),
        "reward_status": "pending",
        **overrides,
    }


def support_interaction(organization_id: uuid.UUID, **overrides: Any) -> Row:
    return {
        "id": uuid.uuid4(),
        "organization_id": organization_id,
        "interaction_type": "technical_support",
        "channel": "email",
        "status": "open",
        "priority": "normal",
        "sentiment": "neutral",
        "outcome": None,
        "subject": "Cannot export guest list",
        "opened_at": T0,
        "first_event_at": T0,
        "last_event_at": T0,
        "field_event_times": json.dumps({"status": T0.isoformat()}),
        "event_count": 1,
        **overrides,
    }


def organization_state(organization_id: uuid.UUID, **overrides: Any) -> Row:
    return {
        "organization_id": organization_id,
        "state_msgpack": pack_state(OrganizationState(str(organization_id), event_count=1)),
        "last_event_at": T0,
        **overrides,
    }


def processed_event(organization_id: uuid.UUID, **overrides: Any) -> Row:
    return {
        "event_id": uuid.uuid4(),
        "organization_id": organization_id,
        "occurred_at": T0,
        **overrides,
    }


def consumer_offset(**overrides: Any) -> Row:
    return {
        "consumer_group": "healthscore",
        "topic": "product.usage.v1",
        "partition": 0,
        "next_offset": 42,
        "max_event_time": T0,
        **overrides,
    }


def score_model(**overrides: Any) -> Row:
    return {
        "version": "v9",
        "aggregates": json.dumps({"half_life_days": {"activity": 7.0}, "signals": {}}),
        **overrides,
    }


def shadow_model(**overrides: Any) -> Row:
    return {
        "score_model_version": "v9-candidate",
        "scoring": json.dumps({"version": "v9-candidate", "alerts": {"enter_probability": 0.3}}),
        **overrides,
    }


def replay_run(**overrides: Any) -> Row:
    return {
        "consumer_group": "healthscore-replay-0123abcd",
        "silence_sweep": True,
        "publish_alerts": False,
        **overrides,
    }


def score_quality_summary(**overrides: Any) -> Row:
    return {
        "score_model_version": "v4",
        "backtest": json.dumps({"source": "simulated", "figures": {"recall": 0.8}}),
        "episodes_churned": 3,
        "episodes_retained": 1,
        "episodes_pending": 2,
        "churners": 4,
        "churners_alerted": 3,
        "lead_days_quartiles": [5.0, 12.5, 20.0],
        **overrides,
    }


def dead_letter(**overrides: Any) -> Row:
    return {
        "source_topic": "product.usage.v1",
        "source_partition": 0,
        "source_offset": 7,
        "record_key": b"key",
        "record_value": b"{}",
        "record_timestamp_ms": None,
        "record_headers": b"\x90",  # MessagePack: no headers
        "reason": "missing_field",
        "detail": "event_id: Field required",
        **overrides,
    }


def dead_letter_withheld(**overrides: Any) -> Row:
    """A dead letter its topic refused, as the relay moves it (migration 0091)."""
    return dead_letter(**{"id": 1, "rejected_at": T0, "refusal": "InvalidRecordError", **overrides})


def erased_organization(**overrides: Any) -> Row:
    """A tombstone as `healthscore erase` records it (migration 0095): no organizations row."""
    return {
        "organization_id": uuid.uuid4(),
        "rows_removed": json.dumps({"organizations": 1, "support_interactions": 3}),
        **overrides,
    }


def health_feed_tombstone_owed(organization_id: uuid.UUID, **overrides: Any) -> Row:
    """An erased organization's owed feed tombstone (migration 0097): its
    erased_organizations row first."""
    return {"organization_id": organization_id, **overrides}


def health_feed_owed(organization_id: uuid.UUID, **overrides: Any) -> Row:
    return {"organization_id": organization_id, **overrides}


def health_score_history(organization_id: uuid.UUID, **overrides: Any) -> Row:
    return {
        "organization_id": organization_id,
        "scored_at": T0,
        "health_score": Decimal("72.50"),
        "churn_probability": Decimal("0.1200"),
        "risk_level": "low",
        "components": json.dumps({"engagement": 70}),
        "score_model_version": "v1",
        "cause": "events",
        **overrides,
    }


def alert_outbox(organization_id: uuid.UUID, **overrides: Any) -> Row:
    return {
        "alert_id": uuid.uuid4(),
        "organization_id": organization_id,
        "kind": "risk_raised",
        "episode": 1,
        "payload": json.dumps({"kind": "risk_raised"}),
        **overrides,
    }


def read_model_pending(organization_id: uuid.UUID, **overrides: Any) -> Row:
    return {"organization_id": organization_id, "version": 1, **overrides}


def shadow_health(organization_id: uuid.UUID, **overrides: Any) -> Row:
    return {
        "organization_id": organization_id,
        "score_model_version": "v3",
        "health_score": Decimal("64.20"),
        "churn_probability": Decimal("0.2100"),
        "risk_level": "medium",
        "components": json.dumps({"engagement": 60}),
        "scored_at": T0,
        "shadow_state": json.dumps({"daily_scores": {}}),
        "source_version": 1,
        "started_at": T0,
        **overrides,
    }


def shadow_alert(organization_id: uuid.UUID, **overrides: Any) -> Row:
    return {
        "alert_id": uuid.uuid4(),
        "score_model_version": "v3",
        "organization_id": organization_id,
        "kind": "risk_raised",
        "episode": 1,
        "trigger": "probability_threshold",
        "decided_at": T0,
        "health_score": Decimal("40.00"),
        "churn_probability": Decimal("0.5500"),
        **overrides,
    }


def churn_label(organization_id: uuid.UUID, **overrides: Any) -> Row:
    return {"organization_id": organization_id, "churned_at": T0, "known_until": T0, **overrides}


def alert_outcome(organization_id: uuid.UUID, **overrides: Any) -> Row:
    return {
        "alert_id": uuid.uuid4(),
        "organization_id": organization_id,
        "kind": "risk_raised",
        "episode": 1,
        "raised_at": T0,
        "outcome": "churned",
        "churned_at": T0,
        **overrides,
    }


# builders of the tables that hang off an organization, by table name
ORGANIZATION_CHILDREN: dict[str, Callable[..., Row]] = {
    "user_profiles": lambda org_id, **o: user_profile(organization_id=org_id, **o),
    "customer_health": customer_health,
    "success_milestones": success_milestone,
    "support_interactions": support_interaction,
    "organization_state": organization_state,
    "processed_events": processed_event,
    "health_score_history": health_score_history,
    "alert_outbox": alert_outbox,
    "read_model_pending": read_model_pending,
    "shadow_health": shadow_health,
    "shadow_alerts": shadow_alert,
    "churn_labels": churn_label,
    "alert_outcomes": alert_outcome,
    "health_feed_owed": health_feed_owed,
}


@dataclass
class OrganizationRows:
    organization_id: uuid.UUID
    user_id: uuid.UUID
    interaction_id: uuid.UUID


async def insert_organization_with_children(conn: asyncpg.Connection) -> OrganizationRows:
    """One organization with a row in every table that refers to organizations."""
    org = organization()
    await insert_row(conn, "organizations", org)
    user = user_profile(organization_id=org["id"], role="member")
    await insert_row(conn, "user_profiles", user)
    interaction = support_interaction(org["id"], assigned_to=user["id"])
    await insert_row(conn, "support_interactions", interaction)
    for table, build in ORGANIZATION_CHILDREN.items():
        if table in ("user_profiles", "support_interactions"):
            continue
        await insert_row(conn, table, build(org["id"]))
    return OrganizationRows(org["id"], user["id"], interaction["id"])


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


async def fetch_tuple(conn: asyncpg.Connection, query: str, *args: Any) -> tuple[Any, ...]:
    """The one row of a query, as a tuple (fails when there is none)."""
    row = await conn.fetchrow(query, *args)
    assert row is not None, query
    return tuple(row)
