"""One request, one transaction, one verified database identity.

The API's sessions run as `cs_dashboard` (API_DATABASE_ROLE), under the row-level
security of the read model. For each request the verified caller becomes the
session's user through the database's own identity check (migration 0020):

    BEGIN
    SELECT app_login(<token for sub, minted with the backend's copy of the key>)
    ... the request's queries: the policies see exactly this user ...
    SELECT app_logout()
    COMMIT

The logout is part of the same transaction, and a transaction that fails rolls
the login back with it, so a pooled connection never carries one person's
identity into another's request. (asyncpg's pool reset does not drop temporary
tables, which is where the identity lives, and it rolls back an unfinished
transaction before reuse.)
"""

from __future__ import annotations

import contextlib
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
from healthscore.store.db import ROLE_CHECK, DatabaseTLS
from healthscore.store.identity import LOGIN, LOGOUT, SigningKey, mint_token

log = structlog.get_logger(__name__)

# one round trip for both; simple query protocol (no parameters), so two statements
LOGOUT_AND_COMMIT: Final = LOGOUT + "; COMMIT"
# a request's database identity outlives no request by much; the bearer
# token's own expiry caps it too
DB_TOKEN_LIFETIME: Final = timedelta(seconds=60)


class IdentityBindingFailed(HealthscoreError):
    """The database refused the backend's own token: a key or clock misconfiguration."""


@dataclass(frozen=True)
class Session:
    """A connection inside the request's transaction, logged in as `user_id`."""

    conn: PoolConnectionProxy[asyncpg.Record]
    user_id: uuid.UUID


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns arrive as Python objects, parsed by orjson
    for json_type in ("json", "jsonb"):
        await conn.set_type_codec(
            json_type,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def create_api_pool(
    database_url: str, role: str, size: int, tls: DatabaseTLS = None
) -> asyncpg.Pool[Any]:
    """The API's pool: sessions as `role`, refused if that role skips row-level security.

    The role is a startup setting, so the pool's `RESET ALL` keeps it.
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
        server_settings={
            "application_name": "healthscore-api",
            "role": role,
            "plan_cache_mode": "force_custom_plan",
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


@contextlib.asynccontextmanager
async def bound_session(
    pool: asyncpg.Pool[Any], key: SigningKey, principal: Principal
) -> AsyncIterator[Session]:
    """A transaction in which row-level security sees `principal` and nobody else."""
    expires_at = min(datetime.now(UTC) + DB_TOKEN_LIFETIME, principal.expires_at)
    token = mint_token(key, principal.user_id, expires_at=expires_at)
    async with pool.acquire() as conn:
        # the transaction by hand, so that the logout and the commit travel together
        await conn.execute("BEGIN")
        try:
            try:
                user_id = await conn.fetchval(LOGIN, token)
            except asyncpg.InvalidAuthorizationSpecificationError as exc:
                if "unknown user" in str(exc):
                    raise Unauthenticated("the token's subject is not a known user") from None
                if "expired" in str(exc):
                    raise Unauthenticated("the token has expired") from None
                log.error("api_identity_binding_failed", error=str(exc))
                raise IdentityBindingFailed(str(exc)) from exc
            yield Session(conn, user_id)
            await conn.execute(LOGOUT_AND_COMMIT)
        except BaseException:
            # a lost connection is discarded by the pool; otherwise undo the login
            if not conn.is_closed():
                # best effort: the pool's reset rolls back what this could not
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
            raise
