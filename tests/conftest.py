"""Session-wide real services and per-test clean databases and topics.

The services come from `healthscore_lab.devservices`: the URLs in the environment
when set, else testcontainers where Docker answers, else the embedded
PostgreSQL and tansu broker. Each test gets its own database, cloned from a
migrated template (fast: a file copy inside the server), and its own topics.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from healthscore.store.dburl import with_database
from healthscore_lab.devservices import Services, resolve_services


def pytest_configure(config: pytest.Config) -> None:
    """Children get Ctrl-C and SIGQUIT as a terminal would send them. A test run started
    as a background job of a shell without job control (`cmd &` in a script, a CI
    runner's step) ignores SIGINT and SIGQUIT, and every child inherits that: the
    `dev-services` and `demo` a test stops with SIGINT ran on for good."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


TEMPLATE_DB = "healthscore_template"


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    resolved = resolve_services(
        database_url=os.environ.get("DATABASE_URL"),
        kafka_bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        # a worker's hundreds of databases: its keeper deletes them after the run
        remove_in_background=True,
    )
    try:
        if resolved.postgres_server is not None:
            asyncio.run(_throw_away_settings(resolved.database_url))
        yield resolved
    finally:
        resolved.close()


async def _throw_away_settings(admin_url: str) -> None:
    """The session's own embedded server (its data directory goes at the end) does not
    wait for the disk at each commit, as the tests' other throw-away clusters do not
    (`tests/utils/pg_cluster.py`). A commit still writes its WAL before it returns, so a
    server killed or crash-restarted by a test recovers every commit as before; only an
    operating-system crash, which no test makes, could lose one."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("ALTER SYSTEM SET fsync = off")
        # each test's CREATE DATABASE logs the template's every page: compressed, a
        # creation took 101-118 ms against 26-28 ms on tmpfs, about 80 ms of it CPU
        # (docs/performance.md, "Twenty-eighth session")
        await conn.execute("ALTER SYSTEM SET wal_compression = off")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_admin_url(services: Services) -> str:
    """Superuser URL of the server's maintenance database."""
    return services.database_url


@pytest.fixture(scope="session")
def kafka_bootstrap(services: Services) -> str:
    return services.kafka_bootstrap_servers


DatabaseFactory = Callable[..., Awaitable[str]]


@pytest.fixture(scope="session")
async def database_factory(services: Services, pg_admin_url: str) -> AsyncIterator[DatabaseFactory]:
    """Create fresh databases; returns a superuser URL for each."""
    created: list[str] = []

    async def create(template: str | None = None) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        conn = await asyncpg.connect(pg_admin_url)
        try:
            # identifiers cannot be bound as parameters; both are generated here, never input
            clause = f" TEMPLATE {template}" if template else ""
            await conn.execute(f"CREATE DATABASE {name}{clause}")
        finally:
            await conn.close()
        created.append(name)
        return with_database(pg_admin_url, name)

    yield create
    if services.postgres_server is not None:
        # the embedded server's data directory goes as a whole right after; dropping
        # hundreds of databases one by one (each a scan of the shared buffers) took
        # half a minute at the end of the suite
        return
    conn = await asyncpg.connect(pg_admin_url)
    try:
        for name in created:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def migrated_template(pg_admin_url: str) -> str:
    """A database with every migration applied, used as a template."""
    from healthscore.store.migrate import apply_migrations

    conn = await asyncpg.connect(pg_admin_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await conn.close()
    await apply_migrations(with_database(pg_admin_url, TEMPLATE_DB))
    return TEMPLATE_DB


@pytest.fixture
async def empty_database(database_factory: DatabaseFactory) -> str:
    """Superuser URL of a new, empty database."""
    return await database_factory()


@pytest.fixture
async def migrated_database(database_factory: DatabaseFactory, migrated_template: str) -> str:
    """Superuser URL of a new database with all migrations applied."""
    return await database_factory(template=migrated_template)


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def topic_factory(kafka_bootstrap: str) -> AsyncIterator[TopicFactory]:
    """Create uniquely named topics for one test."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()

    async def create(prefix: str = "topic", partitions: int = 4) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:10]}"
        await admin.create_topics([NewTopic(name, partitions, 1)])
        return name

    try:
        yield create
    finally:
        await admin.close()
