"""The tests' one wait for applied events: `wait_processed` against a real database.

Dozens of tests wait for the service to have applied their events this way; a wait
that returned early (or never failed) would let each of them assert on a state the
service had not reached yet.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from tests.utils.scenarios import wait_processed


async def _apply(database_url: str, events: int, after: float = 0.0) -> None:
    """`events` applied event ids for one organization, `after` seconds from now."""
    await asyncio.sleep(after)
    organization = uuid.uuid4()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(
            "INSERT INTO processed_events (event_id, organization_id, occurred_at)"
            " VALUES ($1, $2, $3)",
            [(uuid.uuid4(), organization, datetime.now(UTC)) for _ in range(events)],
        )
    finally:
        await conn.close()


async def test_wait_processed_waits_for_at_least_or_exactly_the_count(
    migrated_database: str,
) -> None:
    await _apply(migrated_database, 3)
    assert await wait_processed(migrated_database, 2, 5.0) == 3
    assert await wait_processed(migrated_database, 3, 5.0, exactly=True) == 3
    # exactly: more than that many is no success (an event applied that should not be)
    with pytest.raises(AssertionError, match="waiting for 2 processed events; last 3"):
        await wait_processed(migrated_database, 2, 0.5, exactly=True)
    with pytest.raises(AssertionError, match="waiting for at least 4 processed events"):
        await wait_processed(migrated_database, 4, 0.5)
    # events that land while it waits (a batch committing) end the wait
    landing = asyncio.create_task(_apply(migrated_database, 2, after=0.5))
    assert await wait_processed(migrated_database, 5, 10.0, exactly=True) == 5
    await landing


async def test_wait_processed_fails_at_once_when_also_fails(migrated_database: str) -> None:
    def child_died() -> None:
        raise AssertionError("serve exited")

    with pytest.raises(AssertionError, match="serve exited"):
        await asyncio.wait_for(
            wait_processed(migrated_database, 1, 60.0, also=child_died), timeout=5.0
        )
