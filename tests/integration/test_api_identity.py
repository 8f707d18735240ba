"""The read API's identity binding, as cheap as it now is and as strict as before.

Real PostgreSQL, never mocked. Each request logs in inside its own transaction
(`BEGIN; SELECT app_login(...)` in one round trip), reads, and ends with
ROLLBACK (reads) or logout and COMMIT (writes); the pool's reset is only a
rollback of an open transaction. These tests show that no identity survives a
request on a reused connection whichever way the request ended, that the
session's identity table that each connection prepares grants nothing, and that
app_login (migration 0031, without its regular expression) accepts exactly the
tokens migration 0020's pattern accepted.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from healthscore.api.auth import Principal
from healthscore.api.session import DatabaseUnavailable, bound_session
from healthscore.store.identity import LOGIN, mint_token
from tests.integration.test_api import World, superuser_fetch, world  # noqa: F401
from tests.utils.api import api_client, api_config, api_login, bearer, signing_key, with_user

# migration 0020's token pattern: the language app_login must still accept, no more
PATTERN_0020 = re.compile(
    r"v1\.([1-9][0-9]{0,8})\."
    r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\."
    r"([0-9]{1,12})\.([0-9a-f]{64})"
)


@pytest.fixture
async def dashboard(world: World, pg_admin_url: str) -> AsyncIterator[asyncpg.Connection]:  # noqa: F811
    """A session as the API's would be: a LOGIN role in cs_dashboard, running as it."""
    async with api_login(pg_admin_url, world.url) as login_url:
        conn = await asyncpg.connect(login_url, server_settings={"role": "cs_dashboard"})
        try:
            yield conn
        finally:
            await conn.close()


def _variants(token: str) -> dict[str, str]:
    version, key_id, user, expiry, sig = token.split(".")

    def with_field(index: int, value: str) -> str:
        fields = token.split(".")
        fields[index] = value
        return ".".join(fields)

    return {
        "valid": token,
        "key id with a leading zero": with_field(1, "0" + key_id),
        "key id 0": with_field(1, "0"),
        "key id of ten digits": with_field(1, "1" * 10),
        "key id of nine digits": with_field(1, "9" * 9),
        "key id not a number": with_field(1, "1a"),
        "key id empty": with_field(1, ""),
        "uppercase user": with_field(2, user.upper()),
        "user without dashes": with_field(2, user.replace("-", "")),
        "user with a dash moved": with_field(2, user[:7] + "-" + user[7] + user[9:]),
        "user with five dashes": with_field(2, user[:35] + "-"),
        "user not hex": with_field(2, "g" + user[1:]),
        "user in braces": with_field(2, "{" + user + "}"),
        "user one short": with_field(2, user[:-1]),
        "user with a non-ASCII digit": with_field(2, "\u0661" + user[1:]),
        "expiry of twelve digits": with_field(3, "9" * 12),
        "expiry of thirteen digits": with_field(3, "1" * 13),
        "expiry empty": with_field(3, ""),
        "expiry negative": with_field(3, "-" + expiry),
        "expiry with a space": with_field(3, " " + expiry),
        "signature one short": with_field(4, sig[:-1]),
        "signature one long": with_field(4, sig + "0"),
        "signature uppercase": with_field(4, sig.upper()),
        "signature not hex": with_field(4, "z" + sig[1:]),
        "version 2": with_field(0, "v2"),
        "version uppercase": with_field(0, "V1"),
        "a sixth field": token + ".00",
        "a missing field": ".".join([version, key_id, user, sig]),
        "trailing newline": token + "\n",
        "leading space": " " + token,
        "empty": "",
        "only dots": "....",
    }


async def test_app_login_accepts_exactly_the_tokens_the_0020_pattern_did(
    world: World,  # noqa: F811
    dashboard: asyncpg.Connection,
) -> None:
    key = await signing_key(world.url)
    token = mint_token(key, world.users["admin"], expires_at=datetime.now(UTC) + timedelta(hours=1))
    for case, candidate in _variants(token).items():
        well_formed = PATTERN_0020.fullmatch(candidate) is not None
        await dashboard.execute("BEGIN")
        try:
            await dashboard.fetchval(LOGIN, candidate)
            outcome = "accepted"
        except asyncpg.InvalidAuthorizationSpecificationError as exc:
            outcome = "malformed" if "malformed" in str(exc) else "refused later"
        finally:
            await dashboard.execute("ROLLBACK")
        if well_formed:
            # past the parse: refused only by key, signature, expiry or user
            assert outcome != "malformed", case
        else:
            assert outcome == "malformed", case
    assert await dashboard.fetchval("SELECT app_user_id()") is None  # every login rolled back


async def test_a_prepared_identity_table_grants_nothing_and_logins_roll_back(
    world: World,  # noqa: F811
    dashboard: asyncpg.Connection,
) -> None:
    key = await signing_key(world.url)
    token = mint_token(key, world.users["admin"], expires_at=datetime.now(UTC) + timedelta(hours=1))
    count = "SELECT count(*) FROM customer_health"
    await dashboard.execute("SELECT app_identity_prepare()")
    await dashboard.execute("SELECT app_identity_prepare()")  # idempotent
    assert await dashboard.fetchval("SELECT app_user_id()") is None
    assert await dashboard.fetchval(count) == 0
    # the session can neither fill nor empty it
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await dashboard.execute(
            "INSERT INTO pg_temp.app_verified_identity VALUES ($1, $2, now() + interval '1 hour',"
            " now())",
            world.users["admin"],
            key.key_id,
        )
    # a login inside a transaction that rolls back leaves the table as it was
    await dashboard.execute(f"BEGIN; SELECT app_login('{token}')")
    assert await dashboard.fetchval("SELECT app_user_id()") == world.users["admin"]
    assert await dashboard.fetchval(count) == len(world.orgs)
    await dashboard.execute("ROLLBACK")
    assert await dashboard.fetchval("SELECT app_user_id()") is None
    assert await dashboard.fetchval(count) == 0
    # and read-only transactions can log in once the table exists
    await dashboard.execute("BEGIN READ ONLY")
    assert await dashboard.fetchval(LOGIN, token) == world.users["admin"]
    await dashboard.execute("ROLLBACK")
    assert await dashboard.fetchval("SELECT app_user_id()") is None


async def test_the_one_statement_pages_log_in_read_as_the_caller_and_log_out(
    world: World,  # noqa: F811
    dashboard: asyncpg.Connection,
) -> None:
    key = await signing_key(world.url)
    bloom = world.orgs["bloom"]
    expires_at = datetime.now(UTC) + timedelta(hours=1)
    calls = {
        "page": ("SELECT page FROM app_organization_page($1, $2)", ()),
        "history": ("SELECT page FROM app_organization_history($1, $2, $3)", (30,)),
    }
    for statement, extra in calls.values():
        for role, visible in (("admin", True), ("member", False), ("support", False)):
            token = mint_token(key, world.users[role], expires_at=expires_at)
            rows = await dashboard.fetch(statement, token, bloom, *extra)
            assert len(rows) == (1 if visible else 0), (statement, role)
            # the statement's transaction logged out before it committed
            assert await dashboard.fetchval("SELECT app_user_id()") is None
            assert await dashboard.fetchval("SELECT count(*) FROM customer_health") == 0
        expired = mint_token(
            key, world.users["admin"], expires_at=datetime.now(UTC) - timedelta(seconds=5)
        )
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="expired"):
            await dashboard.fetch(statement, expired, bloom, *extra)
        assert await dashboard.fetchval("SELECT app_user_id()") is None


async def test_prepare_refuses_a_table_the_session_planted(
    world: World,  # noqa: F811
    dashboard: asyncpg.Connection,
) -> None:
    await dashboard.execute(
        "CREATE TEMPORARY TABLE app_verified_identity"
        " (user_id uuid, key_id integer, expires_at timestamptz, logged_in_at timestamptz)"
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="not the table app_login"):
        await dashboard.execute("SELECT app_identity_prepare()")
    await dashboard.execute("DISCARD TEMP")
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError, match="read-only"):
        async with dashboard.transaction(readonly=True):
            await dashboard.execute("SELECT app_identity_prepare()")


async def _probe(pool: asyncpg.Pool[Any]) -> tuple[Any, ...]:
    """What the pool's one connection carries between requests."""
    async with pool.acquire() as conn:
        return (
            await conn.fetchval("SELECT app_user_id()"),
            await conn.fetchval("SELECT count(*) FROM customer_health"),
            await conn.fetchval("SHOW plan_cache_mode"),
            await conn.fetchval("SHOW TimeZone"),
            conn.is_in_transaction(),
        )


async def test_one_reused_connection_never_carries_identity_into_another_request(
    world: World,  # noqa: F811
    pg_admin_url: str,
) -> None:
    bloom, vow = world.orgs["bloom"], world.orgs["vow"]
    clean = (None, 0, "force_custom_plan", "UTC", False)
    # (caller, method, path, body, expected status): reads (ROLLBACK), writes (logout
    # and COMMIT), requests failing inside the transaction and at the login
    steps: list[tuple[str, str, str, Any, int]] = [
        ("admin", "GET", "/api/v1/organizations", None, 200),
        ("member", "GET", "/api/v1/organizations", None, 200),
        ("admin", "GET", f"/api/v1/organizations/{bloom}", None, 200),
        ("support", "GET", f"/api/v1/organizations/{bloom}", None, 404),
        ("admin", "POST", f"/api/v1/organizations/{bloom}/milestones/clients_10/reward", {}, 409),
        ("member", "GET", f"/api/v1/organizations/{bloom}/history", None, 404),
        ("admin", "GET", f"/api/v1/organizations/{bloom}/history", None, 200),
        ("unknown", "GET", f"/api/v1/organizations/{bloom}", None, 401),
        (
            "admin",
            "POST",
            f"/api/v1/organizations/{vow}/milestones/first_client_added/acknowledge",
            None,
            200,
        ),
        ("support", "GET", "/api/v1/interactions", None, 200),
        ("unknown", "GET", "/api/v1/organizations", None, 401),
        ("member", "GET", "/api/v1/me", None, 200),
        ("admin", "GET", "/api/v1/organizations?health_status=critical", None, 200),
    ]
    async with (
        api_login(pg_admin_url, world.url) as login_url,
        api_client(await api_config(world.url, login_url, pool_size=1)) as (client, app),
    ):
        pool = app.state.api.pool
        users = {**world.users, "unknown": uuid.uuid4()}

        async def call(role: str, method: str, path: str, body: Any) -> Any:
            headers = {"Authorization": bearer(users[role])}
            return await client.request(method, path, json=body, headers=headers)

        for role, method, path, body, status in steps:
            response = await call(role, method, path, body)
            assert response.status_code == status, (role, path, response.text)
            if path == "/api/v1/organizations" and status == 200:
                seen = len(response.json()["items"])
                assert seen == (len(world.orgs) if role == "admin" else 0), role
            assert await _probe(pool) == clean, (role, method, path)
        # the acknowledgment was committed, by the admin, and nothing else was
        rows = await superuser_fetch(
            world.url,
            "SELECT organization_id, acknowledged_by FROM success_milestones"
            " WHERE acknowledged_at IS NOT NULL",
        )
        assert [(r["organization_id"], r["acknowledged_by"]) for r in rows] == [
            (vow, world.users["admin"])
        ]
        # interleaved on the one connection: each request sees its own caller's rows
        roles = ["admin", "member", "support"] * 8
        pages = await asyncio.gather(
            *(call(role, "GET", "/api/v1/organizations", None) for role in roles)
        )
        assert [len(p.json()["items"]) for p in pages] == [
            len(world.orgs) if role == "admin" else 0 for role in roles
        ]
        assert await _probe(pool) == clean


def _handed_back(proxy: Any) -> bool:
    """Whether the pool took the proxy's connection back (asyncpg's private state)."""
    return proxy._con is None


async def test_a_connection_the_server_ends_during_a_request_is_unavailable(
    world: World,  # noqa: F811
    pg_admin_url: str,
) -> None:
    """asyncpg hands a connection the server ended back to the pool at once, and its
    proxy then refuses every call: the request's cleanup asked it `is_closed()` and
    raised that InterfaceError, a 500 instead of the 503 a lost database is."""
    async with (
        api_login(pg_admin_url, world.url) as login_url,
        api_client(await api_config(world.url, login_url, pool_size=1)) as (_client, app),
    ):
        api = app.state.api
        principal = Principal(world.users["admin"], datetime.now(UTC) + timedelta(minutes=5))
        with pytest.raises(DatabaseUnavailable):
            async with bound_session(api.pool, api.signing_key, principal) as session:
                pid = await session.conn.fetchval("SELECT pg_backend_pid()")
                await superuser_fetch(pg_admin_url, "SELECT pg_terminate_backend($1)", pid)
                for _ in range(500):  # until asyncpg has seen the connection close
                    if _handed_back(session.conn):
                        break
                    await asyncio.sleep(0.01)
                assert _handed_back(session.conn)
                await session.conn.fetchval("SELECT 1")
        # and the pool serves the next request on a new connection
        async with bound_session(api.pool, api.signing_key, principal) as session:
            assert await session.conn.fetchval("SELECT app_user_id()") == world.users["admin"]


async def test_a_token_bound_to_a_backend_is_good_in_that_session_only(
    world: World,  # noqa: F811
    dashboard: asyncpg.Connection,
    pg_admin_url: str,
) -> None:
    key = await signing_key(world.url)
    admin = world.users["admin"]
    pid = await dashboard.fetchval("SELECT pg_backend_pid()")
    token = mint_token(
        key, admin, expires_at=datetime.now(UTC) + timedelta(minutes=1), backend_pid=pid
    )
    async with dashboard.transaction():
        assert await dashboard.fetchval(LOGIN, token) == admin
        await dashboard.execute("ROLLBACK AND CHAIN")  # nothing stays logged in
    async with api_login(pg_admin_url, world.url) as login_url:
        other = await asyncpg.connect(login_url, server_settings={"role": "cs_dashboard"})
        try:
            other_pid = await other.fetchval("SELECT pg_backend_pid()")
            fields = token.split(".")
            cases = {
                "minted for another session": token,
                # the pid is signed: naming the other session breaks the signature
                "signature is invalid": ".".join([*fields[:4], str(other_pid), fields[5]]),
                "malformed": ".".join([*fields[:4], "0" + str(pid), fields[5]]),
            }
            for refusal, candidate in cases.items():
                with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match=refusal):
                    await other.fetchval(LOGIN, candidate)
            assert await other.fetchval("SELECT app_user_id()") is None
        finally:
            await other.close()


async def test_the_login_a_monitoring_role_reads_from_pg_stat_activity_is_refused_elsewhere(
    world: World,  # noqa: F811
    pg_admin_url: str,
) -> None:
    """The API logs in with `BEGIN; SELECT app_login('<token>')` as statement text, which
    pg_stat_activity shows to pg_monitor's members (and log_statement writes to the
    log). A person with a cs_dashboard login of their own and that view logged in as
    the request's admin for the rest of the token's minute; the token now names the
    API's backend and is refused in any other session."""
    api = world.app.state.api
    principal = Principal(world.users["admin"], datetime.now(UTC) + timedelta(minutes=5))
    monitor, analyst = (f"t_{name}_{uuid.uuid4().hex[:8]}" for name in ("monitor", "analyst"))
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f"CREATE ROLE {monitor} LOGIN IN ROLE pg_monitor")
        await admin.execute(f"CREATE ROLE {analyst} LOGIN IN ROLE cs_dashboard")
        async with bound_session(api.pool, api.signing_key, principal):
            # the request's transaction is open, its login the backend's last statement
            rows = await superuser_fetch(
                with_user(world.url, monitor),
                "SELECT query FROM pg_stat_activity WHERE application_name = 'healthscore-api'"
                " AND state = 'idle in transaction'",
            )
        (seen,) = [m[1] for r in rows if (m := re.search(r"app_login\('([^']+)'\)", r["query"]))]
        conn = await asyncpg.connect(with_user(world.url, analyst))
        try:
            with pytest.raises(
                asyncpg.InvalidAuthorizationSpecificationError, match="another session"
            ):
                await conn.fetchval(LOGIN, seen)
            assert await conn.fetchval("SELECT count(*) FROM customer_health") == 0
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {monitor}")
        await admin.execute(f"DROP ROLE IF EXISTS {analyst}")
        await admin.close()
