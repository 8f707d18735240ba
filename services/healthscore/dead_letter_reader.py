"""`healthscore dead-letters`: read a dead-letter topic, for a person: from its start, or
its newest letters (in an incident, the oldest are likely fixed already), of one reason
or one source record.

The documented way was Kafka's console consumer or kcat, neither on a fresh machine.
This reads `<source topic><DLQ_SUFFIX>` with the service's own client settings (TLS,
SASL), as a reader outside any consumer group (it commits nothing), up to the end the
topic had when it started, and prints each dead letter's rejection (`x-error-reason`,
`x-error-detail`), where it came from (`x-source-*`), when, its key and its value.

Everything taken from a record is escaped before it is printed: a producer's bytes can
hold terminal control sequences, bidirectional overrides or invalid UTF-8, and a dead
letter is by definition a record that broke the contract.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from healthscore.printable import escaped
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.offsets_reset import read_log_bounds

# the short names `--topic` takes, as the settings name the input topics
TOPIC_NAMES = ("usage", "support", "profile")
VALUE_SHOWN = 2000
"""Characters of a value printed at most (the rest is counted)."""


@dataclass
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    def header(self, name: str) -> bytes | None:
        """The first header of that name (ours come first: `dlq_headers`)."""
        return next((value for key, value in self.headers if key == name), None)

    def lines(self) -> list[str]:
        def h(name: str) -> str:
            return escaped(self.header(name))

        lines = [
            f"{self.topic} {self.partition}:{self.offset}  reason {h('x-error-reason')}  "
            f"rejected at {h('x-rejected-at')}",
            f"  detail: {h('x-error-detail')}",
            f"  source: {h('x-source-topic')} partition {h('x-source-partition')} "
            f"offset {h('x-source-offset')}"
            + (
                f" (record timestamp {h('x-source-timestamp-ms')} ms)"
                if self.header("x-source-timestamp-ms") is not None
                else ""
            ),
            f"  key:    {escaped(self.key)}",
        ]
        omitted = self.header("x-value-omitted")
        withheld = self.header("x-value-withheld")
        ours = ["x-rejected-at", "x-value-omitted"]
        if omitted is not None:
            lines.append(f"  value:  (not in the dead letter: {escaped(omitted)})")
        elif withheld is not None:
            # a stand-in's value describes the record: read as the record, it would be
            # re-driven to the source topic in its place
            lines.append(
                f"  value:  (withheld: a stand-in, not the record; the dead-letter topic "
                f"refused the dead letter with {escaped(withheld)}; the record as it came "
                f"is in PostgreSQL: dead_letters_withheld WHERE source_topic = "
                f"'{h('x-source-topic')}' AND source_partition = {h('x-source-partition')} "
                f"AND source_offset = {h('x-source-offset')})"
            )
            lines.append(f"  stand-in: {escaped(self.value, VALUE_SHOWN)}")
            ours += ["x-value-withheld", "content-type"]
        else:
            lines.append(f"  value:  {escaped(self.value, VALUE_SHOWN)}")
        others = [
            (name, value)
            for name, value in self.headers
            if not name.startswith("x-error-")
            and not name.startswith("x-source-")
            and name not in ours
        ]
        for name, value in others:
            lines.append(f"  header {escaped(name)}: {escaped(value, 200)}")
        return lines


@dataclass
class Reading:
    """What one dead-letter topic gave: the dead letters read, and how many more it held
    (that the filter let through)."""

    topic: str
    exists: bool
    letters: list[DeadLetter]
    more: int


@dataclass(frozen=True)
class Selection:
    """Which dead letters to show: the first `limit` from the start, or with `newest` the
    latest `limit` (by rejection time); only those of `reasons` (when given) and of one
    source partition and offset (when given)."""

    limit: int
    newest: bool = False
    reasons: frozenset[str] = frozenset()
    source_partition: int | None = None
    source_offset: int | None = None

    @property
    def filtered(self) -> bool:
        return bool(self.reasons) or self.source_offset is not None

    @property
    def matching(self) -> str:
        """What the filter lets through, for a person: ` (reason a or b, source partition
        3 offset 9)`; empty without a filter."""
        said = [f"reason {' or '.join(sorted(self.reasons))}"] if self.reasons else []
        if self.source_offset is not None:
            partition = (
                f" partition {self.source_partition}" if self.source_partition is not None else ""
            )
            said.append(f"source{partition} offset {self.source_offset}")
        return f" ({', '.join(said)})" if said else ""

    def takes(self, letter: DeadLetter) -> bool:
        if (
            self.reasons
            and (letter.header("x-error-reason") or b"").decode("utf-8", "replace")
            not in self.reasons
        ):
            return False
        if self.source_offset is not None:
            if letter.header("x-source-offset") != str(self.source_offset).encode():
                return False
            if (
                self.source_partition is not None
                and letter.header("x-source-partition") != str(self.source_partition).encode()
            ):
                return False
        return True


async def read_dead_letters(kafka: KafkaConnection, topic: str, chosen: Selection) -> Reading:
    """The dead letters of `topic` that `chosen` asks for, up to the end the topic had
    when the reading began."""
    limit = chosen.limit
    # unfiltered, the newest of all are among each partition's last `limit`
    windowed = chosen.newest and not chosen.filtered
    consumer = kafka.consumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return Reading(topic, False, [], 0)
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        # the true high watermarks (the embedded broker's ListOffsets can answer short)
        log_starts, log_ends = await read_log_bounds(kafka, [topic])
        starts = {tp: log_starts.get((topic, tp.partition), 0) for tp in partitions}
        ends = {tp: log_ends.get((topic, tp.partition), 0) for tp in partitions}
        reads_from = {
            tp: max(starts[tp], ends[tp] - limit) if windowed else starts[tp] for tp in partitions
        }
        # a filter reads the whole log (what it lets through may be anywhere); the first
        # `limit` from the start stop reading once they are found
        stop_at_limit = not chosen.newest and not chosen.filtered
        # at most `limit` letters held: the first ones, or each partition's newest (a
        # spike of one reason may be millions); the others only counted
        taken: list[DeadLetter] = []
        matched = 0
        unread = 0
        for tp in partitions:
            consumer.seek(tp, reads_from[tp])
            following = reads_from[tp]  # the partition's first offset not read
            newest: deque[DeadLetter] = deque(maxlen=limit)
            while following < ends[tp] and not (stop_at_limit and len(taken) >= limit):
                batch = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
                for record in batch:
                    if record.offset >= ends[tp]:
                        break
                    following = record.offset + 1
                    letter = DeadLetter(
                        topic,
                        tp.partition,
                        record.offset,
                        record.key,
                        record.value,
                        [(name, value) for name, value in record.headers],
                    )
                    if chosen.takes(letter):
                        matched += 1
                        if chosen.newest:
                            newest.append(letter)
                        elif len(taken) < limit:
                            taken.append(letter)
                    if stop_at_limit and len(taken) >= limit:
                        break
                if not batch and await consumer.position(tp) >= ends[tp]:
                    break  # the rest of the log holds no record (control records)
            taken.extend(newest)
            # after what was read, and before the window
            unread += max(0, ends[tp] - following) + reads_from[tp] - starts[tp]
        if chosen.newest:
            # newest last, as a log reads; the rejection time orders partitions alike
            taken.sort(key=lambda d: (d.header("x-rejected-at") or b"", d.partition, d.offset))
            shown = taken[-limit:]
        else:
            shown = taken[:limit]
        # unfiltered, every letter not shown; filtered, the matches not shown
        more = matched - len(shown) + (0 if chosen.filtered else unread)
        return Reading(topic, True, shown, more)
    finally:
        await consumer.stop()


def report(readings: Iterable[Reading], selection: Selection) -> list[str]:
    """The readings for a person, saying what `selection` asked for."""
    limit, newest, matching = selection.limit, selection.newest, selection.matching
    out: list[str] = []
    for reading in readings:
        if not reading.exists:
            out.append(f"{reading.topic}: no such topic (nothing was dead-lettered there yet)")
            continue
        shown = len(reading.letters)
        if not shown:
            out.append(f"{reading.topic}: no dead letters{matching}")
            continue
        where = "the newest, oldest first" if newest else "from the start"
        out.append(f"{reading.topic}: {shown} dead letter(s) {where}{matching}")
        for letter in reading.letters:
            out.extend(letter.lines())
        if reading.more:
            beside = "before" if newest else "after"
            out.append(
                f"{reading.topic}: {reading.more} more{matching} {beside} these "
                f"(--limit {limit} shown)"
            )
    return out
