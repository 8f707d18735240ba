"""Event-time alignment of the partitions one consumer reads.

An organization's events arrive on two topics (usage and support). When the
consumer catches up on a backlog, one fetch can hold a day of usage records
and a month of support records: applied in fetch order, an organization
would be scored on its support history of day 30 before its usage of day 2,
and the alerts of a replay would depend on fetch sizes (a measured 43 to 140
alerts for one stream). So each batch is cut at a stream time T: the
smallest "frontier" (newest event time fetched) among the partitions that
are still behind their high watermark. Per partition, the records up to the
first one newer than T are applied; the rest are held back (the consumer
seeks to them and fetches them again). The partition that defines T is
always applied whole, so every batch makes progress; partitions that have
caught up do not hold anyone back, so a quiet topic never stalls the other.

Live partitions are never held, and hold nobody: a partition at most
`live_lag_records` behind its high watermark is live traffic, applied as it
comes (waiting for another topic's next fetch cost live batches most of their
latency). Alignment is for catching up, where one fetch spans days of event
time; the price is that live processing applies what arrives in arrival order,
as any live system must (it cannot wait for records that do not exist yet).
Topics in `always_aligned` are never live (the profile topic): a profile carries the
time it was sent, and applied ahead of a usage backlog it would rescore its
organization's silence through hours the backlog holds events of; it waits for the
lagging partitions instead, which costs nothing once they are live.

Within the applied set, the partitions are merged by event time, each
partition keeping its own order (the order the contract promises per
organization), equal times in (topic, partition) order. Since a lagging
partition's unfetched records are at least as new as what it has delivered,
every batch applies exactly the records up to T: for partitions in event-time
order, the order of application is the event-time order of the whole log,
whatever the fetch sizes, which is what makes a replay decide like the live
run. Equal times are part of that order: a record at exactly T waits when it
sorts after the partition that defines T (its unfetched records may be at T
too, and go first), so the cut is at (T, that partition), not at T alone.

The alignment knows records only by the `Alignable` protocol: where a record
sits (topic, partition, offset) and its event time, if it has one (a
rejection has none, and is never held back).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Generic, Protocol, TypeVar

from healthscore.core.partitions import PartitionKey


class Position(Protocol):
    """Where a record sits in the log."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


class Alignable(Protocol):
    """A fetched record as the alignment reads it."""

    @property
    def record(self) -> Position: ...

    @property
    def event_time(self) -> float | None:
        """The event's time in POSIX seconds; None for a record without an event."""
        ...


Item = TypeVar("Item", bound=Alignable)


@dataclass(frozen=True)
class AlignmentView:
    """What the consumer knows about partitions beyond the current batch."""

    # newest event time fetched so far per partition (POSIX seconds)
    frontiers: dict[PartitionKey, float] = field(default_factory=dict)
    # high watermark per partition, from the consumer's last fetch responses
    high_watermarks: dict[PartitionKey, int] = field(default_factory=dict)
    # next offset to apply per partition (what the consumer has consumed so far)
    positions: dict[PartitionKey, int] = field(default_factory=dict)
    # every partition assigned to the consumer
    assigned: frozenset[PartitionKey] = frozenset()
    # a partition at most this far behind its high watermark is live: not aligned
    live_lag_records: int = 0
    # topics never live: their records wait for lagging partitions even when caught up
    # (profiles: not activity, yet a profile's time moves its organization's silence,
    # so it must not run ahead of activity still being caught up on)
    always_aligned: frozenset[str] = frozenset()


@dataclass
class Alignment(Generic[Item]):
    applied: list[Item]
    held_from: dict[PartitionKey, int]  # partition -> first held-back offset
    frontiers: dict[PartitionKey, float]  # batch's newest event time per partition
    stream_time: float
    # partitions applied as live traffic (not aligned)
    live: frozenset[PartitionKey] = frozenset()


# (event time, or -inf for a record without one; offset; the record), read once per
# record: the sort and the cut read the tuple, not the record's attributes
_Timed = tuple[float, int, Item]
_NO_TIME = -math.inf
_OFFSET = itemgetter(1)


def _by_partition(items: Iterable[Item]) -> dict[PartitionKey, list[_Timed[Item]]]:
    parts: dict[PartitionKey, list[_Timed[Item]]] = {}
    for item in items:
        record = item.record
        t = item.event_time
        timed = (_NO_TIME if t is None else t, record.offset, item)
        parts.setdefault((record.topic, record.partition), []).append(timed)
    for records in parts.values():
        records.sort(key=_OFFSET)
    return parts


def align(items: Sequence[Item], view: AlignmentView | None) -> Alignment[Item]:
    parts = _by_partition(items)
    frontiers: dict[PartitionKey, float] = {}
    for tp, records in parts.items():
        newest = max(map(itemgetter(0), records))
        if newest != _NO_TIME:
            frontiers[tp] = newest
    live: set[PartitionKey] = set()
    limiting: PartitionKey | None = None
    if view is None:
        stream_time = math.inf
    else:
        # (frontier, partition) of each partition that is behind: its unfetched records
        # sort at or after that pair in (event time, partition) order
        limits: list[tuple[float, PartitionKey]] = []
        for tp, records in parts.items():
            high = view.high_watermarks.get(tp)
            caught_up = high is not None and records[-1][1] + 1 + view.live_lag_records >= high
            if caught_up and view.live_lag_records > 0 and tp[0] not in view.always_aligned:
                live.add(tp)
            if not caught_up and tp in frontiers:
                limits.append((frontiers[tp], tp))
        for tp in view.assigned | view.frontiers.keys():
            if tp in parts:
                continue
            high = view.high_watermarks.get(tp)
            if high is None:
                # not fetched yet: its first records may be older than anything here
                limits.append((-math.inf, tp))
                continue
            position = view.positions.get(tp)
            if position is not None and position + view.live_lag_records < high:
                # behind, and its next records are not here yet
                limits.append((view.frontiers.get(tp, -math.inf), tp))
        stream_time, limiting = min(limits, default=(math.inf, None))

    applied_parts: list[list[_Timed[Item]]] = []
    held_from: dict[PartitionKey, int] = {}
    # partitions in a fixed order: equal event times merge the same way whatever
    # order the fetch returned them in
    for tp, records in sorted(parts.items(), key=itemgetter(0)):
        cut = len(records)
        if tp not in live:
            # at exactly the stream time, only up to the limiting partition: the
            # limiting partition's next records may be at that time too
            tie_waits = limiting is not None and tp > limiting
            for index, (t, _offset, _item) in enumerate(records):
                if t > stream_time or (t == stream_time and tie_waits and t != _NO_TIME):
                    # never a record without a time (-inf)
                    cut = index
                    break
        applied_parts.append(records[:cut])
        if cut < len(records):
            held_from[tp] = records[cut][1]
    # equal times keep the order of the parts (heapq.merge is stable across its inputs)
    applied = [item for _t, _offset, item in heapq.merge(*applied_parts, key=itemgetter(0))]
    return Alignment(applied, held_from, frontiers, stream_time, frozenset(live))
