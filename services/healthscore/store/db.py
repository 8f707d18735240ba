"""PostgreSQL connections: the service's pool, always as a role that row-level security
binds, and one-off connections; both with the TLS of DATABASE_SSLMODE."""

from __future__ import annotations

import ssl
from typing import Any

import asyncpg
import structlog

from healthscore.config import Settings
from healthscore.errors import UnsafeDatabaseRole
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


async def create_pool(
    database_url: str,
    role: str | None,
    min_size: int = 1,
    max_size: int = 4,
    tls: DatabaseTLS = None,
) -> asyncpg.Pool[Any]:
    """A pool whose sessions run as `role` (the startup `role` setting).

    Setting the role at connection startup, not with SET ROLE after it, makes
    it the session default: the pool's `RESET ALL` between uses keeps it.
    """
    settings = {"role": role} if role else {}
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        ssl=tls,
        server_settings={"application_name": "healthscore", **settings},
    )
    assert pool is not None
    async with pool.acquire() as conn:
        row = await conn.fetchrow(ROLE_CHECK)
    if row is None or row["superuser"] or row["bypass_rls"]:
        await pool.close()
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
    return pool
