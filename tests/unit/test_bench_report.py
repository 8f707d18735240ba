"""The bench report's ratios pick the runs they claim to compare."""

from __future__ import annotations

from healthscore_lab.bench.report import BenchReport, ThroughputResult


def _run(
    organizations: int, rate: float, prefill: int = 0, profiled: bool = False
) -> ThroughputResult:
    return ThroughputResult(
        organizations=organizations,
        events=1000,
        messages=1000,
        duplicates=0,
        malformed=0,
        organizations_touched=organizations,
        produce_seconds=1.0,
        batches=1,
        committed_records=1000,
        redelivered_records=0,
        applied=1000,
        seconds_first_to_last_commit=1.0,
        messages_per_second=rate,
        events_per_second=rate,
        drain_seconds=1.0,
        mean_batch_records=1000.0,
        processed_events_rows=1000,
        correct=True,
        profiled=profiled,
        prefilled_organizations=prefill,
    )


def test_organization_scaling_ignores_prefilled_and_profiled_runs() -> None:
    report = BenchReport(machine={}, settings={})
    report.throughput = [
        _run(1_000, 8_000.0),
        _run(1_000_000, 4_000.0),
        _run(1_000, 9_000.0, prefill=1_000_000),
        _run(1_000_000, 1_000.0, profiled=True),
    ]
    assert report.org_scaling == 0.5
    assert report.headline is report.throughput[1]
    table = report.table_scaling
    assert table is not None
    ratio, high, low = table
    assert ratio == 9_000.0 / 8_000.0
    assert (high.prefilled_organizations, low.prefilled_organizations) == (1_000_000, 0)
    measured = {target: (text, met) for target, text, met in report.targets()}
    assert measured["same stream, bigger tables: within 20%"][1] is True
    assert measured["throughput at 1M orgs within 20% of 1k orgs"][1] is False


def test_no_table_scaling_without_a_prefilled_run() -> None:
    report = BenchReport(machine={}, settings={})
    report.throughput = [_run(1_000, 8_000.0), _run(1_000_000, 7_000.0)]
    assert report.table_scaling is None
    assert report.org_scaling == 7_000.0 / 8_000.0
