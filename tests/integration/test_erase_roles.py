"""Role escalation around `healthscore erase`, with real roles and connections.

As an operator's login that is a member of healthscore_eraser (as the runbook grants
it): nothing beyond what erasing needs. It must not read other organizations' data (the
read model, the dead letters' payloads), change the audit trail of an erasure already
finished, or hand its rights on. As the service's role: no way to undo an erasure (the
tombstone cannot be deleted or changed).
"""

from __future__ import annotations

import contextlib
import uuid

import asyncpg
import orjson
import pytest

from healthscore.service.erasure import erase_organization
from healthscore.service.ingest.decode import RawRecord, Rejection
from healthscore.service.ingest.dlq import dead_letter_columns
from healthscore.store import sql
from tests.integration.test_erase_organization import _eraser_login
from tests.utils.harness import erase_now, fetchval

DENIED = (asyncpg.InsufficientPrivilegeError,)


async def _dead_letter(database_url: str, org: uuid.UUID, body: bytes) -> None:
    """A pending dead letter of `org`, and one its topic refused (kept, withheld)."""
    rejections = [
        Rejection(RawRecord("product.usage.v1", 0, offset, str(org).encode(), body), "x", "y")
        for offset in (uuid.uuid4().int % 10**9, uuid.uuid4().int % 10**9 + 1)
    ]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql.INSERT_DEAD_LETTERS, *dead_letter_columns(rejections))
        newest = await conn.fetchval("SELECT max(id) FROM dead_letter_outbox")
        await conn.execute(sql.WITHHOLD_DEAD_LETTERS, [newest], ["too large"])
    finally:
        await conn.close()


async def test_the_eraser_reads_no_other_organizations_data(migrated_database: str) -> None:
    other = uuid.uuid4()
    await _dead_letter(migrated_database, other, b'{"subject": "Jane Doe jane@example.com"}')
    async with _eraser_login(migrated_database) as (eraser_url, _login):
        conn = await asyncpg.connect(eraser_url)
        try:
            for query in (
                "SELECT * FROM customer_health",
                "SELECT * FROM support_interactions",
                "SELECT state_msgpack FROM organization_state",
                "SELECT name FROM organizations",
                "SELECT email FROM user_profiles",
                "SELECT payload FROM alert_outbox",
                # other organizations' dead-lettered records: personal data in their values
                "SELECT record_value FROM dead_letter_outbox",
                "SELECT record_value FROM dead_letters_withheld",
                "SELECT record_key FROM dead_letter_outbox",
            ):
                with pytest.raises(DENIED):
                    await conn.fetch(query)
            # nor can it delete them beyond its organization's
            with pytest.raises(DENIED):
                await conn.execute("DELETE FROM dead_letter_outbox")
            with pytest.raises(DENIED):
                await conn.execute("DELETE FROM dead_letters_withheld")
            # nor through the function the erasure deletes them with, for an
            # organization whose erasure is not recorded (migration 0104)
            with pytest.raises(DENIED, match="no erasure of organization"):
                await conn.execute("SELECT erase_dead_letters($1)", other)
            # nor hand its rights on (PostgreSQL warns and grants nothing, or refuses)
            for statement in (
                "GRANT SELECT ON erased_organizations TO PUBLIC",
                "GRANT INSERT ON erased_organizations TO healthscore_writer",
            ):
                with contextlib.suppress(*DENIED):
                    await conn.execute(statement)
            with pytest.raises(DENIED):
                await conn.execute("GRANT healthscore_eraser TO healthscore_writer")
            # nor take the service's or the owner's
            for statement in (
                "SET ROLE healthscore_writer",
                "SET ROLE healthscore_owner",
                "DELETE FROM erased_organizations",
            ):
                with pytest.raises(DENIED):
                    await conn.execute(statement)
        finally:
            await conn.close()
    assert not await fetchval(
        migrated_database, "SELECT has_table_privilege('public', 'erased_organizations', 'SELECT')"
    )
    assert not await fetchval(
        migrated_database,
        "SELECT has_table_privilege('healthscore_writer', 'erased_organizations', 'INSERT')",
    )
    assert await fetchval(migrated_database, "SELECT count(*) FROM dead_letter_outbox") == 1
    assert await fetchval(migrated_database, "SELECT count(*) FROM dead_letters_withheld") == 1


async def test_a_tombstone_the_eraser_records_itself_deletes_no_dead_letters(
    migrated_database: str,
) -> None:
    """The eraser may insert a tombstone row itself: with one for an organization whose
    state is still stored, the function refuses it (migration 0105), so no login can
    delete an organization's dead letters without erasing the organization. Before, a
    tombstone alone was enough (0104)."""
    kept = uuid.uuid4()
    await fetchval(
        migrated_database, "INSERT INTO organizations (id) VALUES ($1) RETURNING id", kept
    )
    await fetchval(
        migrated_database,
        "INSERT INTO organization_state (organization_id) VALUES ($1) RETURNING organization_id",
        kept,
    )
    await _dead_letter(migrated_database, kept, b'{"subject": "Jane Doe"}')
    async with _eraser_login(migrated_database) as (eraser_url, _login):
        conn = await asyncpg.connect(eraser_url)
        try:
            with pytest.raises(DENIED, match="still has its state"):
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO erased_organizations (organization_id, rows_removed)"
                        " VALUES ($1, '{}')",
                        kept,
                    )
                    await conn.execute("SELECT erase_dead_letters($1)", kept)
        finally:
            await conn.close()
    assert await fetchval(migrated_database, "SELECT count(*) FROM dead_letter_outbox") == 1
    assert await fetchval(migrated_database, "SELECT count(*) FROM dead_letters_withheld") == 1
    # the erasure itself, which deletes the organization first, still gets them
    result = await erase_now(migrated_database, kept)
    assert result.rows.get("dead_letter_outbox") == 1, result.rows


async def test_the_eraser_still_erases_the_dead_letters_of_its_organization(
    migrated_database: str,
) -> None:
    gone, other = uuid.uuid4(), uuid.uuid4()
    await _dead_letter(migrated_database, other, b'{"subject": "John Roe"}')
    await _dead_letter(migrated_database, gone, b'{"subject": "Jane Doe"}')
    result = await erase_now(migrated_database, gone)
    assert result.rows.get("dead_letter_outbox") == 1, result.rows
    assert result.rows.get("dead_letters_withheld") == 1, result.rows
    for table in ("dead_letter_outbox", "dead_letters_withheld"):
        keys = await fetchval(migrated_database, f"SELECT array_agg(record_key) FROM {table}")
        assert keys == [str(other).encode()], table
    # the audit row counts them (deleted after the tombstone was recorded)
    audited = await _rows_removed(migrated_database, gone)
    assert orjson.loads(audited) == result.rows
    # a run again deletes what was dead-lettered since, and keeps the first audit row
    await _dead_letter(migrated_database, gone, b'{"subject": "Jane Doe, again"}')
    again = await erase_now(migrated_database, gone)
    assert not again.first
    assert again.rows.get("dead_letter_outbox") == 1, again.rows
    assert await _rows_removed(migrated_database, gone) == audited


async def _rows_removed(database_url: str, org: uuid.UUID) -> str:
    """The erasure's audit row's counts, as stored."""
    return str(
        await fetchval(
            database_url,
            "SELECT rows_removed::text FROM erased_organizations WHERE organization_id = $1",
            org,
        )
    )


async def test_a_finished_erasures_audit_trail_cannot_be_changed(migrated_database: str) -> None:
    org = uuid.uuid4()
    async with _eraser_login(migrated_database) as (eraser_url, _login):
        conn = await asyncpg.connect(eraser_url, server_settings={"role": "healthscore_eraser"})
        try:
            await erase_organization(conn, org, apply=True)
            for statement in (
                "UPDATE erased_organizations SET rows_removed = '{\"organizations\": 0}'",
                "UPDATE erased_organizations SET completed_at = NULL",
                "UPDATE erased_organizations SET completed_at = now() - interval '1 year'",
            ):
                with pytest.raises(asyncpg.RaiseError, match="finished erasure"):
                    await conn.execute(statement)
        finally:
            await conn.close()
    row = await fetchval(
        migrated_database,
        "SELECT completed_at IS NOT NULL FROM erased_organizations WHERE organization_id = $1",
        org,
    )
    assert row is True


async def test_the_service_cannot_undo_an_erasure(migrated_database: str) -> None:
    org = uuid.uuid4()
    await erase_now(migrated_database, org)
    writer = await asyncpg.connect(
        migrated_database, server_settings={"role": "healthscore_writer"}
    )
    try:
        for statement in (
            "DELETE FROM erased_organizations",
            "UPDATE erased_organizations SET organization_id = gen_random_uuid()",
            "TRUNCATE erased_organizations",
            "INSERT INTO erased_organizations (organization_id) VALUES (gen_random_uuid())",
            "ALTER TABLE erased_organizations DISABLE TRIGGER ALL",
            "DROP TABLE erased_organizations",
        ):
            with pytest.raises((*DENIED, asyncpg.WrongObjectTypeError)):
                await writer.execute(statement)
        # nor create the erased organization's row itself, outside its statements
        with pytest.raises(DENIED):
            await writer.execute("INSERT INTO organizations (id) VALUES ($1)", org)
    finally:
        await writer.close()
    assert (
        await fetchval(
            migrated_database,
            "SELECT count(*) FROM erased_organizations WHERE organization_id = $1",
            org,
        )
        == 1
    )


@pytest.mark.parametrize("set_role", [True, False], ids=["set_role", "inherited"])
async def test_the_eraser_cannot_create_an_organization(
    migrated_database: str, set_role: bool
) -> None:
    """Its INSERT of an id (0098) is for the erasure's claim, deleted in the same
    transaction; an operator's login holding the role could otherwise commit
    organizations of its own choosing (placeholders the service then scores). Whether
    the login takes the role (as `healthscore erase` does) or uses the privileges it
    inherits as a member: 0102's check looked at the role's name only, so a member's
    own name passed it."""
    org = uuid.uuid4()
    async with _eraser_login(migrated_database) as (eraser_url, _login):
        settings = {"role": "healthscore_eraser"} if set_role else {}
        conn = await asyncpg.connect(eraser_url, server_settings=settings)
        try:
            with pytest.raises(DENIED):
                await conn.execute("INSERT INTO organizations (id) VALUES ($1)", org)
            # the claim, deleted in its transaction, still passes: the erasure works,
            # and so does running it again (its claim is not a writer racing it)
            result = await erase_organization(conn, org, apply=True)
            again = await erase_organization(conn, org, apply=True)
            assert not again.first and again.rows == {}, again.rows
        finally:
            await conn.close()
    assert result.first and result.rows == {}, result.rows
    assert (
        await fetchval(migrated_database, "SELECT count(*) FROM organizations WHERE id = $1", org)
        == 0
    )


async def test_the_eraser_deletes_no_organization_whose_erasure_is_not_recorded(
    migrated_database: str,
) -> None:
    """A login holding the role deleted an organization by hand: its data cascaded away
    with no audit row, no tombstone (its next event created it again), its event ids
    and dead letters left (review 37b, M2). A delete without the erasure recorded first
    is refused now (the role may still insert a record itself and then delete: the
    audit row then names its login, but its counts are the login's own)."""
    org = uuid.uuid4()
    owner = await asyncpg.connect(migrated_database)
    try:
        await owner.execute("INSERT INTO organizations (id) VALUES ($1)", org)
    finally:
        await owner.close()
    async with _eraser_login(migrated_database) as (eraser_url, _login):
        conn = await asyncpg.connect(eraser_url, server_settings={"role": "healthscore_eraser"})
        try:
            by_hand = ("DELETE FROM organizations WHERE id = $1", "DELETE FROM organizations")
            for statement in by_hand:
                arguments = (org,) if "$1" in statement else ()
                # refused, not a row hidden: an older release's erase, which deletes
                # first, would have deleted nothing and recorded the erasure finished
                with pytest.raises(DENIED, match="has no recorded erasure"):
                    await conn.execute(statement, *arguments)
            result = await erase_organization(conn, org, apply=True)
        finally:
            await conn.close()
    assert result.first and result.rows == {"organizations": 1}, result.rows
    recorded = await fetchval(
        migrated_database,
        "SELECT rows_removed::text FROM erased_organizations WHERE organization_id = $1",
        org,
    )
    assert orjson.loads(recorded) == {"organizations": 1}
    assert (
        await fetchval(migrated_database, "SELECT count(*) FROM organizations WHERE id = $1", org)
        == 0
    )
