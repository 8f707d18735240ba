"""How a state document is stored (migrations 0064, 0066).

MessagePack bytes (`pack_state`), inline and uncompressed up to a page: a batch
rewrites most of its organizations' states, and above PostgreSQL's default toast
target (about 2 KB) every save would compress the document and every read
decompress it. States an earlier release stored as JSON are migrated as they are
and read on; a replica of that release still running during a rolling deploy
fails on the renamed column instead of misreading bytes.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg
import msgspec
import pytest

from healthscore.core.scoring.aggregate import new_state
from healthscore.core.scoring.model import default_model
from healthscore.core.scoring.state import (
    OrganizationState,
    encode_state,
    pack_state,
    unpack_state,
)
from healthscore.service.ingest.pipeline import DATA_ERRORS
from healthscore.service.projector import project
from healthscore.store import sql
from healthscore.store.migrate import apply_migrations
from healthscore.store.states import lock_states, save_locked_states
from tests.integration.test_score_quality import cli
from tests.utils.migrations import migrate_before


def _large_state(organization: uuid.UUID) -> OrganizationState:
    return OrganizationState(
        organization_id=str(organization),
        last_event_at=1.7e9 + 59,
        event_count=100,
        users={str(uuid.UUID(int=i)): 1.7e9 + i for i in range(100)},
        daily_scores={str(20_000 + day): 71.25 for day in range(31)},
    )


async def test_a_state_of_several_kilobytes_is_stored_as_it_is(migrated_database: str) -> None:
    organization = uuid.uuid4()
    document = pack_state(_large_state(organization))
    # above PostgreSQL's default toast target (about 2 KB), under a page
    assert 4_000 < len(document) < 8_000
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute("INSERT INTO organizations (id) VALUES ($1)", organization)
        await conn.fetch(sql.INSERT_STATES, [organization], [document], [None], [None], False)
        row = await conn.fetchrow(
            "SELECT pg_column_size(state_msgpack), state_msgpack FROM organization_state "
            "WHERE organization_id = $1",
            organization,
        )
    finally:
        await conn.close()
    assert row is not None
    stored, raw = row
    assert raw == document
    # compressed, it would take a fraction of that (the users' ids and times repeat)
    assert stored >= len(document)


async def test_states_stored_as_json_before_0066_are_read_on_and_continued(
    empty_database: str, tmp_path: Path
) -> None:
    """A database of the previous release: its JSON states (and an empty row, JSON null)
    survive the migration; the service reads them, scores them as before, and saves
    each as MessagePack with its next change."""
    await migrate_before(empty_database, "0066", tmp_path / "before")
    kept, empty = uuid.uuid4(), uuid.uuid4()
    state = _large_state(kept)
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute(
            "INSERT INTO organizations (id) SELECT unnest($1::uuid[])", [kept, empty]
        )
        await conn.execute(
            "INSERT INTO organization_state (organization_id, state, health_version)"
            " VALUES ($1, $2::json, 4), ($3, 'null'::json, 1)",
            kept,
            encode_state(state).decode(),
            empty,
        )
        assert (await apply_migrations(empty_database))[0] == "0066"
        rows = {
            r["organization_id"]: r
            for r in await conn.fetch(
                "SELECT organization_id, state_msgpack, health_version FROM organization_state"
            )
        }
        assert rows[empty]["state_msgpack"] is None
        assert rows[kept]["state_msgpack"][:1] == b"{"  # the JSON, as it was
        assert unpack_state(rows[kept]["state_msgpack"]) == state
        model = default_model()
        assert project(unpack_state(rows[kept]["state_msgpack"]), model) == project(state, model)

        async with conn.transaction():
            states, versions = await lock_states(conn, [str(kept), str(empty)])
            assert states == {str(kept): state}
            assert versions == {str(kept): 4, str(empty): 1}
            moved = new_state(str(empty))
            saved = await save_locked_states(conn, [state, moved], versions, 3600.0)
        assert {org: version for org, (_, version) in saved.items()} == {
            str(kept): 5,
            str(empty): 2,
        }
        for organization, expected in ((kept, state), (empty, moved)):
            raw = await conn.fetchval(
                "SELECT state_msgpack FROM organization_state WHERE organization_id = $1",
                organization,
            )
            assert raw[:1] != b"{" and unpack_state(raw) == expected
    finally:
        await conn.close()


async def test_a_replica_of_the_previous_release_cannot_write_or_misread_a_state(
    migrated_database: str,
) -> None:
    """During a rolling deploy the previous release's statements name `state`: they fail
    with an error the pipeline rewinds and retries (never a data error, which would
    dead-letter the batch's records one by one)."""
    organization = uuid.uuid4()
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute("INSERT INTO organizations (id) VALUES ($1)", organization)
        for statement, args in (
            # the previous release's LOCK_STATES read and SAVE_STATES_CHECKED write
            (
                "SELECT organization_id, state::text AS state, health_version"
                " FROM organization_state WHERE organization_id = ANY($1::uuid[])",
                ([organization],),
            ),
            (
                "UPDATE organization_state s SET state = x.state::json,"
                " health_version = s.health_version + 1"
                " FROM unnest($1::uuid[], $2::text[]) AS x(organization_id, state)"
                " WHERE s.organization_id = x.organization_id",
                ([organization], [encode_state(new_state(str(organization))).decode()]),
            ),
        ):
            with pytest.raises(asyncpg.UndefinedColumnError) as refused:
                await conn.fetch(statement, *args)
            assert not isinstance(refused.value, DATA_ERRORS)
        # its first statement of every batch (LOCK_OFFSETS_AND_CLAIM_EVENT_IDS, in short)
        # claims event ids and reads states in one: refused whole, it claims none, so the
        # replica taking the partition over applies those events
        with pytest.raises(asyncpg.UndefinedColumnError):
            await conn.fetch(
                "WITH claimed AS (INSERT INTO processed_events"
                " (event_id, organization_id, occurred_at) VALUES ($1, $2, now())"
                " RETURNING event_id)"
                " SELECT event_id, NULL::text AS state FROM claimed"
                " UNION ALL SELECT NULL, state::text FROM organization_state"
                " WHERE organization_id = $2",
                uuid.uuid4(),
                organization,
            )
        # its ENSURE_STATE_ROWS (an empty row as JSON null)
        with pytest.raises(asyncpg.UndefinedColumnError):
            await conn.fetch(
                "INSERT INTO organization_state (organization_id, state)"
                " SELECT id, 'null'::json FROM unnest($1::uuid[]) AS x(id)"
                " ON CONFLICT (organization_id) DO NOTHING RETURNING organization_id",
                [organization],
            )
        assert await conn.fetchval("SELECT count(*) FROM processed_events") == 0
        assert await conn.fetchval("SELECT count(*) FROM organization_state") == 0
    finally:
        await conn.close()


async def test_the_state_command_prints_a_stored_state_as_json(migrated_database: str) -> None:
    """What psql shows as hex, `healthscore state` shows as the document (as the
    service's role: the read needs no more than the service has)."""
    organization, unknown = uuid.uuid4(), uuid.uuid4()
    state = _large_state(organization)
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute("INSERT INTO organizations (id) VALUES ($1)", organization)
        await conn.fetch(
            sql.INSERT_STATES, [organization], [pack_state(state)], [None], [None], False
        )
    finally:
        await conn.close()
    shown = cli(migrated_database, "state", str(organization))
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["state"] == msgspec.to_builtins(state)
    assert document["health_version"] == 1 and document["organization_id"] == str(organization)
    missing = cli(migrated_database, "state", str(unknown))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: no state stored for organization {unknown}"
