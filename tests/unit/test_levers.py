"""The decode candidate of `bench --levers` judges records exactly as the service does."""

from __future__ import annotations

from datetime import UTC, datetime

from healthscore.service.ingest.decode import Decoded, RawRecord
from healthscore_lab.bench.levers import SUPPORT, USAGE, decoders, disagreements, workload_records
from healthscore_lab.poison import poison_corpus

ORG = "0b7f4a4e-3d0c-4a53-9c6e-2f1d5f0c9a11"


def test_candidate_rejects_every_poison_case_with_the_service_reason() -> None:
    now = datetime.now(UTC)
    records = [
        RawRecord(
            USAGE if case.kind == "usage" else SUPPORT,
            0,
            i,
            case.key,
            case.value,
            int(now.timestamp() * 1000),
        )
        for i, case in enumerate(poison_corpus(ORG, now))
    ]
    assert len(records) > 25
    assert disagreements(records) == []


def test_candidate_accepts_the_workload_with_identical_events() -> None:
    records = workload_records(3_000)
    assert disagreements(records) == []
    # the comparison is not vacuous: most records are valid events
    current, _ = decoders()
    assert sum(isinstance(current.decode(r), Decoded) for r in records) >= 2_900
