"""Migrations 0050 and 0051's change announcements: one per changed table and
transaction, naming the organizations changed for the tables announced by organization.

A session LISTENs on the channel the API's cache listens on, other sessions
write, and the test reads exactly which payloads arrived (after a round trip on
the listening session, by which PostgreSQL has sent every notification of the
transactions committed before it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from healthscore.store import read_model_changes as t
from tests.utils import schema_builders as b
from tests.utils.api import with_user


class Heard:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.payloads: list[str] = []

    def __call__(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self.payloads.append(str(payload))

    async def take(self) -> list[str]:
        await self.conn.fetchval("SELECT 1")
        await asyncio.sleep(0)
        taken, self.payloads = self.payloads, []
        return taken


async def key_channel(conn: asyncpg.Connection) -> str:
    """The channel of the newest signing key, as the API holding it names it."""
    secret = await conn.fetchval(
        "SELECT secret FROM app_signing_keys WHERE retired_at IS NULL ORDER BY key_id DESC"
    )
    return t.channel_of(bytes(secret))


@pytest.fixture
async def heard(migrated_database: str) -> AsyncIterator[Heard]:
    conn = await asyncpg.connect(migrated_database)
    heard = Heard(conn)
    await conn.add_listener(await key_channel(conn), heard)
    try:
        yield heard
    finally:
        await conn.close()


@pytest.fixture
async def writer(migrated_database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(migrated_database)
    try:
        yield conn
    finally:
        await conn.close()


async def test_one_announcement_per_changed_table_and_transaction(
    heard: Heard, writer: asyncpg.Connection
) -> None:
    rows = [await b.insert_organization_with_children(writer) for _ in range(3)]
    await heard.take()
    ids = [r.organization_id for r in rows]
    async with writer.transaction():
        # many rows, many statements, two tables: one notification each
        for _ in range(5):
            await writer.execute(
                "UPDATE customer_health SET active_users_30d = active_users_30d + 1"
                " WHERE organization_id = ANY($1::uuid[])",
                ids,
            )
        await writer.execute(
            "UPDATE success_milestones SET health_score_impact = 1"
            " WHERE organization_id = ANY($1::uuid[])",
            ids,
        )
    named = ",".join(sorted(str(i) for i in ids))
    assert sorted(await heard.take()) == [f"{t.CUSTOMER_HEALTH}:{named}", f"{t.MILESTONES}:{named}"]


async def test_a_rolled_back_write_announces_nothing(
    heard: Heard, writer: asyncpg.Connection
) -> None:
    row = await b.insert_organization_with_children(writer)
    await heard.take()
    tx = writer.transaction()
    await tx.start()
    await writer.execute(
        "UPDATE customer_health SET active_users_30d = 1 WHERE organization_id = $1",
        row.organization_id,
    )
    await tx.rollback()
    assert await heard.take() == []


async def test_placeholder_inserts_announce_only_new_rows(
    heard: Heard, writer: asyncpg.Connection
) -> None:
    known = uuid.uuid4()
    ensure = "INSERT INTO {} (id) SELECT unnest($1::uuid[]) ON CONFLICT (id) DO NOTHING"
    # new organizations are named (migration 0063): they change no other organization's
    # page; a new assignee's placeholder profile announces nothing (migration 0114: it
    # changes what no kept answer says, and cleared them all)
    for table, payload in ((t.ORGANIZATIONS, [f"{t.ORGANIZATIONS}:{known}"]), (t.USERS, [])):
        await writer.execute(ensure.format(table), [known])
        assert await heard.take() == payload
        await writer.execute(ensure.format(table), [known])  # nothing inserted
        assert await heard.take() == []
    fresh = uuid.uuid4()
    await writer.execute(ensure.format(t.ORGANIZATIONS), [known, fresh])  # one of two new
    assert await heard.take() == [f"{t.ORGANIZATIONS}:{fresh}"]


@pytest.mark.parametrize(
    ("statement", "payload"),
    [
        ("UPDATE user_profiles SET role = 'admin'", t.USERS),
        ("UPDATE app_signing_keys SET retired_at = now()", t.SIGNING_KEYS),
        ("INSERT INTO app_signing_keys DEFAULT VALUES", t.SIGNING_KEYS),
        ("UPDATE organizations SET name = 'Renamed'", t.ORGANIZATIONS),
        ("UPDATE support_interactions SET subject = 'x'", f"{t.INTERACTIONS}:<org>"),
        ("UPDATE alert_outbox SET published_at = now()", f"{t.ALERTS}:<org>"),
        ("UPDATE health_score_history SET cause = cause", f"{t.SCORE_HISTORY}:<org>"),
        ("UPDATE success_milestones SET health_score_impact = 1", f"{t.MILESTONES}:<org>"),
        ("DELETE FROM customer_health", f"{t.CUSTOMER_HEALTH}:<org>"),
        ("TRUNCATE customer_health", t.CUSTOMER_HEALTH),
    ],
)
async def test_every_read_table_announces_its_changes(
    heard: Heard, writer: asyncpg.Connection, statement: str, payload: str
) -> None:
    org = (await b.insert_organization_with_children(writer)).organization_id
    await heard.take()
    await writer.execute(statement)
    assert await heard.take() == [payload.replace("<org>", str(org))]


@pytest.mark.parametrize("table", t.BY_ORGANIZATION)
async def test_a_statement_that_changes_no_row_announces_nothing(
    heard: Heard, writer: asyncpg.Connection, table: str
) -> None:
    await b.insert_organization_with_children(writer)
    await heard.take()
    await writer.execute(f"UPDATE {table} SET organization_id = organization_id WHERE false")
    await writer.execute(f"DELETE FROM {table} WHERE false")
    assert await heard.take() == []


async def test_inserts_and_upserts_name_the_organizations_they_changed(
    heard: Heard, writer: asyncpg.Connection
) -> None:
    rows = [await b.insert_organization_with_children(writer) for _ in range(2)]
    fresh = await b.insert_organization_with_children(writer)
    await heard.take()
    await writer.execute(
        "DELETE FROM customer_health WHERE organization_id = $1", fresh.organization_id
    )
    await heard.take()
    upsert = """
        INSERT INTO customer_health (organization_id, health_score, churn_probability,
                                     scored_at, score_model_version)
        SELECT unnest($1::uuid[]), 50, 0.2, now(), 'test'
        ON CONFLICT (organization_id) DO UPDATE SET health_score = 51
        WHERE customer_health.organization_id = $2"""
    # one row inserted (fresh), one updated (rows[0]), one left alone (rows[1])
    ids = [fresh.organization_id, rows[0].organization_id, rows[1].organization_id]
    await writer.execute(upsert, ids, rows[0].organization_id)
    assert sorted(await heard.take()) == sorted(
        [
            f"{t.CUSTOMER_HEALTH}:{fresh.organization_id}",
            f"{t.CUSTOMER_HEALTH}:{rows[0].organization_id}",
        ]
    )


async def test_many_organizations_take_several_payloads_and_too_many_the_whole_table(
    heard: Heard, writer: asyncpg.Connection
) -> None:
    ids = [uuid.uuid4() for _ in range(5001)]
    await writer.execute("INSERT INTO organizations (id) SELECT unnest($1::uuid[])", ids)
    insert = """
        INSERT INTO customer_health (organization_id, health_score, churn_probability,
                                     scored_at, score_model_version)
        SELECT unnest($1::uuid[]), 50, 0.2, now(), 'test'"""
    await writer.execute(insert, ids[:450])
    payloads = [p for p in await heard.take() if p.startswith(t.CUSTOMER_HEALTH)]
    tables, named = zip(*(t.organizations_changed(p) for p in payloads), strict=True)
    assert set(tables) == {t.CUSTOMER_HEALTH}
    assert sorted(len(n) for n in named) == [50, 200, 200]
    assert all(len(p.encode()) < 8000 for p in payloads)
    assert sorted(i for n in named for i in n) == sorted(str(i) for i in ids[:450])
    await writer.execute(insert, ids[450:3450])  # a consumer batch's worth: by organization
    assert len(await heard.take()) == 15
    await writer.execute(insert, ids[3450:])
    await heard.take()
    await writer.execute("UPDATE customer_health SET health_score = 1")  # 5,001
    assert await heard.take() == [t.CUSTOMER_HEALTH]


async def test_the_triggers_fire_per_statement_never_per_row(writer: asyncpg.Connection) -> None:
    triggers = await writer.fetch(
        "SELECT tgrelid::regclass::text AS table_name, tgname, tgtype FROM pg_trigger"
        " WHERE tgfoid IN ('read_model_changed()'::regprocedure,"
        "                  'read_model_rows_inserted()'::regprocedure,"
        "                  'read_model_organizations_changed()'::regprocedure)"
    )
    assert {r["table_name"] for r in triggers} == set(t.TABLES)
    by_organization = {r["table_name"] for r in triggers if r["tgname"].endswith("_updated")}
    assert by_organization == set(t.BY_ORGANIZATION)
    # bit 0 of tgtype: FOR EACH ROW
    assert [r["tgname"] for r in triggers if r["tgtype"] & 1] == []


async def test_the_api_role_reads_only_when_its_key_retires(migrated_database: str) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        key_id = await conn.fetchval("SELECT max(key_id) FROM app_signing_keys")
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE cs_dashboard")
            assert await conn.fetchval(t.SIGNING_KEY_RETIRES_AT, key_id) == float("inf")
            assert await conn.fetchval(t.SIGNING_KEY_RETIRES_AT, key_id + 1) == float("-inf")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval("SELECT secret FROM app_signing_keys")
        await conn.execute(
            "UPDATE app_signing_keys SET retired_at = 'epoch'::timestamptz + interval '5 s'"
        )
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE cs_dashboard")
            assert await conn.fetchval(t.SIGNING_KEY_RETIRES_AT, key_id) == 5.0
    finally:
        await conn.close()


async def test_only_a_holder_of_a_signing_key_hears_which_organizations_changed(
    migrated_database: str, heard: Heard, writer: asyncpg.Connection
) -> None:
    """LISTEN takes no privilege, so the announcements go to channels named by the keys'
    secrets (migration 0070). A direct SQL login in cs_dashboard, which row-level security
    shows no organization, heard every organization's scores and alerts on the fixed
    channel healthscore_read_model; it can neither read a channel's name nor send on all
    of them."""
    login = f"t_person_{uuid.uuid4().hex[:10]}"
    await writer.execute(f"CREATE ROLE {login} LOGIN IN ROLE cs_dashboard")
    person_heard: list[str] = []
    person = await asyncpg.connect(
        with_user(migrated_database, login), server_settings={"role": "cs_dashboard"}
    )
    try:
        for channel in ("healthscore_read_model", t.CHANNEL_PREFIX, t.CHANNEL_PREFIX + "0" * 32):
            await person.add_listener(channel, lambda *a: person_heard.append(str(a[-1])))
        assert await person.fetchval("SELECT count(*) FROM customer_health") == 0
        await person.execute("CREATE TEMPORARY TABLE user_profiles (id integer)")
        for statement in (
            "SELECT read_model_channel FROM app_signing_keys",
            "SELECT read_model_announce(ARRAY['customer_health'])",
            # the triggers run as the owner: attached to a table of the person's own, they
            # would announce whatever it is named on every key's channel
            "CREATE TRIGGER announce AFTER INSERT ON pg_temp.user_profiles"
            " FOR EACH STATEMENT EXECUTE FUNCTION public.read_model_changed()",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await person.execute(statement)
        row = await b.insert_organization_with_children(writer)
        await writer.execute(
            "UPDATE customer_health SET active_users_30d = 7 WHERE organization_id = $1",
            row.organization_id,
        )
        assert f"{t.CUSTOMER_HEALTH}:{row.organization_id}" in await heard.take()
        await person.fetchval("SELECT 1")  # every notification committed before: sent
        await asyncio.sleep(0)
        assert person_heard == []
        # the API's derivation of the channel is the database's
        channels = await writer.fetch("SELECT read_model_channel FROM app_signing_keys")
        assert [r[0] for r in channels] == [await key_channel(writer)]
    finally:
        await person.close()
        await writer.execute(f"DROP ROLE {login}")


async def test_every_key_in_use_or_retired_within_a_day_hears_the_announcements(
    heard: Heard, writer: asyncpg.Connection
) -> None:
    new_key = await writer.fetchrow(
        "INSERT INTO app_signing_keys DEFAULT VALUES RETURNING key_id, secret"
    )
    assert new_key is not None
    new = Heard(writer)
    await writer.add_listener(t.channel_of(bytes(new_key["secret"])), new)
    # both keys' holders hear the new key (a row of app_signing_keys)
    assert await heard.take() == [t.SIGNING_KEYS]
    await writer.execute(
        "UPDATE app_signing_keys SET retired_at = now() WHERE key_id <> $1", new_key["key_id"]
    )
    assert await heard.take() == [t.SIGNING_KEYS]  # the retirement reaches the retired key
    assert await new.take() == [t.SIGNING_KEYS]
    await writer.execute(
        "UPDATE app_signing_keys SET retired_at = now() - interval '25 hours' WHERE key_id <> $1",
        new_key["key_id"],
    )
    # the retired key's holder hears that (migration 0071), then nothing more
    assert await heard.take() == [t.SIGNING_KEYS]
    await b.insert_organization_with_children(writer)
    assert await heard.take() == []
    assert t.CUSTOMER_HEALTH in {p.partition(":")[0] for p in await new.take()}


@pytest.mark.parametrize(
    "change",
    [
        # deploy/compose/init/20-api-login.sql re-registering its id with another secret
        "INSERT INTO app_signing_keys (key_id, secret) OVERRIDING SYSTEM VALUE"
        " VALUES ($1, decode(repeat('ab', 32), 'hex'))"
        " ON CONFLICT (key_id) DO UPDATE SET secret = EXCLUDED.secret, retired_at = NULL",
        "DELETE FROM app_signing_keys WHERE key_id = $1",
        "UPDATE app_signing_keys SET retired_at = now() - interval '2 days' WHERE key_id = $1",
        "TRUNCATE app_signing_keys CASCADE",
    ],
    ids=["secret-replaced", "deleted", "retired-days-ago", "truncated"],
)
async def test_the_holder_of_a_key_hears_the_change_that_takes_its_channel_away(
    heard: Heard, writer: asyncpg.Connection, change: str
) -> None:
    """A change to a key's row that moves or ends its channel is announced on the channel
    the key had: its holder (a running API) hears app_signing_keys, drops every kept
    answer and reads its key again, instead of serving them unannounced from then on."""
    key_id = await writer.fetchval(
        "SELECT key_id FROM app_signing_keys WHERE retired_at IS NULL ORDER BY key_id DESC"
    )
    await writer.execute(change, *([key_id] if "$1" in change else []))
    assert await heard.take() == [t.SIGNING_KEYS]
