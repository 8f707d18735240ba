"""Apply the ordered SQL migrations (package data: `healthscore/store/migrations`) to a database.

A small runner of our own: yoyo needs psycopg/SQLAlchemy-style drivers, not asyncpg.

Files are named `NNNN_name.sql` and applied in version order. Each file runs
in its own transaction together with its row in `schema_migrations`, so a
failing file leaves nothing behind. A session-level advisory lock serializes
concurrent runners on one database; a file whose checksum no longer matches
the applied one (or an applied version whose file is gone) is refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from healthscore.errors import MigrationError
from healthscore.store import locks
from healthscore.store.db import DatabaseTLS, connect
from healthscore.store.dburl import redact

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

_CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text        PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE schema_migrations IS
    'Migrations applied by healthscore.store.migrate: version, file name, sha256 of the file.';
"""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    file_name: str
    sql: str
    checksum: str


def migrations_path() -> Path:
    """The migrations shipped inside the package (also linked as schema/migrations)."""
    return Path(__file__).resolve().parent / "migrations"


def load_migrations(migrations_dir: Path) -> list[Migration]:
    """Every `NNNN_name.sql` file of the directory, in version order."""
    if not migrations_dir.is_dir():
        raise MigrationError(f"migrations directory not found: {migrations_dir}")
    migrations: dict[str, Migration] = {}
    for path in sorted(migrations_dir.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        version = match["version"]
        if version in migrations:
            raise MigrationError(
                f"{path.name}: version {version} is also {migrations[version].file_name}"
            )
        data = path.read_bytes()
        migrations[version] = Migration(
            version=version,
            name=match["name"],
            file_name=path.name,
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [migrations[v] for v in sorted(migrations)]


def _describe(exc: asyncpg.PostgresError, sql: str) -> str:
    """Postgres' message with detail, hint and the line of the error, if known."""
    parts = [f"{type(exc).__name__}: {exc.args[0] if exc.args else exc}"]
    position = getattr(exc, "position", None)
    if position and str(position).isdigit():
        parts.append(f"(line {sql.count(chr(10), 0, int(position) - 1) + 1})")
    for label in ("detail", "hint"):
        value = getattr(exc, label, None)
        if value:
            parts.append(f"{label.upper()}: {value}")
    return " ".join(parts)


async def apply_migrations(
    database_url: str, migrations_dir: Path | None = None, tls: DatabaseTLS = None
) -> list[str]:
    """Apply the pending migrations; return the versions applied now (none: []).

    `tls`: see `healthscore.store.db.database_tls` (the service's DATABASE_SSLMODE).
    """
    migrations = load_migrations(migrations_dir or migrations_path())
    try:
        conn = await connect(database_url, tls)
    except (OSError, asyncpg.PostgresError) as exc:
        raise MigrationError(f"cannot connect to {redact(database_url)}: {exc}") from exc
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", locks.MIGRATION)
        try:
            return await _apply_locked(conn, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", locks.MIGRATION)
    finally:
        await conn.close()


async def _apply_locked(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await conn.execute(_CREATE_HISTORY)
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    applied = {row["version"]: row for row in rows}
    by_version = {m.version: m for m in migrations}
    for version, row in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"applied migration {version}_{row['name']}.sql has no file in this directory"
            )
        if migration.checksum != row["checksum"]:
            raise MigrationError(
                f"{migration.file_name} changed after it was applied "
                f"(checksum {row['checksum'][:12]} applied, {migration.checksum[:12]} on disk); "
                "add a new migration instead of editing an applied one"
            )
    newly_applied: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        try:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
        except asyncpg.PostgresError as exc:
            raise MigrationError(
                f"{migration.file_name} failed: {_describe(exc, migration.sql)}"
            ) from exc
        newly_applied.append(migration.version)
    return newly_applied


async def missing_migrations(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, migrations_dir: Path | None = None
) -> list[str]:
    """The shipped migrations the database has not applied (file names, in order).

    What the service checks at start-up on its own connection: a process serving a
    database that lacks its schema would fail batch after batch on a missing table
    or column. Versions applied beyond the shipped ones are no reason to refuse (an
    older release restarting during a rolling upgrade reads a newer schema).
    """
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations")
    except asyncpg.UndefinedTableError:
        rows = []
    applied = {row["version"] for row in rows}
    return [
        m.file_name
        for m in load_migrations(migrations_dir or migrations_path())
        if m.version not in applied
    ]
