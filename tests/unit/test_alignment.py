"""Event-time alignment: a topic far ahead waits for the one behind; nothing stalls."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from healthscore.core.alignment import AlignmentView, align
from healthscore.core.enums import UsageType
from healthscore.core.events import ProfileEvent, UsageEvent
from healthscore.service.ingest.decode import Decoded, RawRecord, Rejection

T0 = datetime(2026, 5, 1, tzinfo=UTC)
ORG = uuid.UUID(int=7)


def item(topic: str, partition: int, offset: int, hours: float) -> Decoded:
    event = UsageEvent(
        event_id=uuid.uuid4(),
        organization_id=ORG,
        type=UsageType.LOGIN,
        occurred_at=T0 + timedelta(hours=hours),
    )
    return Decoded.of(RawRecord(topic, partition, offset, None, b"{}"), event)


def bad(topic: str, partition: int, offset: int) -> Rejection:
    return Rejection(RawRecord(topic, partition, offset, None, b"x"), "invalid_json", "x")


def test_without_a_view_everything_is_applied_in_event_time_merge() -> None:
    items = [item("u", 0, 0, 1), item("u", 0, 1, 5), item("s", 0, 0, 3)]
    result = align(items, None)
    assert result.held_from == {}
    assert [i.record.offset for i in result.applied] == [0, 0, 1]
    assert [i.record.topic for i in result.applied] == ["u", "s", "u"]


def test_a_topic_ahead_is_cut_at_the_frontier_of_the_one_behind() -> None:
    usage = [item("u", 0, n, hours=n) for n in range(10)]  # hours 0..9, behind
    support = [item("s", 0, n, hours=24 * n) for n in range(5)]  # days 0..4, ahead
    view = AlignmentView(high_watermarks={("u", 0): 1000, ("s", 0): 1000})
    result = align(usage + support, view)
    assert result.stream_time == (T0 + timedelta(hours=9)).timestamp()
    assert result.held_from == {("s", 0): 1}  # day 1 onwards waits for usage
    assert len(result.applied) == 11
    assert result.frontiers[("s", 0)] == (T0 + timedelta(days=4)).timestamp()


def test_a_caught_up_partition_holds_no_one_back() -> None:
    usage = [item("u", 0, n, hours=n) for n in range(3)]
    support = [item("s", 0, n, hours=24 * n) for n in range(5)]
    # usage is at its high watermark: nothing more to wait for
    view = AlignmentView(high_watermarks={("u", 0): 3, ("s", 0): 1000})
    result = align(usage + support, view)
    assert result.held_from == {}
    assert len(result.applied) == 8


def test_a_lagging_partition_outside_the_batch_still_limits_it() -> None:
    support = [item("s", 0, n, hours=24 * n) for n in range(5)]
    view = AlignmentView(
        frontiers={("u", 0): (T0 + timedelta(hours=30)).timestamp()},
        high_watermarks={("u", 0): 500, ("s", 0): 1000},
        positions={("u", 0): 100},
    )
    result = align(support, view)
    assert result.held_from == {("s", 0): 2}  # days 0 and 1 (<= 30 h) only


def test_rejections_never_block_and_keep_their_partition_order() -> None:
    items: list[Decoded | Rejection] = [
        bad("u", 0, 0),
        item("u", 0, 1, 2),
        bad("u", 0, 2),
        item("s", 0, 0, 50),
    ]
    view = AlignmentView(high_watermarks={("u", 0): 100, ("s", 0): 100})
    result = align(items, view)
    assert result.held_from == {("s", 0): 0}
    assert [i.record.offset for i in result.applied if i.record.topic == "u"] == [0, 1, 2]


def test_the_partition_that_defines_the_cut_always_progresses() -> None:
    # whatever the mix, at least one record of the batch is applied
    usage = [item("u", 0, n, hours=100 + n) for n in range(4)]
    support = [item("s", 1, n, hours=n) for n in range(4)]
    view = AlignmentView(high_watermarks={("u", 0): 99, ("s", 1): 99})
    result = align(usage + support, view)
    assert result.held_from == {("u", 0): 0}
    assert [i.record.topic for i in result.applied] == ["s"] * 4


def test_an_assigned_partition_not_fetched_yet_holds_everything_back() -> None:
    usage = [item("u", 0, n, hours=n) for n in range(3)]
    view = AlignmentView(
        high_watermarks={("u", 0): 100},  # ("s", 0) has no high watermark: never fetched
        assigned=frozenset({("u", 0), ("s", 0)}),
    )
    result = align(usage, view)
    assert result.applied == []
    assert result.held_from == {("u", 0): 0}


def test_a_behind_partition_with_no_records_delivered_yet_holds_everything_back() -> None:
    usage = [item("u", 0, n, hours=n) for n in range(3)]
    view = AlignmentView(
        high_watermarks={("u", 0): 100, ("s", 0): 40},
        positions={("s", 0): 0},
        assigned=frozenset({("u", 0), ("s", 0)}),
    )
    assert align(usage, view).applied == []
    caught_up = AlignmentView(
        high_watermarks={("u", 0): 100, ("s", 0): 40},
        positions={("s", 0): 40},
        assigned=frozenset({("u", 0), ("s", 0)}),
    )
    assert len(align(usage, caught_up).applied) == 3


def test_live_partitions_are_neither_held_nor_holding() -> None:
    # both partitions a few records behind their high watermarks: live traffic
    usage = [item("u", 0, n, hours=n) for n in range(3)]
    support = [item("s", 0, n, hours=24 * n) for n in range(5)]
    view = AlignmentView(high_watermarks={("u", 0): 10, ("s", 0): 12}, live_lag_records=100)
    result = align(usage + support, view)
    assert result.held_from == {}
    assert len(result.applied) == 8
    # the same records while catching up (far behind): support waits for usage
    catching_up = AlignmentView(
        high_watermarks={("u", 0): 10_000, ("s", 0): 10_000}, live_lag_records=100
    )
    assert align(usage + support, catching_up).held_from == {("s", 0): 1}


def test_a_live_partition_outside_the_batch_does_not_limit_it() -> None:
    support = [item("s", 0, n, hours=24 * n) for n in range(5)]
    view = AlignmentView(
        frontiers={("u", 0): (T0 + timedelta(hours=1)).timestamp()},
        high_watermarks={("u", 0): 50, ("s", 0): 5},
        positions={("u", 0): 45},
        assigned=frozenset({("u", 0), ("s", 0)}),
        live_lag_records=100,
    )
    assert align(support, view).held_from == {}
    far_behind = AlignmentView(
        frontiers=view.frontiers,
        high_watermarks={("u", 0): 5_000, ("s", 0): 5_000},
        positions={("u", 0): 45},
        assigned=view.assigned,
        live_lag_records=100,
    )
    assert align(support, far_behind).held_from == {("s", 0): 1}


def test_a_caught_up_profile_partition_waits_for_activity_being_caught_up_on() -> None:
    """Profiles are never live: a profile at the time it was sent, applied while the
    usage partition is still hours behind, would rescore its organization's silence
    through hours the backlog holds events of (a replay applies it after them)."""
    usage = [item("u", 0, n, hours=n) for n in range(3)]  # far behind: catching up
    profile = Decoded.of(
        RawRecord("p", 0, 0, None, b"{}"),
        ProfileEvent(
            event_id=uuid.uuid4(), organization_id=ORG, occurred_at=T0 + timedelta(hours=9)
        ),
    )
    high = {("u", 0): 10_000, ("p", 0): 1}  # the profile partition is caught up
    live = AlignmentView(high_watermarks=high, live_lag_records=100)
    assert align([*usage, profile], live).held_from == {}  # a live partition
    aligned = AlignmentView(
        high_watermarks=high, live_lag_records=100, always_aligned=frozenset({"p"})
    )
    result = align([*usage, profile], aligned)
    assert result.held_from == {("p", 0): 0} and len(result.applied) == 3
    # once the usage partition is live too, nothing waits
    caught_up = AlignmentView(
        high_watermarks={("u", 0): 10, ("p", 0): 1},
        live_lag_records=100,
        always_aligned=frozenset({"p"}),
    )
    assert align([*usage, profile], caught_up).held_from == {}


def _consume(log: dict[tuple[str, int], list[float]], fetch: int) -> list[tuple[str, int, int]]:
    """The order a consumer applies `log` (event hours per partition, in offset order)
    in, fetching at most `fetch` records of each partition at a time: what the
    alignment holds back waits, its partition paused, and goes first in the next batch."""
    high = {key: len(hours) for key, hours in log.items()}
    fetched = dict.fromkeys(log, 0)
    positions = dict.fromkeys(log, 0)
    frontiers: dict[tuple[str, int], float] = {}
    held: dict[tuple[str, int], list[Decoded | Rejection]] = {}
    order: list[tuple[str, int, int]] = []
    for _batch in range(10_000):
        items = [i for records in held.values() for i in records]
        for (topic, partition), hours in log.items():
            if (topic, partition) in held:
                continue
            start = fetched[(topic, partition)]
            items += [
                item(topic, partition, offset, hours[offset])
                for offset in range(start, min(start + fetch, len(hours)))
            ]
            fetched[(topic, partition)] = min(start + fetch, len(hours))
        if not items:
            return order
        view = AlignmentView(
            frontiers=dict(frontiers),
            high_watermarks=high,
            positions=dict(positions),
            assigned=frozenset(log),
        )
        result = align(items, view)
        assert result.applied, "every batch makes progress"
        order += [(i.record.topic, i.record.partition, i.record.offset) for i in result.applied]
        for key, frontier in result.frontiers.items():
            frontiers[key] = max(frontiers.get(key, frontier), frontier)
        for i in result.applied:
            positions[(i.record.topic, i.record.partition)] = i.record.offset + 1
        held = {}
        for i in items:
            key = (i.record.topic, i.record.partition)
            if key in result.held_from and i.record.offset >= result.held_from[key]:
                held.setdefault(key, []).append(i)
        for key, records in held.items():
            positions[key] = records[0].record.offset
    raise AssertionError("the log was not consumed")


def test_equal_event_times_are_applied_in_the_same_order_whatever_the_fetch_size() -> None:
    """Events of several topics at the same instant (producers that send whole seconds)
    are applied in (event time, partition) order, as a replay with any batch size
    applies them: a record at exactly the stream time from a partition that sorts after
    the one defining it used to be applied before that one's next records at the same
    time (fetched later), so the order depended on where the fetches ended."""
    log: dict[tuple[str, int], list[float]] = {
        ("s", 0): [1, 1, 1, 1, 2, 2, 2, 2, 2, 3],
        ("u", 0): [1, 1, 2, 2, 3, 3, 3],
        ("u", 1): [0, 1, 2, 2, 2, 2, 3, 4],
    }
    in_time_order = sorted(
        (hours, key, offset) for key, times in log.items() for offset, hours in enumerate(times)
    )
    expected = [(key[0], key[1], offset) for _hours, key, offset in in_time_order]
    for fetch in range(1, 11):
        assert _consume(log, fetch) == expected, f"fetching {fetch} at a time"
