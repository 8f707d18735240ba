"""`healthscore erase` of many organizations: their event ids in one scan.

`processed_events` has no index on the organization (one more index entry per event on
the hot path), so deleting an organization's event ids reads the whole table. An
erasure of a file of organizations makes that read once for a page of them, not once
each: checked by the table's sequential scans (`pg_stat_user_tables`, read after the
eraser's session ended, which flushes its counters), on real PostgreSQL, through the
function and through the command.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson

from healthscore.service.erasure import ERASE_PAGE, erase_organizations
from tests.integration.test_erase_organization import _erase, _eraser_login, _health_feed_of
from tests.utils.harness import erase_now, fetch, fetchval, make_topics


async def _with_event_ids(database_url: str, counts: dict[uuid.UUID, int]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for org, count in counts.items():
            await conn.execute("INSERT INTO organizations (id) VALUES ($1)", org)
            await conn.executemany(
                "INSERT INTO processed_events (event_id, organization_id, occurred_at) "
                "VALUES ($1, $2, $3)",
                [(uuid.uuid4(), org, datetime.now(UTC)) for _ in range(count)],
            )
    finally:
        await conn.close()


async def _scans(database_url: str) -> int:
    """Sequential scans of processed_events so far, once no other session is left to
    report its own (a session flushes its counters when it ends)."""
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(200):
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
                "AND datname = current_database()"
            )
            if not others:
                break
            await asyncio.sleep(0.05)
        value = await conn.fetchval(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'processed_events'"
        )
        return int(value)
    finally:
        await conn.close()


async def _event_ids_of(database_url: str, orgs: list[uuid.UUID]) -> int:
    return int(
        await fetchval(
            database_url,
            "SELECT count(*) FROM processed_events WHERE organization_id = ANY($1::uuid[])",
            orgs,
        )
    )


async def test_a_page_of_organizations_reads_the_event_ids_once(migrated_database: str) -> None:
    counts = {uuid.uuid4(): 2, uuid.uuid4(): 0, uuid.uuid4(): 5}
    kept = uuid.uuid4()
    finished = uuid.uuid4()
    await _with_event_ids(migrated_database, {**counts, kept: 3, finished: 1})
    await erase_now(migrated_database, finished)
    page = [*counts, finished]

    for apply in (False, True):
        before = await _scans(migrated_database)
        eraser = await asyncpg.connect(
            migrated_database, server_settings={"role": "healthscore_eraser"}
        )
        try:
            results = await erase_organizations(eraser, page, apply=apply)
        finally:
            await eraser.close()
        assert await _scans(migrated_database) - before == 1, apply
        removed = {
            result.organization_id: result.rows.get("processed_events", 0) for result in results
        }
        assert removed == {**counts, finished: 0}, (apply, removed)
        left = await _event_ids_of(migrated_database, list(counts))
        assert left == (0 if apply else sum(counts.values())), apply

    assert await _event_ids_of(migrated_database, [kept]) == 3
    audit = {
        row["organization_id"]: (orjson.loads(row["r"]), row["completed_at"])
        for row in await fetch(
            migrated_database,
            "SELECT organization_id, rows_removed::text AS r, completed_at "
            "FROM erased_organizations WHERE organization_id = ANY($1::uuid[])",
            page,
        )
    }
    # each erasure's own count, every one finished; the one finished before keeps its record
    for org, count in counts.items():
        rows, completed_at = audit[org]
        assert rows.get("processed_events", 0) == count, (org, rows)
        assert completed_at is not None
    assert audit[finished][0]["processed_events"] == 1


async def test_more_than_a_page_is_refused_and_so_is_an_id_twice(migrated_database: str) -> None:
    eraser = await asyncpg.connect(
        migrated_database, server_settings={"role": "healthscore_eraser"}
    )
    try:
        for page in ([uuid.uuid4() for _ in range(ERASE_PAGE + 1)], [uuid.uuid4()] * 2):
            try:
                await erase_organizations(eraser, page, apply=False)
            except ValueError:
                continue
            raise AssertionError(f"a page of {len(page)} was taken")
    finally:
        await eraser.close()


async def test_erase_a_file_of_organizations(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    counts = {uuid.uuid4(): 4, uuid.uuid4(): 1, uuid.uuid4(): 0}
    await _with_event_ids(migrated_database, counts)
    orgs = list(counts)
    listing = tmp_path / "offboarded.txt"
    # a comment, an id twice (in another spelling), a blank line
    listing.write_text(
        f"# offboarded in November\n{orgs[0]}\n{str(orgs[1]).upper()}\n\n{orgs[2]}\n{orgs[0]}\n"
    )
    topics = await make_topics(kafka_bootstrap, partitions=1)
    async with _eraser_login(migrated_database) as (eraser_url, _login):
        for apply in (False, True):
            before = await _scans(migrated_database)
            args = ("--file", str(listing), *(("--yes",) if apply else ()))
            done = await _erase(eraser_url, kafka_bootstrap, topics, *args)
            assert done.returncode == 0, done.stderr
            assert await _scans(migrated_database) - before == 1, (apply, done.stdout)
            verb = "removed" if apply else "would remove"
            for org, count in counts.items():
                block = done.stdout.split(f"organization {org}: {verb} ", 1)[1]
                block = block.split("\norganization ", 1)[0]
                event_ids = [
                    line.split() for line in block.splitlines() if "processed_events" in line
                ]
                assert event_ids == ([["processed_events", str(count)]] if count else []), block
            assert done.stdout.count("organization ") == 3, done.stdout
            left = await _event_ids_of(migrated_database, orgs)
            assert left == (0 if apply else sum(counts.values())), apply
    assert "3 organization(s) erased" in done.stdout, done.stdout
    for org in orgs:
        assert (await _health_feed_of(kafka_bootstrap, topics.health, str(org)))[-1:] == [None]


async def test_a_page_stopped_before_its_event_ids_says_which_are_erased_but_unfinished(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    # the second step waits on a lock a session holds on one event id, and is cancelled
    # there: the page's first steps committed, the command said "0 of 3 erased" of them
    counts = {uuid.uuid4(): 2 for _ in range(3)}
    await _with_event_ids(migrated_database, counts)
    orgs = list(counts)
    listing = tmp_path / "offboarded.txt"
    listing.write_text("".join(f"{org}\n" for org in orgs))
    topics = await make_topics(kafka_bootstrap, partitions=1)
    holder = await asyncpg.connect(migrated_database)
    try:
        async with _eraser_login(migrated_database) as (eraser_url, login), holder.transaction():
            await holder.execute(
                "SELECT 1 FROM processed_events WHERE organization_id = $1 FOR UPDATE", orgs[-1]
            )
            erase = asyncio.create_task(
                _erase(eraser_url, kafka_bootstrap, topics, "--file", str(listing), "--yes")
            )
            waiting = None
            for _ in range(600):
                waiting = await fetchval(
                    migrated_database,
                    "SELECT pid FROM pg_stat_activity WHERE usename = $1"
                    " AND wait_event_type = 'Lock'",
                    login,
                )
                if waiting is not None or erase.done():
                    break
                await asyncio.sleep(0.05)
            assert waiting is not None, (await erase).stderr
            await fetchval(migrated_database, "SELECT pg_cancel_backend($1)", waiting)
            done = await erase
    finally:
        await holder.close()
    assert done.returncode == 2, done.stdout
    assert "0 of 3 erased" in done.stderr, done.stderr
    assert "3 more erased but unfinished" in done.stderr, done.stderr
    unfinished = await fetchval(
        migrated_database,
        "SELECT count(*) FROM erased_organizations"
        " WHERE organization_id = ANY($1::uuid[]) AND completed_at IS NULL",
        orgs,
    )
    assert unfinished == 3
