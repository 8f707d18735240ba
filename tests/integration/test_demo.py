"""`healthscore demo` as a new user runs it: twice in a row, from the same directory.

It starts its own embedded PostgreSQL and broker (not the session's), so the
second run must not inherit the first one's stored offsets, and the screen
must stay human: no JSON log lines, the rejections summarized.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from healthscore_lab.demo import _offsets_beyond_the_log
from healthscore_lab.devservices import docker_available
from tests.utils.harness import SESSION_TIMEOUT_MS, make_topics, service_settings

pytestmark = pytest.mark.skipif(
    docker_available(), reason="runs the embedded services; containers would be pulled"
)


def _demo_env(state_dir: Path, **extra_env: str) -> dict[str, str]:
    """This environment without what would point the demo at other services, its state
    in `state_dir`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DATABASE_URL",
            "MIGRATION_DATABASE_URL",
            "KAFKA_BOOTSTRAP_SERVERS",
            "OPS_PORT",
            "LOG_FORMAT",
        )
    }
    # the service's first join waits out a session timeout: the harness's, not 10 s
    short_join = {"KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS)}
    return {**env, **short_join, "STATE_DIR": str(state_dir), **extra_env}


async def _demo(
    state_dir: Path, dashboard: bool = False, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    env = _demo_env(state_dir, **extra_env)
    command = ["demo", "--events", "1500", "--organizations", "40", "--rate", "3000"]
    if not dashboard:
        command.append("--no-dashboard")
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "healthscore.cli", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def test_demo_twice_processes_events_both_times_and_keeps_the_screen_readable(
    tmp_path: Path,
) -> None:
    for run in (1, 2):
        result = await _demo(tmp_path)
        assert result.returncode == 0, (run, result.stdout, result.stderr)
        out = result.stdout
        # the CRM's profiles reach the service through their topic and rescore the
        # organizations the stream took for new and short of milestones
        profiles = out.split("profiles from the CRM (organization.profile.v1)", 1)[1]
        moved = re.findall(r"^ +\w{8} +([\d.]+) -> +([\d.]+)$", profiles, re.MULTILINE)
        assert moved and all(after != before for before, after in moved), out
        # why a profile can lower a score, in one line
        assert "\n  a profile can lower a score: an older account is expected to have" in out
        final = out.split("final dashboard (", 1)[1]
        # where a producer or `healthscore dead-letters` reaches the demo's services
        broker = re.search(r"^    export KAFKA_BOOTSTRAP_SERVERS='(127\.0\.0\.1:\d+)'$", out, re.M)
        assert broker is not None, out
        assert "    export KAFKA_IDEMPOTENT_PRODUCER=false\n" in out
        assert re.search(
            r"^    export DATABASE_URL='postgresql://postgres:@/postgres\?host=", out, re.M
        )
        logged = (tmp_path / "demo.log").read_text()
        assert '"event": "demo_services"' in logged
        assert f'"kafka_bootstrap_servers": "{broker.group(1)}"' in logged
        assert re.search(r"organizations by band: \w+=\d+", final), (run, out)
        # a new database each run: the whole schema is applied every time
        applied = re.search(r"database schema: (\d+) migration\(s\) applied", out)
        assert applied is not None and int(applied.group(1)) > 0, out
        # human lines only: the log is in the file, summarized on the screen
        assert not [line for line in out.splitlines() if line.lstrip().startswith("{")], out
        assert "database_login_is_superuser" not in out + result.stderr
        assert "rejected messages: " in out
        log = tmp_path / "demo.log"
        assert out.rstrip().endswith(f"full log: {log}")
        assert '"event": "service_started"' in log.read_text()
        assert "database_login_is_superuser" not in log.read_text()
        assert result.stderr == "", result.stderr


async def test_a_taken_dashboard_port_is_refused_before_the_demo_runs(tmp_path: Path) -> None:
    # the dashboard is served at the end: on a taken API_PORT the whole demo ran, then
    # uvicorn's SystemExit came out as tracebacks ("Task exception was never retrieved",
    # "Unclosed AIOKafkaProducer") instead of one line naming the setting
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await _demo(tmp_path, dashboard=True, API_HOST="127.0.0.1", API_PORT=str(port))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [
        f"error: the dashboard cannot listen on 127.0.0.1:{port} (Address already in use): "
        "set API_PORT to a free port (0 = any free port) or API_HOST to another address, "
        "or run the demo with --no-dashboard"
    ]
    assert "producing" not in result.stdout  # said before anything started


async def test_a_kept_database_with_profile_offsets_beyond_the_log_is_refused(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """The demo's check of a kept database covers every input topic: a stored offset of
    the profile topic past its (new, empty) log would leave the service skipping the
    profiles published until the log reaches it."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute(
            "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) "
            "VALUES ($1, $2, 0, 3)",
            settings.consumer_group,
            topics.profile,
        )
    finally:
        await conn.close()
    beyond = await _offsets_beyond_the_log(migrated_database, settings)
    assert beyond == [f"{topics.profile}:0 stored 3, log 0..0"]


def test_the_final_dashboard_holds_still_after_it_is_printed(tmp_path: Path) -> None:
    """The silence sweep runs every SWEEP_INTERVAL_SECONDS (60): its first rescorings of
    quiet organizations came a minute after the "final" dashboard, raising alerts printed
    under the sign-in links. The demo makes them before printing it: when the dashboard
    is printed, no organization is due for the sweep below the log's watermark (what
    the sweep's next run would rescore), read from the demo's own database."""
    env = _demo_env(tmp_path, API_PORT="0")
    out = tmp_path / "out"
    with out.open("wb") as file:
        process = subprocess.Popen(
            [sys.executable, "-m", "healthscore.cli", "demo"],
            env=env,
            stdout=file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while "serving the dashboard until Ctrl-C" not in out.read_text():
            assert process.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.5)
        database = re.search(r"^    export DATABASE_URL='([^']+)'$", out.read_text(), re.M)
        assert database is not None, out.read_text()
        watermark, due = asyncio.run(_sweep_due(database.group(1)))
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)
    assert watermark is not None
    assert due == 0, f"{due} organization(s) due for the sweep below {watermark}"
    text = out.read_text()
    after = text.split("final dashboard", 1)[1]
    assert "ALERT" not in after, after
    received = int(re.search(r"^alerts received: (\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert received == text.count("  ALERT "), text


async def _sweep_due(database_url: str) -> tuple[object, int]:
    """The log's watermark (the lowest partition frontier) and how many organizations
    the silence sweep would rescore below it."""
    conn = await asyncpg.connect(database_url)
    try:
        watermark = await conn.fetchval("SELECT min(max_event_time) FROM consumer_offsets")
        due = await conn.fetchval(
            "SELECT count(*) FROM organization_state WHERE rescore_due_at < $1", watermark
        )
    finally:
        await conn.close()
    return watermark, int(due)
