"""The dead-letter relay: publish the dead letters committed batches wrote, then
delete them.

A batch writes its dead letters to `dead_letter_outbox` in its own transaction, with
its offsets (`sql.INSERT_DEAD_LETTERS`): a rejected record is never lost, and a bad
record holds nothing valid beside it, whatever its dead-letter topic does. The relay
sends them to `<topic>.dlq` in the order they were rejected, one source topic's
apart from another's (a topic that refuses its dead letters keeps only its own
waiting, each attempt's error in `last_error` and a `dead_letter_relay_failed` log
line), and deletes each page the broker acknowledged. Publishing and deleting are not
atomic: a crash between them sends a page again (consumers of the dead-letter topics
deduplicate on the `x-source-*` headers). One relay is active at a time (a
transaction-level advisory lock), its hold bounded as the alert relay's is
(`healthscore.service.outbox`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg

from healthscore.service.ingest.dlq import DeadLetterQueue, rejection_of
from healthscore.service.outbox import HOLD_MARGIN_SECONDS, PUBLISH_TIMEOUT_SECONDS
from healthscore.service.periodic import AT_ONCE, LOCK_BUSY_RETRY
from healthscore.store import locks, sql


class DeadLetterPublishError(Exception):
    """The broker did not take some dead letters; they stay in the outbox."""


class DeadLetterRelay:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        dlq: DeadLetterQueue,
        page_size: int = 200,
        publish_timeout: float = PUBLISH_TIMEOUT_SECONDS,
        on_published: Callable[[str, int], None] | None = None,
        after_publish: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._dlq = dlq
        self._page_size = page_size
        self._publish_timeout = publish_timeout
        # (source topic, how many) for each topic's dead letters the broker took
        self._on_published = on_published
        # fault-injection seam: after the broker acked, before the rows are deleted
        self._after_publish = after_publish

    async def relay_dead_letters(self) -> int | None:
        """Publish one page of dead letters; return how many left (None: another
        process's relay holds the lock). Raises `DeadLetterPublishError` when some
        source topic's could not be published (the others' left)."""
        failures: list[tuple[list[int], str]] = []
        published: dict[str, int] = {}
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                if not await conn.fetchval(sql.TRY_LEADER_LOCK, locks.DEAD_LETTER_RELAY):
                    return None
                hold = f"{round((self._publish_timeout + HOLD_MARGIN_SECONDS) * 1000)}ms"
                rows = await conn.fetch(sql.PENDING_DEAD_LETTERS, self._page_size)
                if not rows:
                    return 0
                by_topic: dict[str, list[Any]] = {}
                for row in rows:
                    by_topic.setdefault(row["source_topic"], []).append(row)
                sent: list[int] = []
                for topic, page in by_topic.items():
                    ids = [row["id"] for row in page]
                    # each topic's publish bounded on its own: the hold's timers restart
                    await conn.execute(sql.BOUND_HELD_TRANSACTION, hold)
                    try:
                        async with asyncio.timeout(self._publish_timeout):
                            await self._dlq.publish(
                                [rejection_of(row) for row in page],
                                [row["rejected_at"] for row in page],
                            )
                    except TimeoutError:
                        failures.append(
                            (
                                ids,
                                f"{self._dlq.topic_for(topic)}: the broker did not acknowledge "
                                f"{len(ids)} dead letters within {self._publish_timeout:g}s",
                            )
                        )
                    except Exception as exc:
                        failures.append((ids, f"{type(exc).__name__}: {exc}"[:500]))
                    else:
                        sent += ids
                        published[topic] = len(ids)
                if sent and self._after_publish is not None:
                    self._after_publish()
                await conn.execute(sql.DELETE_DEAD_LETTERS, sent)
            # after the transaction: the failure records must survive it
            for ids, error in failures:
                await conn.execute(sql.RECORD_DEAD_LETTER_FAILURE, ids, error)
        for topic, count in published.items():
            if self._on_published is not None:
                self._on_published(topic, count)
        if failures:
            raise DeadLetterPublishError("; ".join(error for _, error in failures))
        return len(rows)

    async def step(self) -> float | None:
        """Relay one page; the next at once while dead letters are pending, soon while
        another relay publishes (`periodic.every`)."""
        published = await self.relay_dead_letters()
        if published is None:
            return LOCK_BUSY_RETRY
        return AT_ONCE if published > 0 else None
