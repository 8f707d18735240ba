"""PostgreSQL over TLS: DATABASE_SSLMODE=verify-full with a throw-away CA.

Every connection goes through the service's own paths (`create_pool`,
`apply_migrations`, `db.connect`, `healthscore lag`) with the SSLContext that
`database_tls(settings)` builds. Two endpoints (tests/utils/postgres_tls.py):

- proxy: TLS negotiated PostgreSQL-style in front of the embedded server (which
  is built without OpenSSL); always runs. The encryption is checked on the
  client's side of the socket.
- native: a PostgreSQL built with OpenSSL found on the machine, started with
  `ssl = on` and a pg_hba.conf that takes TLS sessions only; pg_stat_ssl is
  checked too. Skipped where no such server is installed.

Both present a certificate for `localhost` and 127.0.0.1 and also listen on
127.0.0.2, an address the certificate does not name.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from healthscore.config import Settings
from healthscore.errors import MigrationError
from healthscore.store.db import DatabaseTLS, connect, create_pool, database_tls
from healthscore.store.migrate import apply_migrations
from healthscore_lab.devservices import Services, free_port
from tests.utils.postgres_tls import (
    TlsTerminatingProxy,
    native_tls_postgres,
    tls_capable_postgres,
    upstream_of,
)
from tests.utils.tls import Issued, issue, make_ca

ADMIN_PASSWORD = "tls-admin-Secret-1"
SSL_OF_THIS_SESSION = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
SSL_OF_THE_POOL = """
SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
WHERE a.datname = current_database() AND a.application_name = 'healthscore'
"""


@dataclass(frozen=True)
class Pki:
    ca: Issued
    other_ca: Issued
    server: Issued


@dataclass(frozen=True)
class Endpoint:
    kind: str
    port: int
    user: str
    # pg_stat_ssl reflects the client's TLS session (not so behind the proxy)
    server_side_tls: bool
    pki: Pki

    def url(self, database: str, host: str = "localhost") -> str:
        return f"postgresql://{self.user}:{ADMIN_PASSWORD}@{host}:{self.port}/{database}"

    def tls(self, mode: str = "verify-full", ca: Issued | None = None) -> DatabaseTLS:
        """What the service connects with for these settings."""
        values: dict[str, Any] = {"database_sslmode": mode}
        if mode != "disable":
            values["database_sslrootcert"] = (ca or self.pki.ca).cert
        return database_tls(Settings(_env_file=None, **values))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pg-tls")
    ca = make_ca(directory, "healthscore postgres test CA")
    return Pki(
        ca=ca,
        other_ca=make_ca(directory / "other", "another CA"),
        server=issue(ca, directory, "localhost", dns=("localhost",), ips=("127.0.0.1",)),
    )


@pytest.fixture(scope="module")
async def proxy_endpoint(pki: Pki, pg_admin_url: str) -> AsyncIterator[Endpoint]:
    proxy = TlsTerminatingProxy(upstream_of(pg_admin_url), pki.server)
    port = free_port()
    await proxy.start(["127.0.0.1", "127.0.0.2"], port)
    try:
        user = urlsplit(pg_admin_url).username or "postgres"
        yield Endpoint("proxy", port, user, server_side_tls=False, pki=pki)
    finally:
        await proxy.close()


@pytest.fixture(scope="module")
def native_endpoint(pki: Pki) -> Iterator[Endpoint]:
    bin_dir = tls_capable_postgres()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server built with OpenSSL here (the embedded one is not)")
    port = free_port()
    with native_tls_postgres(bin_dir, pki.server, port, ADMIN_PASSWORD):
        yield Endpoint("native", port, "postgres", server_side_tls=True, pki=pki)


@pytest.fixture(params=["proxy", "native"])
def endpoint(request: pytest.FixtureRequest) -> Endpoint:
    value: Endpoint = request.getfixturevalue(f"{request.param}_endpoint")
    return value


@pytest.fixture
async def database(endpoint: Endpoint, services: Services) -> AsyncIterator[str]:
    """A new, empty database behind the endpoint (made and dropped over TLS; not dropped
    on the session's embedded server, deleted as a whole at the end: a drop there waited
    11 s for the server's checkpoint late in the suite)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await connect(endpoint.url("postgres"), endpoint.tls())
    try:
        await conn.execute(f"CREATE DATABASE {name}")
        yield name
        if endpoint.kind != "proxy" or services.postgres_server is None:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


async def _assert_encrypted(conn: Any, endpoint: Endpoint, server_side: bool = True) -> None:
    """TLS on the client's socket, and in pg_stat_ssl where the server does the TLS.

    (pg_stat_ssl shows a session to its own login role: not from a pool session,
    which runs as healthscore_writer.)
    """
    raw = getattr(conn, "_con", conn)  # a pool's connection proxy, or a connection
    tls = raw._transport.get_extra_info("ssl_object")
    assert tls is not None, "a plaintext session"
    assert tls.version() in ("TLSv1.2", "TLSv1.3")
    subject = dict(x[0] for x in tls.getpeercert()["subject"])
    assert subject["commonName"] == "localhost"
    if endpoint.server_side_tls and server_side:
        row = await conn.fetchrow(SSL_OF_THIS_SESSION)
        assert row is not None and row["ssl"] is True


async def test_migrations_and_the_pool_run_over_verified_tls(
    endpoint: Endpoint, database: str
) -> None:
    url = endpoint.url(database)
    tls = endpoint.tls()
    assert isinstance(tls, ssl.SSLContext) and tls.check_hostname
    assert await apply_migrations(url, tls=tls), "migrations applied over TLS"
    pool = await create_pool(url, "healthscore_writer", min_size=2, max_size=2, tls=tls)
    try:
        async with pool.acquire() as conn, pool.acquire() as other:
            await _assert_encrypted(conn, endpoint, server_side=False)
            await _assert_encrypted(other, endpoint, server_side=False)
            assert await conn.fetchval("SELECT current_user") == "healthscore_writer"
            assert await conn.fetchval("SELECT count(*) FROM organization_state") == 0
            admin = await connect(url, tls)
            try:
                await _assert_encrypted(admin, endpoint)
                if endpoint.server_side_tls:
                    assert [r["ssl"] for r in await admin.fetch(SSL_OF_THE_POOL)] == [True, True]
            finally:
                await admin.close()
    finally:
        await pool.close()


async def test_the_server_takes_no_plaintext_sessions(endpoint: Endpoint) -> None:
    # so the encryption seen above is required, not a lucky default
    expected: tuple[type[BaseException], ...] = (
        (asyncpg.InvalidAuthorizationSpecificationError,)
        if endpoint.kind == "native"
        else (ConnectionError, asyncpg.ConnectionDoesNotExistError)
    )
    with pytest.raises(expected):
        await connect(endpoint.url("postgres"), endpoint.tls("disable"))


async def test_a_certificate_from_another_ca_is_refused(endpoint: Endpoint) -> None:
    tls = endpoint.tls(ca=endpoint.pki.other_ca)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await create_pool(endpoint.url("postgres"), "healthscore_writer", tls=tls)
    with pytest.raises(MigrationError, match="certificate verify failed") as info:
        await apply_migrations(endpoint.url("postgres"), tls=tls)
    assert ADMIN_PASSWORD not in str(info.value)  # the URL in the message is redacted


async def test_a_host_name_not_in_the_certificate_is_refused(endpoint: Endpoint) -> None:
    # 127.0.0.2 reaches the same server; the certificate names localhost and 127.0.0.1
    elsewhere = endpoint.url("postgres", host="127.0.0.2")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await create_pool(elsewhere, "healthscore_writer", tls=endpoint.tls())
    # the chain itself is fine: verify-ca (no host name check) connects ...
    conn = await connect(elsewhere, endpoint.tls("verify-ca"))
    try:
        await _assert_encrypted(conn, endpoint)
    finally:
        await conn.close()
    # ... and verify-full does at the address the certificate names
    conn = await connect(endpoint.url("postgres", host="127.0.0.1"), endpoint.tls())
    await conn.close()


async def test_lag_command_takes_tls_from_the_environment(
    endpoint: Endpoint, database: str, kafka_bootstrap: str
) -> None:
    url = endpoint.url(database)
    await apply_migrations(url, tls=endpoint.tls())
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": url,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "DATABASE_SSLMODE": "verify-full",
            "DATABASE_SSLROOTCERT": str(endpoint.pki.ca.cert),
            "USAGE_TOPIC": "tls.lag.usage",
            "SUPPORT_TOPIC": "tls.lag.support",
        }
    )

    def run(*extra: str, **override: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "healthscore.cli", "lag", *extra],
            env={**env, **override},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ok = await asyncio.to_thread(run, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["total_lag"] == 0

    refused = await asyncio.to_thread(run, DATABASE_SSLROOTCERT=str(endpoint.pki.other_ca.cert))
    assert refused.returncode == 2
    assert "cannot measure lag: SSLCertVerificationError" in refused.stderr
    assert ADMIN_PASSWORD not in refused.stderr + refused.stdout
