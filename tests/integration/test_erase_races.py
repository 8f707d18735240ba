"""`healthscore erase` racing the writers that create an organization's first rows.

An import of a never-seen organization's profile creates its `organizations` and
state rows in its page's transaction. An erasure committed while that transaction is
open did not see those rows (not committed yet): it deleted nothing, recorded the
tombstone, and the import then committed the rows of an erased organization. Real
PostgreSQL, the import's own page function as the service's role, the erasure as
healthscore_eraser.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from healthscore.core.scoring.model import default_model, v1_model
from healthscore.service.erasure import erase_organization
from healthscore.service.imports import (
    ChurnLabel,
    Profile,
    _apply_profile_page,
    apply_profiles,
    import_labels,
)
from healthscore.service.ops.metrics import Metrics
from healthscore.service.projector import Projector
from healthscore.service.promotion import Promotion
from healthscore.service.shadow import ShadowScorer
from healthscore.service.sweep import SilenceSweep
from tests.integration.test_erase_organization import _rows_of
from tests.integration.test_score_quality import Feed, T, eager, feed, org, quiet
from tests.utils.harness import erase_now, fetchval

__all__ = ["feed"]  # the fixture, used by name


async def _waiting(
    conn: asyncpg.Connection, count: int, running: asyncio.Task[Any] | None = None
) -> None:
    """Until `count` other sessions of the database wait on a lock; `running`, a task
    that must not end meanwhile (its statement is the one that should wait)."""
    waiting = 0
    for _ in range(400):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND pid <> pg_backend_pid() AND datname = current_database()"
        )
        assert running is None or not running.done(), running.result()
        if waiting >= count:
            return
        await asyncio.sleep(0.05)
    sessions = await conn.fetch(
        "SELECT state, wait_event_type, wait_event, left(query, 60) AS q"
        " FROM pg_stat_activity WHERE datname = current_database()"
    )
    raise AssertionError(f"{waiting} sessions wait on a lock, not {count}: {sessions}")


async def test_an_import_page_open_when_the_erasure_commits_leaves_nothing(
    migrated_database: str,
) -> None:
    org = uuid.uuid4()
    created = (datetime.now(UTC) - timedelta(days=400)).timestamp()
    profile = Profile(org, created, {"first_client_added": created + 86400})
    writer = await asyncpg.connect(
        migrated_database, server_settings={"role": "healthscore_writer"}
    )
    eraser = await asyncpg.connect(
        migrated_database, server_settings={"role": "healthscore_eraser"}
    )
    try:
        async with writer.transaction():
            # the page has created the organization's rows, not committed yet
            assert await _apply_profile_page(writer, [profile], 6 * 3600) == 1
            erasing = asyncio.create_task(erase_organization(eraser, org, apply=True))
            await asyncio.sleep(1.0)
        result = await asyncio.wait_for(erasing, 30)
    finally:
        await writer.close()
        await eraser.close()
    assert result.first
    assert await _rows_of(migrated_database, str(org)) == {}
    # the audit counts what the import had created, not the erasure's own claim
    assert result.rows.get("organizations") == 1, result.rows
    assert result.rows.get("organization_state") == 1, result.rows
    assert (
        await fetchval(
            migrated_database,
            "SELECT count(*) FROM erased_organizations WHERE organization_id = $1",
            org,
        )
        == 1
    )


async def test_erasing_a_never_seen_organization_counts_no_rows(migrated_database: str) -> None:
    """The runbook's carry-over into a new database: tombstones only, nothing removed."""
    org = uuid.uuid4()
    result = await erase_now(migrated_database, org)
    assert result.first and result.rows == {}, result.rows
    assert await _rows_of(migrated_database, str(org)) == {}


async def test_a_shadow_page_that_read_an_organization_erased_before_its_write_does_not_fail(
    feed: Feed, migrated_database: str
) -> None:
    """The shadow scorer reads a page of states without row locks, then writes the
    candidate's scores: an erasure committed in between left a score of an organization
    whose row is gone, and the page failed on the foreign key (shadow_failed; the next
    page healed it). The page is held between its read and its write by another
    session's uncommitted shadow row of the page's first organization."""
    first, gone = sorted([org("race-a"), org("race-b")])
    live = quiet(default_model())
    for organization in (first, gone):
        await feed.apply(feed.logins(organization, T, 3), live)
    candidate = eager(default_model(), "v2-race")
    scorer = ShadowScorer(feed.pool, candidate)
    holder = await asyncpg.connect(migrated_database)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "INSERT INTO shadow_health (organization_id, score_model_version, health_score,"
            " churn_probability, risk_level, components, scored_at, shadow_state,"
            " source_version, started_at) VALUES ($1, $2, 50, 0.1, 'low', '{}', now(),"
            " '{}', 0, now())",
            first,
            candidate.version,
        )
        page = asyncio.create_task(scorer.score_page())
        # the page waits on the held row: its read is done, its write not
        await _waiting(holder, 1, page)
        await erase_now(migrated_database, gone)
        await tx.rollback()
        scored, _wrapped = await asyncio.wait_for(page, 30)
    finally:
        await holder.close()
    assert scored == 1
    assert await _rows_of(migrated_database, str(gone)) == {}
    assert (
        await fetchval(
            migrated_database,
            "SELECT count(*) FROM shadow_health WHERE organization_id = $1",
            first,
        )
        == 1
    )


async def test_a_promotion_page_racing_an_erasure_does_not_fail(
    feed: Feed, migrated_database: str
) -> None:
    """A promotion queues a page of organizations scored by another version for
    re-projection (one INSERT ... SELECT, no row locks): an erasure committed while the
    statement runs left it queueing an organization whose row is gone. The statement is
    held by another session's uncommitted queue entry of the page's first organization."""
    first, gone = sorted([org("promote-race-a"), org("promote-race-b")])
    old, new = v1_model(), default_model()
    for organization in (first, gone):
        await feed.apply(feed.logins(organization, T, 3), old)
    await Projector(feed.pool, old, None, None).drain()
    promoting = Promotion(feed.pool, new.version, Metrics(), page_size=10)
    holder = await asyncpg.connect(migrated_database)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "INSERT INTO read_model_pending (organization_id, version) VALUES ($1, 1)", first
        )
        page = asyncio.create_task(promoting.queue_page())
        await _waiting(holder, 1, page)
        await erase_now(migrated_database, gone)
        await tx.rollback()
        queued = await asyncio.wait_for(page, 30)
    finally:
        await holder.close()
    assert queued == 1
    assert await _rows_of(migrated_database, str(gone)) == {}


async def test_a_silence_sweep_page_racing_an_erasure_ends_erased(
    feed: Feed, migrated_database: str
) -> None:
    """The silence sweep takes due organizations' state rows (FOR UPDATE) and rescores
    them; the erasure of one of them runs while the sweep's write is held (by another
    session's uncommitted queue entry of the page's first organization). The sweep
    finishes, then the erasure removes what it wrote; neither fails."""
    first, gone = sorted([org("sweep-race-a"), org("sweep-race-b")])
    for organization in (first, gone):
        await feed.apply(feed.logins(organization, T, 3), default_model())
    admin = await asyncpg.connect(migrated_database)
    try:
        await admin.execute(
            "UPDATE organization_state SET rescore_due_at = $1 WHERE organization_id = ANY($2)",
            T + timedelta(days=1),
            [first, gone],
        )
    finally:
        await admin.close()
    sweep = SilenceSweep(feed.pool, default_model(), "race", 6 * 3600, topics=[])
    holder = await asyncpg.connect(migrated_database)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "INSERT INTO read_model_pending (organization_id, version) VALUES ($1, 1)"
            " ON CONFLICT (organization_id) DO UPDATE SET version = 1",
            first,
        )
        page = asyncio.create_task(sweep.run_once(T + timedelta(days=3)))
        await _waiting(holder, 1, page)
        erasing = asyncio.create_task(erase_now(migrated_database, gone))
        await asyncio.sleep(0.5)
        # it waits for the sweep, which holds the organization's state row
        assert not erasing.done()
        await tx.rollback()
        assert await asyncio.wait_for(page, 30) == 2
        result = await asyncio.wait_for(erasing, 60)
    finally:
        await holder.close()
    assert result.first
    assert await _rows_of(migrated_database, str(gone)) == {}
    assert (
        await fetchval(
            migrated_database,
            "SELECT count(*) FROM organization_state WHERE organization_id = $1",
            first,
        )
        == 1
    )


@pytest.mark.parametrize("imported", ["profiles", "labels"])
async def test_an_import_page_that_waited_on_the_erasures_claim_creates_nothing(
    migrated_database: str, imported: str
) -> None:
    """The other order: the erasure claims the never-seen organization's id first, then
    an import page creating it waits on that uncommitted row. Its statement read no
    tombstone (its snapshot predates the erasure's commit), so once the erasure
    committed, its row deleted, the page inserted the `organizations` row of an erased
    organization. The erasure is held between its claim and its commit by another
    session's uncommitted tombstone of the same id (rolled back)."""
    org = uuid.uuid4()
    created = (datetime.now(UTC) - timedelta(days=400)).timestamp()
    profile = Profile(org, created, {"first_client_added": created + 86400})
    holder = await asyncpg.connect(migrated_database)
    writer = await asyncpg.connect(
        migrated_database, server_settings={"role": "healthscore_writer"}
    )
    eraser = await asyncpg.connect(
        migrated_database, server_settings={"role": "healthscore_eraser"}
    )
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "INSERT INTO erased_organizations (organization_id, rows_removed) VALUES ($1, '{}')",
            org,
        )
        erasing = asyncio.create_task(erase_organization(eraser, org, apply=True))
        # the erasure has claimed the id and waits on the held tombstone
        await _waiting(holder, 1)
        importing = asyncio.create_task(
            apply_profiles(writer, [profile], 6 * 3600)
            if imported == "profiles"
            else import_labels(writer, [ChurnLabel(org, None)], datetime.now(UTC))
        )
        # the page waits on the erasure's claimed row
        await _waiting(holder, 2)
        await tx.rollback()
        result = await asyncio.wait_for(erasing, 30)
        changed = await asyncio.wait_for(importing, 30)
    finally:
        await holder.close()
        await writer.close()
        await eraser.close()
    assert result.first and result.rows == {}, result.rows
    assert changed == (0 if imported == "profiles" else 1)
    assert await _rows_of(migrated_database, str(org)) == {}
