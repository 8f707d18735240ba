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

import asyncpg

from healthscore.service.erasure import erase_organization
from healthscore.service.imports import Profile, _apply_profile_page
from tests.integration.test_erase_organization import _rows_of
from tests.utils.harness import fetchval


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
    eraser = await asyncpg.connect(
        migrated_database, server_settings={"role": "healthscore_eraser"}
    )
    try:
        result = await erase_organization(eraser, org, apply=True)
    finally:
        await eraser.close()
    assert result.first and result.rows == {}, result.rows
    assert await _rows_of(migrated_database, str(org)) == {}
