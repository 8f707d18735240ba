"""TRANSACTION_TIME_LIMIT_SECONDS on the service's sessions: set where the server has
transaction_timeout (PostgreSQL 17 or later), said once and left out where it has not.

The tests' PostgreSQL is 18 (tests/integration/test_service_pool.py runs the bound
for real); a 16 is not at hand, so the choice is checked against a connection that
reports one (it is only asked its version and given the statement to run).
"""

from __future__ import annotations

from typing import Any

from asyncpg.types import ServerVersion
from structlog.testing import capture_logs

from healthscore.store import sql
from healthscore.store.db import bound_transaction_time


class ReportedVersion:
    """A connection as far as `bound_transaction_time` uses one."""

    def __init__(self, major: int) -> None:
        self.version = ServerVersion(major, 0, 4, "final", 0)
        self.executed: list[tuple[str, tuple[Any, ...]]] = []

    def get_server_version(self) -> ServerVersion:
        return self.version

    async def execute(self, query: str, *args: Any) -> str:
        self.executed.append((query, args))
        return "SELECT 1"


async def test_each_session_of_a_17_or_later_server_is_bounded() -> None:
    init = bound_transaction_time(180.0)
    for major in (17, 18):
        conn = ReportedVersion(major)
        with capture_logs() as logs:
            await init(conn)  # type: ignore[arg-type]
        assert conn.executed == [(sql.BOUND_TRANSACTION_TIME, ("180000ms",))]
        assert logs == []


async def test_a_16_server_runs_without_the_bound_and_it_is_said_once() -> None:
    init = bound_transaction_time(180.0)
    sessions = [ReportedVersion(16) for _ in range(3)]
    with capture_logs() as logs:
        for conn in sessions:
            await init(conn)  # type: ignore[arg-type]
    assert all(conn.executed == [] for conn in sessions)
    assert [entry["event"] for entry in logs] == ["transaction_time_limit_unavailable"]
    assert logs[0]["server_version"] == "16.0"
