"""The dead-letter relay: publish the dead letters committed batches wrote, then
delete them.

A batch writes its dead letters to `dead_letter_outbox` in its own transaction, with
its offsets (`sql.INSERT_DEAD_LETTERS`): a rejected record is never lost, and a bad
record holds nothing valid beside it, whatever its dead-letter topic does. The relay
sends them to `<topic>.dlq` in the order they were rejected, one source topic's
apart from another's, and deletes each page the broker acknowledged. A topic that
refuses its dead letters keeps only its own waiting: each topic's page is read apart
(`sql.PENDING_DEAD_LETTERS`), and a refused topic is tried again on its own schedule
(doubling up to `TOPIC_MAX_BACKOFF_SECONDS`) while the others' go on at once, each
attempt's error in `last_error` and a `dead_letter_relay_failed` log line.
Publishing and deleting are not atomic: a crash between them sends a page again
(consumers of the dead-letter topics deduplicate on the `x-source-*` headers). One
relay is active at a time (a transaction-level advisory lock), its hold bounded as the
alert relay's is (`healthscore.service.outbox`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog
from aiokafka.errors import BrokerResponseError

from healthscore.service.ingest.dlq import DeadLetterQueue, DeadLetterRefused, rejection_of
from healthscore.service.outbox import (
    HOLD_MARGIN_SECONDS,
    PUBLISH_TIMEOUT_SECONDS,
    failure_text,
)
from healthscore.service.periodic import AT_ONCE, LOCK_BUSY_RETRY
from healthscore.store import locks, sql

log = structlog.get_logger(__name__)

TOPIC_FIRST_BACKOFF_SECONDS = 0.5
TOPIC_MAX_BACKOFF_SECONDS = 5.0


class DeadLetterPublishError(Exception):
    """The broker did not take some dead letters; they stay in the outbox."""


def refusal_of(exc: BaseException) -> str | None:
    """The broker's answer to a dead letter, when `exc` carries one that no retry
    changes (a value its schema refuses, a record too large for the topic); None when
    the broker did not answer (away, timed out) or may answer otherwise later (a
    leader moving, a topic being created)."""
    cause = exc.__cause__ if isinstance(exc, DeadLetterRefused) else exc
    if isinstance(cause, BrokerResponseError) and not cause.retriable:
        return f"{type(cause).__name__}: {cause}"
    return None


class DeadLetterRelay:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        dlq: DeadLetterQueue,
        page_size: int = 200,
        publish_timeout: float = PUBLISH_TIMEOUT_SECONDS,
        on_published: Callable[[str, int], None] | None = None,
        after_publish: Callable[[], None] | None = None,
        on_withheld: Callable[[str], None] | None = None,
    ) -> None:
        self._pool = pool
        self._dlq = dlq
        self._page_size = page_size
        self._publish_timeout = publish_timeout
        # (source topic, how many) for each topic's dead letters the broker took
        self._on_published = on_published
        # fault-injection seam: after the broker acked, before the rows are deleted
        self._after_publish = after_publish
        # (source topic) for each dead letter published as a stand-in, its record kept
        self._on_withheld = on_withheld
        # source topic -> (when to try it again, on time.monotonic(); its last pause)
        self._refused: dict[str, tuple[float, float]] = {}

    async def relay_dead_letters(self) -> int | None:
        """Publish each source topic's next page of dead letters; return how many were
        published (None: another process's relay holds the lock). A topic refused
        before is left out until its pause is over. Raises `DeadLetterPublishError`
        when some topic's could not be published and no other's were (when others'
        were, the failure is logged and the relay goes on with them at once)."""
        failures: list[tuple[str, list[int], str]] = []
        published: dict[str, int] = {}
        # (row, the broker's refusal): published as stand-ins, kept in PostgreSQL
        withholding: list[tuple[Any, str]] = []
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                if not await conn.fetchval(sql.TRY_LEADER_LOCK, locks.DEAD_LETTER_RELAY):
                    return None
                hold = f"{round((self._publish_timeout + HOLD_MARGIN_SECONDS) * 1000)}ms"
                rows = await conn.fetch(sql.PENDING_DEAD_LETTERS, self._page_size)
                now = time.monotonic()
                # a refused topic whose dead letters are gone (taken, or removed) is no more
                waiting = {row["source_topic"] for row in rows}
                self._refused = {t: r for t, r in self._refused.items() if t in waiting}
                by_topic: dict[str, list[Any]] = {}
                for row in rows:
                    topic = row["source_topic"]
                    if self._refused.get(topic, (now, 0.0))[0] <= now:
                        by_topic.setdefault(topic, []).append(row)
                if not by_topic:
                    return 0
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
                                topic,
                                ids,
                                f"{self._dlq.topic_for(topic)}: the broker did not acknowledge "
                                f"{len(ids)} dead letters within {self._publish_timeout:g}s",
                            )
                        )
                    except Exception as exc:
                        if refusal_of(exc) is None:
                            failures.append((topic, ids, failure_text(exc)))
                            continue
                        # the broker refused something in the page: one at a time, to
                        # find what it will not take and stand in for it
                        await conn.execute(sql.BOUND_HELD_TRANSACTION, hold)
                        taken, withheld, stopped = await self._one_at_a_time(page)
                        sent += taken
                        withholding += withheld
                        if taken or withheld:
                            published[topic] = len(taken) + len(withheld)
                        if stopped is not None:
                            left = ids[len(taken) + len(withheld) :]
                            failures.append((topic, left, stopped))
                        else:
                            self._refused.pop(topic, None)
                    else:
                        sent += ids
                        published[topic] = len(ids)
                        self._refused.pop(topic, None)
                if (sent or withholding) and self._after_publish is not None:
                    self._after_publish()
                await conn.execute(sql.DELETE_DEAD_LETTERS, sent)
                if withholding:
                    await conn.execute(
                        sql.WITHHOLD_DEAD_LETTERS,
                        [row["id"] for row, _ in withholding],
                        [refusal for _, refusal in withholding],
                    )
            # after the transaction: the failure records must survive it
            for topic, ids, error in failures:
                await conn.execute(sql.RECORD_DEAD_LETTER_FAILURE, ids, error)
                _, pause = self._refused.get(topic, (0.0, TOPIC_FIRST_BACKOFF_SECONDS / 2))
                pause = min(pause * 2, TOPIC_MAX_BACKOFF_SECONDS)
                self._refused[topic] = (time.monotonic() + pause, pause)
        for topic, count in published.items():
            if self._on_published is not None:
                self._on_published(topic, count)
        for row, refusal in withholding:
            log.warning(
                "dead_letter_withheld",
                topic=self._dlq.topic_for(row["source_topic"]),
                source=f"{row['source_topic']}:{row['source_partition']}:{row['source_offset']}",
                reason=row["reason"],
                refusal=refusal,
            )
            if self._on_withheld is not None:
                self._on_withheld(row["source_topic"])
        if failures:
            failure = DeadLetterPublishError("; ".join(error for _, _, error in failures))
            if not published:
                raise failure
            log.warning(
                "dead_letter_relay_failed", error=type(failure).__name__, message=str(failure)[:300]
            )
        return len(sent) + len(withholding)

    async def _one_at_a_time(
        self, page: list[Any]
    ) -> tuple[list[int], list[tuple[Any, str]], str | None]:
        """Publish `page` one dead letter at a time, in order, until one cannot go:
        the ids the broker took, the rows it refused for their content alone (their
        stand-ins taken instead) with its refusal, and the error that stopped it (None:
        the page is done). A dead letter refused is for its content alone when the
        broker answered with an error that no retry changes and then took its
        stand-in: a topic refusing even that refuses its dead letters, which wait."""
        taken: list[int] = []
        withheld: list[tuple[Any, str]] = []
        try:
            async with asyncio.timeout(self._publish_timeout):
                for row in page:
                    rejection = rejection_of(row)
                    try:
                        await self._dlq.publish([rejection], [row["rejected_at"]])
                    except Exception as exc:
                        refusal = refusal_of(exc)
                        if refusal is None:
                            return taken, withheld, failure_text(exc)
                        try:
                            await self._dlq.publish_stand_in(rejection, row["rejected_at"], refusal)
                        except Exception:
                            return taken, withheld, failure_text(exc)
                        withheld.append((row, refusal))
                    else:
                        taken.append(row["id"])
        except TimeoutError:
            topic = self._dlq.topic_for(page[0]["source_topic"])
            return (
                taken,
                withheld,
                f"{topic}: the broker did not acknowledge the dead letters one at a time "
                f"within {self._publish_timeout:g}s",
            )
        return taken, withheld, None

    def _next_attempt_in(self) -> float | None:
        """Seconds until the first refused topic may be tried again (None: none is)."""
        if not self._refused:
            return None
        return max(0.0, min(at for at, _ in self._refused.values()) - time.monotonic())

    async def step(self) -> float | None:
        """Relay one page of each topic; the next at once while dead letters are
        published, soon while another relay publishes, when a refused topic's pause is
        over while only refused topics' wait (`periodic.every`)."""
        published = await self.relay_dead_letters()
        if published is None:
            return LOCK_BUSY_RETRY
        return AT_ONCE if published > 0 else self._next_attempt_in()
