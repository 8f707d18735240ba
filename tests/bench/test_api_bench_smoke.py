"""Short form of `healthscore api-bench`: API processes, the consumer writing meanwhile,
a uniform scenario and the dashboard's, against the session's PostgreSQL and broker.

Asserts that every request was answered and that the figures the full run reports are
there (the machine running CI is too noisy for speed assertions); prints them.
"""

from __future__ import annotations

import pytest

from healthscore_lab.api_bench import BenchSettings, run_api_bench
from healthscore_lab.devservices import Services

pytestmark = pytest.mark.bench


async def test_api_bench_smoke(
    services: Services, empty_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_database)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", services.kafka_bootstrap_servers)
    monkeypatch.setenv(
        "KAFKA_IDEMPOTENT_PRODUCER", str(services.broker_supports_idempotence).lower()
    )
    options = BenchSettings(
        organizations=300,
        clients=4,
        seconds=1.0,
        write_rate=50.0,
        api_processes=1,
        pool_size=4,
        hot_set=10,
        only=["organization page"],
    )
    report = await run_api_bench(options)
    print(report)

    rows = report["results"]
    assert isinstance(rows, list)
    results = {r["scenario"]: r for r in rows}
    assert "organization page" in results
    assert any(name.startswith("dashboard: organization page") for name in results)
    for name, result in results.items():
        assert result["requests"] > 0, name
        assert result["errors"] == 0, name
        assert result["p95_ms"] > 0, name
        assert result["api_cpu_us"] is not None and result["api_cpu_us"] > 0, name
        assert result["cache_hit_ratio"] is not None, name
    page = results["organization page"]
    # every sampled page asked once of the one process first (a 5% page sample here)
    assert page["cold_requests"] > 0
    assert page["cache_hit_ratio"] > 0  # asked again: kept answers
    scored = report["organizations_scored_after"]
    assert isinstance(scored, int) and scored > 300  # the consumer wrote meanwhile
