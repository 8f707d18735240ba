"""The batch's first statement (`sql.LOCK_OFFSETS_AND_CLAIM_EVENT_IDS`) on real
PostgreSQL: the organizations a batch's rejected records name are only looked up
among the erased, their states not read. A rejected record may list 64 ids; reading
each one's state made 4,000 such records cost 3.9 s of claims against 0.65 s
(review 35b L2)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from healthscore.core.scoring.state import OrganizationState, pack_state
from healthscore.store import sql


async def test_rejected_records_organizations_are_checked_for_erasure_not_read(
    migrated_database: str,
) -> None:
    now = datetime.now(UTC)
    stored, erased, unknown, held_absent = (uuid.uuid4() for _ in range(4))
    group, topics, partitions = "claim-test", ["product.usage.v1"], [0]
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute(sql.ENSURE_ORGANIZATIONS, [stored, held_absent])
        await conn.execute(
            sql.INSERT_STATES,
            [stored, held_absent],
            [pack_state(OrganizationState(str(o), event_count=3)) for o in (stored, held_absent)],
            [now, now],
            [now, now],
            True,
        )
        await conn.execute("INSERT INTO erased_organizations (organization_id) VALUES ($1)", erased)
        await conn.execute(sql.ENSURE_OFFSET_ROWS, group, topics, partitions)
        async with conn.transaction():
            rows = await conn.fetch(
                sql.LOCK_OFFSETS_AND_CLAIM_EVENT_IDS,
                group,
                topics,
                partitions,
                [],
                [],
                [],
                [],
                [],
                [],
                [],
                [held_absent],  # a state the consumer does not hold: read
                [stored, erased, unknown],  # named by rejected records: erasure only
            )
    finally:
        await conn.close()
    states = {
        row["organization_id"]: row["state"] for row in rows if row["organization_id"] is not None
    }
    assert set(states) == {held_absent, erased}
    assert states[held_absent] is not None  # the state, read
    assert states[erased] is None  # the erased organization's row
