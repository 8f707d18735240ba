"""The read API against a test database: as production runs it, never mocked.

The API connects as a fresh LOGIN role that is a member of cs_dashboard (the
test server trusts its socket), mints database identity tokens with the key
the migration drew, and verifies HS256 bearer tokens of a test secret.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from fastapi import FastAPI

from healthscore.api.app import create_app, served
from healthscore.api.auth import TokenVerifier, issue_hs256
from healthscore.api.models import OrganizationPage
from healthscore.api.state import ApiConfig
from healthscore.store.identity import SigningKey

JWT_SECRET = "test-secret-of-the-identity-provider-0123456789"


def with_user(url: str, user: str) -> str:
    """The same server and database, another user (the test server trusts its socket)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


def bearer(user_id: uuid.UUID, valid_for: timedelta = timedelta(minutes=5), **claims: Any) -> str:
    return "Bearer " + issue_hs256(JWT_SECRET, user_id, valid_for, **claims)


async def signing_key(database_url: str) -> SigningKey:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT key_id, secret FROM app_signing_keys WHERE retired_at IS NULL"
            " ORDER BY key_id DESC LIMIT 1"
        )
    finally:
        await conn.close()
    assert row is not None
    return SigningKey(row["key_id"], bytes(row["secret"]))


@contextlib.asynccontextmanager
async def api_login(pg_admin_url: str, database_url: str) -> AsyncIterator[str]:
    """A URL of `database_url` as a new LOGIN role in cs_dashboard, dropped afterwards."""
    async with temporary_login(pg_admin_url, database_url, "cs_dashboard", "t_api") as url:
        yield url


@contextlib.asynccontextmanager
async def temporary_login(
    pg_admin_url: str, database_url: str, member_of: str | None, prefix: str = "t_login"
) -> AsyncIterator[str]:
    """A URL of `database_url` as a new LOGIN role (a member of `member_of`, or of no
    role: what PUBLIC may do), its sessions ended and the role dropped afterwards."""
    login = f"{prefix}_{uuid.uuid4().hex[:10]}"
    member = f" IN ROLE {member_of}" if member_of else ""
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f"CREATE ROLE {login} LOGIN{member}")
    finally:
        await admin.close()
    try:
        yield with_user(database_url, login)
    finally:
        admin = await asyncpg.connect(pg_admin_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", login
            )
            await admin.execute(f"DROP ROLE IF EXISTS {login}")
        finally:
            await admin.close()


async def api_config(database_url: str, login_url: str, pool_size: int = 4) -> ApiConfig:
    return ApiConfig(
        database_url=login_url,
        database_role="cs_dashboard",
        pool_size=pool_size,
        signing_key=await signing_key(database_url),
        verifier=TokenVerifier(hs256_secret=JWT_SECRET.encode()),
    )


@contextlib.asynccontextmanager
async def api_client(config: ApiConfig) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The ASGI app with its lifespan (pool) running, and an HTTP client to it."""
    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=served(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            yield client, app


async def every_organization_page(
    client: httpx.AsyncClient, params: dict[str, Any], headers: dict[str, str]
) -> list[str]:
    """The organization ids of `/api/v1/organizations` with `params`, every page followed
    by its cursor, in the order served."""
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(200):
        response = await client.get(
            "/api/v1/organizations",
            params={**params, **({"cursor": cursor} if cursor else {})},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        page = OrganizationPage.model_validate(response.json())
        seen += [str(item.organization_id) for item in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return seen
    raise AssertionError("the cursor never ran out")
