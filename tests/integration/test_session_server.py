"""The session's own embedded PostgreSQL is set up for a test run (tests/conftest.py)."""

from __future__ import annotations

import pytest

from healthscore_lab.devservices import Services
from tests.utils.harness import fetchval


async def test_the_session_server_does_not_wait_for_the_disk_at_each_commit(
    services: Services,
) -> None:
    if services.postgres_server is None:
        pytest.skip("a server the session did not start is left as it is")
    assert await fetchval(services.database_url, "SHOW fsync") == "off"
    # what a crash-restart needs is unchanged: a commit's WAL is written before it returns
    assert await fetchval(services.database_url, "SHOW synchronous_commit") == "on"
