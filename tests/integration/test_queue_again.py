"""The projector's queue: `queue_again` while a pass holds the organization's entry,
and the ages its gauges report.

A replica whose feed record landed late (after a newer pass published the newer state)
queues the organization again so that a pass after that record republishes the
newest state: the compacted feed must end on it. If a pass holds the entry right now
(it has read the state and published, and is about to remove the entry), the queueing
must wait for it and queue anew once the pass removed it. Before, it wrote nothing
(`ON CONFLICT DO NOTHING` does not wait for a row lock) and the pass then removed the
entry: no pass came after the late record, and the feed ended on the older state.
Real PostgreSQL, the service's own statements and role.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, tzinfo

import asyncpg
import pytest

from healthscore.core.scoring.model import default_model
from healthscore.service import projector as projector_module
from healthscore.service.projector import Projector, queue_again
from healthscore.store import sql
from healthscore.store.db import create_pool
from tests.utils.harness import fetchval


async def test_queueing_again_waits_for_a_pass_holding_the_entry(migrated_database: str) -> None:
    org = await _queued(migrated_database, version=6, queued_seconds_ago=0)
    pool = await create_pool(migrated_database, "healthscore_writer")
    try:
        async with pool.acquire() as projecting:
            pass_holds = projecting.transaction()
            await pass_holds.start()
            # as a pass takes its page (PENDING_PROJECTION: FOR UPDATE OF q)
            await projecting.fetch(
                "SELECT organization_id FROM read_model_pending"
                " WHERE organization_id = $1 FOR UPDATE",
                org,
            )
            queued = asyncio.ensure_future(queue_again(pool, [org]))
            await asyncio.sleep(1.0)
            assert not queued.done(), "queued again beside the pass's entry without waiting"
            # the pass projected version 6, the state's: it removes the entry
            await projecting.execute(sql.MARK_PROJECTED, [org], [6])
            await pass_holds.commit()
            await asyncio.wait_for(queued, timeout=10)
        async with pool.acquire() as conn:
            entry = await conn.fetchrow(
                "SELECT version FROM read_model_pending WHERE organization_id = $1", org
            )
    finally:
        await pool.close()
    assert entry is not None, "the pass removed the entry and nothing queued it again"
    assert entry["version"] == 6


async def test_the_read_models_ages_are_measured_on_the_databases_clock(
    migrated_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staleness and the owed feed's age compare times the database wrote: measured
    on its clock, a replica whose own clock runs behind does not under-report them
    (before, this process's clock was taken against the database's times: a minute
    behind read a 100 s old entry as 40 s)."""
    org = await _queued(migrated_database, version=1, queued_seconds_ago=100)
    await fetchval(
        migrated_database,
        "INSERT INTO health_feed_owed (organization_id, owed_since)"
        " VALUES ($1, now() - interval '200 seconds') RETURNING organization_id",
        org,
    )

    class _Behind(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
            return datetime.now(tz) - timedelta(seconds=60)

    monkeypatch.setattr(projector_module, "datetime", _Behind)
    pool = await create_pool(migrated_database, "healthscore_writer")
    try:
        projector = Projector(pool, default_model(), None, None)
        staleness = await projector.staleness()
        owed = await projector.feed_owed_age()
    finally:
        await pool.close()
    assert 100 <= staleness < 130, staleness
    assert 200 <= owed < 230, owed


async def _queued(database_url: str, version: int, queued_seconds_ago: float) -> uuid.UUID:
    """A new organization with a stored state at `version`, queued for the projector
    `queued_seconds_ago` (database time)."""
    org = uuid.uuid4()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO organizations (id) VALUES ($1)", org)
        await conn.execute(
            "INSERT INTO organization_state (organization_id, health_version) VALUES ($1, $2)",
            org,
            version,
        )
        await conn.execute(
            "INSERT INTO read_model_pending (organization_id, version, queued_at)"
            " VALUES ($1, $2, now() - make_interval(secs => $3))",
            org,
            version,
            float(queued_seconds_ago),
        )
    finally:
        await conn.close()
    return org
