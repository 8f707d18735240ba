"""The relay: publish committed alerts, then mark them sent.

Only what a committed batch transaction wrote can leave, so an alert never
escapes a batch that rolled back. Publishing and marking are not atomic: a
crash between them re-publishes the same rows with the same `alert_id`
(deterministic), which the notification service drops; a different id is
never minted. One relay is active at a time (a transaction-level advisory
lock), so an organization's alerts leave in the order they were raised.

The lock is held while the broker acks, so its hold is bounded: the publish fails
after `publish_timeout`, and PostgreSQL ends the relay's session if its transaction
stays idle `HOLD_MARGIN_SECONDS` longer than that (a replica frozen or cut off
mid-page keeps its connection open for hours, and with it every replica's alerts),
or lasts that long from then on (`transaction_timeout`, where the session has one:
the relay's own, so that a shorter TRANSACTION_TIME_LIMIT_SECONDS does not cut a
slow publish). Another replica then publishes the page again, with the same ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
import orjson
import structlog

from healthscore.service.periodic import AT_ONCE, LOCK_BUSY_RETRY
from healthscore.store import locks, sql

log = structlog.get_logger(__name__)


# a relay waits this long for the broker's acks of a page at most (the producer's
# own request timeout, 40 s, fails a publish first)
PUBLISH_TIMEOUT_SECONDS = 60.0
# PostgreSQL ends a relay's session idle in its transaction this long past that
HOLD_MARGIN_SECONDS = 15.0


class AlertPublishError(Exception):
    """The broker did not take a page of alerts; they stay pending."""


# The headers the AsyncAPI document promises every alert: its content type (the
# document's defaultContentType) and a correlation id at `correlation_id`, the
# alert's own id, so that a re-sent alert correlates as it dedupes.
CONTENT_TYPE = ("content-type", b"application/json")
CORRELATION_ID_HEADER = "correlation_id"


def failure_text(exc: BaseException) -> str:
    """What a relay records of a failed publish (`last_error`): the error's type and
    message, bounded."""
    return f"{type(exc).__name__}: {exc}"[:500]


class Producer(Protocol):
    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]: ...


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        producer: Producer,
        alert_topic: str,
        batch_size: int = 500,
        after_publish: Callable[[], None] | None = None,
        on_published: Callable[[str], None] | None = None,
        publish_timeout: float = PUBLISH_TIMEOUT_SECONDS,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._alert_topic = alert_topic
        self._batch_size = batch_size
        # fault-injection seam: the crash tests kill the process right here,
        # after the broker acked and before the rows are marked sent
        self._after_publish = after_publish
        self._on_published = on_published
        self._publish_timeout = publish_timeout
        self.published: dict[str, int] = {}

    async def relay_alerts(self) -> int | None:
        """Publish one page of pending alerts; return how many left (None: another
        process's relay holds the lock)."""
        failure: tuple[list[Any], str] | None = None
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                if not await conn.fetchval(sql.TRY_LEADER_LOCK, locks.RELAY):
                    return None
                hold = self._publish_timeout + HOLD_MARGIN_SECONDS
                await conn.execute(sql.BOUND_HELD_TRANSACTION, f"{round(hold * 1000)}ms")
                rows = await conn.fetch(sql.PENDING_ALERTS, self._batch_size)
                if not rows:
                    return 0
                ids = [r["alert_id"] for r in rows]
                try:
                    await self._publish_alerts(rows)
                except Exception as exc:
                    failure = (ids, failure_text(exc))
                else:
                    await conn.execute(sql.MARK_ALERTS_SENT, ids)
            if failure is not None:
                # after the (empty) transaction: the failure record must survive
                await conn.execute(sql.RECORD_ALERT_FAILURE, *failure)
                raise AlertPublishError(failure[1])
        for row in rows:
            self.published[row["kind"]] = self.published.get(row["kind"], 0) + 1
            if self._on_published is not None:
                self._on_published(row["kind"])
        return len(rows)

    async def _publish_alerts(self, rows: list[Any]) -> None:
        # spelled as the payload's other times (pydantic's): `Z`, not `+00:00`
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        futures = []
        try:
            async with asyncio.timeout(self._publish_timeout):
                for row in rows:
                    payload = orjson.loads(row["payload"])
                    payload["emitted_at"] = now
                    correlation = (CORRELATION_ID_HEADER, str(row["alert_id"]).encode())
                    futures.append(
                        await self._producer.send(
                            self._alert_topic,
                            value=orjson.dumps(payload),
                            key=str(row["organization_id"]).encode(),
                            headers=[CONTENT_TYPE, correlation],
                        )
                    )
                await asyncio.gather(*futures)
        except TimeoutError:
            # named, for relay_failed and last_error (a bare TimeoutError says nothing)
            raise TimeoutError(
                f"the broker did not acknowledge {len(rows)} alerts "
                f"within {self._publish_timeout:g}s"
            ) from None
        if self._after_publish is not None:
            self._after_publish()

    async def step(self) -> float | None:
        """Relay one page; the next at once while alerts are pending, soon while another
        relay publishes (`periodic.every`)."""
        published = await self.relay_alerts()
        if published is None:
            return LOCK_BUSY_RETRY
        return AT_ONCE if published > 0 else None
