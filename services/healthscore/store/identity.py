"""Identity tokens for dashboard sessions: the tokens `app_login()` verifies.

Row-level security trusts only the identity a session proved with
`SELECT app_login(token)` (migration 0020): a token naming a `user_profiles` id
and an expiry, signed with HMAC-SHA256 under a key of `app_signing_keys`. The
trusted dashboard backend, which authenticates people itself, holds a copy of
that key and mints a short-lived token per request or connection checkout:

    token = mint_token(key, user_id, expires_at=datetime.now(UTC) + timedelta(minutes=5))
    await conn.execute(LOGIN, token)      # RLS now sees user_id
    ...
    await conn.execute(LOGOUT)            # before the connection serves someone else

The format is fixed by the SQL verifier: ``v1.<key id>.<user id>.<expiry>.<sig>``
with the canonical lowercase uuid, the expiry in unix seconds and ``sig`` the hex
HMAC-SHA256 of everything before the last dot. `app_mint_token()` in SQL mints
the same tokens for administrators. Given the backend's pid (`pg_backend_pid()`), the
token is ``v2.<key id>.<user id>.<expiry>.<pid>.<sig>``, good in that session only
(migration 0073): the read API sends its tokens as statement text, which monitoring
and statement logs may show.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from healthscore.errors import HealthscoreError

TOKEN_VERSION: Final = "v1"
# a token bound to one server process (migration 0073)
BOUND_TOKEN_VERSION: Final = "v2"
MAX_BACKEND_PID: Final = 9_999_999_999
LOGIN: Final = "SELECT app_login($1)"
LOGOUT: Final = "SELECT app_logout()"
# what app_signing_keys and the token pattern of app_login() accept
MIN_SECRET_BYTES: Final = 32
MAX_KEY_ID: Final = 999_999_999
MAX_EXPIRY: Final = 10**12 - 1


class InvalidIdentityToken(HealthscoreError):
    """A token could not be minted: bad key, naive or out-of-range expiry."""


@dataclass(frozen=True)
class SigningKey:
    """A row of app_signing_keys: its id (named in tokens) and its secret."""

    key_id: int
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.key_id <= MAX_KEY_ID:
            raise InvalidIdentityToken(f"key_id must be 1..{MAX_KEY_ID}, got {self.key_id}")
        if len(self.secret) < MIN_SECRET_BYTES:
            raise InvalidIdentityToken(f"secret must be at least {MIN_SECRET_BYTES} bytes")


def signature(secret: bytes, message: bytes) -> str:
    """Hex HMAC-SHA256 of the message, as `encode(hmac_sha256(secret, message), 'hex')` in SQL."""
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def mint_token(
    key: SigningKey, user_id: uuid.UUID, *, expires_at: datetime, backend_pid: int | None = None
) -> str:
    """A token that makes `user_id` the session's user until `expires_at` (whole seconds);
    with `backend_pid`, only in the session of that server process."""
    if expires_at.tzinfo is None:
        raise InvalidIdentityToken("expires_at must be timezone-aware")
    expiry = math.floor(expires_at.timestamp())
    if not 0 <= expiry <= MAX_EXPIRY:
        raise InvalidIdentityToken(f"expires_at out of range: {expires_at.isoformat()}")
    if backend_pid is None:
        message = f"{TOKEN_VERSION}.{key.key_id}.{user_id}.{expiry}"
    elif 1 <= backend_pid <= MAX_BACKEND_PID:
        message = f"{BOUND_TOKEN_VERSION}.{key.key_id}.{user_id}.{expiry}.{backend_pid}"
    else:
        raise InvalidIdentityToken(f"backend_pid out of range: {backend_pid}")
    return f"{message}.{signature(key.secret, message.encode('ascii'))}"


# --- development sign-in (`healthscore api --dev`) ---------------------------------

NEWEST_KEY = """
SELECT key_id, secret FROM app_signing_keys WHERE retired_at IS NULL
ORDER BY key_id DESC LIMIT 1
"""
USER_BY_EMAIL = "SELECT id FROM user_profiles WHERE email = $1"
# the placeholder assignee (created by the service from events) with the most
# open interactions: as the dev support person, the support view has work in it
BUSIEST_PLACEHOLDER_ASSIGNEE = """
SELECT i.assigned_to FROM support_interactions i
JOIN user_profiles u ON u.id = i.assigned_to AND u.email IS NULL
WHERE i.status = 'open'
GROUP BY i.assigned_to ORDER BY count(*) DESC, i.assigned_to LIMIT 1
"""
ADOPT_PROFILE = "UPDATE user_profiles SET email = $2, full_name = $3, role = $4 WHERE id = $1"
INSERT_PROFILE = "INSERT INTO user_profiles (id, email, full_name, role) VALUES ($1, $2, $3, $4)"
ROLE_EXISTS = "SELECT true FROM pg_roles WHERE rolname = $1"
