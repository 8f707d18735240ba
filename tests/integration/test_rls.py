"""Row-level security with real roles: who sees and changes which read-model rows.

Two ways of becoming a role are exercised: a superuser connection that runs
`SET ROLE` (as the dashboard backend or a psql session would), and a real LOGIN
role that is a member of the group role, connecting over the server's socket
(as the service does, with `role` in its server settings).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from healthscore.schema_catalog import (
    DASHBOARD_ROLE,
    OWNER_ROLE,
    READ_MODEL_TABLES,
    ROLES,
    SERVICE_TABLES,
    WRITER_ROLE,
)
from tests.utils import schema_builders as b

ALL_ROWS = {"customer_health": 2, "success_milestones": 3, "support_interactions": 4}
NO_ROWS = dict.fromkeys(READ_MODEL_TABLES, 0)


@dataclass
class World:
    url: str
    org_a: uuid.UUID
    org_b: uuid.UUID
    admin: uuid.UUID
    support: uuid.UUID
    other_support: uuid.UUID
    member: uuid.UUID
    support_interactions: set[uuid.UUID]


@pytest.fixture
async def world(migrated_database: str) -> World:
    """Two organizations with health rows, milestones and interactions; four users."""
    conn = await asyncpg.connect(migrated_database)
    try:
        orgs = [b.organization(), b.organization()]
        for org in orgs:
            await b.insert_row(conn, "organizations", org)
        org_a, org_b = orgs[0]["id"], orgs[1]["id"]
        users = {role: b.user_profile(role=role) for role in ("admin", "support", "member")}
        users["other_support"] = b.user_profile(role="support")
        users["member"]["organization_id"] = org_a
        for user in users.values():
            await b.insert_row(conn, "user_profiles", user)
        for org_id in (org_a, org_b):
            await b.insert_row(conn, "customer_health", b.customer_health(org_id))
        for org_id, milestone in (
            (org_a, "first_client_added"),
            (org_a, "clients_10"),
            (org_b, "first_client_added"),
        ):
            await b.insert_row(
                conn, "success_milestones", b.success_milestone(org_id, milestone_type=milestone)
            )
        support_id, other_id = users["support"]["id"], users["other_support"]["id"]
        interactions = [
            b.support_interaction(org_a, assigned_to=support_id),
            b.support_interaction(org_b, assigned_to=support_id),
            b.support_interaction(org_a, assigned_to=other_id),
            b.support_interaction(org_b, assigned_to=None),
        ]
        for interaction in interactions:
            await b.insert_row(conn, "support_interactions", interaction)
    finally:
        await conn.close()
    return World(
        url=migrated_database,
        org_a=org_a,
        org_b=org_b,
        admin=users["admin"]["id"],
        support=support_id,
        other_support=other_id,
        member=users["member"]["id"],
        support_interactions={i["id"] for i in interactions[:2]},
    )


def with_user(url: str, user: str) -> str:
    """The same server and database, another user (the test server trusts its socket)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


Connect = Callable[..., Awaitable[asyncpg.Connection]]


@pytest.fixture
async def connect_as(pg_admin_url: str, world: World) -> AsyncIterator[Connect]:
    """Open connections as a group role, by SET ROLE or through a new LOGIN member role."""
    opened: list[asyncpg.Connection] = []
    login_roles: list[str] = []

    async def connect(role: str, user_id: uuid.UUID | str | None, style: str) -> asyncpg.Connection:
        settings = {} if user_id is None else {"app.user_id": str(user_id)}
        if style == "set_role":
            conn = await asyncpg.connect(world.url)
            opened.append(conn)
            await conn.execute(f"SET ROLE {role}")
            if user_id is not None:
                await conn.execute("SELECT set_config('app.user_id', $1, false)", str(user_id))
        else:
            login = f"t_{role}_{uuid.uuid4().hex[:10]}"
            admin = await asyncpg.connect(pg_admin_url)
            try:
                await admin.execute(f"CREATE ROLE {login} LOGIN IN ROLE {role}")
            finally:
                await admin.close()
            login_roles.append(login)
            if role == WRITER_ROLE:
                settings["role"] = role  # as the service connects
            conn = await asyncpg.connect(with_user(world.url, login), server_settings=settings)
            opened.append(conn)
        assert await conn.fetchval("SELECT current_setting('is_superuser')") == "off"
        return conn

    try:
        yield connect
    finally:
        for conn in opened:
            await conn.close()
        admin = await asyncpg.connect(pg_admin_url)
        try:
            for login in login_roles:
                await admin.execute(f"DROP ROLE {login}")
        finally:
            await admin.close()


async def visible(conn: asyncpg.Connection) -> dict[str, int]:
    return {
        table: await conn.fetchval(f"SELECT count(*) FROM {table}") for table in READ_MODEL_TABLES
    }


STYLES = ["set_role", "login_role"]


async def test_roles_are_not_superusers_and_do_not_bypass_rls(world: World) -> None:
    conn = await asyncpg.connect(world.url)
    try:
        rows = await conn.fetch(
            "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = ANY($1::text[])",
            list(ROLES),
        )
        assert sorted((r["rolname"], r["rolsuper"], r["rolbypassrls"]) for r in rows) == sorted(
            (role, False, False) for role in ROLES
        )
        security = await conn.fetch(
            """SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class
               WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"""
        )
        forced = {
            r["relname"] for r in security if r["relrowsecurity"] and r["relforcerowsecurity"]
        }
        assert forced == set(READ_MODEL_TABLES)
        assert {r["relname"] for r in security if r["relrowsecurity"]} == set(READ_MODEL_TABLES)
    finally:
        await conn.close()


@pytest.mark.parametrize("style", STYLES)
async def test_admin_sees_every_row(world: World, connect_as: Connect, style: str) -> None:
    conn = await connect_as(DASHBOARD_ROLE, world.admin, style)
    assert await visible(conn) == ALL_ROWS


@pytest.mark.parametrize("style", STYLES)
async def test_support_user_sees_only_their_interactions(
    world: World, connect_as: Connect, style: str
) -> None:
    conn = await connect_as(DASHBOARD_ROLE, world.support, style)
    assert await visible(conn) == {
        "customer_health": 0,
        "success_milestones": 0,
        "support_interactions": 2,
    }
    ids = {r["id"] for r in await conn.fetch("SELECT id FROM support_interactions")}
    assert ids == world.support_interactions
    # an explicit filter for someone else's interactions finds nothing either
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM support_interactions WHERE assigned_to = $1", world.other_support
        )
        == 0
    )
    # organizations and user_profiles are plain reference data for the dashboard
    assert await conn.fetchval("SELECT count(*) FROM organizations") == 2
    assert await conn.fetchval("SELECT count(*) FROM user_profiles") == 4


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("who", ["member", "unset", "garbage", "empty", "unknown_uuid"])
async def test_everyone_else_sees_nothing(
    world: World, connect_as: Connect, style: str, who: str
) -> None:
    user_id: uuid.UUID | str | None = {
        "member": world.member,
        "unset": None,
        "garbage": "not-a-uuid",
        "empty": "",
        "unknown_uuid": uuid.uuid4(),
    }[who]
    conn = await connect_as(DASHBOARD_ROLE, user_id, style)
    assert await visible(conn) == NO_ROWS


async def test_switching_user_within_a_session_switches_visibility(
    world: World, connect_as: Connect
) -> None:
    conn = await connect_as(DASHBOARD_ROLE, None, "set_role")
    seen = []
    for user_id in (world.admin, world.support, world.member, world.admin):
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.user_id', $1, true)", str(user_id))
            seen.append((await visible(conn))["support_interactions"])
    assert seen == [4, 2, 0, 4]
    assert await visible(conn) == NO_ROWS  # the local setting ended with its transaction


async def test_owner_sees_nothing_under_force(world: World, connect_as: Connect) -> None:
    conn = await connect_as(OWNER_ROLE, world.admin, "set_role")
    assert await visible(conn) == NO_ROWS
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await b.insert_row(conn, "customer_health", b.customer_health(world.org_a))


@pytest.mark.parametrize("style", STYLES)
async def test_writer_sees_and_writes_everything(
    world: World, connect_as: Connect, style: str
) -> None:
    conn = await connect_as(WRITER_ROLE, None, style)
    assert await conn.fetchval("SELECT current_user") == WRITER_ROLE
    assert await visible(conn) == ALL_ROWS

    org = b.organization()
    await b.insert_row(conn, "organizations", {"id": org["id"]})  # a placeholder organization
    await b.insert_row(conn, "customer_health", b.customer_health(org["id"]))
    await b.insert_row(conn, "success_milestones", b.success_milestone(org["id"]))
    await b.insert_row(conn, "support_interactions", b.support_interaction(org["id"]))
    for table in SERVICE_TABLES:
        if table != "consumer_offsets":
            await b.insert_row(conn, table, b.ORGANIZATION_CHILDREN[table](org["id"]))
    await b.insert_row(conn, "consumer_offsets", b.consumer_offset())
    assert await visible(conn) == {t: n + 1 for t, n in ALL_ROWS.items()}

    updated = await conn.execute(
        "UPDATE customer_health SET health_score = 12.5 WHERE organization_id = $1", world.org_b
    )
    assert updated == "UPDATE 1"
    assert await conn.execute("DELETE FROM organizations WHERE id = $1", org["id"]) == "DELETE 1"
    assert await visible(conn) == ALL_ROWS


@pytest.mark.parametrize("style", STYLES)
async def test_dashboard_cannot_write_health_rows(
    world: World, connect_as: Connect, style: str
) -> None:
    conn = await connect_as(DASHBOARD_ROLE, world.admin, style)
    statements = [
        (
            "INSERT INTO customer_health (organization_id, health_score, churn_probability,"
            " scored_at, score_model_version) VALUES ($1, 50, 0.5, now(), 'v1')",
            [world.org_a],
        ),
        ("UPDATE customer_health SET health_score = 99", []),
        ("DELETE FROM customer_health", []),
        ("UPDATE support_interactions SET status = 'closed'", []),
        ("DELETE FROM success_milestones", []),
        ("UPDATE success_milestones SET milestone_type = 'clients_50'", []),
        ("INSERT INTO organizations (id) VALUES ($1)", [uuid.uuid4()]),
    ]
    for sql, args in statements:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.execute(sql, *args)


@pytest.mark.parametrize("table", SERVICE_TABLES)
async def test_dashboard_cannot_read_service_tables(
    world: World, connect_as: Connect, table: str
) -> None:
    conn = await connect_as(DASHBOARD_ROLE, world.admin, "set_role")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await conn.fetch(f"SELECT * FROM {table}")


@pytest.mark.parametrize("style", STYLES)
async def test_admin_acknowledges_milestones_support_cannot(
    world: World, connect_as: Connect, style: str
) -> None:
    acknowledge = (
        "UPDATE success_milestones SET acknowledged_at = now(), acknowledged_by = $1,"
        " reward_status = 'delivered', reward_delivered_at = now()"
        " WHERE organization_id = $2"
    )
    support = await connect_as(DASHBOARD_ROLE, world.support, style)
    assert await support.execute(acknowledge, world.support, world.org_a) == "UPDATE 0"

    admin = await connect_as(DASHBOARD_ROLE, world.admin, style)
    assert await admin.execute(acknowledge, world.admin, world.org_a) == "UPDATE 2"
    rows = await admin.fetch(
        "SELECT acknowledged_by, reward_status FROM success_milestones"
        " WHERE acknowledged_at IS NOT NULL"
    )
    assert [tuple(r) for r in rows] == [(world.admin, "delivered")] * 2
