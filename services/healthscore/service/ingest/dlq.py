"""Dead letters: the original bytes, unchanged, with headers saying why; kept in
`dead_letter_outbox` (a rejection as a row, and back) until the relay publishes them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
import orjson
from aiokafka.errors import (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from healthscore.errors import HealthscoreError
from healthscore.service.ingest.decode import RawRecord, Rejection


class RecordProducer(Protocol):
    """The slice of a Kafka producer the DLQ needs (aiokafka's fits)."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> asyncio.Future[Any]: ...


def dlq_headers(
    rejection: Rejection, own_only: bool = False, rejected_at: datetime | None = None
) -> list[tuple[str, bytes | None]]:
    """The dead letter's headers: ours, then (unless `own_only`) the producer's;
    `rejected_at` None: now."""
    record = rejection.record
    headers: list[tuple[str, bytes | None]] = [
        ("x-error-reason", rejection.reason.encode()),
        ("x-error-detail", rejection.detail.encode()),
        ("x-source-topic", record.topic.encode()),
        ("x-source-partition", str(record.partition).encode()),
        ("x-source-offset", str(record.offset).encode()),
        ("x-rejected-at", (rejected_at or datetime.now(UTC)).isoformat().encode()),
    ]
    if record.timestamp_ms is not None:
        headers.append(("x-source-timestamp-ms", str(record.timestamp_ms).encode()))
    if own_only:
        return headers
    # keep the producer's own headers too, after ours; one named like ours (a dead
    # letter re-driven with its headers) is renamed, or a reader taking the last
    # (or the first) header of a name would read the old rejection as this one
    for name, value in record.headers:
        renamed = _original_name(name)
        if renamed is not None:
            headers.append((renamed, value))
    return headers


EARLIER_REJECTIONS_KEPT = 4
"""How many earlier rejections' headers a dead letter re-driven again and again keeps
(the newest): each adds seven headers, and a record re-driven in a loop would grow
until its topic refused it."""


def _original_name(name: str) -> str | None:
    """A producer header's name on the dead letter: one of ours, or one an earlier
    rejection already renamed (`x-original-x-error-reason`, a dead letter re-driven
    twice), takes the prefix once more, so that each rejection's headers keep a name
    of their own (`x-original-` once: the previous rejection; twice: the one before).
    None: a rejection older than EARLIER_REJECTIONS_KEPT, left out."""
    bare = name
    depth = 0
    while bare.startswith(ORIGINAL_PREFIX):
        bare = bare[len(ORIGINAL_PREFIX) :]
        depth += 1
    if bare not in _RESERVED:
        return name
    return ORIGINAL_PREFIX + name if depth < EARLIER_REJECTIONS_KEPT else None


OWN_HEADERS = frozenset(
    (
        "x-error-reason",
        "x-error-detail",
        "x-source-topic",
        "x-source-partition",
        "x-source-offset",
        "x-rejected-at",
        "x-source-timestamp-ms",
    )
)
"""The headers a dead letter is given (`dlq_headers`)."""

VALUE_OMITTED = "x-value-omitted"
"""The header of a dead letter sent without its value (too large for its topic)."""

VALUE_NULL = "x-value-null"
"""The header of a dead letter whose source record had neither key nor value: Kafka
allows such a record (a tombstone without a key), aiokafka's producer sends none, so
the dead letter carries an empty value instead of the null one."""

VALUE_WITHHELD = "x-value-withheld"
"""The header of a stand-in: the dead letter its topic refused for its content alone,
sent as a JSON description without the record's bytes (kept in PostgreSQL)."""

_RESERVED = OWN_HEADERS | {VALUE_OMITTED, VALUE_NULL, VALUE_WITHHELD}

ORIGINAL_PREFIX = "x-original-"
"""Prefixed to a producer's header that is named like one of ours."""


class DeadLetterRefused(HealthscoreError):
    """The producer or the broker refused a dead letter for another reason than its
    size (the topic refuses writes, is missing, the broker is away): it stays in the
    outbox and the relay tries again (`healthscore.service.dead_letters`)."""


class DeadLetterQueue:
    def __init__(self, producer: RecordProducer, suffix: str) -> None:
        self._producer = producer
        self._suffix = suffix

    def topic_for(self, source_topic: str) -> str:
        return source_topic + self._suffix

    async def publish(
        self, rejections: Sequence[Rejection], rejected_at: Sequence[datetime] | None = None
    ) -> None:
        """Publish every rejection, in order, and wait for the broker's acks;
        `rejected_at`: when each was rejected (None: now).

        The dead-letter relay calls it with what committed batches wrote to the
        outbox, and deletes those rows after it returns: if the process dies in
        between, they are sent again (at-least-once, identified by their source
        coordinates), but none is ever lost. A dead letter too large to send (the
        source topic took a record that, with our headers, the producer or the
        dead-letter topic refuses) goes without its value and the producer's
        headers: it would be refused again on every attempt.
        """
        when = list(rejected_at) if rejected_at is not None else [None] * len(rejections)
        futures: list[asyncio.Future[Any] | None] = []
        for rejection, at in zip(rejections, when, strict=True):
            # enqueued in order; refused at once when too large
            try:
                futures.append(await self._send(rejection, whole=True, rejected_at=at))
            except TOO_LARGE:
                futures.append(None)
            except Exception as exc:
                raise self._refused(rejection, exc) from exc
        # one wait for all acks, not a round trip per dead letter
        acks = iter(
            await asyncio.gather(*(f for f in futures if f is not None), return_exceptions=True)
        )
        retried: list[Rejection] = []
        retries = []
        for rejection, at, future in zip(rejections, when, futures, strict=True):
            ack = None if future is None else next(acks)
            if future is None or isinstance(ack, TOO_LARGE):
                try:
                    retries.append(await self._send(rejection, whole=False, rejected_at=at))
                except Exception as exc:
                    raise self._refused(rejection, exc) from exc
                retried.append(rejection)
            else:
                self._check(rejection, ack)
        for rejection, ack in zip(
            retried, await asyncio.gather(*retries, return_exceptions=True), strict=True
        ):
            self._check(rejection, ack)

    async def publish_stand_in(
        self, rejection: Rejection, rejected_at: datetime, refusal: str
    ) -> None:
        """Publish, and wait for the ack of, the stand-in of a dead letter its topic
        refused with `refusal`: the rejection's own headers, `VALUE_WITHHELD` saying
        why, and a JSON description of the record instead of its bytes (what a
        schema the topic enforces is likeliest to take). Raises what the producer or
        the broker raised: a topic that refuses this too refuses its dead letters, not
        this one's content."""
        record = rejection.record
        key = (
            record.key if record.key is not None and len(record.key) <= _LARGEST_KEY_KEPT else None
        )
        description = orjson.dumps(
            {
                "withheld": "the dead-letter topic refused this dead letter; the record "
                "as it came is kept in PostgreSQL (dead_letters_withheld)",
                "source_topic": record.topic,
                "source_partition": record.partition,
                "source_offset": record.offset,
                "reason": rejection.reason,
                "value_bytes": None if record.value is None else len(record.value),
                "key_bytes": None if record.key is None else len(record.key),
                "headers": len(record.headers),
                "refused_with": refusal[:_REFUSAL_KEPT],
            }
        )
        headers = [
            *dlq_headers(rejection, own_only=True, rejected_at=rejected_at),
            (VALUE_WITHHELD, refusal[:_REFUSAL_KEPT].encode()),
            ("content-type", b"application/json"),
        ]
        ack = await self._producer.send(
            self.topic_for(record.topic), value=description, key=key, headers=headers
        )
        await ack

    def _check(self, rejection: Rejection, ack: object) -> None:
        """Raise what the send of `rejection`'s dead letter failed with, if it did."""
        if isinstance(ack, Exception):
            raise self._refused(rejection, ack) from ack
        if isinstance(ack, BaseException):
            raise ack

    def _refused(self, rejection: Rejection, exc: Exception) -> DeadLetterRefused:
        """`exc`, the broker's or the producer's, naming the dead letter it refused: a
        broker error alone (`UnknownError`) does not say that the dead-letter topic is
        what keeps the dead letter waiting."""
        record = rejection.record
        return DeadLetterRefused(
            f"{self.topic_for(record.topic)} refused the dead letter of "
            f"{record.topic}:{record.partition}:{record.offset} ({rejection.reason}): "
            f"{type(exc).__name__}: {exc}; it stays in the outbox and is tried again"
        )

    async def _send(
        self, rejection: Rejection, whole: bool, rejected_at: datetime | None
    ) -> asyncio.Future[Any]:
        """Enqueue the dead letter of `rejection`: whole, or without the value and the
        producer's headers."""
        record = rejection.record
        key = record.key
        if whole:
            value, headers = record.value, dlq_headers(rejection, rejected_at=rejected_at)
        else:
            value, headers = (
                None,
                [*dlq_headers(rejection, own_only=True, rejected_at=rejected_at), _omitted(record)],
            )
            if key is not None and len(key) > _LARGEST_KEY_KEPT:
                key = None
        if key is None and value is None:
            # refused by the producer (an AssertionError) on every retry of the batch
            value = b""
            if whole:
                # after ours, before the producer's (each of our names once, in front)
                ours = len(dlq_headers(rejection, own_only=True, rejected_at=rejected_at))
                headers.insert(ours, (VALUE_NULL, b"the source record had neither key nor value"))
        return await self._producer.send(
            self.topic_for(record.topic), value=value, key=key, headers=headers
        )


TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
"""The producer's (before sending) and the broker's refusals of a record's size."""


_LARGEST_KEY_KEPT = 1024
"""A dead letter sent without its value keeps a key up to this size (a hostile key may
be what made it too large)."""

_REFUSAL_KEPT = 300
"""A stand-in says this much of the broker's refusal (its error names the record)."""


def _omitted(record: RawRecord) -> tuple[str, bytes]:
    size = len(record.value or b"")
    count = len(record.headers)
    key = len(record.key or b"")
    dropped_key = f", a {key}-byte key" if key > _LARGEST_KEY_KEPT else ""
    return (
        VALUE_OMITTED,
        f"{size} bytes{dropped_key} and {count} header{'' if count == 1 else 's'}: too "
        "large for the dead-letter topic; the record stays at its source offset while the "
        "topic retains it".encode(),
    )


_HEADERS = msgspec.msgpack.Encoder()
_READ_HEADERS = msgspec.msgpack.Decoder(list[tuple[str, bytes | None]])


def dead_letter_columns(rejections: Sequence[Rejection]) -> list[list[Any]]:
    """`sql.INSERT_DEAD_LETTERS`' arguments for `rejections`, in their order: the source
    record as it came (the producer's headers as MessagePack) and the rejection."""
    records = [r.record for r in rejections]
    return [
        [r.topic for r in records],
        [r.partition for r in records],
        [r.offset for r in records],
        [r.key for r in records],
        [r.value for r in records],
        [r.timestamp_ms for r in records],
        [_HEADERS.encode(r.headers) for r in records],
        [r.reason for r in rejections],
        [r.detail for r in rejections],
    ]


def rejection_of(row: Any) -> Rejection:
    """The rejection a `sql.PENDING_DEAD_LETTERS` row was written from."""
    record = RawRecord(
        row["source_topic"],
        row["source_partition"],
        row["source_offset"],
        row["record_key"],
        row["record_value"],
        row["record_timestamp_ms"],
        tuple(_READ_HEADERS.decode(row["record_headers"])),
    )
    return Rejection(record, row["reason"], row["detail"])
