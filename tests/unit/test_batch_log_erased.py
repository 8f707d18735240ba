"""The `erased_organization_events_skipped` line of a bulk offboarding: thousands of
erased organizations still sending put thousands of ids in one batch. The line says how
many, with a bounded sample of ids; the metric counts every record."""

from __future__ import annotations

import uuid

from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from healthscore.service.batch_log import ERASED_SAMPLE, BatchLog
from healthscore.service.ingest.pipeline import BatchOutcome
from healthscore.service.ops.metrics import Metrics


def _skipped(metrics: Metrics, topic: str) -> float:
    value = metrics.registry.get_sample_value(
        "healthscore_events_erased_skipped_total", {"topic": topic}
    )
    return value or 0.0


def test_a_bulk_offboarding_logs_a_count_and_a_bounded_sample() -> None:
    metrics = Metrics(CollectorRegistry())
    batch_log = BatchLog(metrics)
    erased = [str(uuid.uuid4()) for _ in range(5000)]
    outcome = BatchOutcome(
        records=7500,
        erased_by_topic={"usage": 5000, "support": 2500},
        erased_organizations=list(erased),
    )
    with capture_logs() as logs:
        batch_log.record(outcome, 0.1)
    [line] = [entry for entry in logs if entry["event"] == "erased_organization_events_skipped"]
    assert line["organizations"] == 5000
    assert line["sample"] == erased[:ERASED_SAMPLE]
    assert 0 < ERASED_SAMPLE <= 20
    assert len(repr(line)) < 2_000
    assert line["records"] == {"usage": 5000, "support": 2500}
    # the metric stays exact
    assert _skipped(metrics, "usage") == 5000 and _skipped(metrics, "support") == 2500
    # the summary kept for the ops pages keeps no more than the sample either
    assert batch_log.recent[-1].erased_organizations == erased[:ERASED_SAMPLE]


def test_a_few_erased_organizations_are_all_named() -> None:
    batch_log = BatchLog(Metrics(CollectorRegistry()))
    erased = [str(uuid.uuid4()) for _ in range(3)]
    outcome = BatchOutcome(
        records=3, erased_by_topic={"usage": 3}, erased_organizations=list(erased)
    )
    with capture_logs() as logs:
        batch_log.record(outcome, 0.1)
    [line] = [entry for entry in logs if entry["event"] == "erased_organization_events_skipped"]
    assert line["organizations"] == 3 and line["sample"] == erased
