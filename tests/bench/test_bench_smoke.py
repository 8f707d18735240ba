"""Short form of `healthscore bench`: every phase runs, every event is applied.

Asserts correctness only (the machine running CI is too noisy for speed
assertions) and prints the figures. The service runs as a child process, as
in the full benchmark.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from healthscore.core.scoring.model import V2_MODEL_PATH
from healthscore_lab.bench.runner import BenchOptions, Stack, run_bench
from healthscore_lab.devservices import Services

pytestmark = pytest.mark.bench


async def test_bench_smoke(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    # the service children inherit the environment: under v2 the latency phase's
    # trigger (a new organization's cancellation request) raises at once; v3 holds a
    # fresh request's score at 70, which raises nothing at once
    monkeypatch.setenv("MODEL_PATH", str(V2_MODEL_PATH))
    stack = Stack(
        admin_url=services.database_url,
        bootstrap=services.kafka_bootstrap_servers,
        idempotence=services.broker_supports_idempotence,
        kind=services.kind,
        postgres_pid=services.postgres_pid,
        broker_pid=None if services.broker_process is None else services.broker_process.pid,
    )
    options = BenchOptions(
        events=20_000,
        organizations=[2_000],
        baseline_events=2_000,
        rate=1_000.0,
        latency_seconds=4.0,
        alert_rate=10.0,
        work_dir=tmp_path,
        verbose=False,
        # the live phase's services under cProfile: the profile of live traffic is written
        profile_latency=tmp_path / "live.pstats",
    )
    report = await run_bench(stack, options)
    print(report.render())

    (throughput,) = report.throughput
    assert throughput.events == 20_000
    assert throughput.processed_events_rows == throughput.events
    assert throughput.applied == throughput.events
    assert throughput.committed_records == throughput.messages
    assert throughput.correct
    assert throughput.rows_written_per_event >= 1.0  # at least the dedupe row per event
    # the run ends when the read model reflects every event; CPU of every part is measured
    assert throughput.events_per_second_read_model > 0
    assert throughput.cpu_us_per_event_service is not None
    assert throughput.cpu_us_per_event_service > 0
    if services.postgres_pid is not None:
        assert (throughput.cpu_us_per_event_postgres or 0) > 0
    if services.broker_process is not None:
        assert (throughput.cpu_us_per_event_broker or 0) > 0

    latency = report.latency
    assert latency is not None
    assert latency.produced > 0
    assert latency.unmatched == 0 and latency.committed_matched == latency.produced
    assert latency.alert_triggers > 0
    assert latency.alerts_received == latency.alert_triggers
    summary = (tmp_path / "live.txt").read_text()
    # the batch pipeline's own time, by area (the top-25 lists below it rank whatever the
    # live run's loops spent most on: on a loaded machine the pipeline's functions may
    # fall out of them, as in one fresh-clone CI run)
    assert "busy (not in epoll)" in summary and "pipeline + handler glue" in summary

    baseline = report.baseline
    assert baseline is not None
    assert baseline.processed_events_rows == baseline.events == 2_000
    assert baseline.correct

    data = orjson.loads(report.to_json())
    assert {"throughput", "latency", "baseline", "targets", "speedup_vs_naive"} <= set(data)
    assert time.monotonic() - started < 120
