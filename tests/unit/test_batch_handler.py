"""The batch handler with a scripted pipeline and an in-memory consumer: a committed
batch is committed to Kafka too, a failed one is fetched again (after a pause),
a gap is sought back at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from healthscore.core.alignment import AlignmentView
from healthscore.core.partitions import PartitionKey
from healthscore.errors import OffsetGap
from healthscore.service.consumers import BatchHandler
from healthscore.service.holdback import HoldBack, Item
from healthscore.service.ingest.decode import RawRecord, Rejection
from healthscore.service.ingest.pipeline import BatchOutcome
from healthscore.service.kafka_offsets import KafkaOffsets
from tests.utils.fake_consumer import FakeConsumer

U0: PartitionKey = ("usage", 0)


class ScriptedPipeline:
    """Answers each batch with the next scripted outcome or error."""

    def __init__(self, *script: BatchOutcome | Exception) -> None:
        self.script = list(script)
        self.batches: list[tuple[list[int], dict[PartitionKey, int]]] = []

    def decode(self, records: Sequence[RawRecord]) -> list[Item]:
        return [Rejection(r, "invalid_json", "-") for r in records]

    async def process_items(
        self,
        items: Sequence[Item],
        view: AlignmentView | None = None,
        positioned: Mapping[PartitionKey, int] | None = None,
    ) -> BatchOutcome:
        self.batches.append(([i.record.offset for i in items], dict(positioned or {})))
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def record(offset: int) -> Any:
    return SimpleNamespace(
        topic=U0[0], partition=U0[1], offset=offset, key=None, value=b"{}", timestamp=0, headers=()
    )


def handler_for(
    pipeline: ScriptedPipeline, consumer: FakeConsumer
) -> tuple[BatchHandler, KafkaOffsets, list[BatchOutcome], list[str]]:
    holdback = HoldBack(pipeline.decode)
    offsets = KafkaOffsets(None, "g", holdback)  # type: ignore[arg-type]  # no assignment here
    offsets.consumer_built(consumer)
    outcomes: list[BatchOutcome] = []
    seen: list[str] = []
    handler = BatchHandler(
        pipeline,  # type: ignore[arg-type]
        offsets,
        holdback,
        on_outcome=lambda outcome, duration: outcomes.append(outcome),
        retry_backoff=(0.001, 0.004),
        on_failure=lambda exc: seen.append(type(exc).__name__),
        on_gap=lambda gap: seen.append("gap"),
    )
    return handler, offsets, outcomes, seen


async def test_a_committed_batch_is_committed_to_kafka_and_reported() -> None:
    done = BatchOutcome(records=2, next_offsets={U0: 12})
    pipeline = ScriptedPipeline(done)
    consumer = FakeConsumer(assigned=[U0])
    handler, offsets, outcomes, seen = handler_for(pipeline, consumer)
    offsets.sought[U0] = 10  # positioned there on assignment
    await handler([record(10), record(11)])
    assert pipeline.batches == [([10, 11], {U0: 10})]
    assert consumer.commits == [{U0: 12}]
    assert outcomes == [done] and seen == []
    assert offsets.sought == {}


async def test_a_failed_batch_is_sought_back_and_retried_after_a_pause() -> None:
    pipeline = ScriptedPipeline(ConnectionError("postgres restarting"))
    consumer = FakeConsumer(assigned=[U0])
    handler, _, outcomes, seen = handler_for(pipeline, consumer)
    await handler([record(10), record(11)])
    assert consumer.seeks == [(U0, 10)]
    assert consumer.commits == [] and outcomes == []
    assert handler.failures == 1 and seen == ["ConnectionError"]


async def test_a_gap_is_sought_back_to_the_stored_offset_without_counting_a_failure() -> None:
    pipeline = ScriptedPipeline(OffsetGap(U0[0], U0[1], stored=8, first=10))
    consumer = FakeConsumer(assigned=[U0])
    handler, offsets, _, seen = handler_for(pipeline, consumer)
    await handler([record(10), record(11)])
    assert consumer.seeks == [(U0, 8)]
    assert offsets.sought == {U0: 8}
    assert handler.failures == 0 and seen == ["gap"]
