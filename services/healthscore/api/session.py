"""One request, one transaction, one verified database identity.

The API's sessions run as `cs_dashboard` (API_DATABASE_ROLE), under the row-level
security of the read model. For each request the verified caller becomes the
session's user through the database's own identity check (migration 0020):

    BEGIN; SELECT app_login('<token for sub, minted with the backend's copy of the key>')
    ... the request's queries: the policies see exactly this user ...
    ROLLBACK                              (a request that only reads)
    SELECT app_logout(); COMMIT           (a request that writes)

The login belongs to the request's transaction. A reading request rolls it back
with the transaction, a writing one logs out before it commits, and a
transaction that fails is rolled back, login included; so a pooled connection
never carries one person's identity into another's request. Each new connection
creates its (empty) identity table once (`app_identity_prepare()`, migration
0031), so that a login that is rolled back costs no table creation.

Round trips per request: the BEGIN and the login travel together (simple query
protocol; the token is our own, of a fixed alphabet, and good only on this connection:
monitoring and statement logs may show the statement), then the request's
statements, then the ROLLBACK or the logout with the COMMIT. The pool's own
reset (a `RESET ALL`, closing cursors, unlistening, releasing advisory locks)
would be one more round trip per request; the API uses none of those, so the
pool only rolls back a transaction left open (`rollback_only_reset`, as the
service's pool). The identity is not session state: it ends with the request's
transaction.

The organization page and its history take one round trip (`fetch_as`): a store
function logs the caller in, reads and logs out inside the one statement's own
transaction (migration 0052), with the same minted token and the same refusals.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import orjson
import structlog
from asyncpg.pool import PoolConnectionProxy

from healthscore.api.auth import Principal, Unauthenticated
from healthscore.errors import HealthscoreError, UnsafeDatabaseRole
from healthscore.store import read_api as q
from healthscore.store.db import ROLE_CHECK, DatabaseTLS, rollback_only_reset
from healthscore.store.identity import LOGOUT, SigningKey, mint_token

log = structlog.get_logger(__name__)

# one round trip for both; simple query protocol (no parameters), so two statements
LOGOUT_AND_COMMIT: Final = LOGOUT + "; COMMIT"
# the session's identity table, and the pid of its server process as PostgreSQL knows it
# (a pooler in between reports a pid of its own to the client)
PREPARE_IDENTITY: Final = "SELECT pg_backend_pid() FROM (SELECT app_identity_prepare()) AS prepared"
# what mint_token writes: v1.<key id>.<uuid>.<expiry>.<hex>; nothing that could end a literal
# (bound to the connection's server process: the statement's text is the token, and
# pg_stat_activity and statement logs show it; elsewhere it is refused, migration 0073)
_TOKEN_ALPHABET: Final = re.compile(r"v2\.[0-9]+\.[0-9a-f-]{36}\.[0-9]+\.[0-9]+\.[0-9a-f]{64}")
# a request's database identity outlives no request by much; the bearer
# token's own expiry caps it too
DB_TOKEN_LIFETIME: Final = timedelta(seconds=60)


class DatabaseUnavailable(HealthscoreError):
    """The request's connection was lost under it: the database is (re)starting, or
    terminated it; another request may get through (a 503, not a 500)."""


class IdentityBindingFailed(HealthscoreError):
    """The database refused the backend's own token: a key or clock misconfiguration."""


@dataclass(frozen=True)
class Session:
    """A connection inside the request's transaction, logged in as `user_id`."""

    conn: PoolConnectionProxy[asyncpg.Record]
    user_id: uuid.UUID


class ApiConnection(asyncpg.Connection):
    """A connection of the API's pool, with the pid of its server process, which the
    identity tokens minted for it name."""

    __slots__ = ("backend_pid",)

    backend_pid: int


def _backend_pid(conn: PoolConnectionProxy[asyncpg.Record]) -> int:
    pid: int = conn.backend_pid  # type: ignore[attr-defined]  # the proxy forwards it
    return pid


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    # JSON columns arrive as Python objects, parsed by orjson
    for json_type in ("json", "jsonb"):
        await conn.set_type_codec(
            json_type,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )
    # the session's identity table, empty, committed: logins rolled back leave it as is
    assert isinstance(conn, ApiConnection)  # the pool's connection_class
    conn.backend_pid = await conn.fetchval(PREPARE_IDENTITY)


async def create_api_pool(
    database_url: str, role: str, size: int, tls: DatabaseTLS = None, statement_timeout_ms: int = 0
) -> asyncpg.Pool[Any]:
    """The API's pool: sessions as `role`, refused if that role skips row-level security.

    The role is a startup setting, so the pool's `RESET ALL` keeps it; so is
    `statement_timeout_ms` (0: none), the bound of one statement's cost, whatever a
    request asks.
    `plan_cache_mode=force_custom_plan`: the list statements take optional
    filters (`$1 IS NULL OR ...`), which PostgreSQL folds away only when it
    plans with the values; a generic plan would keep every branch.
    """
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min(2, size),
        max_size=size,
        ssl=tls,
        init=_init_connection,
        connection_class=ApiConnection,
        reset=rollback_only_reset,
        server_settings={
            "application_name": "healthscore-api",
            "role": role,
            "plan_cache_mode": "force_custom_plan",
            # timestamps the statements write as JSON text (the list's items) in UTC
            "TimeZone": "UTC",
            "statement_timeout": str(statement_timeout_ms),
        },
    )
    async with pool.acquire() as conn:
        row = await conn.fetchrow(ROLE_CHECK)
    if row is None or row["superuser"] or row["bypass_rls"]:
        await pool.close()
        raise UnsafeDatabaseRole(
            f"the API would run as {row['role'] if row else '?'!r}, which skips row-level "
            "security; set API_DATABASE_ROLE to cs_dashboard (or a role in it)"
        )
    if row["login_superuser"]:
        log.warning(
            "api_database_login_is_superuser",
            role=row["role"],
            advice=f"connect with a LOGIN role that is a member of {role} (see deploy/)",
        )
    return pool


# A subject search is read by the trigram index, never by reading every interaction:
# for a search text of 75 characters or more (on 20,000 interactions) the planner judged
# the index's hundreds of trigrams dearer than a sequential scan, which computed the
# similarity of every subject, 0.4-0.6 s against 5-9 ms by the index, growing with the
# table; any user could ask it at every request (a parameter the cache does not know).
# Other indexes stay open to the planner (an organization's timeline).
SEARCH_SETTINGS: Final = "SET LOCAL enable_seqscan = off; "


def begin_as(token: str, *, generic_plans: bool = False, searching: bool = False) -> str:
    """BEGIN and the login as one simple-protocol message (one round trip).

    `generic_plans`: the request's statements read by a key and nothing else (their
    optional filters, if any, only filter the rows the key reads), so each is planned
    once per connection (asyncpg prepares and keeps it) instead of at every execution
    as the pool's force_custom_plan does.
    `searching`: the request searches subjects (SEARCH_SETTINGS).
    """
    if not _TOKEN_ALPHABET.fullmatch(token):  # never anything but mint_token's output
        raise IdentityBindingFailed("refusing to send a token that is not one we minted")
    plans = "SET LOCAL plan_cache_mode = force_generic_plan; " if generic_plans else ""
    search = SEARCH_SETTINGS if searching else ""
    return f"BEGIN; {plans}{search}SELECT app_login('{token}')"


def _database_token(key: SigningKey, principal: Principal, backend_pid: int) -> str:
    expires_at = min(datetime.now(UTC) + DB_TOKEN_LIFETIME, principal.expires_at)
    return mint_token(key, principal.user_id, expires_at=expires_at, backend_pid=backend_pid)


def _refused(exc: asyncpg.InvalidAuthorizationSpecificationError) -> Exception:
    """What the database's refusal of the backend's own token means for the caller."""
    if "unknown user" in str(exc):
        return Unauthenticated("the token's subject is not a known user")
    if "expired" in str(exc):
        return Unauthenticated("the token has expired")
    log.error("api_identity_binding_failed", error=str(exc))
    return IdentityBindingFailed(str(exc))


async def fetch_as(
    pool: asyncpg.Pool[Any], key: SigningKey, principal: Principal, statement: str, *args: Any
) -> asyncpg.Record | None:
    """The row of `statement`, a call of a store function that logs in with its first
    argument (the caller's token, passed here), reads and logs out by itself: one
    round trip, in the statement's own transaction (a failure rolls the login back)."""
    async with pool.acquire() as conn:
        token = _database_token(key, principal, _backend_pid(conn))
        try:
            row: asyncpg.Record | None = await conn.fetchrow(statement, token, *args)
        except asyncpg.InvalidAuthorizationSpecificationError as exc:
            raise _refused(exc) from None
    return row


async def audience_of(pool: asyncpg.Pool[Any], key: SigningKey, principal: Principal) -> str | None:
    """The audience the database puts the caller in (app_audience): users who see the
    same rows share answers; None: their answers are their own."""
    row = await fetch_as(pool, key, principal, q.AUDIENCE)
    return None if row is None else row["audience"]


def _lost(conn: PoolConnectionProxy[asyncpg.Record]) -> bool:
    """Whether the request's connection is gone. When the server ends it while it is
    checked out, asyncpg hands it back to the pool at once and the proxy refuses every
    call after that, `is_closed()` included (InterfaceError)."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


@contextlib.asynccontextmanager
async def bound_session(
    pool: asyncpg.Pool[Any],
    key: SigningKey,
    principal: Principal,
    *,
    writes: bool = False,
    generic_plans: bool = False,
    searching: bool = False,
) -> AsyncIterator[Session]:
    """A transaction in which row-level security sees `principal` and nobody else.

    `writes`: the request changes rows, so it commits (logging out first); a
    request that only reads ends with ROLLBACK, which undoes its login too.
    `generic_plans`, `searching`: see `begin_as`.
    """
    async with pool.acquire() as conn:
        token = _database_token(key, principal, _backend_pid(conn))
        begin = begin_as(token, generic_plans=generic_plans, searching=searching)
        try:
            try:
                await conn.execute(begin)
            except asyncpg.InvalidAuthorizationSpecificationError as exc:
                refused = _refused(exc)
                if isinstance(refused, Unauthenticated):
                    raise refused from None
                raise refused from exc
            # app_login returned the token's user, which mint_token took from principal
            yield Session(conn, principal.user_id)
            await conn.execute(LOGOUT_AND_COMMIT if writes else "ROLLBACK")
        except BaseException as exc:
            # a lost connection is discarded by the pool; otherwise undo the login
            if not _lost(conn):
                # best effort: the pool's reset rolls back what this could not
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
            elif isinstance(exc, Exception) and not isinstance(exc, HealthscoreError):
                # whatever asyncpg raised for it (a connection the server terminated
                # while idle in the pool can fail with an internal client error)
                raise DatabaseUnavailable(f"the connection was lost: {exc}") from exc
            raise
