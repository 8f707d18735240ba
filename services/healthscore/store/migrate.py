"""Apply the ordered SQL migrations (package data: `healthscore/store/migrations`) to a database.

A small runner of our own: yoyo needs psycopg/SQLAlchemy-style drivers, not asyncpg.

Files are named `NNNN_name.sql` and applied in version order. Each file runs
in its own transaction together with its row in `schema_migrations`, so a
failing file leaves nothing behind. A session-level advisory lock serializes
concurrent runners on one database; a file whose checksum no longer matches
the applied one (or an applied version whose file is gone) is refused.

A migration waits at most `lock_timeout` seconds for each lock it takes, then rolls
back and is tried again: while an ALTER waits for its ACCESS EXCLUSIVE lock behind a
long transaction, every batch asking for the table queues behind the ALTER. The
migrating session checks every second that its client is still there, so a runner
killed mid-migration (SIGKILL, a pod evicted) releases its locks at once instead of
when the statement would have ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# How long a migration waits for each lock before it rolls back and is tried again,
# and the pauses between tries (doubling): batches queue behind a waiting ALTER.
LOCK_TIMEOUT_SECONDS = 5.0
RETRY_PAUSE_SECONDS = 1.0
RETRY_PAUSE_MAX_SECONDS = 30.0

# The longest transactions of other sessions, named when a migration could not take a
# lock in time: one of them holds it.
_LONGEST_TRANSACTIONS = """
SELECT pid, coalesce(nullif(application_name, ''), usename::text, '?') AS client, state,
       extract(epoch FROM now() - xact_start)::int AS seconds, left(query, 80) AS query
FROM pg_stat_activity
WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND datname = current_database()
ORDER BY xact_start
LIMIT 3
"""

# Who holds the migration lock: another runner, or the session of one that was killed.
_MIGRATION_LOCK_HOLDER = """
SELECT a.pid, coalesce(nullif(a.application_name, ''), a.usename::text, '?') AS client,
       extract(epoch FROM now() - a.backend_start)::int AS seconds
FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid
  AND l.objsubid = 1
"""

# What a login that may not migrate is told: `serve` without --no-migrate started with
# the service's own login tries to migrate with it.
_ADMINISTRATOR = (
    "migrations run as an administrator that owns the schema: run `healthscore migrate` "
    "with MIGRATION_DATABASE_URL (or serve with it set), the service with "
    "`serve --no-migrate`"
)

Report = Callable[[str], None]


def _silent(line: str) -> None:
    pass


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
    database_url: str,
    migrations_dir: Path | None = None,
    tls: DatabaseTLS = None,
    *,
    report: Report = _silent,
    lock_timeout: float | None = None,
) -> list[str]:
    """Apply the pending migrations; return the versions applied now (none: []).

    `tls`: see `healthscore.store.db.database_tls` (the service's DATABASE_SSLMODE).
    `report` gets a line for each migration begun and applied, and for each wait;
    `lock_timeout` defaults to LOCK_TIMEOUT_SECONDS.
    """
    migrations = load_migrations(migrations_dir or migrations_path())
    conn = await _connect(database_url, tls)
    try:
        await _check_the_client_is_there(conn)
        try:
            locked = await conn.fetchval("SELECT pg_try_advisory_lock($1)", locks.MIGRATION)
        except asyncpg.InsufficientPrivilegeError as exc:
            # migration 0109 leaves the lock to the owner's members and the service's
            # login: any other login may not migrate either
            raise MigrationError(f"{exc}: {_ADMINISTRATOR}") from exc
        if not locked:
            holder = await conn.fetchrow(_MIGRATION_LOCK_HOLDER, locks.MIGRATION)
            who = (
                f"session {holder['pid']} ({holder['client']}, connected {holder['seconds']} s ago)"
                if holder
                else "another session"
            )
            report(f"waiting for the migration lock, held by {who}: another migrate runs")
            await conn.execute("SELECT pg_advisory_lock($1)", locks.MIGRATION)
        try:
            return await _apply_locked(
                conn, migrations, report, lock_timeout or LOCK_TIMEOUT_SECONDS
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", locks.MIGRATION)
    finally:
        await conn.close()


# the applied migrations, and whether there is a history at all (an empty database)
HISTORY = "SELECT version, name, checksum FROM schema_migrations"
NO_HISTORY = "SELECT to_regclass('schema_migrations') IS NULL"


# a runner whose node is lost sends no FIN: its session is found dead by TCP keepalives
# (this often, after this long idle, this many unanswered) instead of the kernel's
# default two hours, and one frozen between statements by the idle limit; either way
# its locks and the migration lock go with the session. The administrator role's own
# statement_timeout would fail a long rewrite the same way on every try, and its
# lock_timeout the wait for the migration lock: neither applies to a migration (each
# migration bounds its lock waits itself, below)
MIGRATION_SESSION_GUARDS = (
    "SELECT set_config('tcp_keepalives_idle', '30', false),"
    " set_config('tcp_keepalives_interval', '10', false),"
    " set_config('tcp_keepalives_count', '3', false),"
    " set_config('idle_in_transaction_session_timeout', '60s', false),"
    " set_config('statement_timeout', '0', false),"
    " set_config('lock_timeout', '0', false)"
)


async def _check_the_client_is_there(conn: asyncpg.Connection) -> None:
    # PostgreSQL notices a client gone only when it next writes to it: the session of a
    # runner killed mid-migration went on rewriting (or waiting in a lock queue) with
    # its locks and the migration lock held until the statement ended
    with contextlib.suppress(asyncpg.UndefinedObjectError):  # before PostgreSQL 14: none
        await conn.execute("SET client_connection_check_interval = '1s'")
    await conn.execute(MIGRATION_SESSION_GUARDS)


async def _apply_locked(
    conn: asyncpg.Connection, migrations: list[Migration], report: Report, lock_timeout: float
) -> list[str]:
    # only when missing: CREATE TABLE IF NOT EXISTS asks for CREATE on the schema even
    # when the table is there, which the service's login has not (it may read the table)
    if await conn.fetchval(NO_HISTORY):
        try:
            await conn.execute(_CREATE_HISTORY)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise MigrationError(
                f"this login may not create schema_migrations ({type(exc).__name__}: {exc}): "
                f"{_ADMINISTRATOR}"
            ) from exc
    rows = await conn.fetch(HISTORY)
    applied = {row["version"]: row for row in rows}
    _refuse_a_history_it_does_not_fit(applied, migrations)
    newly_applied: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        report(f"applying {migration.file_name}")
        started = time.monotonic()
        await _apply_one(conn, migration, report, lock_timeout)
        report(f"applied {migration.file_name} in {time.monotonic() - started:.1f} s")
        newly_applied.append(migration.version)
    return newly_applied


def _refuse_a_history_it_does_not_fit(
    applied: Mapping[str, Any], migrations: list[Migration]
) -> None:
    """The database's history against the files: a newer release's migrations, an
    applied file missing or changed, each refused with what to do."""
    by_version = {m.version: m for m in migrations}
    newest = migrations[-1] if migrations else None
    beyond = [v for v in sorted(applied) if newest is None or v > newest.version]
    if beyond:
        # a rollback's migrate job, or an older replica's serve: not a file lost from the image
        row = applied[beyond[-1]]
        raise MigrationError(
            f"the database was migrated by a newer release: {row['version']}_{row['name']}.sql "
            "is applied, this release's newest migration is "
            f"{newest.file_name if newest else 'none'}. Deploy that release or a later one "
            "(an older release's replicas run beside it with `serve --no-migrate`, its "
            "migrate job refuses: see docs/operations.md, Upgrading)"
        )
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


async def _connect(database_url: str, tls: DatabaseTLS) -> asyncpg.Connection:
    try:
        return await connect(database_url, tls)
    except (OSError, asyncpg.PostgresError) as exc:
        raise MigrationError(f"cannot connect to {redact(database_url)}: {exc}") from exc


async def plan_migrations(
    database_url: str, tls: DatabaseTLS = None, migrations_dir: Path | None = None
) -> list[Migration]:
    """The migrations `apply_migrations` would apply now, in order, or its refusal
    (MigrationError), without taking a lock or changing anything: what a deploy is about
    to run, for the operator to read before it does (`healthscore migrate --plan`)."""
    migrations = load_migrations(migrations_dir or migrations_path())
    conn = await _connect(database_url, tls)
    try:
        rows = [] if await conn.fetchval(NO_HISTORY) else await conn.fetch(HISTORY)
    finally:
        await conn.close()
    applied = {row["version"]: row for row in rows}
    _refuse_a_history_it_does_not_fit(applied, migrations)
    return [m for m in migrations if m.version not in applied]


# What the migrations set on system and extension functions, which the history cannot
# vouch for: pg_dump carries no LEAKPROOF mark on them (a restore into a new server
# lacks every one), and their grants only where the restore runs as a superuser with
# privileges (not with -x, nor a dump of the service's schema alone); a database
# migrated by a login that was no superuser never had them.
LEAKPROOF_FUNCTIONS = (
    # 0030: the dashboard's filters and pages under row-level security
    "pg_catalog.jsonb_contains(jsonb, jsonb)",
    *(f"pg_catalog.numeric_{op}(numeric, numeric)" for op in ("eq", "ne", "lt", "le", "gt", "ge")),
    "word_similarity_op(text, text)",
    # 0113: the name search
    "pg_catalog.to_tsvector(regconfig, text)",
    "pg_catalog.ts_match_vq(tsvector, tsquery)",
)
# a name without its schema is pg_trgm's, found in the extension's schema wherever it is
NOT_LEAKPROOF = """
SELECT f FROM unnest($1::text[]) WITH ORDINALITY AS x(f, n)
JOIN pg_catalog.pg_proc p ON p.oid = coalesce(
    pg_catalog.to_regprocedure(x.f),
    pg_catalog.to_regprocedure(
        (SELECT pg_catalog.quote_ident(s.nspname) FROM pg_catalog.pg_extension e
         JOIN pg_catalog.pg_namespace s ON s.oid = e.extnamespace
         WHERE e.extname = 'pg_trgm') || '.' || x.f))
WHERE NOT p.proleakproof
ORDER BY n
"""
# 0109: any login may take the service's advisory locks while PUBLIC may execute these
ADVISORY_LOCKS_OPEN_TO_PUBLIC = """
SELECT p.oid::regprocedure::text
FROM pg_catalog.pg_proc p
WHERE p.pronamespace = 'pg_catalog'::regnamespace
  AND p.proname ~ '^pg_(try_)?advisory_(xact_)?lock(_shared)?$'
  AND (p.proacl IS NULL OR EXISTS (
      SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))
ORDER BY 1
"""


async def missing_marks(database_url: str, tls: DatabaseTLS = None) -> list[str]:
    """What the applied migrations set that this database lacks (a dump restored into a
    new server, migrations applied by a login that was no superuser), each a line
    saying what it costs; [] when nothing is missing."""
    conn = await _connect(database_url, tls)
    try:
        leaky = [row[0] for row in await conn.fetch(NOT_LEAKPROOF, list(LEAKPROOF_FUNCTIONS))]
        open_locks = [row[0] for row in await conn.fetch(ADVISORY_LOCKS_OPEN_TO_PUBLIC)]
    finally:
        await conn.close()
    lines = []
    if leaky:
        lines.append(
            f"not LEAKPROOF: {', '.join(leaky)}: the dashboard's filters, pages and name "
            "search read past their indexes under row-level security (correct, slower); "
            "as a superuser, ALTER FUNCTION ... LEAKPROOF each (docs/operations.md, "
            "the read API's LEAKPROOF marks)"
        )
    if open_locks:
        lines.append(
            f"PUBLIC may take advisory locks ({open_locks[0]}"
            + (f" and {len(open_locks) - 1} more" if len(open_locks) > 1 else "")
            + "): any login can hold the service's leader locks "
            "and stop its loops; revoke as migration 0109 does (docs/operations.md)"
        )
    return lines


def summary(migration: Migration) -> str:
    """The first line of the file's leading comment: what the migration is for."""
    for line in migration.sql.splitlines():
        text = line.strip()
        if text.startswith("--"):
            return text.lstrip("-").strip()
        if text:
            break
    return ""


async def _apply_one(
    conn: asyncpg.Connection, migration: Migration, report: Report, lock_timeout: float
) -> None:
    """One file and its history row in one transaction; tried again while a lock it
    needs is not granted within `lock_timeout` (nothing of it stays between tries)."""
    pause = RETRY_PAUSE_SECONDS
    while True:
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('lock_timeout', $1, true)", f"{int(lock_timeout * 1000)}ms"
                )
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            return
        except asyncpg.LockNotAvailableError:
            longest = await conn.fetch(_LONGEST_TRANSACTIONS)
            named = "; ".join(
                f"pid {r['pid']} ({r['client']}, {r['state']}, {r['seconds']} s: {r['query']!r})"
                for r in longest
            )
            report(
                f"{migration.file_name} waited {lock_timeout:g} s for a lock and rolled back "
                f"(batches do not queue behind it meanwhile); trying again in {pause:g} s. "
                f"Longest transactions: {named or 'none now'}"
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_PAUSE_MAX_SECONDS)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise MigrationError(
                f"{migration.file_name} failed: {_describe(exc, migration.sql)}; {_ADMINISTRATOR}"
            ) from exc
        except asyncpg.PostgresError as exc:
            raise MigrationError(
                f"{migration.file_name} failed: {_describe(exc, migration.sql)}"
            ) from exc


async def newer_migrations(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, migrations_dir: Path | None = None
) -> list[str]:
    """The migrations applied beyond the newest one shipped (file names, in order): the
    database was migrated by a newer release."""
    shipped = load_migrations(migrations_dir or migrations_path())
    newest = shipped[-1].version if shipped else ""
    rows = await conn.fetch(
        "SELECT version, name FROM schema_migrations WHERE version > $1 ORDER BY version",
        newest,
    )
    return [f"{row['version']}_{row['name']}.sql" for row in rows]


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
        rows = await conn.fetch(HISTORY)
    except asyncpg.UndefinedTableError:
        rows = []
    return not_applied({row["version"] for row in rows}, migrations_dir)


def not_applied(applied: Collection[str], migrations_dir: Path | None = None) -> list[str]:
    """The shipped migrations (file names, in order) whose versions are not in `applied`."""
    migrations = load_migrations(migrations_dir or migrations_path())
    return [m.file_name for m in migrations if m.version not in applied]


def named_run(file_names: Sequence[str]) -> str:
    """A run of migrations as an operator reads it: the one, or the first ... the last."""
    if len(file_names) == 1:
        return file_names[0]
    return f"{file_names[0]} ... {file_names[-1]}"
