"""The batch handler with a scripted pipeline and an in-memory consumer: a committed
batch is committed to Kafka too, a failed one is fetched again (after a pause),
a gap is sought back at once."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

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
    pipeline: ScriptedPipeline, consumer: FakeConsumer, min_interval: tuple[float, int] = (0.0, 0)
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
        min_interval=min_interval,
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


async def test_a_failed_batch_is_sought_back_and_retried_after_a_pause(
    sleeps: list[float],
) -> None:
    down = ConnectionError("postgres restarting")
    done = BatchOutcome(records=2, next_offsets={U0: 12})
    pipeline = ScriptedPipeline(down, down, down, down, done, down)
    consumer = FakeConsumer(assigned=[U0])
    handler, _, outcomes, seen = handler_for(pipeline, consumer)
    await handler([record(10), record(11)])
    assert consumer.seeks == [(U0, 10)]
    assert consumer.commits == [] and outcomes == []
    assert handler.failures == 1 and seen == ["ConnectionError"]
    # the pause before the batch is fetched again: the shortest first
    assert sleeps == [0.001]
    # each failure in a row doubles it, up to the longest (0.004)
    for _ in range(3):
        await handler([record(10), record(11)])
    assert sleeps == [0.001, 0.002, 0.004, 0.004]
    assert handler.failures == 4 and consumer.commits == []
    # a batch that commits goes on at once, and the next failure starts short again
    await handler([record(10), record(11)])
    assert consumer.commits == [{U0: 12}] and outcomes == [done]
    assert sleeps == [0.001, 0.002, 0.004, 0.004]
    await handler([record(12)])
    assert sleeps == [0.001, 0.002, 0.004, 0.004, 0.001]
    assert handler.failures == 5


async def test_a_gap_is_sought_back_to_the_stored_offset_without_counting_a_failure(
    sleeps: list[float],
) -> None:
    pipeline = ScriptedPipeline(OffsetGap(U0[0], U0[1], stored=8, first=10))
    consumer = FakeConsumer(assigned=[U0])
    handler, offsets, _, seen = handler_for(pipeline, consumer)
    await handler([record(10), record(11)])
    assert consumer.seeks == [(U0, 8)]
    assert offsets.sought == {U0: 8}
    assert handler.failures == 0 and seen == ["gap"]
    assert sleeps == []  # fetched again at once, no pause


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses the handler asks for (none taken)."""
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr("healthscore.service.consumers.asyncio.sleep", sleep)
    return asked


async def test_after_a_batch_that_was_not_full_the_handler_waits_out_the_interval(
    sleeps: list[float],
) -> None:
    pipeline = ScriptedPipeline(BatchOutcome(records=2, next_offsets={U0: 12}))
    handler, _, outcomes, _ = handler_for(pipeline, FakeConsumer(assigned=[U0]), (0.05, 3))
    await handler([record(10), record(11)])
    assert len(outcomes) == 1
    # the rest of the 50 ms since the batch began, not 50 ms more
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 0.05


async def test_a_full_batch_or_no_interval_goes_on_at_once(sleeps: list[float]) -> None:
    full = ScriptedPipeline(BatchOutcome(records=3, next_offsets={U0: 13}))
    handler, _, _, _ = handler_for(full, FakeConsumer(assigned=[U0]), (0.05, 3))
    await handler([record(10), record(11), record(12)])
    off = ScriptedPipeline(BatchOutcome(records=1, next_offsets={U0: 11}))
    handler, _, _, _ = handler_for(off, FakeConsumer(assigned=[U0]))
    await handler([record(10)])
    assert sleeps == []


async def test_a_batch_that_took_longer_than_the_interval_goes_on_at_once(
    sleeps: list[float],
) -> None:
    class Slow(ScriptedPipeline):
        async def process_items(self, *args: Any, **kwargs: Any) -> BatchOutcome:
            await asyncio.get_running_loop().run_in_executor(None, lambda: None)
            return await super().process_items(*args, **kwargs)

    pipeline = Slow(BatchOutcome(records=1, next_offsets={U0: 11}))
    handler, _, _, _ = handler_for(pipeline, FakeConsumer(assigned=[U0]), (1e-9, 3))
    await handler([record(10)])
    assert sleeps == []
