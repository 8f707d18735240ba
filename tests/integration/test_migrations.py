"""The migration runner against a real PostgreSQL: apply, re-apply, fail, drift, race."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from healthscore.errors import MigrationError
from healthscore.store.migrate import (
    apply_migrations,
    load_migrations,
    migrations_path,
    plan_migrations,
    summary,
)
from healthscore.store.schema_catalog import (
    DASHBOARD_ROLE,
    IDENTITY_TABLES,
    MIGRATIONS_TABLE,
    OWNER_ROLE,
    ROLES,
    TABLES,
    WRITER_ROLE,
)
from tests.utils import schema_builders as b
from tests.utils.api import temporary_login
from tests.utils.migrations import migrate_before

# everything a migration can create or change in the public schema
CATALOG_SNAPSHOT_QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind::text, c.relowner::regrole::text, c.relacl::text,
               c.relrowsecurity, c.relforcerowsecurity, obj_description(c.oid, 'pg_class')
        FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               a.attgenerated::text, pg_get_expr(d.adbin, d.adrelid), a.attacl::text,
               col_description(c.oid, a.attnum)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
    "functions": """
        SELECT p.oid::regprocedure::text, p.proowner::regrole::text, p.prosecdef,
               p.provolatile::text, p.proparallel::text, p.proconfig::text, p.proacl::text,
               md5(p.prosrc)
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
        FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2""",
    "policies": """
        SELECT tablename, policyname, cmd, roles::text, qual, with_check
        FROM pg_policies WHERE schemaname = 'public' ORDER BY 1, 2""",
    "extensions": "SELECT extname, extversion FROM pg_extension ORDER BY 1",
    "history": f"SELECT version, name, checksum, applied_at FROM {MIGRATIONS_TABLE} ORDER BY 1",
}


async def catalog_snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return {
            name: [tuple(row) for row in await conn.fetch(query)]
            for name, query in CATALOG_SNAPSHOT_QUERIES.items()
        }
    finally:
        await conn.close()


async def fetch_val(url: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def test_apply_from_empty_then_second_run_applies_and_changes_nothing(
    empty_database: str,
) -> None:
    expected = [m.version for m in load_migrations(migrations_path())]

    assert await apply_migrations(empty_database) == expected
    before = await catalog_snapshot(empty_database)
    assert await apply_migrations(empty_database) == []
    after = await catalog_snapshot(empty_database)

    assert after == before
    assert [row[0] for row in before["history"]] == expected
    tables = {row[0] for row in before["relations"] if row[1] == "r"}
    assert set(TABLES) | {MIGRATIONS_TABLE} <= tables


async def test_history_records_name_and_sha256_of_each_file(migrated_database: str) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        rows = await conn.fetch(f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE}")
    finally:
        await conn.close()
    recorded = {row["version"]: (row["name"], row["checksum"]) for row in rows}
    assert recorded == {m.version: (m.name, m.checksum) for m in load_migrations(migrations_path())}


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


async def test_failing_migration_leaves_no_partial_state(
    empty_database: str, tmp_path: Path
) -> None:
    migrations = write(
        tmp_path / "m",
        {
            "0001_good.sql": "CREATE TABLE good_table (id integer PRIMARY KEY);",
            "0002_broken.sql": (
                "CREATE TABLE partial_table (id integer);\n"
                "INSERT INTO partial_table VALUES (1);\n"
                "SELECT * FROM no_such_table;\n"
            ),
            "0003_later.sql": "CREATE TABLE later_table (id integer);",
        },
    )

    with pytest.raises(MigrationError) as raised:
        await apply_migrations(empty_database, migrations)

    message = str(raised.value)
    assert "0002_broken.sql" in message
    assert 'relation "no_such_table" does not exist' in message
    assert "line 3" in message
    assert await fetch_val(empty_database, "SELECT to_regclass('good_table') IS NOT NULL")
    assert await fetch_val(empty_database, "SELECT to_regclass('partial_table') IS NULL")
    assert await fetch_val(empty_database, "SELECT to_regclass('later_table') IS NULL")
    history = f"SELECT array_agg(version) FROM {MIGRATIONS_TABLE}"
    assert await fetch_val(empty_database, history) == ["0001"]

    # once fixed, the run resumes where it stopped
    (migrations / "0002_broken.sql").write_text("CREATE TABLE partial_table (id integer);")
    assert await apply_migrations(empty_database, migrations) == ["0002", "0003"]


async def test_checksum_drift_of_an_applied_file_is_refused(
    empty_database: str, tmp_path: Path
) -> None:
    migrations = write(tmp_path / "m", {"0001_first.sql": "CREATE TABLE first_table (id int);"})
    assert await apply_migrations(empty_database, migrations) == ["0001"]

    (migrations / "0001_first.sql").write_text("CREATE TABLE first_table (id bigint);")
    write(migrations, {"0002_second.sql": "CREATE TABLE second_table (id int);"})
    with pytest.raises(MigrationError, match=r"0001_first\.sql changed after it was applied"):
        await apply_migrations(empty_database, migrations)
    # nothing after the drifted file ran
    assert await fetch_val(empty_database, "SELECT to_regclass('second_table') IS NULL")


async def test_applied_version_without_file_is_refused(empty_database: str, tmp_path: Path) -> None:
    migrations = write(tmp_path / "m", {"0001_first.sql": "SELECT 1;"})
    await apply_migrations(empty_database, migrations)
    (migrations / "0001_first.sql").unlink()
    write(migrations, {"0002_second.sql": "SELECT 2;"})
    with pytest.raises(MigrationError, match=r"0001_first\.sql has no file"):
        await apply_migrations(empty_database, migrations)


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"1_short.sql": "SELECT 1;"}, "named NNNN_name.sql"),
        ({"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 2;"}, "version 0001 is also"),
    ],
)
async def test_badly_named_files_are_refused(
    empty_database: str, tmp_path: Path, files: dict[str, str], match: str
) -> None:
    with pytest.raises(MigrationError, match=match):
        await apply_migrations(empty_database, write(tmp_path / "m", files))


async def test_missing_directory_is_refused(empty_database: str, tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="not found"):
        await apply_migrations(empty_database, tmp_path / "nowhere")


async def test_connection_failure_never_shows_the_password(tmp_path: Path) -> None:
    url = "postgresql://someone:s3cret-pw@127.0.0.1:1/nowhere"
    with pytest.raises(MigrationError) as raised:
        await apply_migrations(url, write(tmp_path / "m", {"0001_a.sql": "SELECT 1;"}))
    assert "s3cret-pw" not in str(raised.value)
    assert "someone:***@127.0.0.1:1" in str(raised.value)


async def test_concurrent_runners_serialize(empty_database: str) -> None:
    expected = [m.version for m in load_migrations(migrations_path())]

    first, second = await asyncio.gather(
        apply_migrations(empty_database), apply_migrations(empty_database)
    )

    assert sorted([first, second]) == [[], expected]
    assert await fetch_val(empty_database, f"SELECT count(*) FROM {MIGRATIONS_TABLE}") == len(
        expected
    )


async def test_concurrent_runners_serialize_on_a_slow_migration(
    empty_database: str, tmp_path: Path
) -> None:
    migrations = write(
        tmp_path / "m",
        {
            "0001_slow.sql": "SELECT pg_sleep(0.3); CREATE TABLE slow_table (id int);",
            "0002_next.sql": "CREATE TABLE next_table (id int);",
        },
    )
    results = await asyncio.gather(
        *(apply_migrations(empty_database, migrations) for _ in range(4))
    )
    assert sorted(results) == [[], [], [], ["0001", "0002"]]


async def test_the_advisory_lock_is_released(empty_database: str, tmp_path: Path) -> None:
    migrations = write(tmp_path / "m", {"0001_bad.sql": "SELEC 1;"})
    with pytest.raises(MigrationError, match=r"0001_bad\.sql"):
        await apply_migrations(empty_database, migrations)
    held = await fetch_val(
        empty_database, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
    )
    assert held == 0


async def test_roles_are_unprivileged_and_cannot_log_in(migrated_database: str) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        rows = await conn.fetch(
            """SELECT rolname, rolsuper, rolbypassrls, rolcanlogin, rolcreaterole, rolcreatedb
               FROM pg_roles WHERE rolname = ANY($1::text[])""",
            list(ROLES),
        )
    finally:
        await conn.close()
    assert {row["rolname"] for row in rows} == set(ROLES)
    for row in rows:
        assert not any(row[k] for k in list(row.keys())[1:]), dict(row)


async def test_existing_superuser_role_is_refused(
    empty_database: str, pg_admin_url: str, migrated_template: str
) -> None:
    """A pre-existing role of ours with BYPASSRLS would silently void RLS: refuse it.

    The roles are the cluster's: the migrated template's migrations create them in this
    worker's server, whatever tests ran before (alone, this test once found none)."""
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f"ALTER ROLE {DASHBOARD_ROLE} BYPASSRLS")
        try:
            with pytest.raises(MigrationError, match=f"role {DASHBOARD_ROLE} exists"):
                await apply_migrations(empty_database)
        finally:
            await admin.execute(f"ALTER ROLE {DASHBOARD_ROLE} NOBYPASSRLS")
    finally:
        await admin.close()
    assert await fetch_val(empty_database, f"SELECT count(*) FROM {MIGRATIONS_TABLE}") == 0


@pytest.mark.parametrize("member_of", [WRITER_ROLE, DASHBOARD_ROLE, None])
async def test_no_login_creates_objects_in_the_public_schema(
    empty_database: str, pg_admin_url: str, member_of: str | None
) -> None:
    """PUBLIC's CREATE on the public schema is gone (0081), even where the database had it.

    PostgreSQL 14 and earlier grant it to PUBLIC, and a cluster upgraded from one keeps
    it: any login could then plant a function in public that outranks the one an API
    statement means (the API's sessions search public), and it would run as that
    session, under its user's identity. Here the database starts as such a cluster
    leaves it.
    """
    superuser = await asyncpg.connect(empty_database)
    try:
        await superuser.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    finally:
        await superuser.close()
    await apply_migrations(empty_database)
    async with temporary_login(pg_admin_url, empty_database, member_of, "t_creator") as url:
        role = {"role": member_of} if member_of else {}
        conn = await asyncpg.connect(url, server_settings=role)
        try:
            assert not await conn.fetchval("SELECT has_schema_privilege('public', 'CREATE')")
            for statement in (
                "CREATE TABLE public.planted (id int)",
                "CREATE FUNCTION public.score_trend(integer, integer) RETURNS text"
                " LANGUAGE sql AS $$ SELECT 'planted' $$",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="denied"):
                    await conn.execute(statement)
        finally:
            await conn.close()
    # the owner still creates there (the migrations make it own everything)
    assert await fetch_val(
        empty_database, "SELECT has_schema_privilege($1, 'public', 'CREATE')", OWNER_ROLE
    )


async def test_owner_owns_every_table_sequence_and_function(migrated_database: str) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        not_owned = await conn.fetch(
            """SELECT c.relname AS name, c.relowner::regrole::text AS owner
               FROM pg_class c
               WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'S', 'v', 'm')
                 AND c.relname <> $1 AND c.relowner <> $2::regrole
               UNION ALL
               SELECT p.proname, p.proowner::regrole::text
               FROM pg_proc p
               WHERE p.pronamespace = 'public'::regnamespace AND p.proowner <> $2::regrole
                 AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                 WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                   AND d.deptype = 'e')""",
            MIGRATIONS_TABLE,
            OWNER_ROLE,
        )
    finally:
        await conn.close()
    assert [dict(r) for r in not_owned] == []


# What healthscore_writer may do (0022): exactly what the service's statements do.
# table -> (privileges on the whole table, privileges on at least one column)
WRITER_PRIVILEGES: dict[str, tuple[set[str], set[str]]] = {
    "organizations": (set(), {"SELECT", "INSERT"}),  # the id only
    "user_profiles": (set(), {"SELECT", "INSERT"}),  # the id only
    "customer_health": ({"SELECT"}, {"SELECT", "INSERT", "UPDATE"}),
    "success_milestones": (set(), {"SELECT", "INSERT"}),
    "support_interactions": ({"SELECT"}, {"SELECT", "INSERT", "UPDATE"}),
    "organization_state": ({"SELECT"}, {"SELECT", "INSERT", "UPDATE"}),
    "processed_events": ({"SELECT", "DELETE"}, {"SELECT", "INSERT"}),
    "consumer_offsets": ({"SELECT"}, {"SELECT", "INSERT", "UPDATE"}),
    "health_score_history": (set(), {"SELECT", "INSERT", "UPDATE"}),  # the day's upsert
    "alert_outbox": ({"SELECT"}, {"SELECT", "INSERT", "UPDATE"}),
    "read_model_pending": ({"SELECT", "DELETE"}, {"SELECT", "INSERT", "UPDATE"}),
    # owed by a pass whose feed the broker did not take, deleted once published; a
    # stop's owed for later (its not_before)
    "health_feed_owed": ({"SELECT", "DELETE"}, {"SELECT", "INSERT", "UPDATE"}),
    "shadow_health": ({"SELECT"}, {"SELECT", "INSERT", "UPDATE"}),
    "shadow_alerts": ({"SELECT"}, {"SELECT", "INSERT"}),
    "churn_labels": ({"SELECT"}, {"SELECT", "INSERT", "UPDATE"}),
    "alert_outcomes": ({"SELECT"}, {"SELECT", "INSERT", "UPDATE"}),
    # a model version is recorded once and never changed
    "score_models": ({"SELECT"}, {"SELECT", "INSERT"}),
    # recorded once by a replay, read by its resume
    "replay_runs": ({"SELECT"}, {"SELECT", "INSERT"}),
    # written by batches, its attempts recorded and its rows deleted by the relay
    "dead_letter_outbox": ({"SELECT", "DELETE"}, {"SELECT", "INSERT", "UPDATE"}),
    # moved there by the relay (WITHHOLD_DEAD_LETTERS), never changed
    "dead_letters_withheld": ({"SELECT"}, {"SELECT", "INSERT"}),
    # rewritten by the outcome labeller (SAVE_SCORE_QUALITY_SUMMARY)
    "score_quality_summary": ({"SELECT"}, {"INSERT", "UPDATE"}),
    # the tombstones, read by a batch's claim and the statements that create an
    # organization's first rows; written only by `healthscore erase` (its own role)
    "erased_organizations": ({"SELECT"}, {"SELECT"}),
    # erased organizations' owed feed tombstones (0097): published and deleted by the
    # projector, owed by it when a late record's tombstone could not be published again
    # owed again: owed_since moves on (0101)
    "health_feed_tombstones_owed": ({"SELECT", "DELETE"}, {"SELECT", "INSERT", "UPDATE"}),
    # a shadow candidate version's settings, recorded once and never changed (0108)
    "shadow_models": ({"SELECT"}, {"SELECT", "INSERT"}),
}
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


async def test_writer_privileges(migrated_database: str) -> None:
    assert set(WRITER_PRIVILEGES) == set(TABLES)
    conn = await asyncpg.connect(migrated_database)
    try:
        for table, (whole_table, some_column) in WRITER_PRIVILEGES.items():
            granted = {
                privilege
                for privilege in TABLE_PRIVILEGES
                if await conn.fetchval(
                    "SELECT has_table_privilege($1, $2, $3)", WRITER_ROLE, table, privilege
                )
            }
            assert granted == whole_table, table
            on_columns = {
                privilege
                for privilege in ("SELECT", "INSERT", "UPDATE")
                if await conn.fetchval(
                    "SELECT has_any_column_privilege($1, $2, $3)", WRITER_ROLE, table, privilege
                )
            }
            assert on_columns == some_column | (whole_table - {"DELETE"}), table
        for table, column, privilege in (
            ("user_profiles", "role", "UPDATE"),
            ("user_profiles", "role", "INSERT"),
            ("user_profiles", "email", "SELECT"),
            ("organizations", "name", "SELECT"),
            ("success_milestones", "acknowledged_by", "UPDATE"),
            ("customer_health", "organization_id", "UPDATE"),
            ("health_score_history", "organization_id", "UPDATE"),
            ("health_score_history", "recorded_at", "SELECT"),
            ("health_score_history", "day", "UPDATE"),
        ):
            assert not await conn.fetchval(
                "SELECT has_column_privilege($1, $2, $3, $4)", WRITER_ROLE, table, column, privilege
            ), (table, column, privilege)
        # the dashboard acknowledges; who did is the database's to record (0023, 0075)
        assert not await conn.fetchval(
            "SELECT has_column_privilege($1, 'success_milestones', 'acknowledged_by', 'UPDATE')",
            DASHBOARD_ROLE,
        )
        for role in (WRITER_ROLE, DASHBOARD_ROLE):
            for table in IDENTITY_TABLES:
                assert not await conn.fetchval(
                    "SELECT has_any_column_privilege($1, $2, 'SELECT')", role, table
                ), (role, table)
        assert await conn.fetchval(
            "SELECT has_table_privilege($1, $2, 'SELECT')", WRITER_ROLE, MIGRATIONS_TABLE
        )
        assert not await conn.fetchval(
            "SELECT has_table_privilege($1, $2, 'INSERT')", WRITER_ROLE, MIGRATIONS_TABLE
        )
    finally:
        await conn.close()


async def test_every_table_and_function_is_documented(migrated_database: str) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        undocumented = await conn.fetch(
            """SELECT c.relname FROM pg_class c
               WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
                 AND obj_description(c.oid, 'pg_class') IS NULL
               UNION ALL
               SELECT p.proname FROM pg_proc p
               WHERE p.pronamespace = 'public'::regnamespace AND p.proowner = $1::regrole
                 AND obj_description(p.oid, 'pg_proc') IS NULL""",
            OWNER_ROLE,
        )
    finally:
        await conn.close()
    assert [r[0] for r in undocumented] == []


async def test_migrate_command_migrates_the_database_its_database_url_option_names(
    empty_database: str,
) -> None:
    # an operator's environment (or .env) names another database to migrate; the
    # option given on the command line is the one they mean
    elsewhere = "postgresql://nobody@127.0.0.1:1/elsewhere"
    env = dict(os.environ, DATABASE_URL=elsewhere, MIGRATION_DATABASE_URL=elsewhere)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "healthscore.cli", "migrate", "--database-url", empty_database],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert await fetch_val(empty_database, f"SELECT count(*) FROM {MIGRATIONS_TABLE}") == len(
        load_migrations(migrations_path())
    )


async def _migrate_plan(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MIGRATION_DATABASE_URL"}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "healthscore.cli", "migrate", "--plan"],
        env={**env, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_migrate_plan_says_what_a_deploy_would_apply_and_changes_nothing(
    empty_database: str,
) -> None:
    """Before a deploy, the operator reads which migrations it will run, each with what
    it is for, or the refusal it would meet; nothing is applied or locked."""
    shipped = load_migrations(migrations_path())
    assert [m.version for m in await plan_migrations(empty_database)] == [
        m.version for m in shipped
    ]
    await apply_migrations(empty_database)
    assert await plan_migrations(empty_database) == []
    newest = shipped[-1]
    conn = await asyncpg.connect(empty_database)
    try:
        # the database as the previous release left it, as far as the history says
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", newest.version)
        planned = await _migrate_plan(empty_database)
        assert planned.returncode == 0, planned.stderr
        assert planned.stdout.splitlines()[:2] == [
            "would apply 1 migration(s), in this order:",
            f"  {newest.file_name}: {summary(newest)}",
        ]
        assert summary(newest)  # every migration says what it is for in its first line
        # nothing applied by the plan
        assert not await conn.fetchval(
            "SELECT count(*) FROM schema_migrations WHERE version = $1", newest.version
        )
        # a database a newer release migrated: the refusal the deploy would meet, exit 2
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ('9999', 'later', 'x')"
        )
        refused = await _migrate_plan(empty_database)
        assert refused.returncode == 2 and "migrated by a newer release" in refused.stderr
    finally:
        await conn.close()
    assert all(summary(m) for m in shipped), [m.file_name for m in shipped if not summary(m)]


async def test_subjects_stored_before_are_brought_into_nfc(
    empty_database: str, tmp_path: Path
) -> None:
    """0076: a subject stored decomposed (NFD) before it is stored precomposed (NFC),
    the form the core now stores and the API searches in; other rows untouched."""
    await migrate_before(empty_database, "0076", tmp_path / "before")
    conn = await asyncpg.connect(empty_database)
    try:
        organization = b.organization()
        await b.insert_row(conn, "organizations", organization)
        rows = [
            b.support_interaction(organization["id"], subject=subject)
            for subject in ("Cafe\u0301 menu not saving", "Plain subject", None)
        ]
        for row in rows:
            await b.insert_row(conn, "support_interactions", row)
        await apply_migrations(empty_database)
        stored = {
            r["id"]: r["subject"]
            for r in await conn.fetch("SELECT id, subject FROM support_interactions")
        }
        assert [stored[row["id"]] for row in rows] == [
            "Caf\u00e9 menu not saving",
            "Plain subject",
            None,
        ]
    finally:
        await conn.close()


# A runner killed mid-migration and a migration waiting for a lock, with a table the
# service writes to standing in for organization_state (the locks are the same).
_RUNNER = """
import asyncio, sys
from pathlib import Path
from healthscore.store.migrate import apply_migrations
asyncio.run(apply_migrations(sys.argv[1], Path(sys.argv[2])))
"""


async def _a_batch_writes(url: str, timeout: float) -> float:
    """Seconds a batch's write to the table took (TimeoutError past `timeout`)."""
    conn = await asyncpg.connect(url)
    try:
        started = asyncio.get_running_loop().time()
        async with conn.transaction():
            await asyncio.wait_for(conn.execute("INSERT INTO busy_table VALUES (1)"), timeout)
        return asyncio.get_running_loop().time() - started
    finally:
        await conn.close()


async def _wait_for(url: str, query: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await fetch_val(url, query):
        assert asyncio.get_running_loop().time() < deadline, f"never true: {query}"
        await asyncio.sleep(0.05)


async def test_a_runner_killed_mid_migration_releases_its_locks_at_once(
    empty_database: str, tmp_path: Path
) -> None:
    # SIGKILL (a pod evicted, OOM, an operator's kill -9) while a long migration holds an
    # exclusive lock: its session went on to the statement's end, batches waiting behind
    # it and the next runner waiting for the migration lock without a word
    conn = await asyncpg.connect(empty_database)
    await conn.execute("CREATE TABLE busy_table (id int)")
    await conn.close()
    migrations = write(
        tmp_path / "m",
        {"0001_long.sql": "LOCK TABLE busy_table IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);"},
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _RUNNER, empty_database, str(migrations), env=env
    )
    try:
        await _wait_for(
            empty_database,
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' "
            "AND state = 'active' AND pid <> pg_backend_pid()",
        )
    finally:
        runner.kill()
        await runner.wait()

    # the batch waits only until PostgreSQL notices the runner gone, not a minute
    assert await _a_batch_writes(empty_database, timeout=10.0) < 10.0
    # and the job run again takes the migration lock at once and applies the file
    assert await asyncio.wait_for(
        apply_migrations(empty_database, write(tmp_path / "m2", {"0001_long.sql": "SELECT 1;"})),
        5,
    ) == ["0001"]


_ROLE_IN_THIS_DATABASE = """
DO $do$ BEGIN
    EXECUTE format('ALTER ROLE CURRENT_USER IN DATABASE %I {setting}', current_database());
END $do$
"""


async def test_a_runner_lost_with_its_node_is_found_dead_within_minutes(
    empty_database: str, tmp_path: Path
) -> None:
    # a node lost mid-migration sends no FIN: the kernel's keepalive default (two hours)
    # kept the session, its locks and the migration lock; a runner frozen between two
    # statements kept them for good. The migration's session is bounded for both
    migrations = write(
        tmp_path / "m",
        {
            "0001_seen.sql": "CREATE TABLE seen AS SELECT"
            " current_setting('tcp_keepalives_idle') AS idle,"
            " current_setting('tcp_keepalives_interval') AS interval,"
            " current_setting('tcp_keepalives_count') AS count,"
            " current_setting('idle_in_transaction_session_timeout') AS idle_in_transaction,"
            " current_setting('statement_timeout') AS statement_timeout,"
            " inet_client_addr() IS NOT NULL AS over_tcp;"
        },
    )
    # an administrator role with a statement timeout of its own (a DBA's default), in
    # this test's database only (the role is the whole test run's)
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute(_ROLE_IN_THIS_DATABASE.format(setting="SET statement_timeout = ''1s''"))
    finally:
        await conn.close()
    try:
        assert await apply_migrations(empty_database, migrations) == ["0001"]
    finally:
        conn = await asyncpg.connect(empty_database)
        try:
            await conn.execute(_ROLE_IN_THIS_DATABASE.format(setting="RESET statement_timeout"))
            seen = await conn.fetchrow("SELECT * FROM seen")
        finally:
            await conn.close()
    assert seen is not None and seen["idle_in_transaction"] == "1min"
    assert seen["statement_timeout"] == "0", seen
    if seen["over_tcp"]:  # the tests connect over a Unix socket, which has no keepalives
        assert (seen["idle"], seen["interval"], seen["count"]) == ("30", "10", "3")


async def test_a_migration_waiting_for_a_lock_does_not_hold_the_batches(
    empty_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an ALTER waiting for its exclusive lock behind a long transaction (a report, a
    # replay, a forgotten psql) queued every batch writing to the table behind it, for as
    # long as that transaction ran
    from healthscore.store import migrate

    monkeypatch.setattr(migrate, "LOCK_TIMEOUT_SECONDS", 0.5, raising=False)
    monkeypatch.setattr(migrate, "RETRY_PAUSE_SECONDS", 0.5, raising=False)
    setup = await asyncpg.connect(empty_database)
    await setup.execute("CREATE TABLE busy_table (id int)")
    await setup.close()
    long_reader = await asyncpg.connect(empty_database)
    await long_reader.execute("BEGIN; SELECT count(*) FROM busy_table")
    migrating = asyncio.create_task(
        apply_migrations(
            empty_database,
            write(tmp_path / "m", {"0001_alter.sql": "ALTER TABLE busy_table ADD COLUMN y int;"}),
        )
    )
    try:
        await _wait_for(
            empty_database,
            "SELECT count(*) > 0 FROM pg_locks WHERE NOT granted AND mode = 'AccessExclusiveLock'",
        )
        # a batch arriving while the ALTER waits is through within the lock timeout
        assert await _a_batch_writes(empty_database, timeout=5.0) < 3.0
        assert not migrating.done()
    finally:
        await long_reader.execute("COMMIT")
        await long_reader.close()
    # the long transaction over, the migration applies on a later try
    assert await asyncio.wait_for(migrating, 30) == ["0001"]
    assert (
        await fetch_val(
            empty_database,
            "SELECT count(*) FROM information_schema.columns WHERE column_name = 'y'",
        )
        == 1
    )


async def test_a_migration_waiting_for_a_lock_says_who_holds_it(
    empty_database: str, tmp_path: Path
) -> None:
    setup = await asyncpg.connect(empty_database)
    await setup.execute("CREATE TABLE busy_table (id int)")
    await setup.close()
    long_reader = await asyncpg.connect(
        empty_database, server_settings={"application_name": "quarterly-report"}
    )
    await long_reader.execute("BEGIN; SELECT count(*) FROM busy_table")
    reports: list[str] = []
    migrating = asyncio.create_task(
        apply_migrations(
            empty_database,
            write(tmp_path / "m", {"0001_alter.sql": "ALTER TABLE busy_table ADD COLUMN y int;"}),
            report=reports.append,
            lock_timeout=0.3,
        )
    )
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not any("waited" in line for line in reports):
            assert asyncio.get_running_loop().time() < deadline, reports
            await asyncio.sleep(0.05)
    finally:
        await long_reader.execute("COMMIT")
        await long_reader.close()
    assert await asyncio.wait_for(migrating, 30) == ["0001"]
    waited = next(line for line in reports if "waited" in line)
    assert waited.startswith("0001_alter.sql waited 0.3 s for a lock and rolled back")
    assert "quarterly-report" in waited and "idle in transaction" in waited
    assert reports[0] == "applying 0001_alter.sql"
    assert reports[-1].startswith("applied 0001_alter.sql in ")


async def test_a_runner_waiting_for_the_migration_lock_says_who_holds_it(
    empty_database: str, tmp_path: Path
) -> None:
    from healthscore.store import locks

    holder = await asyncpg.connect(
        empty_database, server_settings={"application_name": "healthscore-migrate-1"}
    )
    await holder.execute("SELECT pg_advisory_lock($1)", locks.MIGRATION)
    reports: list[str] = []
    migrating = asyncio.create_task(
        apply_migrations(
            empty_database,
            write(tmp_path / "m", {"0001_a.sql": "SELECT 1;"}),
            report=reports.append,
        )
    )
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not reports:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert not migrating.done()
    finally:
        await holder.close()
    assert await asyncio.wait_for(migrating, 30) == ["0001"]
    assert reports[0].startswith("waiting for the migration lock, held by session ")
    assert "healthscore-migrate-1" in reports[0]


async def test_a_database_migrated_by_a_newer_release_is_named_so(
    empty_database: str, tmp_path: Path
) -> None:
    # a rollback's migrate job (it runs first), or an older replica's `serve` without
    # --no-migrate, meets a migration it does not ship: not a file lost from its image
    newer = write(tmp_path / "newer", {"0001_a.sql": "SELECT 1;", "0002_b.sql": "SELECT 2;"})
    await apply_migrations(empty_database, newer)
    older = write(tmp_path / "older", {"0001_a.sql": "SELECT 1;"})
    with pytest.raises(MigrationError) as raised:
        await apply_migrations(empty_database, older)
    assert str(raised.value) == (
        "the database was migrated by a newer release: 0002_b.sql is applied, this "
        "release's newest migration is 0001_a.sql. Deploy that release or a later one (an "
        "older release's replicas run beside it with `serve --no-migrate`, its migrate "
        "job refuses: see docs/operations.md, Upgrading)"
    )


async def test_the_migrate_command_says_a_refusal_in_one_line(empty_database: str) -> None:
    # the job's log showed a Python traceback ending in the reason, exit code 1
    await apply_migrations(empty_database)
    conn = await asyncpg.connect(empty_database)
    await conn.execute(
        f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum) "
        "VALUES ('9999', 'from_the_future', 'x')"
    )
    await conn.close()
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "healthscore.cli", "migrate", "--database-url", empty_database],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: the database was migrated by a newer release: ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


async def test_the_service_login_migrating_an_up_to_date_database_applies_nothing(
    pg_admin_url: str, migrated_database: str
) -> None:
    # `serve` without --no-migrate started with the service's own login (no
    # MIGRATION_DATABASE_URL): the runner created its history table IF NOT EXISTS, which
    # asks for CREATE on the schema even when the table is there, and the service died
    # with a traceback ending in "permission denied for schema public"
    async with temporary_login(pg_admin_url, migrated_database, WRITER_ROLE, "t_svc") as url:
        assert await apply_migrations(url) == []


async def test_a_login_that_may_not_take_the_migration_lock_is_told_what_to_do(
    pg_admin_url: str, migrated_database: str
) -> None:
    """Migration 0109 leaves advisory locks to the owner's members and the service's
    login: another login running `migrate` (the eraser's, by mistake) met a raw
    permission error on the lock, without the hint every other refusal gives."""
    async with temporary_login(
        pg_admin_url, migrated_database, "healthscore_eraser", "t_er"
    ) as url:
        with pytest.raises(MigrationError) as raised:
            await apply_migrations(url)
    assert "permission denied for function pg_try_advisory_lock" in str(raised.value)
    assert str(raised.value).endswith("the service with `serve --no-migrate`")


async def test_the_service_login_migrating_an_older_database_is_told_what_to_do(
    pg_admin_url: str, empty_database: str, tmp_path: Path
) -> None:
    await migrate_before(empty_database, "0078", tmp_path / "before")
    async with temporary_login(pg_admin_url, empty_database, WRITER_ROLE, "t_svc") as url:
        with pytest.raises(MigrationError) as raised:
            await apply_migrations(url)
    message = str(raised.value)
    assert message.startswith("0078_dead_letters_paged_per_source_topic.sql failed: ")
    assert "InsufficientPrivilegeError" in message
    assert message.endswith(
        "migrations run as an administrator that owns the schema: run `healthscore migrate` "
        "with MIGRATION_DATABASE_URL (or serve with it set), the service with "
        "`serve --no-migrate`"
    )
    # nothing of it applied
    assert await fetch_val(empty_database, "SELECT max(version) FROM schema_migrations") == "0077"


async def test_the_service_login_migrating_an_empty_database_is_told_what_to_do(
    pg_admin_url: str, empty_database: str, tmp_path: Path
) -> None:
    await migrate_before(empty_database, "0002", tmp_path / "before")  # the roles exist
    admin = await asyncpg.connect(empty_database)
    await admin.execute("DROP TABLE schema_migrations")
    await admin.close()
    async with temporary_login(pg_admin_url, empty_database, WRITER_ROLE, "t_svc") as url:
        with pytest.raises(MigrationError) as raised:
            await apply_migrations(url)
    assert str(raised.value) == (
        "this login may not create schema_migrations (InsufficientPrivilegeError: "
        "permission denied for schema public): migrations run as an administrator that "
        "owns the schema: run `healthscore migrate` with MIGRATION_DATABASE_URL (or serve "
        "with it set), the service with `serve --no-migrate`"
    )


async def test_migrate_plan_names_the_marks_a_restore_dropped(migrated_database: str) -> None:
    """pg_dump carries no LEAKPROOF mark on system or extension functions, and their
    grants only into a restore run as a superuser with privileges: a dump restored into
    a new server is up to date by its history and lacks the read API's marks (slower
    filters under row-level security), and one restored with -x or by another login
    also 0109's revocation of the advisory locks from PUBLIC (any login can stop the
    service's leader loops). `migrate --plan` said "up to date" and nothing else
    (review 35a M7)."""
    planned = await _migrate_plan(migrated_database)
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.splitlines() == ["nothing to apply (up to date)"]
    conn = await asyncpg.connect(migrated_database)
    try:
        # what a restore into a new server leaves (the marks and grants are per database)
        await conn.execute("ALTER FUNCTION pg_catalog.jsonb_contains(jsonb, jsonb) NOT LEAKPROOF")
        await conn.execute("ALTER FUNCTION word_similarity_op(text, text) NOT LEAKPROOF")
        # pg_trgm in a schema of its own, off the search path, is looked up there
        await conn.execute("CREATE SCHEMA trgm")
        await conn.execute("ALTER EXTENSION pg_trgm SET SCHEMA trgm")
        await conn.execute(
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_advisory_lock(bigint) TO PUBLIC"
        )
        planned = await _migrate_plan(migrated_database)
        assert planned.returncode == 0, planned.stderr
        first, leaky, locks = planned.stdout.splitlines()
        assert first == "nothing to apply (up to date)"
        assert leaky.startswith(
            "but not LEAKPROOF: pg_catalog.jsonb_contains(jsonb, jsonb), "
            "word_similarity_op(text, text):"
        ), leaky
        assert locks.startswith("but PUBLIC may take advisory locks (pg_advisory_lock(bigint)):")
    finally:
        await conn.close()
