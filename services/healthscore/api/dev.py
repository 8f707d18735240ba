"""Development sign-in (`healthscore api --dev`, `healthscore demo`).

Production gets bearer tokens from the identity provider and the database
signing key from an operator (docs/operations.md). For development this module
does both itself, with the migration (superuser or owner) URL: it reads the
newest signing key, creates or reuses three dashboard users (an admin, a support
person, a member), and mints a sign-in link for each with an HS256 secret of
this process. It also gives the API a LOGIN role in cs_dashboard to connect
with, so that development runs as production does (not as the superuser).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from healthscore.api.auth import TokenVerifier, issue_hs256
from healthscore.errors import StartupRefused
from healthscore.store import identity as sign_in_sql
from healthscore.store.db import DatabaseTLS, connect
from healthscore.store.identity import SigningKey

LINK_LIFETIME: Final = timedelta(hours=12)
DEV_LOGIN_ROLE: Final = "healthscore_api_dev"


class DevSetupFailed(StartupRefused):
    """Development sign-in could not be prepared (no signing key, no rights, an identity
    provider's secret set): `healthscore api --dev` says so in one line."""


@dataclass(frozen=True)
class DevUser:
    role: str
    email: str
    full_name: str


DEV_USERS: Final = (
    DevUser("admin", "dev-admin@healthscore.invalid", "Dana Admin (dev)"),
    DevUser("support", "dev-support@healthscore.invalid", "Sam Support (dev)"),
    DevUser("member", "dev-member@healthscore.invalid", "Mia Member (dev)"),
)


@dataclass
class DevIdentity:
    signing_key: SigningKey
    users: dict[str, uuid.UUID]
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    @property
    def verifier(self) -> TokenVerifier:
        return TokenVerifier(hs256_secret=self.jwt_secret.encode())

    def token(self, role: str, valid_for: timedelta = LINK_LIFETIME) -> str:
        return issue_hs256(self.jwt_secret, self.users[role], valid_for)

    def links(self, base_url: str) -> dict[str, str]:
        # the token travels in the fragment, which browsers never send to a server
        return {role: f"{base_url}/#token={self.token(role)}" for role in self.users}


async def prepare_dev_identity(admin_url: str, tls: DatabaseTLS = None) -> DevIdentity:
    conn = await connect(admin_url, tls)
    try:
        key = await conn.fetchrow(sign_in_sql.NEWEST_KEY)
        if key is None:
            raise DevSetupFailed(
                "no signing key in use: INSERT INTO app_signing_keys DEFAULT VALUES"
            )
        users = {user.role: await _ensure_user(conn, user) for user in DEV_USERS}
    except asyncpg.InsufficientPrivilegeError as exc:
        raise DevSetupFailed(
            f"--dev needs the migration URL (superuser or owner) to read the key: {exc}"
        ) from exc
    finally:
        await conn.close()
    return DevIdentity(SigningKey(key["key_id"], bytes(key["secret"])), users)


async def _ensure_user(conn: asyncpg.Connection, user: DevUser) -> uuid.UUID:
    async with conn.transaction():
        existing: uuid.UUID | None = await conn.fetchval(sign_in_sql.USER_BY_EMAIL, user.email)
        if existing is not None:
            return existing
        if user.role == "support":
            adopted: uuid.UUID | None = await conn.fetchval(
                sign_in_sql.BUSIEST_PLACEHOLDER_ASSIGNEE
            )
            if adopted is not None:
                await conn.execute(
                    sign_in_sql.ADOPT_PROFILE, adopted, user.email, user.full_name, user.role
                )
                return adopted
        user_id = uuid.uuid4()
        await conn.execute(
            sign_in_sql.INSERT_PROFILE, user_id, user.email, user.full_name, user.role
        )
        return user_id


async def dev_login_url(admin_url: str, tls: DatabaseTLS = None) -> str:
    """A URL for the API as a LOGIN role in cs_dashboard (created once), on the same server.

    The embedded server trusts its local socket; elsewhere give API_DATABASE_URL.
    """
    conn = await connect(admin_url, tls)
    try:
        if not await conn.fetchval(sign_in_sql.ROLE_EXISTS, DEV_LOGIN_ROLE):
            # a constant identifier, never input
            await conn.execute(f"CREATE ROLE {DEV_LOGIN_ROLE} LOGIN IN ROLE cs_dashboard")
    finally:
        await conn.close()
    parts = urlsplit(admin_url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(
        (parts.scheme, f"{DEV_LOGIN_ROLE}@{host}", parts.path, parts.query, parts.fragment)
    )
