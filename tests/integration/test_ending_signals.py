"""`healthscore demo` and `healthscore dev-services` stop their PostgreSQL however they
end: Ctrl-C, `kill` (SIGTERM), a closed terminal (SIGHUP), or killed outright
(SIGKILL, which leaves it to the server's keeper). The demo's temporary directory goes
too. A dev-services that finds the server of its data directory left running by a
killed session says so and stops it, instead of reusing a server it would not stop.

Real processes, real signals: each command runs as a child of the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from healthscore_lab.devservices import docker_available
from tests.utils.harness import SESSION_TIMEOUT_MS

pytestmark = pytest.mark.skipif(
    docker_available(), reason="runs the embedded services; containers would be pulled"
)

UNSET = ("DATABASE_URL", "MIGRATION_DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "OPS_PORT")


def _start(tmp_path: Path, *command: str, **extra_env: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env["STATE_DIR"] = str(tmp_path / "state")
    # the service's first join waits out a session timeout: the harness's, not 10 s
    env["KAFKA_SESSION_TIMEOUT_MS"] = str(SESSION_TIMEOUT_MS)
    env.update(extra_env)
    out = tmp_path / f"out-{time.monotonic_ns()}"
    with out.open("wb") as file:
        process = subprocess.Popen(
            [sys.executable, "-m", "healthscore.cli", *command],
            env=env,
            stdout=file,
            stderr=subprocess.STDOUT,
        )
    return process, out


def _wait_for_text(process: subprocess.Popen[bytes], out: Path, text: str) -> str:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        seen = out.read_text(errors="replace")
        if text in seen:
            return seen
        assert process.poll() is None, seen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not printed: {out.read_text(errors='replace')}")


def _postmaster(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


def _gone(pid: int, within: float = 60.0) -> bool:
    """Exited (or a zombie nobody reaps: the keeper's parent is PID 1 in a container)."""
    deadline = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


@pytest.fixture
def stray_postgres() -> Iterator[list[int]]:
    """Postmasters a failing test left: stopped at the end whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not _gone(pid, 0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)


@pytest.mark.parametrize("ending", ["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_dev_services_stops_its_postgres_however_it_ends(
    tmp_path: Path, ending: str, stray_postgres: list[int]
) -> None:
    process, out = _start(tmp_path, "dev-services")
    _wait_for_text(process, out, "# Ctrl-C stops them.")
    pgdata = tmp_path / "state" / "pgdata"
    postmaster = _postmaster(pgdata)
    stray_postgres.append(postmaster)
    process.send_signal(getattr(signal, ending))
    process.wait(60)
    assert _gone(postmaster), f"PostgreSQL {postmaster} still runs after {ending}"
    assert not (pgdata / "postmaster.pid").exists()
    assert (pgdata / "PG_VERSION").exists()  # the kept data stays


def test_dev_services_stops_a_server_a_killed_session_left_running(
    tmp_path: Path, stray_postgres: list[int]
) -> None:
    first, out = _start(tmp_path, "dev-services")
    _wait_for_text(first, out, "# Ctrl-C stops them.")
    pgdata = tmp_path / "state" / "pgdata"
    orphan = _postmaster(pgdata)
    stray_postgres.append(orphan)
    # the keeper killed with it (a `kill -9` of the whole tree): the server runs on alone
    for child in psutil.Process(first.pid).children():
        if any("pg_keeper" in part for part in child.cmdline()):
            child.kill()
    first.kill()
    first.wait(10)
    assert not _gone(orphan, 1)

    second, out = _start(tmp_path, "dev-services")
    seen = _wait_for_text(second, out, "# Ctrl-C stops them.")
    assert (
        f"# note: PostgreSQL (pid {orphan}) was left running on {pgdata.resolve()} by a "
        "session that ended without stopping it: stopped it (its data stays) and started "
        "it again"
    ) in seen
    assert _gone(orphan, 5)
    restarted = _postmaster(pgdata)
    stray_postgres.append(restarted)
    assert restarted != orphan
    second.send_signal(signal.SIGINT)  # this session's Ctrl-C stops the server it started
    second.wait(60)
    assert _gone(restarted)


@pytest.mark.parametrize(
    ("ending", "when"),
    [
        ("SIGTERM", "producing"),
        ("SIGHUP", "producing"),
        ("SIGKILL", "producing"),
        ("SIGHUP", "serving the dashboard until Ctrl-C"),
    ],
)
def test_the_demo_removes_its_postgres_however_it_ends(
    tmp_path: Path,
    ending: str,
    when: str,
    stray_postgres: list[int],
    request: pytest.FixtureRequest,
) -> None:
    # short: the server's socket goes in its data directory (a Unix socket's path is
    # at most 107 bytes)
    temporary = Path(tempfile.mkdtemp(prefix="hs-"))
    request.addfinalizer(lambda: shutil.rmtree(temporary, ignore_errors=True))
    command = ["demo", "--organizations", "40", "--rate", "3000"]
    if when == "producing":  # long enough to be signalled during it
        command += ["--events", "300000", "--no-dashboard"]
    else:
        command += ["--events", "1500"]
    process, out = _start(tmp_path, *command, TMPDIR=str(temporary), API_PORT="0")
    _wait_for_text(process, out, when)
    (root,) = temporary.glob("healthscore-pg-*")
    postmaster = _postmaster(root / "pgdata")
    stray_postgres.append(postmaster)
    process.send_signal(getattr(signal, ending))
    process.wait(60)
    assert _gone(postmaster), f"PostgreSQL {postmaster} still runs after {ending}"
    deadline = time.monotonic() + 30
    while root.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not root.exists(), list(root.rglob("*"))[:5]


def test_the_keeper_stops_a_temporary_server_whose_holders_file_is_unreadable(
    tmp_path: Path, stray_postgres: list[int]
) -> None:
    """The owner killed outright and the server's holders file unreadable (cut short as
    it was written, say): the keeper stops the server anyway and removes its temporary
    directory. Before, it gave up on the server (left running) and deleted the running
    server's files under it."""
    script = (
        "import sys, time\n"
        "from healthscore_lab.devservices import start_embedded_postgres\n"
        "url, server, root = start_embedded_postgres(None)\n"
        "(root / 'pgdata' / '.handle_pids.json').write_text('[12')\n"
        "print(root, flush=True)\n"
        "time.sleep(600)\n"
    )
    temporary = Path(tempfile.mkdtemp(prefix="hs-"))  # short: the socket goes in it
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env["TMPDIR"] = str(temporary)
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        root = Path(process.stdout.readline().strip())
        postmaster = _postmaster(root / "pgdata")
        stray_postgres.append(postmaster)
        process.kill()
        process.wait(30)
        # the directory goes only once the server has stopped (checked at the moment it
        # is seen gone; before, the server ran on without its files until it noticed)
        deadline = time.monotonic() + 60
        while root.exists():
            assert time.monotonic() < deadline, list(root.rglob("*"))[:5]
            time.sleep(0.02)
        assert _gone(postmaster, 0), f"its directory went while PostgreSQL {postmaster} ran"
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
