"""The SQL of docs/operations.md's runbooks, run as the role each one names.

An operator pastes these at an incident: a statement the role may not run, or one
that row-level security lets run on no row at all, fails them exactly then. Each
statement is taken from the doc itself (a changed one is run as changed), on a
migrated database holding a pending alert and stored offsets, in a transaction
rolled back at the end.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from healthscore.store.schema_catalog import OWNER_ROLE, WRITER_ROLE

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
REPLAY_GROUP = "healthscore-replay-xxxxxxxx"  # the runbook's placeholder, as written

# how the doc names each role: the service's login, and an administrator (here a
# member of the owner role without superuser rights, as on a managed PostgreSQL)
SERVICE_LOGIN = "`DATABASE_URL`"
ADMIN_LOGIN = "`MIGRATION_DATABASE_URL`"


def runbook_statement(starts: str) -> tuple[str, str]:
    """The one statement of the doc that starts with `starts` (inline, or in a ```sql
    block), and what leads to it: its list item, or the paragraph before the block."""
    text = OPERATIONS.read_text()
    found = [
        m
        for m in re.finditer(r"`([^`]+;)`|```sql\n(.*?)```", text, re.S)
        if (m.group(1) or "").startswith(starts) or starts in (m.group(2) or "")
    ]
    assert len(found) == 1, f"{starts!r}: {len(found)} statements"
    m = found[0]
    if m.group(1) is not None:
        statement = m.group(1)
        items = [i.start() for i in re.finditer(r"\n\s*\d+\. ", text[: m.start()])]
        start = max([text.rfind("\n\n", 0, m.start()), *items])
    else:
        block = re.search(re.escape(starts) + r"[^;]*;", m.group(2))
        assert block is not None
        statement = block.group(0)
        start = text.rfind("\n\n", 0, m.start() - 2)  # the paragraph before the block
    return statement, text[start : m.end()]


@pytest.fixture
async def conn(migrated_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser session on a database with one pending alert and the stored offsets
    of a live group (usage, support, and a quiet profile partition) and of a replay."""
    conn = await asyncpg.connect(migrated_database)
    organization = uuid.uuid4()
    await conn.execute("INSERT INTO organizations (id) VALUES ($1)", organization)
    await conn.execute(
        "INSERT INTO alert_outbox (alert_id, organization_id, kind, episode, payload) "
        "VALUES ($1, $2, 'risk_raised', 1, '{}')",
        uuid.uuid4(),
        organization,
    )
    offsets = [
        ("healthscore", "product.usage.v1", 0, datetime(2026, 12, 4, tzinfo=UTC)),
        ("healthscore", "support.interactions.v1", 0, datetime(2026, 12, 3, tzinfo=UTC)),
        ("healthscore", "organization.profile.v1", 0, datetime(2026, 1, 1, tzinfo=UTC)),
        (REPLAY_GROUP, "product.usage.v1", 0, datetime(2026, 12, 4, tzinfo=UTC)),
        (REPLAY_GROUP, "product.usage.v1", 1, datetime(2026, 12, 4, tzinfo=UTC)),
    ]
    await conn.executemany(
        "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset, "
        "max_event_time) VALUES ($1, $2, $3, 10, $4)",
        offsets,
    )
    try:
        yield conn
    finally:
        await conn.close()


async def run_as(conn: asyncpg.Connection, role: str, statement: str) -> list[dict[str, Any]]:
    """`statement` as `role` (its privileges and row-level security), rolled back; an
    UPDATE's answer is how many rows it changed."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(f"SET LOCAL ROLE {role}")
        if statement.lstrip().upper().startswith("UPDATE"):
            status = await conn.execute(statement)
            return [{"updated": int(status.split()[-1])}]
        return [dict(row) for row in await conn.fetch(statement)]
    finally:
        await transaction.rollback()


async def test_what_the_outbox_holds_as_the_service_login(conn: asyncpg.Connection) -> None:
    statement, step = runbook_statement("SELECT kind, count(*), min(created_at) FROM alert_outbox")
    assert SERVICE_LOGIN in step
    rows = await run_as(conn, WRITER_ROLE, statement)
    assert [(r["kind"], r["count"]) for r in rows] == [("risk_raised", 1)]
    # what the doc warns of: an owner sees no row of it
    assert await run_as(conn, OWNER_ROLE, statement) == []


async def test_the_sweeps_clock_leaves_the_quiet_profile_partitions_out(
    conn: asyncpg.Connection,
) -> None:
    statement, _ = runbook_statement(
        "SELECT topic, partition, max_event_time FROM consumer_offsets"
    )
    rows = await run_as(conn, WRITER_ROLE, statement)
    # oldest first: the partition holding the watermark back (never the profile one)
    assert [r["topic"] for r in rows] == ["support.interactions.v1", "product.usage.v1"]


async def test_handing_the_replays_offsets_over_as_the_administrator(
    conn: asyncpg.Connection,
) -> None:
    statement, step = runbook_statement("UPDATE consumer_offsets SET consumer_group")
    assert ADMIN_LOGIN in step
    await conn.execute("DELETE FROM consumer_offsets WHERE consumer_group = 'healthscore'")
    assert await run_as(conn, OWNER_ROLE, statement) == [{"updated": 2}]
    # the doc says why not as the service: it may not rename a group
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await run_as(conn, WRITER_ROLE, statement)


async def test_marking_the_replayed_alerts_sent_as_the_service_login(
    conn: asyncpg.Connection,
) -> None:
    statement, step = runbook_statement("UPDATE alert_outbox SET published_at = now()")
    assert SERVICE_LOGIN in step
    assert await run_as(conn, WRITER_ROLE, statement) == [{"updated": 1}]
    # as an owner the statement succeeds and marks nothing: the relay would send them all
    assert await run_as(conn, OWNER_ROLE, statement) == [{"updated": 0}]


async def test_each_decision_with_its_label_as_the_service_login(
    conn: asyncpg.Connection,
) -> None:
    statement, step = runbook_statement("SELECT a.alert_id, a.kind, a.episode")
    assert SERVICE_LOGIN in step
    organization = await conn.fetchval("SELECT organization_id FROM alert_outbox")
    rows = await run_as(conn, WRITER_ROLE, statement.replace("'...'", f"'{organization}'"))
    assert [(r["kind"], r["outcome"]) for r in rows] == [("risk_raised", None)]


async def test_the_backends_key_as_the_owner(conn: asyncpg.Connection) -> None:
    statement, step = runbook_statement(
        "SELECT key_id, encode(secret, 'hex') FROM app_signing_keys"
    )
    assert "`healthscore_owner`" in step
    rows = await run_as(conn, OWNER_ROLE, statement)
    assert [r["key_id"] for r in rows] == [1] and len(rows[0]["encode"]) == 128
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # "nobody else can read it"
        await run_as(conn, WRITER_ROLE, statement)
