"""Upgrading a populated database: how long each pending migration takes, which
locks it holds, and how long a batch of the release still running waits behind it.

    python -m healthscore_lab.upgrade_bench --admin-url URL --old-release /tmp/old-04 \\
        --organizations 1000000

1. A new database is migrated by the earlier release's own `healthscore migrate` (run
   from its worktree, `git worktree add /tmp/old-04 <commit>`), or, with
   `--from-version 0066`, by today's migrations older than that version (the same
   files: applied migrations are immutable).
2. It is filled inside PostgreSQL (generate_series, triggers off): organizations, their
   states (JSON or MessagePack, as that release stores them), customer_health rows,
   score history (`--history-days` rows each), support interactions
   (`--interactions-per-organization`) and, where the release has the table,
   dead letters waiting in `dead_letter_outbox` (`--dead-letters`, a refusing topic's
   backlog). Then VACUUM ANALYZE and a checkpoint, as a database that has lived.
3. Today's migrations that release lacks are applied one at a time, each by
   `apply_migrations` (the job's own code). Meanwhile one session per table runs the
   writes a batch of the earlier release makes there (a row updated or inserted, then
   rolled back) back to back, and another samples `pg_locks` every 50 ms for the
   relation locks the migrating session holds.

Printed per migration: its duration, the strongest lock it held on each table and for
how long it was seen held, and the longest a probe's write waited. Figures measure the
machine they run on; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from healthscore.store.dburl import redact, with_database
from healthscore.store.migrate import apply_migrations, load_migrations, migrations_path

SAMPLE_SECONDS = 0.05

# The writes a batch makes on each big table, rolled back: none names a column a
# migration renames or drops, so the same probe runs before and after each one.
PROBES: dict[str, str] = {
    "organization_state": (
        "UPDATE organization_state SET health_version = health_version WHERE organization_id = $1"
    ),
    "health_score_history": (
        "UPDATE health_score_history SET cause = cause WHERE organization_id = $1"
    ),
    "support_interactions": (
        "UPDATE support_interactions SET event_count = event_count WHERE organization_id = $1"
    ),
    "customer_health": (
        "UPDATE customer_health SET previous_score = previous_score WHERE organization_id = $1"
    ),
    "dead_letter_outbox": (
        "INSERT INTO dead_letter_outbox (source_topic, source_partition, source_offset, "
        "record_headers, reason, detail) "
        "SELECT 'probe', 0, (random() * 1e15)::bigint, '\\x90', 'probe', $1::text"
    ),
}

# lock modes from the weakest to the strongest
MODES = [
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
]


# The bulk load, inside PostgreSQL, a chunk of organizations ($1..$2) at a time; the
# organization ids are organization_id(i): 16 big-endian bytes of i.
_ORGANIZATION_ID_FUNCTION = """
CREATE FUNCTION pg_temp.organization_id(i bigint) RETURNS uuid LANGUAGE sql IMMUTABLE AS
$$ SELECT encode('\\x0000000000000000'::bytea || int8send(i), 'hex')::uuid $$
"""
_ORGANIZATIONS = """
INSERT INTO organizations (id)
SELECT pg_temp.organization_id(i) FROM generate_series($1::bigint, $2::bigint) i
"""
# the state column as the release stores it: JSON before 0066, bytes after
_STATES_JSON = """
INSERT INTO organization_state (organization_id, state, last_event_at, health_version)
SELECT pg_temp.organization_id(i), $3::json, now() - interval '1 day', 1
FROM generate_series($1::bigint, $2::bigint) i
"""
_STATES_MSGPACK = """
INSERT INTO organization_state (organization_id, state_msgpack, last_event_at, health_version)
SELECT pg_temp.organization_id(i), convert_to($3, 'UTF8'), now() - interval '1 day', 1
FROM generate_series($1::bigint, $2::bigint) i
"""
_CUSTOMER_HEALTH = """
INSERT INTO customer_health (organization_id, health_score, churn_probability, scored_at,
                             score_model_version, risk_factors, feature_usage)
SELECT pg_temp.organization_id(i), 40 + (i % 60), ((i % 100) / 100.0)::numeric(5,4), now(),
       'v3', '[]', '{"dashboards": {"count": 3}}'
FROM generate_series($1::bigint, $2::bigint) i
"""
# $3 days of history each
_HISTORY = """
INSERT INTO health_score_history (organization_id, scored_at, health_score, churn_probability,
                                  risk_level, components, score_model_version, cause)
SELECT pg_temp.organization_id(i), now() - d * interval '1 day', 50, 0.2, 'low',
       '{"engagement": 50, "adoption": 40}', 'v3', 'events'
FROM generate_series($1::bigint, $2::bigint) i, generate_series(1, $3::int) d
"""
# $3 interactions each
_INTERACTIONS = """
INSERT INTO support_interactions (id, organization_id, interaction_type, channel, status,
                                  priority, subject, opened_at, first_event_at, last_event_at)
SELECT gen_random_uuid(), pg_temp.organization_id(i), 'check_in', 'email', 'resolved', 'normal',
       'Quarterly check-in about dashboards and exports ' || i,
       now() - n * interval '3 days', now() - n * interval '3 days', now()
FROM generate_series($1::bigint, $2::bigint) i, generate_series(1, $3::int) n
"""
# a refusing dead-letter topic's backlog: $1 dead letters
_DEAD_LETTERS = """
INSERT INTO dead_letter_outbox (source_topic, source_partition, source_offset, record_key,
                                record_value, record_headers, reason, detail)
SELECT 'product.usage.v1', i % 8, i, convert_to(i::text, 'UTF8'),
       convert_to(repeat('x', 300), 'UTF8'), '\\x90', 'invalid_field', 'occurred_at: not a date'
FROM generate_series(1, $1) i
"""


def organization_id(i: int) -> uuid.UUID:
    return uuid.UUID(bytes=i.to_bytes(16, "big"))


async def columns(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
    )
    return {r["column_name"] for r in rows}


async def populate(
    url: str,
    organizations: int,
    history_days: int,
    interactions: int,
    dead_letters: int,
    chunk: int = 100_000,
) -> dict[str, float]:
    """Fill the tables in chunks of organizations; the seconds each table took."""
    conn = await asyncpg.connect(url)
    took: dict[str, float] = {}
    try:
        # a superuser's bulk load: no triggers (read-model announcements), no FK checks
        await conn.execute("SET session_replication_role = replica")
        state_columns = await columns(conn, "organization_state")
        outbox = bool(await columns(conn, "dead_letter_outbox"))
        # ~2.3 kB a state document, as docs/operations.md measured (233 MB per 100k)
        document = json.dumps(
            {
                "windows": {f"w{k}": [k * 1.5] * 24 for k in range(8)},
                "decayed": {f"signal_{k}": 0.123456789 * k for k in range(20)},
                "counters": {f"feature_{k}": k for k in range(30)},
            }
        )
        await conn.execute(_ORGANIZATION_ID_FUNCTION)
        statements = {
            "organizations": _ORGANIZATIONS,
            "organization_state": _STATES_JSON if "state" in state_columns else _STATES_MSGPACK,
            "customer_health": _CUSTOMER_HEALTH,
            "health_score_history": _HISTORY,
            "support_interactions": _INTERACTIONS,
        }
        extra: dict[str, object] = {
            "organization_state": document,
            "health_score_history": history_days,
            "support_interactions": interactions,
        }
        for table, sql in statements.items():
            started = time.monotonic()
            for low in range(1, organizations + 1, chunk):
                high = min(low + chunk - 1, organizations)
                args: tuple[object, ...] = (low, high)
                if table in extra:
                    args = (low, high, extra[table])
                await conn.execute(sql, *args)
            took[table] = time.monotonic() - started
        if outbox and dead_letters:
            started = time.monotonic()
            await conn.execute(_DEAD_LETTERS, dead_letters)
            took["dead_letter_outbox"] = time.monotonic() - started
        await conn.execute("RESET session_replication_role")
        started = time.monotonic()
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
        took["vacuum_analyze_checkpoint"] = time.monotonic() - started
    finally:
        await conn.close()
    return took


@dataclass
class Observed:
    """What one migration did to the tables while it ran."""

    seconds: float = 0.0
    # table -> strongest mode seen held by the migrating session, and seconds seen
    locks: dict[str, tuple[str, float]] = field(default_factory=dict)
    # table -> the longest a probe's write took
    probe_wait: dict[str, float] = field(default_factory=dict)


async def sample_locks(url: str, observed: Observed, stop: asyncio.Event) -> None:
    """Every SAMPLE_SECONDS: the relation locks held by the session migrating."""
    conn = await asyncpg.connect(url)
    try:
        seen_since: dict[tuple[str, str], float] = {}
        while not stop.is_set():
            rows = await conn.fetch(
                "SELECT c.relname, l.mode FROM pg_locks l "
                "JOIN pg_class c ON c.oid = l.relation "
                "WHERE l.granted AND l.pid IN (SELECT pid FROM pg_locks "
                "  WHERE locktype = 'advisory' AND granted AND objid = $1::bigint::oid) "
                "AND c.relkind IN ('r', 'p')",
                # the migration lock's key, as pg_locks shows a bigint key: low 32 bits
                _migration_lock_low_bits(),
            )
            now = time.monotonic()
            current = {(r["relname"], r["mode"]) for r in rows}
            for key in current:
                seen_since.setdefault(key, now)
            for key in list(seen_since):
                if key not in current:
                    _record(observed, key, now - seen_since.pop(key))
            await asyncio.sleep(SAMPLE_SECONDS)
        now = time.monotonic()
        for key, since in seen_since.items():
            _record(observed, key, now - since)
    finally:
        await conn.close()


def _migration_lock_low_bits() -> int:
    from healthscore.store import locks

    return locks.MIGRATION & 0xFFFFFFFF


def _record(observed: Observed, key: tuple[str, str], seconds: float) -> None:
    table, mode = key
    old = observed.locks.get(table)
    if old is None or MODES.index(mode) > MODES.index(old[0]):
        observed.locks[table] = (mode, seconds)
    elif old[0] == mode:
        observed.locks[table] = (mode, max(old[1], seconds))


async def probe(
    url: str, table: str, sql: str, observed: Observed, stop: asyncio.Event, organizations: int
) -> None:
    """A batch's write on `table`, rolled back, back to back: the longest wait."""
    conn = await asyncpg.connect(url)
    try:
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
        i = 1
        while not stop.is_set():
            i = i % organizations + 1
            started = time.monotonic()
            try:
                async with conn.transaction():
                    if not exists:
                        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
                        if not exists:
                            raise _Rollback
                    arg: object = organization_id(i)
                    if table == "dead_letter_outbox":
                        arg = str(i)
                    await conn.execute(sql, arg)
                    raise _Rollback
            except _Rollback:
                pass
            except asyncpg.PostgresError:
                pass  # a table the migration replaced under it; the next round sees it
            waited = time.monotonic() - started
            observed.probe_wait[table] = max(observed.probe_wait.get(table, 0.0), waited)
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


class _Rollback(Exception):
    pass


async def apply_each(
    url: str, pending: Sequence[str], workdir: Path, organizations: int
) -> list[tuple[str, Observed]]:
    """Apply today's pending migrations one at a time with probes and the sampler."""
    shipped = load_migrations(migrations_path())
    directory = workdir / "migrations"
    directory.mkdir()
    results: list[tuple[str, Observed]] = []
    for migration in shipped:
        shutil.copy(migrations_path() / migration.file_name, directory / migration.file_name)
        if migration.version not in pending:
            continue
        observed = Observed()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(sample_locks(url, observed, stop))]
        tasks += [
            asyncio.create_task(probe(url, table, sql, observed, stop, organizations))
            for table, sql in PROBES.items()
        ]
        await asyncio.sleep(0.3)  # the probes' own first round is not the migration's
        observed.probe_wait.clear()
        started = time.monotonic()
        await apply_migrations(url, directory)
        observed.seconds = time.monotonic() - started
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*tasks)
        results.append((migration.file_name, observed))
        print(report_line(migration.file_name, observed), flush=True)
    return results


def report_line(file_name: str, observed: Observed) -> str:
    strong = {
        t: f"{m.removesuffix('Lock')} {s:.2f}s"
        for t, (m, s) in sorted(observed.locks.items())
        if MODES.index(m) >= MODES.index("ShareLock")
    }
    waits = {t: f"{w:.2f}s" for t, w in sorted(observed.probe_wait.items()) if w >= 0.1}
    return (
        f"{file_name}: {observed.seconds:.2f}s; locks {strong or '-'}; batch waits {waits or '-'}"
    )


def old_release_migrate(old_release: Path, url: str) -> None:
    """The earlier release's own `healthscore migrate`, from its worktree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{old_release}/services:{old_release}/services/lab:{old_release}"
    subprocess.run(
        [sys.executable, "-m", "healthscore.cli", "migrate", "--database-url", url],
        cwd=old_release,
        env=env,
        check=True,
    )


async def table_sizes(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) AS size, "
            "reltuples::bigint AS n FROM pg_class WHERE relkind = 'r' "
            "AND relnamespace = 'public'::regnamespace AND pg_total_relation_size(oid) > 8e6 "
            "ORDER BY pg_total_relation_size(oid) DESC"
        )
        return {r["relname"]: f"{r['size']} ({r['n']:,} rows)" for r in rows}
    finally:
        await conn.close()


async def main_async(args: argparse.Namespace) -> None:
    name = f"upgrade_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(args.admin_url, name)
    try:
        await upgrade(url, args)
    finally:
        if not (args.keep or args.populate_only):
            admin = await asyncpg.connect(args.admin_url)
            try:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            finally:
                await admin.close()


async def upgrade(url: str, args: argparse.Namespace) -> list[tuple[str, Observed]]:
    """Migrate `url` as the earlier release, fill it, apply today's pending migrations."""
    if args.old_release:
        print(f"{args.old_release} migrates {redact(url)}", flush=True)
        old_release_migrate(Path(args.old_release), url)
    with tempfile.TemporaryDirectory() as workdir:
        if not args.old_release:
            before = Path(workdir) / "before"
            before.mkdir()
            for migration in load_migrations(migrations_path()):
                if migration.version < args.from_version:
                    shutil.copy(migrations_path() / migration.file_name, before)
            await apply_migrations(url, before)
        conn = await asyncpg.connect(url)
        try:
            applied = {
                r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
            }
        finally:
            await conn.close()
        pending = [
            m.version for m in load_migrations(migrations_path()) if m.version not in applied
        ]
        started = time.monotonic()
        took = await populate(
            url,
            args.organizations,
            args.history_days,
            args.interactions_per_organization,
            args.dead_letters,
        )
        print(
            f"populated in {time.monotonic() - started:.0f}s: "
            + ", ".join(f"{t} {s:.0f}s" for t, s in took.items()),
            flush=True,
        )
        for table, size in (await table_sizes(url)).items():
            print(f"  {table}: {size}", flush=True)
        print(f"pending: {', '.join(pending)}", flush=True)
        if args.populate_only:
            print(f"left populated: {redact(url)}", flush=True)
            return []
        return await apply_each(url, pending, Path(workdir), args.organizations)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", required=True, help="a superuser's URL of the server")
    earlier = parser.add_mutually_exclusive_group(required=True)
    earlier.add_argument("--old-release", help="worktree of the earlier release (its migrate)")
    earlier.add_argument(
        "--from-version", help="the first migration the earlier release lacks, e.g. 0066"
    )
    parser.add_argument("--organizations", type=int, default=1_000_000)
    parser.add_argument("--history-days", type=int, default=3)
    parser.add_argument("--interactions-per-organization", type=int, default=2)
    parser.add_argument("--dead-letters", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--populate-only",
        action="store_true",
        help="stop before today's migrations and keep the database (e.g. to kill a migrate)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(main_async(parser().parse_args(argv)))


if __name__ == "__main__":
    main()
