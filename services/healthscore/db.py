"""The service's connection pool, always as a role that row-level security binds."""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog

from healthscore.errors import UnsafeDatabaseRole

log = structlog.get_logger(__name__)

ROLE_CHECK = """
SELECT current_user AS role, r.rolsuper AS superuser, r.rolbypassrls AS bypass_rls,
       (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) AS login_superuser
FROM pg_roles r WHERE r.rolname = current_user
"""


async def create_pool(
    database_url: str, role: str | None, min_size: int = 1, max_size: int = 4
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
