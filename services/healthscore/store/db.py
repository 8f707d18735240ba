"""PostgreSQL connections: the service's pool, always as a role that row-level security
binds, and one-off connections; both with the TLS of DATABASE_SSLMODE."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncpg
import structlog

from healthscore.config import Settings
from healthscore.errors import UnsafeDatabaseRole
from healthscore.store import sql
from healthscore.tls import client_ssl_context

log = structlog.get_logger(__name__)

ROLE_CHECK = """
SELECT current_user AS role, r.rolsuper AS superuser, r.rolbypassrls AS bypass_rls,
       (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) AS login_superuser
FROM pg_roles r WHERE r.rolname = current_user
"""


# asyncpg's `ssl=`: a context (TLS required), False (no TLS), None (as the URL says)
DatabaseTLS = ssl.SSLContext | bool | None


def database_tls(settings: Settings) -> DatabaseTLS:
    """What DATABASE_SSLMODE and its files ask for, as asyncpg's `ssl=` argument.

    verify-full checks the certificate chain (against DATABASE_SSLROOTCERT, else
    the system trust store) and that the host name of the URL is in the
    certificate; verify-ca the chain only; require encrypts without verifying
    unless a root certificate is given (libpq does the same). Over a Unix socket
    PostgreSQL never uses TLS, whatever the mode.
    """
    s = settings
    mode = s.database_sslmode
    if mode is None:
        return None
    if mode == "disable":
        return False
    return client_ssl_context(
        cafile=s.database_sslrootcert,
        certfile=s.database_sslcert,
        keyfile=s.database_sslkey,
        key_password=s.database_sslkey_password,
        verify_certificate=mode != "require" or s.database_sslrootcert is not None,
        check_hostname=mode == "verify-full",
    )


async def connect(database_url: str, tls: DatabaseTLS = None, **options: Any) -> asyncpg.Connection:
    """One connection (not from the pool) with the given TLS."""
    return await asyncpg.connect(database_url, ssl=tls, **options)


async def rollback_only_reset(conn: asyncpg.Connection) -> None:
    """A pool's reset, after asyncpg's own rollback of a transaction left open: nothing more.

    asyncpg's default also runs `RESET ALL`, `CLOSE ALL`, `UNLISTEN *` and
    `pg_advisory_unlock_all()`: one more round trip for every transaction, which
    live traffic (a batch every few milliseconds) pays most. The pools that use it
    change no session setting after their connection's start (role and the like are
    startup settings, `transaction_timeout` is set once as the connection opens;
    statements use `set_config(..., true)`, transaction-local), open no cursor outside a
    transaction, listen to nothing and take only transaction-level advisory locks
    (the migration's session lock is on a connection of its own).
    """


def service_pool(
    database_url: str,
    role: str | None,
    min_size: int = 1,
    max_size: int = 4,
    tls: DatabaseTLS = None,
    idle_transaction_limit: float = 0.0,
    transaction_time_limit: float = 0.0,
) -> asyncpg.Pool[Any]:
    """The service's pool, not open yet (`opened`): its sessions run as `role`.

    Setting the role at connection startup (the startup `role` setting), not
    with SET ROLE after it, makes it the session default (whatever a pool's reset
    ran, it would keep it). Between uses the pool only rolls back
    (`rollback_only_reset`). `idle_transaction_limit` (seconds, 0: none) is each
    session's `idle_in_transaction_session_timeout`, set at startup as well (no
    round trip per transaction): a process that stops mid-transaction without its
    connection closing (frozen, cut off) holds its row locks that long at most.
    `transaction_time_limit` (seconds, 0: none) is each session's
    `transaction_timeout` where the server has it (`bound_transaction_time`): the
    same, for one frozen half-way through sending a statement.

    Prepared statements do not expire (`max_cached_statement_lifetime` 0): asyncpg
    scheduled each one's expiry as it was prepared, with the context it ran in, and a
    batch runs in FastStream's, which holds the batch's message and every record in
    it: each timer kept a committed batch alive for five minutes. Statements still
    leave the cache least recently used first, and PostgreSQL replans them after a
    migration or an ANALYZE. The idle close of a connection (asyncpg's default, 300 s)
    stays: it holds the context of the connection's last use only until its next one,
    and closes a connection before a NAT or firewall could drop it unannounced.
    """
    settings = {"role": role} if role else {}
    if idle_transaction_limit > 0:
        settings["idle_in_transaction_session_timeout"] = f"{round(idle_transaction_limit * 1000)}"
    return asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        ssl=tls,
        reset=rollback_only_reset,
        max_cached_statement_lifetime=0,
        init=bound_transaction_time(transaction_time_limit) if transaction_time_limit > 0 else None,
        server_settings={"application_name": "healthscore", **settings},
    )


# the first PostgreSQL with `transaction_timeout`
TRANSACTION_TIMEOUT_SINCE = 17


def bound_transaction_time(
    limit: float,
) -> Callable[[asyncpg.Connection], Coroutine[Any, Any, None]]:
    """A pool's `init`: each new session's `transaction_timeout` is `limit` (seconds).

    Set once per connection, not at startup like the idle limit: a server before
    17 refuses a startup setting it does not know (the connection fails), and the
    server's version is known only once connected. There the bound is left out and
    said once (the pool opens its first connection at the service's start).
    """
    said = False

    async def init(conn: asyncpg.Connection) -> None:
        nonlocal said
        version = conn.get_server_version()
        if version.major >= TRANSACTION_TIMEOUT_SINCE:
            await conn.execute(sql.BOUND_TRANSACTION_TIME, f"{round(limit * 1000)}ms")
        elif not said:
            said = True
            log.warning(
                "transaction_time_limit_unavailable",
                server_version=f"{version.major}.{version.minor}",
                transaction_time_limit_seconds=limit,
                consequence="a replica frozen half-way through sending a statement holds "
                "its partitions' rows until it is stopped or its session terminated",
                advice=f"PostgreSQL {TRANSACTION_TIMEOUT_SINCE} or later has transaction_timeout",
            )

    return init


@contextlib.asynccontextmanager
async def opened(
    pool: asyncpg.Pool[Any], role: str | None, close_within: float | None = None
) -> AsyncIterator[asyncpg.Pool[Any]]:
    """Open `pool` (as `role`) for the block; closed at its end, within `close_within`
    seconds (None: however long): a close waits for every connection's release, which
    waits on its server, so a server that does not answer held it for good; past the
    time the connections are dropped (the server rolls back what they had not
    committed)."""
    await _open(pool, role)
    try:
        yield pool
    finally:
        if close_within is None:
            await pool.close()
        else:
            try:
                await asyncio.wait_for(pool.close(), close_within)
            except TimeoutError:
                log.warning("database_pool_terminated", waited_seconds=close_within)
                pool.terminate()


async def create_pool(
    database_url: str,
    role: str | None,
    min_size: int = 1,
    max_size: int = 4,
    tls: DatabaseTLS = None,
) -> asyncpg.Pool[Any]:
    """An open pool whose sessions run as `role` (see `service_pool`); the caller closes it."""
    pool = service_pool(database_url, role, min_size, max_size, tls)
    await _open(pool, role)
    return pool


async def _open(pool: asyncpg.Pool[Any], role: str | None) -> None:
    """Connect `pool`; refuse (and close it) when its role skips row-level security."""
    await pool
    try:
        await _check_role(pool, role)
    except BaseException:
        await pool.close()
        raise


async def _check_role(pool: asyncpg.Pool[Any], role: str | None) -> None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(ROLE_CHECK)
    if row is None or row["superuser"] or row["bypass_rls"]:
        raise UnsafeDatabaseRole(
            f"the service would run as {row['role'] if row else '?'!r}, which skips "
            "row-level security; set DATABASE_ROLE to a plain writer role"
        )
    if row["login_superuser"]:
        # policies apply (the session runs as the writer role), but the login
        # could switch back: fine for the embedded dev server, not for production
        log.warning(
            "database_login_is_superuser",
            role=row["role"],
            advice=f"connect with a dedicated login role that is a member of {role} (see deploy/)",
        )
