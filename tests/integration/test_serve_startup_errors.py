"""`healthscore serve` that cannot start says why in one line and exits non-zero.

Each case runs the real command as a child process against the session's
PostgreSQL and broker, with one setting wrong.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from healthscore.core.scoring.model import DEFAULT_MODEL_PATH
from healthscore.store.migrate import load_migrations, migrations_path
from healthscore_lab.devservices import Services
from tests.utils.harness import ServiceProcess, make_topics, service_settings


async def _cli(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "healthscore.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def _serve(database_url: str, bootstrap: str, **env: str) -> subprocess.CompletedProcess[str]:
    topics = await make_topics(bootstrap, partitions=1)
    process = ServiceProcess(service_settings(database_url, bootstrap, topics), extra_env=env)
    return await _cli("serve", "--no-migrate", "--no-sweep", env=process.env())


def _closed_port() -> int:
    """A local port nothing listens on (the socket that held it is closed)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port: int = closed.getsockname()[1]
    return port


SHIPPED = [m.version for m in load_migrations(migrations_path())]


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def _assert_quiet(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert "Unclosed" not in output, output


def _refused_in_one_line(result: subprocess.CompletedProcess[str], starting: str) -> None:
    """Exit 2, one error line that starts so, and nothing else alarming."""
    assert result.returncode == 2, result.stderr
    (line,) = _error_lines(result)
    assert line.startswith(starting), line
    _assert_quiet(result)


async def test_a_taken_ops_port_names_the_setting(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await _serve(migrated_database, kafka_bootstrap, OPS_PORT=str(port))
    assert result.returncode == 2, result.stderr
    assert _error_lines(result) == [
        f"error: the ops endpoints cannot listen on 127.0.0.1:{port} (Address already in "
        "use): set OPS_PORT to a free port (0 = any free port) or OPS_HOST to another address"
    ]
    _assert_quiet(result)


async def test_a_broker_refusing_idempotence_names_the_setting(
    migrated_database: str, kafka_bootstrap: str, services: Services
) -> None:
    if services.broker_supports_idempotence:
        pytest.skip("this broker grants idempotent producers")
    # the embedded broker answers InitProducerId with an error
    result = await _serve(migrated_database, kafka_bootstrap, KAFKA_IDEMPOTENT_PRODUCER="true")
    assert result.returncode == 2, result.stderr
    (line,) = _error_lines(result)
    assert line.startswith("error: the broker refused an idempotent producer (InitProducerId")
    assert "set KAFKA_IDEMPOTENT_PRODUCER=false" in line
    _assert_quiet(result)


async def test_a_database_without_the_latest_migration_names_it(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """`serve --no-migrate` (or a MIGRATION_DATABASE_URL naming another database) against
    a database one migration behind: refused at start-up, not failing batch after batch."""
    conn = await asyncpg.connect(migrated_database)
    try:
        latest = await conn.fetchrow(
            "DELETE FROM schema_migrations WHERE version = "
            "(SELECT max(version) FROM schema_migrations) RETURNING version, name"
        )
    finally:
        await conn.close()
    assert latest is not None
    result = await _serve(migrated_database, kafka_bootstrap)
    assert result.returncode == 2, result.stderr
    assert _error_lines(result) == [
        f"error: the database DATABASE_URL names lacks 1 migration(s) this release needs "
        f"({latest['version']}_{latest['name']}.sql): apply them to it (healthscore migrate, "
        "or serve without --no-migrate; MIGRATION_DATABASE_URL, when set, must name the "
        "same database)"
    ]
    _assert_quiet(result)


async def test_serve_migrates_the_database_named_on_its_command_line(
    migrated_database: str, empty_database: str, kafka_bootstrap: str
) -> None:
    """`serve --database-url X` with MIGRATION_DATABASE_URL naming another database
    migrated that other one and then refused X as unmigrated: the database named on the
    command line is the one migrated, as with `migrate --database-url`."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    env = ServiceProcess(
        settings, extra_env={"MIGRATION_DATABASE_URL": migrated_database, "OPS_PORT": "0"}
    ).env()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "healthscore.cli", "serve", "--no-sweep", "--database-url", empty_database),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        latest = None
        for _ in range(600):  # until X holds every migration, or the process gave up
            if process.returncode is not None:
                break
            conn = await asyncpg.connect(empty_database)
            try:
                exists = await conn.fetchval("SELECT to_regclass('schema_migrations')")
                if exists is not None:
                    latest = await conn.fetchval("SELECT max(version) FROM schema_migrations")
            finally:
                await conn.close()
            if latest == SHIPPED[-1]:
                break
            await asyncio.sleep(0.1)
        if latest != SHIPPED[-1]:
            # stopped before its output is read: a serve that migrated an older set and
            # runs on would keep communicate() waiting for good
            if process.returncode is None:
                process.terminate()
            pytest.fail(
                f"serve left the database at {latest}, not {SHIPPED[-1]}: "
                + (await process.communicate())[1].decode()
            )
    finally:
        if process.returncode is None:
            process.terminate()
        _out, err = await process.communicate()
    assert "Traceback" not in err.decode(), err.decode()


async def test_an_unreachable_database_or_broker_is_one_line(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """Neither reachable at start-up ended in a 40-70 line traceback; now one line that
    names the setting, without the password, and exit 2 (the orchestrator restarts)."""
    port = _closed_port()
    database = f"postgresql://someone:s3cret-pw@127.0.0.1:{port}/nowhere"
    result = await _serve(migrated_database, kafka_bootstrap, DATABASE_URL=database)
    _refused_in_one_line(
        result,
        f"error: cannot connect to PostgreSQL at DATABASE_URL (postgresql://someone:***@"
        f"127.0.0.1:{port}/nowhere): ",
    )
    assert "s3cret-pw" not in result.stdout + result.stderr

    broker = f"127.0.0.1:{port}"
    result = await _serve(migrated_database, kafka_bootstrap, KAFKA_BOOTSTRAP_SERVERS=broker)
    _refused_in_one_line(
        result, f"error: cannot reach the Kafka brokers at KAFKA_BOOTSTRAP_SERVERS ({broker}): "
    )


async def test_a_half_written_model_file_names_its_setting(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A model file cut short (a `fit` killed while writing it, a copy interrupted) was a
    35-line traceback that named neither the setting nor the file; now one line naming
    both, exit 2. A shadow model path to no file was pydantic's traceback."""
    half = tmp_path / "health_model.v9.json"
    half.write_bytes(DEFAULT_MODEL_PATH.read_bytes()[:300])
    for setting in ("MODEL_PATH", "SHADOW_MODEL_PATH"):
        result = await _serve(migrated_database, kafka_bootstrap, **{setting: str(half)})
        _refused_in_one_line(result, f"error: {setting}={half} is not a usable model: ")

    missing = tmp_path / "health_model.v10.json"
    result = await _serve(migrated_database, kafka_bootstrap, SHADOW_MODEL_PATH=str(missing))
    assert result.returncode == 2, result.stderr
    assert _error_lines(result) == ["error: SHADOW_MODEL_PATH: Path does not point to a file"]
    _assert_quiet(result)


async def test_a_model_under_a_shipped_or_the_live_version_with_other_settings_is_refused(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A copy of v4 with its churn calibration edited kept "version": "v4": the service started and
    published its scores as v4's, and a promotion compared it with the shipped file
    (score_models records the aggregates alone, so no `model_version_reused` either).
    A candidate named like the live model but other was shadow-scored under its rows."""
    config = json.loads(DEFAULT_MODEL_PATH.read_text())
    config["churn"]["intercept"] += 0.5
    edited = tmp_path / "health_model.v4.json"
    edited.write_text(json.dumps(config))
    result = await _serve(migrated_database, kafka_bootstrap, MODEL_PATH=str(edited))
    _refused_in_one_line(
        result,
        f"error: MODEL_PATH={edited} is version v4 but not the shipped v4: give an edited or "
        "refitted model a version of its own",
    )
    config["version"] = "v4-ours"
    ours = tmp_path / "health_model.v4-ours.json"
    ours.write_text(json.dumps(config))
    config["churn"]["intercept"] += 0.5
    candidate = tmp_path / "health_model.v4-ours-candidate.json"
    candidate.write_text(json.dumps(config))
    result = await _serve(
        migrated_database, kafka_bootstrap, MODEL_PATH=str(ours), SHADOW_MODEL_PATH=str(candidate)
    )
    _refused_in_one_line(
        result,
        f"error: SHADOW_MODEL_PATH={candidate} has the live model's version v4-ours but other "
        "settings: give the candidate a version of its own",
    )


async def test_the_api_with_its_database_unreachable_is_one_line() -> None:
    """`healthscore api` whose database cannot be reached ended in the server
    framework's start-up traceback and exit 3; now one line, without the password."""
    port = _closed_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("API_", "DATABASE_"))},
        "API_DATABASE_URL": f"postgresql://dash:s3cret-pw@127.0.0.1:{port}/x",
        "API_JWT_SECRET": "j" * 32,
        "API_DB_SIGNING_KEY_ID": "1",
        "API_DB_SIGNING_KEY": "ab" * 32,
        "API_PORT": "0",
    }
    result = await _cli("api", env=env, timeout=60)
    _refused_in_one_line(
        result,
        f"error: cannot connect to PostgreSQL at API_DATABASE_URL (postgresql://dash:***@"
        f"127.0.0.1:{port}/x): ",
    )
    assert "s3cret-pw" not in result.stdout + result.stderr


async def test_a_database_migrated_by_a_newer_release_is_said_at_start(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """An older replica of a rolling deploy, or an image rolled back without its
    database: `serve --no-migrate` starts (every migration it ships is there) and said
    nothing of the schema it runs on, which its statements may not fit."""
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) "
            "VALUES ('9999', 'from_a_newer_release', 'x')"
        )
    finally:
        await conn.close()
    topics = await make_topics(kafka_bootstrap, partitions=1)
    process = ServiceProcess(
        service_settings(migrated_database, kafka_bootstrap, topics), extra_env={"OPS_PORT": "0"}
    )
    log = tmp_path / "serve.log"
    process.start(str(log))
    try:
        for _ in range(600):
            if "service_started" in log.read_text() or not process.alive:
                break
            await asyncio.sleep(0.1)
    finally:
        process.terminate()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert "service_started" in [line["event"] for line in lines], log.read_text()
    (newer,) = [line for line in lines if line["event"] == "schema_newer_than_release"]
    assert newer["level"] == "warning"
    assert newer["applied"] == "9999_from_a_newer_release.sql"
    assert newer["newest_shipped"] == load_migrations(migrations_path())[-1].file_name
