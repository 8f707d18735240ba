"""The dead-letter relay: what committed batches wrote to `dead_letter_outbox` leaves in
order, whole (the record as it came, the rejection in the headers), and is deleted only
once the broker acknowledged it; a crash in between sends it again, never loses it."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from healthscore.service.dead_letters import DeadLetterRelay
from healthscore.service.ingest.decode import RawRecord, Rejection
from healthscore.service.ingest.dlq import DeadLetterQueue, dead_letter_columns
from healthscore.service.periodic import AT_ONCE
from healthscore.store import sql
from healthscore.store.db import create_pool
from tests.utils.harness import (
    Topics,
    broker_refusing,
    consume_all,
    fetch,
    make_producer,
    make_topics,
)


class Crash(Exception):
    """The process dying after the broker's ack, before the rows are deleted."""


def _rejections(topics: Topics, topic: str | None = None) -> list[Rejection]:
    return [
        Rejection(
            RawRecord(
                topic or topics.usage,
                0,
                offset,
                b"key-%d" % offset,
                b'{"n": %d}' % offset,
                1_700_000_000_000 + offset,
                (("trace", b"t-%d" % offset), ("empty", None)),
            ),
            "missing_field",
            f"event_id: Field required ({offset})",
        )
        for offset in (3, 5, 8)
    ]


async def _pending(url: str) -> list[Any]:
    return await fetch(url, "SELECT source_offset FROM dead_letter_outbox ORDER BY id")


async def test_dead_letters_leave_in_order_whole_and_a_crash_sends_them_again(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    rejections = _rejections(topics)
    pool = await create_pool(migrated_database, "healthscore_writer")
    producer = await make_producer(kafka_bootstrap)
    dlq = DeadLetterQueue(producer, ".dlq")
    try:
        async with pool.acquire() as conn:
            # a batch's write, twice: a redone batch writes no dead letter twice
            for _ in range(2):
                await conn.execute(sql.INSERT_DEAD_LETTERS, *dead_letter_columns(rejections))
            stored = await conn.fetch(
                "SELECT rejected_at FROM dead_letter_outbox ORDER BY source_offset"
            )
        rejected_at = [r["rejected_at"] for r in stored]
        await asyncio.sleep(0.05)  # the relay's clock reads later than the batch's

        def crash() -> None:
            raise Crash

        with pytest.raises(Crash):
            await DeadLetterRelay(pool, dlq, after_publish=crash).relay_dead_letters()
        # published, not deleted: still pending
        assert [r["source_offset"] for r in await _pending(migrated_database)] == [3, 5, 8]

        published: list[tuple[str, int]] = []
        relay = DeadLetterRelay(pool, dlq, on_published=lambda t, n: published.append((t, n)))
        assert await relay.relay_dead_letters() == 3
        assert await _pending(migrated_database) == []
        assert published == [(topics.usage, 3)]
        assert await relay.step() is None  # nothing left: the loop's own interval
    finally:
        await producer.stop()
        await pool.close()

    letters = await consume_all(kafka_bootstrap, topics.dlq_usage, expect=6, settle=0.5)
    # each sent twice (the crash's page again), in rejection order each time
    offsets = [int(dict(r.headers)["x-source-offset"]) for r in letters]
    assert offsets == [3, 5, 8, 3, 5, 8]
    # each copy carries when the batch rejected the record, not when the relay sent it
    stamps = [datetime.fromisoformat(dict(r.headers)["x-rejected-at"].decode()) for r in letters]
    assert stamps == rejected_at * 2
    for letter, rejection in zip(letters[:3], rejections, strict=True):
        record = rejection.record
        assert (letter.key, letter.value) == (record.key, record.value)
        headers = list(letter.headers)
        names = [name for name, _ in headers]
        assert names[:7] == [
            "x-error-reason",
            "x-error-detail",
            "x-source-topic",
            "x-source-partition",
            "x-source-offset",
            "x-rejected-at",
            "x-source-timestamp-ms",
        ]
        own = dict(headers[:7])
        assert own["x-error-detail"] == rejection.detail.encode()
        assert own["x-source-timestamp-ms"] == str(record.timestamp_ms).encode()
        # the producer's headers follow, as they came (a null value stays null)
        assert headers[7:] == list(record.headers)


async def test_the_relay_steps_again_at_once_while_dead_letters_wait(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    pool = await create_pool(migrated_database, "healthscore_writer")
    producer = await make_producer(kafka_bootstrap)
    try:
        async with pool.acquire() as conn:
            await conn.execute(sql.INSERT_DEAD_LETTERS, *dead_letter_columns(_rejections(topics)))
        relay = DeadLetterRelay(pool, DeadLetterQueue(producer, ".dlq"), page_size=2)
        assert await relay.step() == AT_ONCE  # a page of 2; one more waits
        assert [r["source_offset"] for r in await _pending(migrated_database)] == [8]
        assert await relay.step() == AT_ONCE
        assert await relay.step() is None
    finally:
        await producer.stop()
        await pool.close()


async def test_a_refused_topics_backlog_holds_back_no_other_topics_dead_letters(
    migrated_database: str, tmp_path: Path
) -> None:
    """A page of the usage topic's dead letters that its dead-letter topic refuses
    (a schema the broker enforces), then a support topic's dead letter. The relay read
    the first page in rejection order whatever the topic, so once a page's worth of the
    refused topic's waited, every page was theirs and the support topic's dead letter
    never left. Now each topic's page is read apart: it leaves at once, and the refused
    topic waits on its own schedule, its error recorded."""
    topics = Topics(*(f"{name}.refused-page" for name in ("u", "s", "a", "h", "p")))
    async with broker_refusing(
        tmp_path / "schemas", topics.dlq_usage, [topics.dlq_support], partitions=1
    ) as bootstrap:
        pool = await create_pool(migrated_database, "healthscore_writer")
        producer = await make_producer(bootstrap)
        try:
            async with pool.acquire() as conn:
                for topic in (topics.usage, topics.support):
                    await conn.execute(
                        sql.INSERT_DEAD_LETTERS, *dead_letter_columns(_rejections(topics, topic))
                    )
            relay = DeadLetterRelay(pool, DeadLetterQueue(producer, ".dlq"), page_size=3)
            with capture_logs() as logs:
                # the support topic's whole page left beside the refused usage page
                assert await relay.step() == AT_ONCE
            # the refused topic is not tried again before its pause is over
            pause = await relay.step()
            assert pause is not None and 0 < pause <= 0.5
        finally:
            await producer.stop()
            await pool.close()
        letters = await consume_all(bootstrap, topics.dlq_support, expect=3, settle=0.5)
    waiting = await fetch(
        migrated_database,
        "SELECT source_topic, publish_attempts, last_error FROM dead_letter_outbox",
    )
    assert [int(dict(r.headers)["x-source-offset"]) for r in letters] == [3, 5, 8]
    assert {(r["source_topic"], r["publish_attempts"]) for r in waiting} == {(topics.usage, 1)}
    assert all(f"{topics.dlq_usage} refused" in r["last_error"] for r in waiting)
    [failed] = [log for log in logs if log["event"] == "dead_letter_relay_failed"]
    assert failed["error"] == "DeadLetterPublishError"


async def test_pending_dead_letters_are_counted_without_a_scan_of_millions(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """The gauges read the outbox every 5 s in every replica; with a dead-letter topic
    refusing for hours it holds millions of rows, and count(*) and min(rejected_at) were
    a scan of all of them each time. Exact up to the cap, the planner's estimate beyond
    it (here a cap of 2 over 9 rows), the oldest the first in rejection order."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    pool = await create_pool(migrated_database, "healthscore_writer")
    try:
        async with pool.acquire() as conn:
            for topic in (topics.usage, topics.support, topics.profile):
                await conn.execute(
                    sql.INSERT_DEAD_LETTERS, *dead_letter_columns(_rejections(topics, topic))
                )
            exact = await conn.fetchrow(sql.DEAD_LETTER_STATS, sql.DEAD_LETTERS_COUNTED)
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN " + sql.DEAD_LETTER_STATS, sql.DEAD_LETTERS_COUNTED
                )
            )
        await fetch(migrated_database, "ANALYZE dead_letter_outbox")
        async with pool.acquire() as conn:
            estimated = await conn.fetchrow(sql.DEAD_LETTER_STATS, 2)
    finally:
        await pool.close()
    assert exact is not None and estimated is not None
    assert exact["pending"] == 9 and estimated["pending"] == 9
    assert 0 <= exact["oldest_age"] < 60
    assert "Limit" in plan  # the count stops at the cap
