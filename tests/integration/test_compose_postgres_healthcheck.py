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

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.utils.pg_cluster import Server, accepts_tcp, postgres_bin_dir

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "docker-compose.yml"


def healthy(server: Server) -> bool:
    """The compose healthcheck's verdict, its command run as the container runs it."""
    test = yaml.safe_load(COMPOSE.read_text())["services"]["postgres"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL", test
    result = subprocess.run(
        ["sh", "-c", test[1]], env=server.client_env(), capture_output=True, timeout=30
    )
    return result.returncode == 0


def test_postgres_is_healthy_only_once_it_accepts_tcp_connections() -> None:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries with pg_isready")
    server = Server(bin_dir)
    try:
        # the entrypoint's temporary server on a fresh volume: the Unix socket only
        with server.started(listen_addresses=""):
            assert not accepts_tcp(server.port)
            assert not healthy(server), (
                "healthy while TCP is refused: migrate would start and be refused"
            )
        # the real server (postgresql.conf of the image: listen_addresses = '*')
        with server.started(listen_addresses="127.0.0.1"):
            assert accepts_tcp(server.port)
            assert healthy(server)
    finally:
        server.remove()
