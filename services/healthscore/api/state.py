"""What one API process holds: its configuration, then its pool and response cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from healthscore.api.auth import TokenVerifier
from healthscore.api.cache import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, CacheState
from healthscore.api.invalidation import ReadModelListener
from healthscore.config import Settings
from healthscore.errors import HealthscoreError
from healthscore.store.db import DatabaseTLS, database_tls
from healthscore.store.dburl import unreachable
from healthscore.store.identity import InvalidIdentityToken, SigningKey


class ApiConfigError(HealthscoreError):
    """The API cannot start with these settings; the message names the variables."""


@dataclass(frozen=True)
class ApiConfig:
    database_url: str
    database_role: str
    pool_size: int
    signing_key: SigningKey
    verifier: TokenVerifier
    tls: DatabaseTLS = None
    refresh_seconds: float = 15.0
    # the response cache (healthscore.api.cache); 0 entries: no cache
    cache_entries: int = DEFAULT_MAX_ENTRIES
    cache_bytes: int = DEFAULT_MAX_BYTES
    list_staleness: float = 0.0
    # one `api_request` line per request (healthscore.api.access_log)
    access_log: bool = True
    # the sessions' statement_timeout (0: none)
    statement_timeout_ms: int = 5000
    # connections the API's server holds at once (healthscore.http_limits)
    max_connections: int = 512

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        signing_key: SigningKey | None = None,
        verifier: TokenVerifier | None = None,
    ) -> ApiConfig:
        """From API_* settings; `signing_key`/`verifier` override them (`--dev`)."""
        problems: list[str] = []
        url = settings.api_database_url or settings.database_url
        if url is None:
            problems.append("set API_DATABASE_URL (or DATABASE_URL)")
        if signing_key is None:
            signing_key = _signing_key(settings, problems)
        if verifier is None:
            secret = settings.api_jwt_secret
            verifier = TokenVerifier.from_files(
                secret.get_secret_value() if secret else None,
                settings.api_jwks_path,
                settings.api_jwt_audience,
                settings.api_jwt_issuer,
            )
            if not verifier.configured:
                problems.append("set API_JWT_SECRET (HS256) or API_JWKS_PATH (RS256)")
            if settings.api_jwks_path is not None and settings.api_jwt_audience is None:
                # its keys sign the tokens of every application the provider serves
                problems.append(
                    "API_JWKS_PATH needs API_JWT_AUDIENCE: without it a token the identity "
                    "provider issued to another application would be accepted here"
                )
        if problems or url is None or signing_key is None:
            raise ApiConfigError("; ".join(problems))
        return cls(
            database_url=url.get_secret_value(),
            database_role=settings.api_database_role,
            pool_size=settings.api_database_pool_size,
            signing_key=signing_key,
            verifier=verifier,
            tls=database_tls(settings),
            refresh_seconds=settings.api_refresh_seconds,
            cache_entries=settings.api_response_cache_entries,
            cache_bytes=settings.api_response_cache_megabytes * 1024 * 1024,
            list_staleness=settings.api_list_staleness_seconds,
            access_log=settings.api_access_log,
            statement_timeout_ms=settings.api_statement_timeout_ms,
            max_connections=settings.api_max_connections,
        )


async def database_reachable(config: ApiConfig) -> None:
    """One connection to the API's database before the server starts: unreachable, or
    refusing the login, is one line (`ApiConfigError`), not the server framework's
    start-up traceback."""
    try:
        conn = await asyncpg.connect(config.database_url, ssl=config.tls, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise ApiConfigError(unreachable("API_DATABASE_URL", config.database_url, exc)) from exc
    await conn.close()


def _signing_key(settings: Settings, problems: list[str]) -> SigningKey | None:
    key_id, secret = settings.api_db_signing_key_id, settings.api_db_signing_key
    if key_id is None or secret is None:
        problems.append(
            "set API_DB_SIGNING_KEY_ID and API_DB_SIGNING_KEY (a key of app_signing_keys, "
            "see docs/operations.md)"
        )
        return None
    try:
        return SigningKey(key_id, bytes.fromhex(secret.get_secret_value()))
    except (ValueError, InvalidIdentityToken) as exc:  # not hex; too short
        problems.append(f"API_DB_SIGNING_KEY: {exc}")
        return None


@dataclass(frozen=True)
class ApiState:
    pool: asyncpg.Pool[Any]
    signing_key: SigningKey
    verifier: TokenVerifier
    refresh_seconds: float
    cache: CacheState | None = None
    listener: ReadModelListener | None = None
