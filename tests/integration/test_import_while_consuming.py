"""`healthscore import --profiles` (straight into the database) while the running
service applies events of the same organizations: documented as safe. Neither writer
may lose the other's update (the consumer holds states between batches)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from healthscore.core.scoring.state import unpack_state
from healthscore.service.imports import Profile, apply_profiles
from healthscore.store.states import lock_states
from tests.utils.harness import make_topics, running_service, service_settings
from tests.utils.scenarios import (
    expected_event_counts,
    produce_stream,
    simulated_stream,
    wait_caught_up,
)
from tests.utils.states import stored_states


async def test_profiles_imported_during_consumption_are_kept_and_no_event_is_lost(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    inputs = [topics.usage, topics.support]
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, group=group, batch_max_records=20
    )
    stream = simulated_stream(organizations=30, events=3000, seed=707)
    organizations = sorted({m.organization_id for m in stream if m.organization_id})
    long_ago = (datetime.now(UTC) - timedelta(days=400)).timestamp()
    profiles = [
        Profile(uuid.UUID(org), long_ago - i, {"profile_completed": long_ago})
        for i, org in enumerate(organizations)
    ]
    conn = await asyncpg.connect(migrated_database)
    try:
        async with running_service(settings):
            producing = asyncio.create_task(produce_stream(kafka_bootstrap, topics, stream))
            for _ in range(5):  # pages of 3, again and again while batches run
                await apply_profiles(conn, profiles, 86400.0, page=3)
                await asyncio.sleep(0.2)
            await producing
            await wait_caught_up(migrated_database, kafka_bootstrap, group, inputs)
        states = await stored_states(conn)
    finally:
        await conn.close()
    expected = expected_event_counts(stream)
    assert {org: states[org].event_count for org in expected} == expected
    for profile in profiles:
        state = states[str(profile.organization_id)]
        assert state.created_at == profile.created_at
        assert state.milestones["profile_completed"] <= long_ago


async def test_an_import_page_aborted_by_a_deadlock_is_applied_again(
    migrated_database: str,
) -> None:
    """A page locks its organizations' states in organization order; a batch's checked
    save updates them in the order its plan decides. Crossed here for certain: the
    page holds A and waits for B, which the other transaction holds while it asks for
    A. PostgreSQL aborts the page (it waited first); the page is applied again once
    the other transaction commits, and nothing of either is lost."""
    a, b = sorted(str(uuid.uuid4()) for _ in range(2))
    created = (datetime.now(UTC) - timedelta(days=400)).timestamp()
    profiles = [Profile(uuid.UUID(org), created, {"profile_completed": created}) for org in (a, b)]
    bump = (
        "UPDATE organization_state SET health_version = health_version + 1"
        " WHERE organization_id = $1"
    )
    setup, batch, importer = [await asyncpg.connect(migrated_database) for _ in range(3)]
    try:
        # PostgreSQL aborts the waiter whose deadlock_timeout expires once the cycle is
        # closed: the batch's never within the test, the page's later than the test takes
        # to close it (at the default 1 s, a loaded CI machine had the page's one check
        # find no cycle yet, and the batch's abort the batch instead)
        await batch.execute("SET deadlock_timeout = '60s'")
        await importer.execute("SET deadlock_timeout = '5s'")
        async with setup.transaction():
            _, versions = await lock_states(setup, [a, b])  # both rows exist, no state yet
        crossed = batch.transaction()
        await crossed.start()
        await batch.execute(bump, b)
        page = asyncio.create_task(apply_profiles(importer, profiles, 86400.0, page=2))
        waits = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1"
        while await setup.fetchval(waits, importer.get_server_pid()) != "Lock":
            assert not page.done(), page
            await asyncio.sleep(0.01)
        await batch.execute(bump, a)  # the cycle: returns once the page is aborted
        await crossed.commit()
        assert await asyncio.wait_for(page, 30) == 2
        rows = await setup.fetch(
            "SELECT organization_id::text AS org, state_msgpack, health_version"
            " FROM organization_state"
            " WHERE organization_id = ANY($1::uuid[])",
            [a, b],
        )
    finally:
        for conn in (setup, batch, importer):
            await conn.close()
    # each changed once by the other transaction and once by the page
    assert {r["org"]: r["health_version"] for r in rows} == {o: v + 2 for o, v in versions.items()}
    for row in rows:
        assert unpack_state(row["state_msgpack"]).created_at == created
