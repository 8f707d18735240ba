"""Short form of the ops-load bench (`python -m healthscore_lab.bench.opsload run`).

An idle service measured without/with/without 20 clients asking for /metrics
and /readyz back to back, then a backlog drained once quietly and once with
them. Asserts correctness and that the clients were
answered; prints the service's CPU per applied event, loaded over quiet (a
CPU-time ratio, not a timed assertion: too few events here for a stable
figure; docs/performance.md quotes the long form, "Ops endpoints under load").
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from healthscore_lab.bench.opsload import OpsLoadOptions, run_opsload
from healthscore_lab.bench.runner import Stack
from healthscore_lab.devservices import Services

pytestmark = pytest.mark.bench


async def test_ops_load_smoke(services: Services, tmp_path: Path) -> None:
    stack = Stack(
        admin_url=services.database_url,
        bootstrap=services.kafka_bootstrap_servers,
        idempotence=services.broker_supports_idempotence,
        kind=services.kind,
    )
    options = OpsLoadOptions(
        events=4_000,
        organizations=2_000,
        clients=20,
        rounds=1,
        idle_seconds=2,
        work_dir=tmp_path,
        verbose=False,
    )
    report = await run_opsload(stack, options)
    print(report.render())

    quiet, loaded = report.runs
    assert (quiet.label, loaded.label) == ("quiet", "loaded")
    for run in report.runs:
        assert run.correct
        assert run.events_applied > 0 and run.cpu_seconds > 0
    metrics, ready = loaded.clients["/metrics"], loaded.clients["/readyz"]
    assert metrics["requests"] > 0 and set(metrics["statuses"]) == {"200"}
    assert ready["requests"] > 0 and "200" in ready["statuses"]
    assert set(ready["statuses"]) <= {"200", "503"}
    assert report.cpu_ratio > 0
    idle = report.idle
    assert idle is not None and idle.requests > 0 and idle.loaded_cpu_seconds > 0
    assert {"cpu_ratio", "pair_ratios", "runs"} <= set(orjson.loads(report.to_json()))
