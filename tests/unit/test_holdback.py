"""The hold-back buffer against an in-memory consumer: what the alignment did not
apply waits (its partition paused), goes first in the next batch, and leaves
with a revoke or a failed batch."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from aiokafka import TopicPartition
from pydantic import SecretStr

from healthscore.config import Settings
from healthscore.core.alignment import align
from healthscore.core.enums import UsageType
from healthscore.core.events import UsageEvent
from healthscore.core.partitions import PartitionKey
from healthscore.service.app import ServiceOptions, build
from healthscore.service.holdback import HoldBack, Item
from healthscore.service.ingest.decode import Decoded, RawRecord
from healthscore.service.ingest.pipeline import BatchOutcome
from tests.utils.fake_consumer import FakeConsumer
from tests.utils.fakes import FakeClock

T0 = datetime(2026, 5, 1, tzinfo=UTC)
U0: PartitionKey = ("usage", 0)
S0: PartitionKey = ("support", 0)


class CountingDecode:
    """Decodes a record's value (hours after T0) into a usage event; counts records."""

    def __init__(self) -> None:
        self.decoded: list[tuple[PartitionKey, int]] = []

    def __call__(self, records: Sequence[RawRecord]) -> list[Item]:
        items: list[Item] = []
        for record in records:
            self.decoded.append(((record.topic, record.partition), record.offset))
            assert record.value is not None
            event = UsageEvent(
                event_id=uuid.uuid4(),
                organization_id=uuid.UUID(int=1),
                type=UsageType.LOGIN,
                occurred_at=T0 + timedelta(hours=float(record.value)),
            )
            items.append(Decoded.of(record, event))
        return items


def raw(key: PartitionKey, offset: int, hours: float = 0.0) -> RawRecord:
    return RawRecord(key[0], key[1], offset, None, str(hours).encode())


def offsets(items: list[Item]) -> list[tuple[PartitionKey, int]]:
    return [((i.record.topic, i.record.partition), i.record.offset) for i in items]


def outcome_holding(
    items: list[Item], held_from: dict[PartitionKey, int], frontiers: dict[PartitionKey, float]
) -> BatchOutcome:
    """What the pipeline reports for `items` with `held_from` held back."""
    applied = [
        i
        for i in items
        if i.record.offset < held_from.get((i.record.topic, i.record.partition), 1 << 62)
    ]
    next_offsets: dict[PartitionKey, int] = {}
    for item in applied:
        key = (item.record.topic, item.record.partition)
        next_offsets[key] = max(next_offsets.get(key, 0), item.record.offset + 1)
    return BatchOutcome(
        records=len(applied), held_from=held_from, frontiers=frontiers, next_offsets=next_offsets
    )


def test_without_held_records_a_batch_is_what_was_fetched() -> None:
    decode = CountingDecode()
    buffer = HoldBack(decode)
    consumer = FakeConsumer(assigned=[U0, S0])
    items = buffer.merge(consumer, [raw(U0, 0), raw(S0, 0)])
    assert offsets(items) == [(U0, 0), (S0, 0)]
    assert not buffer.holding


def test_held_records_are_paused_then_go_first_and_are_not_decoded_again() -> None:
    decode = CountingDecode()
    buffer = HoldBack(decode)
    consumer = FakeConsumer(assigned=[U0, S0])
    items = buffer.merge(consumer, [raw(U0, 0, 1), raw(S0, 0, 1), raw(S0, 1, 48), raw(S0, 2, 72)])
    buffer.keep(consumer, outcome_holding(items, {S0: 1}, {U0: 1.0, S0: 72.0}), items)
    assert buffer.held() == {S0: [1, 2]}
    assert consumer.paused_keys == {S0}

    # the paused partition is fetched again from its position: repeats are skipped
    decode.decoded.clear()
    again = buffer.merge(consumer, [raw(U0, 1, 50), raw(S0, 2, 72), raw(S0, 3, 80)])
    assert offsets(again) == [(S0, 1), (S0, 2), (U0, 1), (S0, 3)]
    assert decode.decoded == [(U0, 1), (S0, 3)]

    # a batch that holds nothing resumes the partition
    buffer.keep(consumer, outcome_holding(again, {}, {U0: 50.0, S0: 80.0}), again)
    assert not buffer.holding
    assert consumer.paused_keys == set()


def test_the_view_carries_frontiers_positions_and_high_watermarks_of_assigned_partitions() -> None:
    buffer = HoldBack(CountingDecode(), live_lag_records=10, always_aligned=frozenset({"p"}))
    consumer = FakeConsumer(assigned=[U0, S0], highwater={U0: 40})
    buffer.positioned(U0, 5)
    buffer.positioned(S0, 7)
    items = buffer.merge(consumer, [raw(U0, 5, 2), raw(S0, 7, 1), raw(S0, 8, 30)])
    buffer.keep(consumer, outcome_holding(items, {S0: 8}, {U0: 2.0, S0: 30.0}), items)
    view = buffer.view(consumer)
    assert view is not None
    assert view.assigned == frozenset({U0, S0})
    assert view.high_watermarks == {U0: 40}
    # applied up to the next offset; a held partition's position is its first held record
    assert view.positions == {U0: 6, S0: 8}
    assert view.frontiers == {U0: 2.0, S0: 30.0}
    assert view.live_lag_records == 10
    assert view.always_aligned == frozenset({"p"})


def test_a_revoked_partition_takes_its_held_records_and_state_with_it() -> None:
    buffer = HoldBack(CountingDecode())
    consumer = FakeConsumer(assigned=[U0, S0])
    buffer.positioned(S0, 3)
    items = buffer.merge(consumer, [raw(U0, 0, 1), raw(S0, 3, 1), raw(S0, 4, 50)])
    buffer.keep(consumer, outcome_holding(items, {S0: 4}, {S0: 50.0}), items)
    buffer.forget({S0})
    assert not buffer.holding
    assert S0 not in buffer.start_positions
    view = buffer.view(consumer)
    assert view is not None and S0 not in view.positions and S0 not in view.frontiers


def test_held_records_of_a_partition_no_longer_assigned_are_dropped() -> None:
    buffer = HoldBack(CountingDecode())
    consumer = FakeConsumer(assigned=[U0, S0])
    items = buffer.merge(consumer, [raw(U0, 0, 1), raw(S0, 0, 1), raw(S0, 1, 50)])
    buffer.keep(consumer, outcome_holding(items, {S0: 1}, {S0: 50.0}), items)
    consumer.assign([U0])
    assert offsets(buffer.merge(consumer, [raw(U0, 1, 2)])) == [(U0, 1)]
    assert not buffer.holding


def test_a_failed_batch_releases_everything_held() -> None:
    buffer = HoldBack(CountingDecode())
    consumer = FakeConsumer(assigned=[U0, S0])
    items = buffer.merge(consumer, [raw(U0, 0, 1), raw(S0, 0, 1), raw(S0, 1, 50)])
    buffer.keep(consumer, outcome_holding(items, {S0: 1}, {S0: 50.0}), items)
    assert consumer.paused_keys == {S0}
    buffer.release(consumer)
    assert not buffer.holding
    assert consumer.paused_keys == set()


def test_held_records_are_due_once_no_batch_came_for_the_idle_time() -> None:
    clock = FakeClock(100.0)
    buffer = HoldBack(CountingDecode(), clock=clock)
    consumer = FakeConsumer(assigned=[U0, S0])
    items = buffer.merge(consumer, [raw(U0, 0, 1), raw(S0, 0, 1), raw(S0, 1, 50)])
    buffer.keep(consumer, outcome_holding(items, {S0: 1}, {S0: 50.0}), items)
    assert not buffer.due(0.05)
    clock.now += 0.06
    assert buffer.due(0.05)
    buffer.merge(consumer, [])  # a batch ran
    assert not buffer.due(0.05)


def test_a_batch_that_only_holds_for_too_long_is_applied_unaligned() -> None:
    clock = FakeClock(100.0)
    buffer = HoldBack(CountingDecode(), max_alignment_wait=2.0, clock=clock)
    consumer = FakeConsumer(assigned=[U0, S0])
    items = buffer.merge(consumer, [raw(S0, 0, 50)])
    # nothing applied, everything held: the alignment waits for usage
    buffer.keep(consumer, outcome_holding(items, {S0: 0}, {S0: 50.0}), items)
    assert buffer.view(consumer) is not None
    clock.now += 2.5
    assert buffer.view(consumer) is None
    # a batch that applies something ends the wait
    items = buffer.merge(consumer, [raw(U0, 0, 1)])
    buffer.keep(consumer, outcome_holding(items, {}, {U0: 1.0}), items)
    assert buffer.view(consumer) is not None


def applied(buffer: HoldBack, consumer: FakeConsumer, records: list[RawRecord]) -> None:
    """One batch of `records`, applied whole."""
    items = buffer.merge(consumer, records)
    assert buffer.view(consumer) is not None
    buffer.keep(consumer, outcome_holding(items, {}, {}), items)


def behind_on_usage(
    clock: FakeClock, usage_high: int, support_high: int
) -> tuple[HoldBack, FakeConsumer]:
    buffer = HoldBack(CountingDecode(), live_lag_records=100, clock=clock)
    consumer = FakeConsumer(assigned=[U0, S0], highwater={U0: usage_high, S0: support_high})
    buffer.positioned(U0, 0)
    buffer.positioned(S0, 0)
    return buffer, consumer


def test_catching_up_while_behind_the_high_watermark_then_live() -> None:
    clock = FakeClock()
    buffer, consumer = behind_on_usage(clock, 5_000, 50)
    applied(buffer, consumer, [raw(U0, 0), raw(S0, 0)])
    assert buffer.catching_up()  # usage is 4,999 records behind
    # a batch that brings usage within the live lag
    applied(buffer, consumer, [raw(U0, 4_950)])
    assert not buffer.catching_up()
    # behind again, but no batch for a while: nothing to coalesce for
    consumer.highwaters[TopicPartition(*U0)] = 9_000
    applied(buffer, consumer, [raw(U0, 4_951)])
    assert buffer.catching_up()
    clock.now += 4.9
    assert buffer.catching_up()
    clock.now += 0.1
    assert not buffer.catching_up()


def test_catch_up_lag_is_the_time_to_apply_the_backlog_at_the_recent_pace() -> None:
    clock = FakeClock()
    buffer, consumer = behind_on_usage(clock, 5_002, 40)
    assert buffer.catch_up_lag() == 0.0  # no pace measured yet
    clock.now += 2.0
    applied(buffer, consumer, [raw(U0, 0), raw(U0, 1)])
    # 2 records in 2 s; 5,000 behind on usage (support is within the live lag)
    assert buffer.catch_up_lag() == 5_000.0
    clock.now += 1.0
    applied(buffer, consumer, [raw(U0, offset) for offset in range(2, 1_002)])
    # the pace averages 1 and 1,000 records a second; 4,000 behind
    assert buffer.catch_up_lag() == 4_000 / 500.5
    # live: nothing to wait for
    clock.now += 1.0
    applied(buffer, consumer, [raw(U0, offset) for offset in range(1_002, 4_950)])
    assert buffer.catch_up_lag() == 0.0


async def test_the_composition_root_keeps_the_profile_topic_aligned() -> None:
    """The service's buffer never applies profile partitions as live traffic."""
    settings = Settings.model_construct(
        **{
            **Settings().model_dump(),
            "database_url": SecretStr("postgresql://u@db.invalid/d"),
            "kafka_bootstrap_servers": "kafka.invalid:9092",
            "profile_topic": "crm.profiles",
        }
    )
    service = build(settings, ServiceOptions(), ops_port=0)  # built, nothing opened
    try:
        assert service.holdback.always_aligned == {"crm.profiles"}
    finally:
        await service.producer.stop()


P0: PartitionKey = ("profile", 0)


def aligned_batch(
    buffer: HoldBack, consumer: FakeConsumer, records: list[RawRecord]
) -> list[tuple[PartitionKey, int]]:
    """One batch as the handler runs it, aligned by the real alignment; what it applied."""
    items = buffer.merge(consumer, records)
    result = align(items, buffer.view(consumer))
    outcome = outcome_holding(items, result.held_from, result.frontiers)
    outcome.live = result.live
    buffer.keep(consumer, outcome, items)
    return offsets(result.applied)


def live_usage_and_profiles(clock: FakeClock) -> tuple[HoldBack, FakeConsumer]:
    """Usage is live (at its high watermark), profiles are never live; support is assigned."""
    buffer = HoldBack(
        CountingDecode(), live_lag_records=100, clock=clock, always_aligned=frozenset({"profile"})
    )
    consumer = FakeConsumer(assigned=[U0, S0, P0], highwater={U0: 30, P0: 1})
    buffer.positioned(U0, 0)
    buffer.positioned(P0, 0)
    return buffer, consumer


def test_a_partition_the_consumer_does_not_read_holds_no_one_back() -> None:
    """A partition refused on assignment (stored offset outside the log) is paused and
    never fetched, so it never has a high watermark: taken for "not fetched yet", it
    held every profile and every catching-up partition back for good."""
    buffer, consumer = live_usage_and_profiles(FakeClock())
    consumer.pause(TopicPartition(*S0))  # refused: not positioned, never fetched
    assert aligned_batch(buffer, consumer, [raw(U0, 0, 1), raw(P0, 0, 2)]) == [(U0, 0), (P0, 0)]
    assert not buffer.holding


def test_a_transaction_left_open_is_no_backlog_to_wait_for() -> None:
    """Reading committed records, a partition delivers up to its last stable offset: a
    transaction left open holds back its records and every one after them until it
    ends. Measured against the high watermark, the partition looked thousands of
    records behind: each profile waited for it (`max_alignment_wait`, again after every
    unaligned batch) and the consumer counted as catching up (the live projection off)
    for as long as the transaction stayed open."""
    buffer, consumer = live_usage_and_profiles(FakeClock())
    consumer.highwaters[TopicPartition(*S0)] = 5_000
    consumer.stable[TopicPartition(*S0)] = 40  # a transaction open from offset 40
    consumer.stable[TopicPartition(*U0)] = 30
    buffer.positioned(S0, 40)
    assert aligned_batch(buffer, consumer, [raw(U0, 0, 1), raw(P0, 0, 2)]) == [(U0, 0), (P0, 0)]
    assert not buffer.holding
    assert not buffer.catching_up()


def test_a_partition_that_does_not_deliver_stalls_others_at_most_the_wait_beside_live_traffic() -> (
    None
):
    """Support is far behind and its fetches bring nothing (a broker problem): the
    profile waits for it at most `max_alignment_wait`, even while live usage records
    keep every batch applying something (before, only a batch that applied nothing
    started the wait, so the profile was held as long as usage traffic flowed)."""
    clock = FakeClock()
    buffer, consumer = live_usage_and_profiles(clock)
    consumer.highwaters[TopicPartition(*S0)] = 5_000
    buffer.positioned(S0, 0)
    applied = aligned_batch(buffer, consumer, [raw(U0, 0, 1), raw(P0, 0, 2)])
    assert applied == [(U0, 0)] and buffer.held() == {P0: [0]}
    for offset in range(1, 26):  # a live usage record every 0.1 s, for 2.5 s
        clock.now += 0.1
        applied += aligned_batch(buffer, consumer, [raw(U0, offset, 1 + offset / 100)])
    assert (P0, 0) in applied
