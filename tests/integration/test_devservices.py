"""The embedded services leave nothing behind: a closed embedded PostgreSQL takes its
temporary directory with it (a test run or benchmark starts several; each used to
leave an empty `healthscore-pg-*` directory in the temporary directory)."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from healthscore_lab.devservices import docker_available, free_port, resolve_services
from tests.utils.harness import SESSION_TIMEOUT_MS

ENV_URLS = ("DATABASE_URL", "MIGRATION_DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "OPS_PORT")


async def test_a_closed_embedded_postgres_leaves_no_directory_behind() -> None:
    # a broker address is given so that only PostgreSQL starts (nothing connects to it)
    services = resolve_services(kafka_bootstrap_servers="127.0.0.1:9", prefer_containers=False)
    try:
        assert services.kind == "embedded"
        root = Path(services.postgres_server.pgdata).parent
        assert root.name.startswith("healthscore-pg-") and root.is_dir()
        conn = await asyncpg.connect(services.database_url)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        services.close()
    assert not root.exists()


def _exports(text: str) -> dict[str, str]:
    return dict(re.findall(r"^export (\w+)='?([^'\n]*)'?$", text, re.MULTILINE))


def _tails(*paths: Path) -> str:
    return " | ".join(path.read_text(errors="replace")[-2000:] for path in paths)


def _wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float = 240.0,
    said: Callable[[], str] = lambda: "",
) -> None:
    """Wait for `check`; a bound, not a measure: on a loaded machine (four test workers and
    other work) a start of the embedded services once took more than 120 s. `said`: what
    the process printed, for the failure's message."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}; it said: {said()}"
        time.sleep(0.3)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _printed(out: Path, text: str) -> bool:
    return text in out.read_text()


def _applied_exactly(database_url: str, records: int) -> bool:
    return _applied(database_url) == records


def _applied(database_url: str) -> int:
    """The records the default consumer group stored progress past, over all partitions."""

    async def query() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            if await conn.fetchval("SELECT to_regclass('consumer_offsets')") is None:
                return 0
            return int(
                await conn.fetchval(
                    "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets "
                    "WHERE consumer_group = 'healthscore'"
                )
            )
        finally:
            await conn.close()

    return asyncio.run(query())


@pytest.mark.skipif(docker_available(), reason="runs the embedded services")
def test_serve_consumes_on_the_second_dev_services_session_of_a_kept_database(
    tmp_path: Path,
) -> None:
    """dev-services keeps PostgreSQL's data but its broker is new and empty every time:
    the offsets the first session stored lay beyond the second broker's topics, and
    serve refused those partitions (`partition_refused`, not ready) and applied nothing
    produced. The second session sets them back to the start and says so."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_URLS}
    env["STATE_DIR"] = str(tmp_path / "state")
    ops_port = free_port()
    for session, events in ((1, 60), (2, 150)):
        out, err = tmp_path / f"dev-{session}.out", tmp_path / f"dev-{session}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            dev = subprocess.Popen(
                [sys.executable, "-m", "healthscore.cli", "dev-services"],
                env=env,
                stdout=stdout,
                stderr=stderr,
            )
        serve: subprocess.Popen[bytes] | None = None
        try:
            _wait_until(
                "dev-services up",
                functools.partial(_printed, out, "Ctrl-C stops them"),
                said=functools.partial(_tails, out, err),
            )
            exports = _exports(out.read_text())
            service_env = {
                **env,
                **exports,
                "OPS_PORT": str(ops_port),
                "KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
                "BATCH_TIMEOUT_MS": "50",
            }
            with (tmp_path / f"serve-{session}.log").open("wb") as log:
                serve = subprocess.Popen(
                    [sys.executable, "-m", "healthscore.cli", "serve", "--no-sweep"],
                    env=service_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            _wait_until(f"serve ready in session {session}", lambda: _ready(ops_port), 60)
            sent = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "healthscore.cli",
                    "simulate",
                    "--events",
                    str(events),
                    "--organizations",
                    "5",
                    "--seed",
                    str(session),
                    "--duplicate-rate",
                    "0",
                    "--malformed-rate",
                    "0",
                ],
                env=service_env,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
            produced = int(re.search(r"sent (\d+) messages", sent).group(1))  # type: ignore[union-attr]
            url = exports["DATABASE_URL"]
            _wait_until(
                f"session {session}: {produced} records applied",
                functools.partial(_applied_exactly, url, produced),
            )
            if session == 2:  # and said so, in one line
                notes = err.read_text()
                assert "the broker is new and its topics empty" in notes, notes
                assert "set back to the start" in notes, notes
        finally:
            if serve is not None:
                serve.send_signal(signal.SIGTERM)
                serve.wait(60)
            dev.send_signal(signal.SIGINT)
            dev.wait(60)
