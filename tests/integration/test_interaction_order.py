"""One support interaction ends the same whatever order its events arrive in.

The same seven events (opened, two updates at the same instant, a follow-up,
resolved, reopened, closed) are delivered in eight orders, among them an
`updated` before its `opened`, each order as its own interaction of its own
organization. Most orders arrive one event per batch (each merge goes
through the stored row); two arrive in a single burst (merged in memory),
one with a redelivered event. Every stored row must be the same, and equal
to the hand-derived "latest occurred_at wins per field" result.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from healthscore.store.identity import LOGIN, mint_token
from tests.utils import schema_builders as b
from tests.utils.api import api_login, signing_key
from tests.utils.harness import (
    make_producer,
    make_topics,
    produce_json,
    running_service,
    service_settings,
)
from tests.utils.scenarios import wait_processed

T0 = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0)
STAFF_A = str(uuid.uuid5(uuid.NAMESPACE_URL, "staff-a"))
STAFF_B = str(uuid.uuid5(uuid.NAMESPACE_URL, "staff-b"))


def _at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


# (rank, body without ids). The rank orders event ids the same way in every copy, so
# the (occurred_at, event_id) tie-break of the two updates at +1h resolves alike.
EVENTS: list[tuple[int, dict[str, Any]]] = [
    (
        0,
        {
            "action": "opened",
            "occurred_at": _at(0),
            "interaction_type": "technical_support",
            "channel": "email",
            "priority": "normal",
            "sentiment": "negative",
            "subject": "Calendar sync broken",
        },
    ),
    (
        1,
        {
            "action": "updated",
            "occurred_at": _at(1),
            "priority": "high",
            "sentiment": "very_negative",
            "assigned_to": STAFF_A,
        },
    ),
    (
        2,
        {
            "action": "updated",
            "occurred_at": _at(1),  # same instant: the larger event id wins
            "sentiment": "neutral",
            "subject": "Calendar sync broken (iOS)",
            "assigned_to": STAFF_B,
        },
    ),
    (
        3,
        {
            "action": "follow_up_scheduled",
            "occurred_at": _at(3),
            "follow_up_at": _at(24),
            "outcome": "follow_up_required",
        },
    ),
    (
        4,
        {
            "action": "resolved",
            "occurred_at": _at(5),
            "outcome": "resolved",
            "sentiment": "positive",
        },
    ),
    (
        5,
        {
            "action": "reopened",
            "occurred_at": _at(8),
            "priority": "urgent",
            "sentiment": "negative",
        },
    ),
    (6, {"action": "closed", "occurred_at": _at(10), "outcome": "retained", "channel": "phone"}),
]

ORDERS: list[list[int]] = [
    [0, 1, 2, 3, 4, 5, 6],  # as it happened
    [6, 5, 4, 3, 2, 1, 0],  # reversed
    [2, 1, 0, 3, 4, 5, 6],  # both updates before the opened
    [1, 6, 0, 5, 2, 4, 3],  # closed before reopened before resolved
    *([*random.Random(seed).sample(range(7), 7)] for seed in (1, 2)),
]
BURST_ORDERS: list[list[int]] = [
    [4, 6, 2, 0, 5, 1, 3],
    [5, 3, 1, 6, 2, 4, 0, 2],  # rank 2 delivered twice
]


def _event_id(rank: int, copy: int) -> str:
    return str(uuid.UUID(f"{rank:08x}-0000-4000-8000-{copy:012x}"))


def _bodies(copy: int) -> tuple[str, str, list[dict[str, Any]]]:
    org = str(uuid.uuid5(uuid.NAMESPACE_URL, f"interaction-order-org-{copy}"))
    interaction = str(uuid.uuid5(uuid.NAMESPACE_URL, f"interaction-order-{copy}"))
    bodies = [
        {
            "event_id": _event_id(rank, copy),
            "organization_id": org,
            "interaction_id": interaction,
            **body,
        }
        for rank, body in EVENTS
    ]
    return org, interaction, bodies


def _comparable(row: asyncpg.Record) -> dict[str, Any]:
    """The row without its identity and wall-clock columns; event ids -> their rank."""
    skip = {"id", "organization_id", "created_at", "updated_at"}
    result = {k: v for k, v in row.items() if k not in skip}
    times = orjson.loads(row["field_event_times"])
    result["field_event_times"] = {
        name: [when, int(str(event_id)[:8], 16)] for name, (when, event_id) in times.items()
    }
    return result


async def test_interaction_converges_whatever_the_order(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=4)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    copies = [(order, _bodies(copy)) for copy, order in enumerate(ORDERS + BURST_ORDERS)]
    stepped, burst = copies[: len(ORDERS)], copies[len(ORDERS) :]
    assert any(order.index(1) < order.index(0) for order in ORDERS)  # updated before opened

    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings):
            await produce_json(
                producer,
                topics.support,
                [bodies[i] for order, (_o, _x, bodies) in burst for i in order],
            )
            done = 7 * len(burst)
            # one event of every stepped copy per round, each round committed before the next
            for step in range(7):
                await produce_json(
                    producer,
                    topics.support,
                    [bodies[order[step]] for order, (_o, _x, bodies) in stepped],
                )
                done += len(stepped)
                await wait_processed(migrated_database, done, 60.0, exactly=True)
    finally:
        await producer.stop()

    conn = await asyncpg.connect(migrated_database)
    try:
        rows = {
            str(r["id"]): r
            for r in await conn.fetch("SELECT * FROM support_interactions ORDER BY id")
        }
        open_counts = {
            str(r["organization_id"]): r["open_interactions"]
            for r in await conn.fetch(
                "SELECT organization_id, open_interactions FROM customer_health"
            )
        }
    finally:
        await conn.close()

    assert len(rows) == len(copies)
    comparable = [_comparable(rows[interaction]) for _, (_o, interaction, _b) in copies]
    for order, row in zip(ORDERS + BURST_ORDERS, comparable, strict=True):
        assert row == comparable[0], f"order {order} ended differently"

    final = comparable[0]
    expected = {
        "interaction_type": "technical_support",
        "channel": "phone",  # closed (+10h) set it last
        "status": "closed",
        "priority": "urgent",  # reopened (+8h)
        "sentiment": "negative",  # reopened (+8h); closed carries none
        "outcome": "retained",
        "assigned_to": uuid.UUID(STAFF_B),  # the tie at +1h: the larger event id
        "subject": "Calendar sync broken (iOS)",
        "follow_up_required": False,  # closed after the follow-up was scheduled
        "follow_up_at": T0 + timedelta(hours=24),
        "follow_up_completed_at": T0 + timedelta(hours=10),
        "opened_at": T0,
        "resolved_at": None,  # cleared by the later reopened
        "closed_at": T0 + timedelta(hours=10),
        "first_event_at": T0,
        "last_event_at": T0 + timedelta(hours=10),
        "event_count": 7,  # the redelivered copy counted once
        "resolution_time_minutes": None,
    }
    assert {k: final[k] for k in expected} == expected
    assert final["field_event_times"]["assigned_to"][1] == 2
    # the organizations' aggregates agree: nothing is left open
    assert set(open_counts.values()) == {0}
    assert len(open_counts) == len(copies)


async def test_a_follow_up_scheduled_as_it_is_resolved_stays_to_do(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    # The desk resolves an interaction and schedules its check-in in one action: both
    # events carry the same second. The event ids decided which came last, so about
    # half such follow-ups read done and never showed as due on the support queue.
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = _at(2)
    due = T0 + timedelta(hours=26)  # passed: the follow-up is overdue now
    copies = []
    for copy, (scheduled_rank, resolution_rank) in enumerate(((1, 2), (2, 1), (1, 2), (2, 1))):
        action = "resolved" if copy < 2 else "closed"
        org = str(uuid.uuid5(uuid.NAMESPACE_URL, f"follow-up-tie-org-{copy}"))
        interaction = str(uuid.uuid5(uuid.NAMESPACE_URL, f"follow-up-tie-{copy}"))
        common = {"organization_id": org, "interaction_id": interaction}
        opened = {
            "event_id": _event_id(0, 100 + copy),
            "action": "opened",
            "occurred_at": _at(0),
            "interaction_type": "check_in",
            "channel": "phone",
            **common,
        }
        scheduled = {
            "event_id": _event_id(scheduled_rank, 100 + copy),
            "action": "follow_up_scheduled",
            "occurred_at": at,
            "follow_up_at": due.isoformat(),
            **common,
        }
        resolution = {
            "event_id": _event_id(resolution_rank, 100 + copy),
            "action": action,
            "occurred_at": at,
            **common,
        }
        copies.append((interaction, action, [opened, scheduled, resolution]))
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings):
            # each event in its own batch: every merge goes through the stored row
            for step in range(3):
                await produce_json(producer, topics.support, [c[2][step] for c in copies])
                await wait_processed(migrated_database, 4 * (step + 1), 60.0, exactly=True)
    finally:
        await producer.stop()
    conn = await asyncpg.connect(migrated_database)
    try:
        for interaction, action, _events in copies:
            row = await conn.fetchrow(
                "SELECT status, follow_up_required, follow_up_at, follow_up_completed_at,"
                " coalesce(follow_up_required AND follow_up_completed_at IS NULL"
                "          AND follow_up_at <= now(), false) AS overdue"
                " FROM support_interactions WHERE id = $1",
                uuid.UUID(interaction),
            )
            assert row is not None, interaction
            assert dict(row) == {
                "status": action,
                "follow_up_required": True,
                "follow_up_at": due,
                "follow_up_completed_at": None,
                "overdue": True,  # what the support queue's overdue filter reads
            }, (interaction, action)
    finally:
        await conn.close()


# The desk unassigns an interaction and retracts its sentiment by naming them in
# `cleared` (null means "left out", as it always has: producers that write every field
# send it); there was no way to, so the former assignee kept it (the support role's
# row-level security shows a support user the interactions assigned to them) and it
# never reached the triage queue. Rank: (occurred_at hours, body).
NULLS: list[tuple[float, dict[str, Any]]] = [
    (
        0,
        {
            "action": "opened",
            "interaction_type": "billing_inquiry",
            "channel": "email",
            "assigned_to": STAFF_A,
            "subject": "Invoice wrong",
            "sentiment": "negative",
        },
    ),
    (0.5, {"action": "updated", "cleared": ["subject"]}),  # older than the subject at 3h
    (1, {"action": "updated", "assigned_to": STAFF_B}),
    (2, {"action": "updated", "cleared": ["assigned_to", "sentiment"]}),  # unassigned
    (3, {"action": "updated", "subject": "Invoice wrong (March)"}),
    # a producer writing every field: null is "left out", it clears nothing
    (4, {"action": "updated", "assigned_to": None, "subject": None, "priority": "high"}),
    (5, {"action": "updated", "sentiment": None, "outcome": None}),
]
NULL_ORDERS = [[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0], [3, 2, 6, 1, 0, 5, 4]]


async def test_a_field_named_in_cleared_is_set_to_none_by_the_latest_event(
    migrated_database: str, kafka_bootstrap: str, pg_admin_url: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    copies = []
    for copy, order in enumerate(NULL_ORDERS):
        org = str(uuid.uuid5(uuid.NAMESPACE_URL, f"null-clears-org-{copy}"))
        interaction = str(uuid.uuid5(uuid.NAMESPACE_URL, f"null-clears-{copy}"))
        bodies = [
            {
                "event_id": _event_id(rank, 200 + copy),
                "organization_id": org,
                "interaction_id": interaction,
                "occurred_at": _at(hours),
                **body,
            }
            for rank, (hours, body) in enumerate(NULLS)
        ]
        copies.append((interaction, [bodies[i] for i in order]))
    conn = await asyncpg.connect(migrated_database)
    try:
        await b.insert_row(
            conn, "user_profiles", b.user_profile(id=uuid.UUID(STAFF_B), role="support")
        )
    finally:
        await conn.close()
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings):
            # one event of each copy per round, each round committed before the next
            for step in range(len(NULLS)):
                await produce_json(producer, topics.support, [c[1][step] for c in copies])
                await wait_processed(
                    migrated_database, len(copies) * (step + 1), 60.0, exactly=True
                )
    finally:
        await producer.stop()
    conn = await asyncpg.connect(migrated_database)
    try:
        rows = await conn.fetch(
            "SELECT assigned_to, sentiment, subject, priority, status"
            " FROM support_interactions WHERE id = ANY($1::uuid[])",
            [uuid.UUID(interaction) for interaction, _ in copies],
        )
    finally:
        await conn.close()
    assert [dict(r) for r in rows] == [
        {
            "assigned_to": None,  # unassigned at 2h: on the triage queue
            "sentiment": None,
            "subject": "Invoice wrong (March)",  # the clearing at 0.5h is older; null at 4h
            "priority": "high",
            "status": "open",
        }
    ] * len(copies)
    # the former assignee no longer sees them, under row-level security
    key = await signing_key(migrated_database)
    async with api_login(pg_admin_url, migrated_database) as login_url:
        dashboard = await asyncpg.connect(login_url, server_settings={"role": "cs_dashboard"})
        try:
            token = mint_token(
                key, uuid.UUID(STAFF_B), expires_at=datetime.now(UTC) + timedelta(hours=1)
            )
            await dashboard.fetchval(LOGIN, token)
            seen = await dashboard.fetchval("SELECT count(*) FROM support_interactions")
        finally:
            await dashboard.close()
    assert seen == 0
