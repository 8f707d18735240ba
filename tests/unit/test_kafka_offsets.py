"""The offset protocol against an in-memory consumer and stored offsets: seek where
the database says on assignment, refuse what lies outside the log, seek back, commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from healthscore.core.partitions import PartitionKey
from healthscore.service import kafka_offsets
from healthscore.service.holdback import HoldBack, Item
from healthscore.service.ingest.decode import RawRecord, Rejection
from healthscore.service.ingest.pipeline import BatchOutcome
from healthscore.service.kafka_offsets import ConsumerNotStarted, KafkaOffsets
from tests.utils.fake_consumer import FakeConsumer

U0: PartitionKey = ("usage", 0)
U1: PartitionKey = ("usage", 1)
S0: PartitionKey = ("support", 0)


class StoredOffsets:
    """A pool whose one query is the stored offsets (`store.offsets.stored_offsets`)."""

    def __init__(self, stored: dict[PartitionKey, int]) -> None:
        self.stored = stored

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        yield self

    async def fetch(self, query: str, group: str) -> list[dict[str, Any]]:
        return [{"topic": t, "partition": p, "next_offset": o} for (t, p), o in self.stored.items()]


def tps(*keys: PartitionKey) -> set[TopicPartition]:
    return {TopicPartition(*key) for key in keys}


def protocol(
    stored: dict[PartitionKey, int], **kwargs: Any
) -> tuple[KafkaOffsets, HoldBack, list[tuple[str, int]]]:
    holdback = HoldBack(lambda records: [])
    changes: list[tuple[str, int]] = []
    offsets = KafkaOffsets(
        StoredOffsets(stored),  # type: ignore[arg-type]
        "g",
        holdback,
        on_change=lambda change, n: changes.append((change, n)),
        **kwargs,
    )
    return offsets, holdback, changes


async def test_assignment_seeks_to_the_stored_offsets_and_new_partitions_to_the_log_start() -> None:
    offsets, holdback, changes = protocol({U0: 7})
    consumer = FakeConsumer(log_starts={U1: 3}, log_ends={U0: 10, U1: 5})
    offsets.consumer_built(consumer)
    await offsets.on_partitions_assigned(tps(U0, U1))
    assert consumer.positions == {U0: 7, U1: 3}
    assert offsets.assigned == {U0, U1}
    assert offsets.sought == {U0: 7, U1: 3}
    assert holdback.start_positions == {U0: 7, U1: 3}
    assert changes == [("assigned", 2)]


async def test_a_stored_offset_outside_the_log_is_refused_and_paused() -> None:
    refused: list[tuple[PartitionKey, str | None]] = []
    offsets, _, _ = protocol(
        {U0: 50, U1: 1}, on_refused=lambda key, why: refused.append((key, why))
    )
    consumer = FakeConsumer(log_starts={U1: 4}, log_ends={U0: 10, U1: 9})
    offsets.consumer_built(consumer)
    await offsets.on_partitions_assigned(tps(U0, U1))
    assert consumer.positions == {}
    assert consumer.paused_keys == {U0, U1}
    assert "above the high watermark 10" in offsets.refused[U0]
    assert "below the log start 4" in offsets.refused[U1]
    assert sorted(key for key, _ in refused) == [U0, U1]

    # revoked: no longer refused by this process
    await offsets.on_partitions_revoked(tps(U0, U1))
    assert offsets.refused == {} and offsets.assigned == set()
    assert sorted(refused[2:]) == [(U0, None), (U1, None)]


async def test_a_low_end_offset_is_confirmed_from_a_fetch_before_refusing() -> None:
    async def true_ends(keys: list[PartitionKey]) -> dict[PartitionKey, int]:
        return dict.fromkeys(keys, 60)

    offsets, _, _ = protocol({U0: 50}, true_ends=true_ends)
    consumer = FakeConsumer(log_ends={U0: 49})  # a broker answering ListOffsets low
    offsets.consumer_built(consumer)
    await offsets.on_partitions_assigned(tps(U0))
    assert offsets.refused == {}
    assert consumer.positions == {U0: 50}


async def test_revoking_forgets_what_was_sought_and_held() -> None:
    offsets, holdback, changes = protocol({U0: 2, S0: 4})
    consumer = FakeConsumer(log_ends={U0: 10, S0: 10})
    offsets.consumer_built(consumer)
    await offsets.on_partitions_assigned(tps(U0, S0))
    await offsets.on_partitions_revoked(tps(S0))
    assert offsets.assigned == {U0}
    assert offsets.sought == {U0: 2}
    assert holdback.start_positions == {U0: 2}
    assert changes == [("assigned", 2), ("revoked", 1)]


async def test_rewind_seeks_back_only_assigned_partitions_and_an_applied_batch_clears_sought() -> (
    None
):
    offsets, _, _ = protocol({})
    consumer = FakeConsumer(assigned=[U0])
    offsets.consumer_built(consumer)
    offsets.rewind({U0: 12, U1: 3})
    assert consumer.seeks == [(U0, 12)]
    assert offsets.sought == {U0: 12}
    offsets.applied({U0: 20})
    assert offsets.sought == {}


async def test_commit_sends_assigned_partitions_and_a_failed_commit_is_only_logged() -> None:
    offsets, _, _ = protocol({})
    consumer = FakeConsumer(assigned=[U0])
    offsets.consumer_built(consumer)
    await offsets.commit({U0: 5, U1: 9})
    assert consumer.commits == [{U0: 5}]
    await offsets.commit({U1: 9})  # nothing assigned: no commit at all
    assert len(consumer.commits) == 1
    consumer.commit_error = KafkaConnectionError()
    await offsets.commit({U0: 6})  # the database holds the real progress


def test_the_consumer_is_there_only_once_the_broker_built_it() -> None:
    offsets, _, _ = protocol({})
    with pytest.raises(ConsumerNotStarted):
        _ = offsets.consumer


async def test_without_kafka_commits_the_offsets_stay_in_postgresql_only() -> None:
    offsets, _, _ = protocol({}, commit_to_kafka=False)
    consumer = FakeConsumer(assigned=[U0])
    offsets.consumer_built(consumer)
    await offsets.commit({U0: 5})
    assert consumer.commits == []


async def test_with_an_interval_the_latest_offsets_go_at_the_flush_or_before_a_revocation() -> None:
    offsets, _, _ = protocol({}, commit_interval=1.0)
    consumer = FakeConsumer(assigned=[U0, U1])
    offsets.consumer_built(consumer)
    await offsets.commit({U0: 5, U1: 3})
    await offsets.commit({U0: 6})
    assert consumer.commits == []  # no broker round trip in the batch's path
    await offsets.on_partitions_revoked(tps(U1))
    assert consumer.commits == [{U1: 3}]  # a revoked partition's, before it goes
    await offsets.flush()
    assert consumer.commits == [{U1: 3}, {U0: 6}]  # only the latest of each
    await offsets.flush()
    assert len(consumer.commits) == 2  # nothing new: nothing sent
    await offsets.commit({U0: 7, S0: 2})  # S0 is not assigned here
    await offsets.flush()
    assert consumer.commits[-1] == {U0: 7}


async def test_records_held_before_the_assignment_seeks_are_dropped_and_resumed() -> None:
    """aiokafka fetches newly assigned partitions (from Kafka's committed offset) while
    `on_partitions_assigned` still awaits PostgreSQL, so a batch can hold records of a
    partition before the listener seeks it to its stored offset. Kept, they went first
    in the next batch, from past the stored offset, and the gap guard accepts such a
    start once the consumer was sought to the stored offset: the records between were
    skipped, never applied. Dropped, the partition is fetched again from the seek."""
    offsets, holdback, _ = protocol({U0: 2, S0: 4, U1: 50})
    consumer = FakeConsumer(assigned=[U0, S0, U1], log_ends={U0: 10, S0: 10, U1: 10})
    offsets.consumer_built(consumer)
    early: list[Item] = [
        Rejection(RawRecord(key[0], key[1], offset, None, b"x"), "invalid_json", "-")
        for key in (S0, U1)
        for offset in (7, 8)
    ]
    holdback.keep(consumer, BatchOutcome(held_from={S0: 7, U1: 7}), early)
    assert holdback.held() == {S0: [7, 8], U1: [7, 8]}
    assert consumer.paused_keys == {S0, U1}
    await offsets.on_partitions_assigned(tps(U0, S0, U1))
    assert holdback.held() == {}
    assert consumer.positions == {U0: 2, S0: 4}
    # fetched again from the stored offset; the refused partition stays paused
    assert consumer.paused_keys == {U1}


class RestartingDatabase(StoredOffsets):
    """Stored offsets behind a server that refuses the first `refusals` connections
    (PostgreSQL restarting: the socket gone, then 'starting up')."""

    def __init__(self, stored: dict[PartitionKey, int], refusals: int) -> None:
        super().__init__(stored)
        self.refusals = refusals

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        if self.refusals:
            self.refusals -= 1
            raise FileNotFoundError(2, "No such file or directory")
        yield self


async def test_an_assignment_while_postgresql_restarts_waits_for_the_stored_offsets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka logs an exception of `on_partitions_assigned` and goes on with the
    assignment: the partitions were consumed from Kafka's committed offsets, left out of
    `assigned` (the replica unready, its Kafka commits dropped, a stored offset outside
    the log never refused) until the next rebalance. Seen in tests/faults/test_chaos.py
    with a rebalance while PostgreSQL restarted. The assignment retries instead."""
    monkeypatch.setattr(kafka_offsets, "ASSIGNMENT_RETRY_SECONDS", (0.001, 0.002), raising=False)
    database = RestartingDatabase({U0: 7}, refusals=2)
    offsets = KafkaOffsets(database, "g", HoldBack(lambda records: []))  # type: ignore[arg-type]
    consumer = FakeConsumer(log_starts={U1: 3}, log_ends={U0: 10, U1: 5})
    offsets.consumer_built(consumer)
    await offsets.on_partitions_assigned(tps(U0, U1))
    assert database.refusals == 0
    assert consumer.positions == {U0: 7, U1: 3}
    assert offsets.assigned == {U0, U1}
    assert offsets.sought == {U0: 7, U1: 3}


async def test_an_assignment_waiting_for_postgresql_gives_up_when_the_service_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The consumer's close waits for the assignment callback: a stop must end the
    wait, or SIGTERM would hang for as long as PostgreSQL stays away."""
    monkeypatch.setattr(kafka_offsets, "ASSIGNMENT_RETRY_SECONDS", (60.0, 60.0))
    stop = asyncio.Event()
    database = RestartingDatabase({U0: 7}, refusals=1_000)
    offsets = KafkaOffsets(database, "g", HoldBack(lambda records: []), stop=stop)  # type: ignore[arg-type]
    consumer = FakeConsumer(log_ends={U0: 10})
    offsets.consumer_built(consumer)
    assigning = asyncio.ensure_future(offsets.on_partitions_assigned(tps(U0)))
    await asyncio.sleep(0.05)
    assert not assigning.done()  # waiting out the 60 s pause
    stop.set()
    await asyncio.wait_for(assigning, 5.0)
    assert consumer.positions == {} and offsets.assigned == set()
