"""Row-level security with real roles: who a session is, and which rows it sees and changes.

Two ways of becoming a role are exercised: a superuser connection that runs
`SET ROLE` (as a trusted dashboard backend would), and a real LOGIN role that is
a member of the group role, connecting over the server's socket (as the service
does, with `role` in its server settings, and as a person with direct SQL access
would). A dashboard session's user is only what it proved with
`app_login(token)` (migration 0020); the `app.user_id` setting, which any
session can write, is ignored.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from healthscore.core.scoring.state import OrganizationState, pack_state
from healthscore.store import db, sql
from healthscore.store.identity import LOGIN, LOGOUT, SigningKey, mint_token
from healthscore.store.schema_catalog import (
    CORE_TABLES,
    DASHBOARD_ROLE,
    DASHBOARD_SERVICE_TABLES,
    OWNER_ROLE,
    READ_MODEL_TABLES,
    ROLES,
    ROW_SECURITY_TABLES,
    SERVICE_TABLES,
    WRITER_ROLE,
)
from tests.utils import schema_builders as b
from tests.utils.api import temporary_login, with_user

ALL_ROWS = {"customer_health": 2, "success_milestones": 3, "support_interactions": 4}
NO_ROWS = dict.fromkeys(READ_MODEL_TABLES, 0)
ALL_CORE = {"organizations": 2, "user_profiles": 4}
OWN_PROFILE_ONLY = {"organizations": 0, "user_profiles": 1}
NO_CORE = dict.fromkeys(CORE_TABLES, 0)


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
    key: SigningKey

    def token(self, user_id: uuid.UUID, valid_for: timedelta = timedelta(minutes=5)) -> str:
        """What the trusted backend hands a person it authenticated."""
        return mint_token(self.key, user_id, expires_at=datetime.now(UTC) + valid_for)


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
        # the migration drew a random key; the trusted backend holds a copy
        key = await conn.fetchrow(
            "SELECT key_id, secret FROM app_signing_keys WHERE retired_at IS NULL"
            " ORDER BY key_id DESC LIMIT 1"
        )
        assert key is not None
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
        key=SigningKey(key["key_id"], key["secret"]),
    )


Connect = Callable[..., Awaitable[asyncpg.Connection]]


@pytest.fixture
async def connect_as(pg_admin_url: str, world: World) -> AsyncIterator[Connect]:
    """Open connections as a group role, by SET ROLE or through a new LOGIN member role.

    `user_id` logs the session in with a valid token; `forged` writes the
    app.user_id setting instead, as any session can (by set_config, or in the
    startup packet of a login role).
    """
    opened: list[asyncpg.Connection] = []
    login_roles: list[str] = []

    async def connect(
        role: str, user_id: uuid.UUID | None, style: str, forged: str | None = None
    ) -> asyncpg.Connection:
        settings = {} if forged is None else {"app.user_id": forged}
        if style == "set_role":
            conn = await asyncpg.connect(world.url)
            opened.append(conn)
            await conn.execute(f"SET ROLE {role}")
            if forged is not None:
                await conn.execute("SELECT set_config('app.user_id', $1, false)", forged)
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
        if user_id is not None:
            assert await conn.fetchval(LOGIN, world.token(user_id)) == user_id
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


async def count_rows(conn: asyncpg.Connection, tables: tuple[str, ...]) -> dict[str, int]:
    return {table: await conn.fetchval(f"SELECT count(*) FROM {table}") for table in tables}


async def visible(conn: asyncpg.Connection) -> dict[str, int]:
    return await count_rows(conn, READ_MODEL_TABLES)


async def visible_core(conn: asyncpg.Connection) -> dict[str, int]:
    return await count_rows(conn, CORE_TABLES)


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
        assert forced == set(ROW_SECURITY_TABLES)
        assert {r["relname"] for r in security if r["relrowsecurity"]} == set(ROW_SECURITY_TABLES)
    finally:
        await conn.close()


# --- what each dashboard user sees -------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
async def test_admin_sees_every_row(world: World, connect_as: Connect, style: str) -> None:
    conn = await connect_as(DASHBOARD_ROLE, world.admin, style)
    assert await visible(conn) == ALL_ROWS
    assert await visible_core(conn) == ALL_CORE


@pytest.mark.parametrize("style", STYLES)
async def test_support_user_sees_only_their_interactions_and_profile(
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
    # organizations follow customer_health (admins only); profiles: their own
    assert await visible_core(conn) == OWN_PROFILE_ONLY
    assert await conn.fetchval("SELECT id FROM user_profiles") == world.support


@pytest.mark.parametrize("style", STYLES)
async def test_dashboard_user_cannot_read_other_users_profiles(
    world: World, connect_as: Connect, style: str
) -> None:
    conn = await connect_as(DASHBOARD_ROLE, world.member, style)
    assert await visible(conn) == NO_ROWS
    assert await visible_core(conn) == OWN_PROFILE_ONLY
    own = await conn.fetchrow("SELECT id, organization_id, role FROM user_profiles")
    assert own is not None
    assert tuple(own) == (world.member, world.org_a, "member")
    for other in (world.admin, world.support):
        assert await conn.fetchval("SELECT count(*) FROM user_profiles WHERE id = $1", other) == 0
    assert await conn.fetchval("SELECT count(*) FROM user_profiles WHERE role = 'admin'") == 0
    # not even their own organization's row: organizations follow customer_health
    assert await conn.fetchval("SELECT count(*) FROM organizations WHERE id = $1", world.org_a) == 0


@pytest.mark.parametrize("style", STYLES)
async def test_nobody_logged_in_sees_nothing(world: World, connect_as: Connect, style: str) -> None:
    conn = await connect_as(DASHBOARD_ROLE, None, style)
    assert await conn.fetchval("SELECT app_user_id()") is None
    assert await visible(conn) == NO_ROWS
    assert await visible_core(conn) == NO_CORE


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("forged", ["admin", "garbage", "empty", "unknown_uuid"])
async def test_forged_user_setting_grants_nothing(
    world: World, connect_as: Connect, style: str, forged: str
) -> None:
    value = {
        "admin": str(world.admin),
        "garbage": "not-a-uuid",
        "empty": "",
        "unknown_uuid": str(uuid.uuid4()),
    }[forged]
    conn = await connect_as(DASHBOARD_ROLE, None, style, forged=value)
    assert await conn.fetchval("SELECT current_setting('app.user_id')") == value
    assert await conn.fetchval("SELECT app_user_id()") is None
    assert await visible(conn) == NO_ROWS
    assert await visible_core(conn) == NO_CORE


@pytest.mark.parametrize("style", STYLES)
async def test_forged_user_setting_does_not_change_a_verified_identity(
    world: World, connect_as: Connect, style: str
) -> None:
    conn = await connect_as(DASHBOARD_ROLE, world.member, style)
    await conn.execute("SELECT set_config('app.user_id', $1, false)", str(world.admin))
    assert await conn.fetchval("SELECT app_user_id()") == world.member
    assert await visible(conn) == NO_ROWS
    assert await visible_core(conn) == OWN_PROFILE_ONLY


async def test_switching_user_within_a_session_switches_visibility(
    world: World, connect_as: Connect
) -> None:
    conn = await connect_as(DASHBOARD_ROLE, None, "set_role")
    seen = []
    for user_id in (world.admin, world.support, world.member, world.admin):
        assert await conn.fetchval(LOGIN, world.token(user_id)) == user_id
        seen.append((await visible(conn))["support_interactions"])
    assert seen == [4, 2, 0, 4]
    # a login in a transaction that rolls back never happened
    tx = conn.transaction()
    await tx.start()
    await conn.fetchval(LOGIN, world.token(world.member))
    assert await conn.fetchval("SELECT app_user_id()") == world.member
    await tx.rollback()
    assert await conn.fetchval("SELECT app_user_id()") == world.admin
    await conn.execute(LOGOUT)
    assert await conn.fetchval("SELECT app_user_id()") is None
    assert await visible(conn) == NO_ROWS


async def test_identity_belongs_to_one_session(world: World, connect_as: Connect) -> None:
    admin = await connect_as(DASHBOARD_ROLE, world.admin, "login_role")
    bystander = await connect_as(DASHBOARD_ROLE, None, "login_role")
    assert await visible(admin) == ALL_ROWS
    assert await visible(bystander) == NO_ROWS


async def test_identity_ends_when_its_token_expires(world: World, connect_as: Connect) -> None:
    conn = await connect_as(DASHBOARD_ROLE, None, "login_role")
    expires_at = datetime.now(UTC) + timedelta(seconds=2)
    await conn.fetchval(LOGIN, mint_token(world.key, world.admin, expires_at=expires_at))
    assert await visible(conn) == ALL_ROWS
    await asyncio.sleep((expires_at - datetime.now(UTC)).total_seconds() + 0.2)
    assert await conn.fetchval("SELECT app_user_id()") is None
    assert await visible(conn) == NO_ROWS


async def test_owner_sees_nothing_under_force(world: World, connect_as: Connect) -> None:
    conn = await connect_as(OWNER_ROLE, world.admin, "set_role")
    assert await visible(conn) == NO_ROWS
    assert await conn.fetchval("SELECT count(*) FROM organizations") == 0
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await b.insert_row(conn, "customer_health", b.customer_health(world.org_a))


# --- identity tokens -------------------------------------------------------------------


@pytest.mark.parametrize("minted_by", ["python", "sql"])
@pytest.mark.parametrize("style", STYLES)
async def test_valid_token_grants_its_users_view(
    world: World, connect_as: Connect, style: str, minted_by: str
) -> None:
    if minted_by == "python":
        token = world.token(world.support)
    else:
        admin = await asyncpg.connect(world.url)  # a superuser, as an operator would mint
        try:
            token = await admin.fetchval("SELECT app_mint_token($1)", world.support)
        finally:
            await admin.close()
    conn = await connect_as(DASHBOARD_ROLE, None, style)
    assert await conn.fetchval("SELECT app_login($1)", token) == world.support
    assert await conn.fetchval("SELECT app_user_role()") == "support"
    assert (await visible(conn))["support_interactions"] == 2
    assert await visible_core(conn) == OWN_PROFILE_ONLY


@pytest.mark.parametrize("style", STYLES)
async def test_expired_token_is_refused(world: World, connect_as: Connect, style: str) -> None:
    conn = await connect_as(DASHBOARD_ROLE, None, style)
    expired = mint_token(
        world.key, world.admin, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    with pytest.raises(
        asyncpg.InvalidAuthorizationSpecificationError, match="identity token expired at"
    ):
        await conn.fetchval(LOGIN, expired)
    assert await conn.fetchval("SELECT app_user_id()") is None
    assert await visible(conn) == NO_ROWS
    assert await visible_core(conn) == NO_CORE


def _tamper(world: World, case: str) -> str:
    token = world.token(world.member)  # a member's token, bent towards an admin's view
    version, key_id, user, expiry, sig = token.split(".")
    wrong_key = SigningKey(world.key.key_id, bytes(64))
    return {
        "other_user": ".".join([version, key_id, str(world.admin), expiry, sig]),
        "later_expiry": ".".join([version, key_id, user, str(int(expiry) + 86400), sig]),
        "flipped_signature": token[:-1] + ("0" if token[-1] != "0" else "1"),
        "wrong_secret": mint_token(
            wrong_key, world.admin, expires_at=datetime.now(UTC) + timedelta(minutes=5)
        ),
        "unknown_key": ".".join([version, str(world.key.key_id + 1), user, expiry, sig]),
        "truncated": token[:-1],
        "uppercase": token.upper(),
        "trailing_dot": token + ".",
        "empty": "",
    }[case]


TAMPERED = {
    "other_user": "signature is invalid",
    "later_expiry": "signature is invalid",
    "flipped_signature": "signature is invalid",
    "wrong_secret": "signature is invalid",
    "unknown_key": "unknown or retired key",
    "truncated": "malformed",
    "uppercase": "malformed",
    "trailing_dot": "malformed",
    "empty": "malformed",
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
async def test_tampered_token_is_refused(world: World, connect_as: Connect, case: str) -> None:
    conn = await connect_as(DASHBOARD_ROLE, None, "login_role")
    with pytest.raises(
        asyncpg.InvalidAuthorizationSpecificationError, match=f"identity token.*{TAMPERED[case]}"
    ):
        await conn.fetchval(LOGIN, _tamper(world, case))
    assert await conn.fetchval("SELECT app_user_id()") is None
    assert await visible(conn) == NO_ROWS


async def test_token_of_an_unknown_user_is_refused(world: World, connect_as: Connect) -> None:
    conn = await connect_as(DASHBOARD_ROLE, None, "login_role")
    with pytest.raises(
        asyncpg.InvalidAuthorizationSpecificationError, match="names an unknown user"
    ):
        await conn.fetchval(LOGIN, world.token(uuid.uuid4()))


async def test_retired_key_refuses_its_tokens_and_ends_their_sessions(
    world: World, connect_as: Connect
) -> None:
    old_token = world.token(world.admin)
    logged_in = await connect_as(DASHBOARD_ROLE, world.admin, "login_role")
    assert await visible(logged_in) == ALL_ROWS
    admin = await asyncpg.connect(world.url)
    try:
        new = await admin.fetchrow(
            "INSERT INTO app_signing_keys DEFAULT VALUES RETURNING key_id, secret"
        )
        assert new is not None
        await admin.execute(
            "UPDATE app_signing_keys SET retired_at = now() WHERE key_id = $1", world.key.key_id
        )
    finally:
        await admin.close()
    # a session that logged in with the retired key loses its identity at once
    assert await logged_in.fetchval("SELECT app_user_id()") is None
    assert await visible(logged_in) == NO_ROWS
    conn = await connect_as(DASHBOARD_ROLE, None, "login_role")
    with pytest.raises(
        asyncpg.InvalidAuthorizationSpecificationError, match="unknown or retired key"
    ):
        await conn.fetchval(LOGIN, old_token)
    new_key = SigningKey(new["key_id"], new["secret"])
    expires_at = datetime.now(UTC) + timedelta(minutes=1)
    assert (
        await conn.fetchval(LOGIN, mint_token(new_key, world.admin, expires_at=expires_at))
        == world.admin
    )


@pytest.mark.parametrize("style", STYLES)
async def test_session_cannot_plant_its_own_identity_table(
    world: World, connect_as: Connect, style: str
) -> None:
    conn = await connect_as(DASHBOARD_ROLE, None, style)
    await conn.execute(
        "CREATE TEMPORARY TABLE app_verified_identity"
        " (user_id uuid, key_id integer, expires_at timestamptz, logged_in_at timestamptz)"
    )
    await conn.execute(
        "INSERT INTO pg_temp.app_verified_identity"
        " VALUES ($1, 1, now() + interval '1 hour', now())",
        world.admin,
    )
    assert await conn.fetchval("SELECT app_user_id()") is None
    assert await visible(conn) == NO_ROWS
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="not the table app_login creates"):
        await conn.fetchval(LOGIN, world.token(world.admin))

    await conn.execute("DISCARD TEMP")
    assert await conn.fetchval(LOGIN, world.token(world.member)) == world.member
    # the real one is healthscore_owner's: the session can neither change nor drop it
    for statement, args in (
        (
            "INSERT INTO pg_temp.app_verified_identity"
            " VALUES ($1, 1, now() + interval '1 hour', now())",
            [world.admin],
        ),
        ("UPDATE pg_temp.app_verified_identity SET user_id = $1", [world.admin]),
        ("DELETE FROM pg_temp.app_verified_identity", []),
        ("ALTER TABLE pg_temp.app_verified_identity DISABLE ROW LEVEL SECURITY", []),
        ("DROP TABLE pg_temp.app_verified_identity", []),
        ("GRANT ALL ON pg_temp.app_verified_identity TO cs_dashboard", []),
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement, *args)
    assert await conn.fetchval("SELECT app_user_id()") == world.member


@pytest.mark.parametrize("style", STYLES)
async def test_dashboard_cannot_read_keys_or_mint_tokens(
    world: World, connect_as: Connect, style: str
) -> None:
    conn = await connect_as(DASHBOARD_ROLE, world.admin, style)
    for statement, args in (
        ("SELECT * FROM app_signing_keys", []),
        ("SELECT app_mint_token($1)", [world.admin]),
        ("SELECT app_identity_table()", []),
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.fetch(statement, *args)


async def test_first_login_of_a_session_needs_a_read_write_transaction(
    world: World, connect_as: Connect
) -> None:
    conn = await connect_as(DASHBOARD_ROLE, None, "login_role")
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError, match="read-only transaction"):
        async with conn.transaction(readonly=True):
            await conn.fetchval(LOGIN, world.token(world.admin))
    await conn.fetchval(LOGIN, world.token(world.support))
    async with conn.transaction(readonly=True):  # later logins may be read-only
        assert await conn.fetchval(LOGIN, world.token(world.admin)) == world.admin
        assert await visible(conn) == ALL_ROWS


async def test_sql_and_python_agree_on_hmac_and_tokens(world: World) -> None:
    cases = [(b"Jefe", b"what do ya want for nothing?")]
    for key_length in (0, 1, 32, 63, 64, 65, 131):
        for message_length in (0, 1, 55, 64, 200):
            cases.append((os.urandom(key_length), os.urandom(message_length)))
    conn = await asyncpg.connect(world.url)
    try:
        for key, message in cases:
            assert (
                await conn.fetchval("SELECT hmac_sha256($1, $2)", key, message)
                == hmac.new(key, message, hashlib.sha256).digest()
            ), (key.hex(), message.hex())
        sql_token = await conn.fetchval("SELECT app_mint_token($1, '1 hour')", world.admin)
    finally:
        await conn.close()
    expiry = int(sql_token.split(".")[3])
    assert sql_token == mint_token(
        world.key, world.admin, expires_at=datetime.fromtimestamp(expiry, UTC)
    )


# --- the service's writer ------------------------------------------------------------------


def service_statements(now: datetime) -> list[tuple[str, str, list[Any]]]:
    """Every statement the service runs as healthscore_writer, with one row's arguments."""
    org, user, event, interaction, alert = (uuid.uuid4() for _ in range(5))
    group, topics, partitions = "rls-test", ["product.usage.v1"], [0]
    # scores, churn probability, risk factors, feature usage, changes, counts
    health = [[50.0]] * 6 + [[0.3], [json.dumps([])], [json.dumps({})]] + [[None]] * 2 + [[1]] * 3
    state = OrganizationState(str(org), event_count=1)
    return [
        ("ENSURE_ORGANIZATIONS", sql.ENSURE_ORGANIZATIONS, [[org]]),
        ("INSERT_STATES", sql.INSERT_STATES, [[org], [pack_state(state)], [now], [now], True]),
        ("LOCK_STATES", sql.LOCK_STATES, [[org]]),
        ("ENSURE_STATE_ROWS", sql.ENSURE_STATE_ROWS, [[org]]),
        (
            "SAVE_STATES_CHECKED",
            sql.SAVE_STATES_CHECKED,
            [[org], [pack_state(state)], [now], [now], [1], True],
        ),
        ("STATE_OF", sql.STATE_OF, [org]),
        ("ENSURE_OFFSET_ROWS", sql.ENSURE_OFFSET_ROWS, [group, topics, partitions]),
        ("READ_OFFSETS", sql.READ_OFFSETS, [group]),
        # run by `replay` (as the migration URL's role when set, else the writer)
        ("STORED_GROUPS", sql.STORED_GROUPS, []),
        ("RECORD_REPLAY_RUN", sql.RECORD_REPLAY_RUN, [f"{group}-replay-0123abcd", True, False]),
        ("REPLAY_RUN", sql.REPLAY_RUN, [f"{group}-replay-0123abcd"]),
        ("COUNT_ORGANIZATION_STATES", sql.COUNT_ORGANIZATION_STATES, []),
        ("REPLAYED", sql.REPLAYED, []),
        ("SAVE_OFFSETS", sql.SAVE_OFFSETS, [group, topics, partitions, [7], [now]]),
        (
            "LOCK_OFFSETS_AND_CLAIM_EVENT_IDS",
            sql.LOCK_OFFSETS_AND_CLAIM_EVENT_IDS,
            [
                group,
                topics,
                partitions,
                [event],
                [org],
                [now],
                [b"digest"],
                topics,
                [0],
                [0],
                [org],
                [org],
            ],
        ),
        ("ERASED_AMONG", sql.ERASED_AMONG, [[org]]),
        ("READ_EVENT_DIGESTS", sql.READ_EVENT_DIGESTS, [[event]]),
        ("UNCLAIM_EVENT_IDS", sql.UNCLAIM_EVENT_IDS, [[event]]),
        ("ENSURE_USER_PROFILES", sql.ENSURE_USER_PROFILES, [[user]]),
        ("READ_INTERACTIONS", sql.READ_INTERACTIONS, [[interaction]]),
        (
            "UPSERT_INTERACTIONS",
            sql.UPSERT_INTERACTIONS,
            [
                *([interaction], [org], ["complaint"], ["email"], ["open"], ["high"]),
                *(["negative"], [None], [user], ["Subject"], [False], [None], [None], [now]),
                *([None], [None], [now], [now], [json.dumps({"status": now.isoformat()})], [1]),
            ],
        ),
        (
            "INSERT_MILESTONES",
            sql.INSERT_MILESTONES,
            [[org], ["clients_10"], [now], [event], [2.5], ["badge"], [0.0]],
        ),
        (
            "UPSERT_CUSTOMER_HEALTH",
            sql.UPSERT_CUSTOMER_HEALTH,
            [[org], *health, *[[now]] * 3, "v1"],
        ),
        (
            "UPSERT_SCORE_HISTORY",
            sql.UPSERT_SCORE_HISTORY,
            [[org], [now], [50.0], [0.3], ["medium"], ["{}"], "v1", ["events"]],
        ),
        (
            "INSERT_ALERTS",
            sql.INSERT_ALERTS,
            [[alert], [org], ["risk_raised"], [1], [json.dumps({"kind": "risk_raised"})]],
        ),
        ("TRY_LEADER_LOCK", sql.TRY_LEADER_LOCK, [42]),
        ("BOUND_HELD_TRANSACTION", sql.BOUND_HELD_TRANSACTION, ["75000ms"]),
        ("BOUND_TRANSACTION_TIME", sql.BOUND_TRANSACTION_TIME, ["180000ms"]),
        ("TRY_SHARD_LOCK", sql.TRY_SHARD_LOCK, [42, 3]),
        ("EVENT_TIME_FRONTIERS", sql.EVENT_TIME_FRONTIERS, [group, topics]),
        ("PICK_SILENT", sql.PICK_SILENT, [now, 10, 60.0]),
        ("OPEN_EPISODES", sql.OPEN_EPISODES, [True]),
        ("COUNT_SILENT", sql.COUNT_SILENT, [now, 60.0]),
        ("SET_RESCORE_DUE", sql.SET_RESCORE_DUE, [[org], [now]]),
        ("PURGE_PROCESSED_EVENTS", sql.PURGE_PROCESSED_EVENTS, [now, 10]),
        ("ORGANIZATIONS_AFTER", sql.ORGANIZATIONS_AFTER, [None, 10]),
        ("PURGE_SCORE_HISTORY", sql.PURGE_SCORE_HISTORY, [now.date(), [org]]),
        ("PENDING_ALERTS", sql.PENDING_ALERTS, [10]),
        ("MARK_ALERTS_SENT", sql.MARK_ALERTS_SENT, [[alert]]),
        ("RECORD_ALERT_FAILURE", sql.RECORD_ALERT_FAILURE, [[alert], "broker down"]),
        ("PENDING_PROJECTION", sql.PENDING_PROJECTION, [10, 4, 0, 0.0, 42]),
        ("OLDEST_PENDING_PROJECTION", sql.OLDEST_PENDING_PROJECTION, []),
        ("READ_MODEL_STALENESS", sql.READ_MODEL_STALENESS, []),
        ("MARK_PROJECTED", sql.MARK_PROJECTED, [[org], [1]]),
        ("DEQUEUE_PROJECTED", sql.DEQUEUE_PROJECTED, [[org]]),
        ("TAKE_OWN_PENDING", sql.TAKE_OWN_PENDING, [[org], [1]]),
        ("QUEUE_FOR_PROJECTOR", sql.QUEUE_FOR_PROJECTOR, [[org], [1]]),
        ("QUEUE_AGAIN", sql.QUEUE_AGAIN, [[org]]),
        ("OWE_HEALTH_FEED", sql.OWE_HEALTH_FEED, [[org]]),
        ("OWE_HEALTH_FEED_LATER", sql.OWE_HEALTH_FEED_LATER, [[org], 120.0]),
        ("OWED_HEALTH_FEED", sql.OWED_HEALTH_FEED, [10, 4, 0]),
        ("OWED_HEALTH_FEED_AGE", sql.OWED_HEALTH_FEED_AGE, []),
        ("FEED_PUBLISHED", sql.FEED_PUBLISHED, [[org], [None]]),
        ("OWED_FEED_TOMBSTONES", sql.OWED_FEED_TOMBSTONES, [10]),
        ("FEED_TOMBSTONES_PUBLISHED", sql.FEED_TOMBSTONES_PUBLISHED, [[org], [now]]),
        # none: its foreign key takes erased organizations only (the grant is checked)
        ("OWE_FEED_TOMBSTONES", sql.OWE_FEED_TOMBSTONES, [[]]),
        ("OUTBOX_STATS", sql.OUTBOX_STATS, []),
        ("OLDEST_EVENT_ID", sql.OLDEST_EVENT_ID, []),
        ("DEAD_LETTERS_WITHHELD_KEPT", sql.DEAD_LETTERS_WITHHELD_KEPT, [10]),
        ("NOTIFICATION_QUEUE_USAGE", sql.NOTIFICATION_QUEUE_USAGE, []),
        (
            "INSERT_DEAD_LETTERS",
            sql.INSERT_DEAD_LETTERS,
            [
                ["product.usage.v1"],
                [0],
                [7],
                [str(org).encode()],
                [b"{}"],
                [None],
                [b"\x90"],
                ["missing_field"],
                ["event_id: Field required"],
            ],
        ),
        ("PENDING_DEAD_LETTERS", sql.PENDING_DEAD_LETTERS, [10]),
        ("RECORD_DEAD_LETTER_FAILURE", sql.RECORD_DEAD_LETTER_FAILURE, [[1], "topic refuses"]),
        ("WITHHOLD_DEAD_LETTERS", sql.WITHHOLD_DEAD_LETTERS, [[1], ["refused for its size"]]),
        ("DELETE_DEAD_LETTERS", sql.DELETE_DEAD_LETTERS, [[1]]),
        ("DEAD_LETTER_STATS", sql.DEAD_LETTER_STATS, [sql.DEAD_LETTERS_COUNTED]),
        ("DISTRIBUTION", sql.DISTRIBUTION, []),
        ("db.ROLE_CHECK", db.ROLE_CHECK, []),
    ]


def test_every_hot_path_statement_is_exercised_as_the_writer() -> None:
    named = {name for name, _, _ in service_statements(b.T0)}
    in_module = {n for n, v in vars(sql).items() if n.isupper() and isinstance(v, str)}
    assert in_module <= named, "a new statement in store/sql.py: add it here (and its grant)"


@pytest.mark.parametrize("style", STYLES)
async def test_writer_runs_every_service_statement(
    world: World, connect_as: Connect, style: str
) -> None:
    conn = await connect_as(WRITER_ROLE, None, style)
    assert await conn.fetchval("SELECT current_user") == WRITER_ROLE
    async with conn.transaction():
        for statement in service_statements(b.T0 + timedelta(days=1)):
            # twice: the second run takes the ON CONFLICT and "already there" paths
            for _ in range(2):
                name, query, args = statement
                try:
                    await conn.execute(query, *args)
                except asyncpg.PostgresError as exc:
                    raise AssertionError(f"{name} refused to the writer: {exc}") from exc
        # what the upserts wrote is really there
        assert await conn.fetchval("SELECT count(*) FROM customer_health") == 3
        assert await conn.fetchval("SELECT count(*) FROM support_interactions") == 5
        # the second score of the day replaced the first
        assert await conn.fetchval("SELECT count(*) FROM health_score_history") == 1


@pytest.mark.parametrize("style", STYLES)
async def test_writer_cannot_change_users_or_delete_organizations(
    world: World, connect_as: Connect, style: str
) -> None:
    conn = await connect_as(WRITER_ROLE, None, style)
    refused: list[tuple[str, list[object]]] = [
        ("UPDATE user_profiles SET role = 'admin' WHERE id = $1", [world.member]),
        ("UPDATE user_profiles SET email = 'x@example.com'", []),
        ("INSERT INTO user_profiles (id, role) VALUES ($1, 'admin')", [uuid.uuid4()]),
        ("DELETE FROM user_profiles", []),
        ("SELECT email, role FROM user_profiles", []),
        ("DELETE FROM organizations WHERE id = $1", [world.org_a]),
        ("UPDATE organizations SET name = 'Renamed'", []),
        ("INSERT INTO organizations (id, name) VALUES ($1, 'Named')", [uuid.uuid4()]),
        ("SELECT name FROM organizations", []),
        ("TRUNCATE organizations CASCADE", []),
        ("DELETE FROM customer_health", []),
        ("UPDATE customer_health SET organization_id = $1", [world.org_b]),
        ("DELETE FROM support_interactions", []),
        ("DELETE FROM success_milestones", []),
        (
            "UPDATE success_milestones SET acknowledged_at = now(), acknowledged_by = $1",
            [world.admin],
        ),
        ("SELECT * FROM success_milestones", []),
        ("DELETE FROM health_score_history", []),
        ("UPDATE health_score_history SET organization_id = $1", [world.org_b]),
        ("SELECT * FROM health_score_history", []),
        ("DELETE FROM alert_outbox", []),
        ("DELETE FROM organization_state", []),
        ("DELETE FROM consumer_offsets", []),
        ("SELECT * FROM app_signing_keys", []),
        ("SELECT app_login($1)", [world.token(world.admin)]),
    ]
    for statement, args in refused:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.execute(statement, *args)
    checker = await asyncpg.connect(world.url)
    try:
        role = await checker.fetchval("SELECT role FROM user_profiles WHERE id = $1", world.member)
        assert role == "member"
        assert await count_rows(checker, CORE_TABLES) == ALL_CORE
        assert await count_rows(checker, READ_MODEL_TABLES) == ALL_ROWS
    finally:
        await checker.close()


# --- functions: each role executes what its statements call, PUBLIC nothing of ours -----

# What a statement of the role calls (directly, in a generated column it computes, or in a
# policy or an invoker function it runs); nothing else of ours (migration 0080). Trigger
# functions need no EXECUTE: a trigger runs its function whoever fires it.
NOT_EXECUTABLE = {
    # the writer's policies are `true` and its statements name no identity (0080)
    WRITER_ROLE: (
        "app_user_id()",
        "app_user_role()",
        "score_trend(numeric, numeric)",
        "set_updated_at()",
        "hmac_sha256(bytea, bytea)",
    ),
    # the dashboard reads health_status and risk_level as stored, never computes them
    DASHBOARD_ROLE: (
        "health_band(numeric)",
        "risk_level_for(numeric)",
        "set_updated_at()",
        "hmac_sha256(bytea, bytea)",
    ),
}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("role", sorted(NOT_EXECUTABLE))
async def test_roles_cannot_execute_functions_none_of_their_statements_calls(
    world: World, connect_as: Connect, role: str, style: str
) -> None:
    conn = await connect_as(role, None, style)
    for function in NOT_EXECUTABLE[role]:
        assert not await conn.fetchval(
            "SELECT has_function_privilege(current_user, $1::regprocedure, 'EXECUTE')", function
        ), f"{role} may execute {function}"
    calls = {
        "app_user_id()": "SELECT app_user_id()",
        "app_user_role()": "SELECT app_user_role()",
        "score_trend(numeric, numeric)": "SELECT score_trend(50, 40)",
        "health_band(numeric)": "SELECT health_band(50)",
        "risk_level_for(numeric)": "SELECT risk_level_for(0.5)",
        "hmac_sha256(bytea, bytea)": "SELECT hmac_sha256('k'::bytea, 'm'::bytea)",
    }
    for function in NOT_EXECUTABLE[role]:
        if function in calls:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.fetchval(calls[function])


async def test_a_login_of_no_project_role_executes_none_of_our_functions(
    world: World, pg_admin_url: str
) -> None:
    """PUBLIC (any login that may connect to the database) gets no function of ours."""
    async with temporary_login(pg_admin_url, world.url, None, "t_public") as url:
        conn = await asyncpg.connect(url)
        try:
            executable = await conn.fetch(
                """SELECT p.oid::regprocedure::text AS function FROM pg_proc p
                   WHERE p.pronamespace = 'public'::regnamespace
                     AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                     WHERE d.classid = 'pg_proc'::regclass
                                       AND d.objid = p.oid AND d.deptype = 'e')
                     AND has_function_privilege(p.oid, 'EXECUTE')
                   ORDER BY 1"""
            )
            assert [r["function"] for r in executable] == []
            for call in (
                "SELECT health_band(50)",
                "SELECT risk_level_for(0.5)",
                "SELECT score_trend(50, 40)",
                "SELECT hmac_sha256('k'::bytea, 'm'::bytea)",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="denied"):
                    await conn.fetchval(call)
        finally:
            await conn.close()


# --- what dashboard users may change ----------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
async def test_dashboard_cannot_write_health_rows_or_users(
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
        ("DELETE FROM organizations", []),
        ("UPDATE user_profiles SET role = 'admin' WHERE id = $1", [world.member]),
    ]
    for sql_text, args in statements:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.execute(sql_text, *args)


@pytest.mark.parametrize("table", [t for t in SERVICE_TABLES if t not in DASHBOARD_SERVICE_TABLES])
async def test_dashboard_cannot_read_service_tables(
    world: World, connect_as: Connect, table: str
) -> None:
    conn = await connect_as(DASHBOARD_ROLE, world.admin, "set_role")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await conn.fetch(f"SELECT * FROM {table}")


@pytest.mark.parametrize("style", STYLES)
async def test_only_admins_read_the_score_trail_and_alerts(
    world: World, connect_as: Connect, style: str
) -> None:
    superuser = await asyncpg.connect(world.url)
    try:
        for org_id in (world.org_a, world.org_b):
            await b.insert_row(superuser, "health_score_history", b.health_score_history(org_id))
            await b.insert_row(superuser, "alert_outbox", b.alert_outbox(org_id))
        # one row: figures over every organization
        await superuser.execute(
            "INSERT INTO score_quality_summary (score_model_version, backtest, episodes_churned,"
            " episodes_retained, episodes_pending, churners, churners_alerted)"
            " VALUES ('v4', '{}', 1, 1, 0, 1, 1)"
        )
    finally:
        await superuser.close()
    every = {"health_score_history": 2, "alert_outbox": 2, "score_quality_summary": 1}
    assert set(every) == set(DASHBOARD_SERVICE_TABLES)
    for role in ("admin", "support", "member"):
        conn = await connect_as(DASHBOARD_ROLE, getattr(world, role), style)
        expected = every if role == "admin" else dict.fromkeys(every, 0)
        assert await count_rows(conn, DASHBOARD_SERVICE_TABLES) == expected, role
    anonymous = await connect_as(DASHBOARD_ROLE, None, style)
    assert await count_rows(anonymous, DASHBOARD_SERVICE_TABLES) == dict.fromkeys(
        DASHBOARD_SERVICE_TABLES, 0
    )
    admin = await connect_as(DASHBOARD_ROLE, world.admin, style)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await admin.fetch("SELECT last_error FROM alert_outbox")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await admin.execute("DELETE FROM health_score_history")


@pytest.mark.parametrize("style", STYLES)
async def test_admin_acknowledges_milestones_support_cannot(
    world: World, connect_as: Connect, style: str
) -> None:
    acknowledge = (
        "UPDATE success_milestones SET acknowledged_at = now(),"
        " reward_status = 'delivered', reward_delivered_at = now()"
        " WHERE organization_id = $1"
    )
    support = await connect_as(DASHBOARD_ROLE, world.support, style)
    assert await support.execute(acknowledge, world.org_a) == "UPDATE 0"

    admin = await connect_as(DASHBOARD_ROLE, world.admin, style)
    assert await admin.execute(acknowledge, world.org_a) == "UPDATE 2"
    rows = await admin.fetch(
        "SELECT acknowledged_by, reward_status FROM success_milestones"
        " WHERE acknowledged_at IS NOT NULL"
    )
    assert [tuple(r) for r in rows] == [(world.admin, "delivered")] * 2


@pytest.mark.parametrize("style", STYLES)
async def test_acknowledged_by_is_forced_to_the_verified_identity(
    world: World, connect_as: Connect, style: str
) -> None:
    superuser = await asyncpg.connect(world.url)
    try:
        other_admin = b.user_profile(role="admin")
        await b.insert_row(superuser, "user_profiles", other_admin)

        async def acknowledgers() -> list[uuid.UUID | None]:
            rows = await superuser.fetch(
                "SELECT acknowledged_by FROM success_milestones WHERE organization_id = $1",
                world.org_a,
            )
            return [r["acknowledged_by"] for r in rows]

        admin = await connect_as(DASHBOARD_ROLE, world.admin, style)
        second = await connect_as(DASHBOARD_ROLE, other_admin["id"], style)
        where = " WHERE organization_id = $1"

        # naming an acknowledger is not the dashboard's to do (0075), not even oneself
        for named in (other_admin["id"], world.admin, None):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await admin.execute(
                    "UPDATE success_milestones SET acknowledged_at = now(), acknowledged_by = $2"
                    + where,
                    world.org_a,
                    named,
                )
        assert await acknowledgers() == [None, None]
        # acknowledging records the admin
        await admin.execute(
            "UPDATE success_milestones SET acknowledged_at = now()" + where, world.org_a
        )
        assert await acknowledgers() == [world.admin] * 2
        # a change that leaves the acknowledgment alone keeps its author
        await second.execute(
            "UPDATE success_milestones SET reward_status = 'delivered',"
            " reward_delivered_at = now()" + where,
            world.org_a,
        )
        assert await acknowledgers() == [world.admin] * 2
        # a data fix (the owner's session, with a verified identity) that reassigns, or
        # erases, the author makes that identity the author
        await superuser.fetchval(LOGIN, world.token(other_admin["id"]))
        await superuser.execute(
            "UPDATE success_milestones SET acknowledged_by = $2" + where,
            world.org_a,
            world.other_support,
        )
        assert await acknowledgers() == [other_admin["id"]] * 2
        await superuser.fetchval(LOGIN, world.token(world.admin))
        await superuser.execute(
            "UPDATE success_milestones SET acknowledged_by = NULL" + where, world.org_a
        )
        assert await acknowledgers() == [world.admin] * 2
        await superuser.fetchval(LOGOUT)
        # withdrawing the acknowledgment (the dashboard sets only acknowledged_at) clears
        # both
        await admin.execute(
            "UPDATE success_milestones SET acknowledged_at = NULL" + where, world.org_a
        )
        assert await acknowledgers() == [None, None]

        # inserts too: the verified identity, or nobody without one (a superuser's fix)
        recorded = "SELECT acknowledged_by FROM success_milestones WHERE id = $1"
        for milestone_type, login_as in (("clients_50", None), ("clients_10", other_admin["id"])):
            if login_as is not None:
                await superuser.fetchval(LOGIN, world.token(login_as))
            milestone = b.success_milestone(
                world.org_b,
                id=uuid.uuid4(),
                milestone_type=milestone_type,
                acknowledged_at=b.T0,
                acknowledged_by=world.admin,
            )
            await b.insert_row(superuser, "success_milestones", milestone)
            assert await superuser.fetchval(recorded, milestone["id"]) == login_as
    finally:
        await superuser.close()
