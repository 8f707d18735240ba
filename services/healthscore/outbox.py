"""The relay: publish committed alerts and score changes, then mark them sent.

Only what a committed batch transaction wrote can leave, so an alert never
escapes a batch that rolled back. Publishing and marking are not atomic: a
crash between them re-publishes the same rows with the same `alert_id`
(deterministic), which the notification service drops; a different id is
never minted. One relay is active at a time (a transaction-level advisory
lock), so an organization's alerts leave in the order they were raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
import orjson
import structlog

from healthscore.stopping import pause_unless_stopped
from healthscore.store import sql

log = structlog.get_logger(__name__)


class AlertPublishError(Exception):
    """The broker did not take a page of alerts; they stay pending."""


RELAY_LOCK_KEY = 0x6865616C7468_01  # "health" + 1
HEALTH_LOCK_KEY = 0x6865616C7468_02

PENDING_ALERTS = """
SELECT alert_id, organization_id, kind, payload::text AS payload
FROM alert_outbox
WHERE published_at IS NULL
ORDER BY seq
LIMIT $1
"""

MARK_ALERTS_SENT = """
UPDATE alert_outbox
SET published_at = now(), publish_attempts = publish_attempts + 1, last_error = NULL
WHERE alert_id = ANY($1::uuid[])
"""

RECORD_ALERT_FAILURE = """
UPDATE alert_outbox
SET publish_attempts = publish_attempts + 1, last_error = $2
WHERE alert_id = ANY($1::uuid[])
"""

PENDING_HEALTH = """
SELECT q.organization_id, q.version, h.health_score, h.previous_score,
       h.health_status, h.churn_probability, h.risk_level, h.engagement_score,
       h.adoption_score, h.milestone_score, h.support_score, h.growth_score,
       h.risk_factors::text AS risk_factors, h.score_model_version, h.scored_at
FROM health_feed_pending q
JOIN customer_health h ON h.organization_id = q.organization_id
ORDER BY q.organization_id
LIMIT $1
"""

# An entry re-queued meanwhile (a newer version) stays for the next pass, and so
# does one a consumer batch holds right now (SKIP LOCKED): that batch is queueing
# a newer version, or, if it rolls back, the entry is simply sent again.
MARK_HEALTH_SENT = """
DELETE FROM health_feed_pending q
WHERE q.organization_id IN (
    SELECT p.organization_id
    FROM health_feed_pending p
    JOIN unnest($1::uuid[], $2::bigint[]) AS x(organization_id, version)
      ON p.organization_id = x.organization_id AND p.version = x.version
    ORDER BY p.organization_id
    FOR UPDATE OF p SKIP LOCKED)
"""


class Producer(Protocol):
    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> asyncio.Future[Any]: ...


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        producer: Producer,
        alert_topic: str,
        health_topic: str | None,
        batch_size: int = 500,
        after_publish: Callable[[], None] | None = None,
        on_published: Callable[[str], None] | None = None,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._alert_topic = alert_topic
        self._health_topic = health_topic
        self._batch_size = batch_size
        # fault-injection seam: the crash tests kill the process right here,
        # after the broker acked and before the rows are marked sent
        self._after_publish = after_publish
        self._on_published = on_published
        self.published: dict[str, int] = {}

    async def relay_alerts(self) -> int:
        """Publish one page of pending alerts; return how many left."""
        failure: tuple[list[Any], str] | None = None
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                if not await conn.fetchval(sql.TRY_LEADER_LOCK, RELAY_LOCK_KEY):
                    return 0
                rows = await conn.fetch(PENDING_ALERTS, self._batch_size)
                if not rows:
                    return 0
                ids = [r["alert_id"] for r in rows]
                try:
                    await self._publish_alerts(rows)
                except Exception as exc:
                    failure = (ids, f"{type(exc).__name__}: {exc}"[:500])
                else:
                    await conn.execute(MARK_ALERTS_SENT, ids)
            if failure is not None:
                # after the (empty) transaction: the failure record must survive
                await conn.execute(RECORD_ALERT_FAILURE, *failure)
                raise AlertPublishError(failure[1])
        for row in rows:
            self.published[row["kind"]] = self.published.get(row["kind"], 0) + 1
            if self._on_published is not None:
                self._on_published(row["kind"])
        return len(rows)

    async def _publish_alerts(self, rows: list[Any]) -> None:
        now = datetime.now(UTC).isoformat()
        futures = []
        for row in rows:
            payload = orjson.loads(row["payload"])
            payload["emitted_at"] = now
            futures.append(
                await self._producer.send(
                    self._alert_topic,
                    value=orjson.dumps(payload),
                    key=str(row["organization_id"]).encode(),
                )
            )
        await asyncio.gather(*futures)
        if self._after_publish is not None:
            self._after_publish()

    async def relay_health(self) -> int:
        """Publish the latest score of organizations whose score changed.

        The queue is read without row locks and entries are deleted only if
        their version is still the one sent, skipping rows a consumer batch
        holds: a batch never waits for the relay's round trips to the broker
        (it did, when the relay locked the entries while publishing: measured
        ~100-180 ms of `w_states` per small live batch), and the relay never
        waits for a batch.
        """
        if self._health_topic is None:
            return 0
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(sql.TRY_LEADER_LOCK, HEALTH_LOCK_KEY):
                return 0
            rows = await conn.fetch(PENDING_HEALTH, self._batch_size)
            if not rows:
                return 0
            now = datetime.now(UTC)
            futures = [
                await self._producer.send(
                    self._health_topic,
                    value=_health_message(row, now),
                    key=str(row["organization_id"]).encode(),
                )
                for row in rows
            ]
            await asyncio.gather(*futures)
            await conn.execute(
                MARK_HEALTH_SENT,
                [r["organization_id"] for r in rows],
                [r["version"] for r in rows],
            )
        return len(rows)

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; back off on errors, never give up."""
        backoff = interval
        while not stop.is_set():
            try:
                sent = await self.relay_alerts() + await self.relay_health()
                backoff = interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("relay_failed", error=type(exc).__name__, message=str(exc)[:300])
                sent = 0
                backoff = min(backoff * 2, 5.0)
            if sent == 0:
                await pause_unless_stopped(stop, backoff)


def _health_message(row: Any, now: datetime) -> bytes:
    return orjson.dumps(
        {
            "organization_id": str(row["organization_id"]),
            "health_score": float(row["health_score"]),
            "previous_score": None
            if row["previous_score"] is None
            else float(row["previous_score"]),
            "health_status": row["health_status"],
            "churn_probability": float(row["churn_probability"]),
            "risk_level": row["risk_level"],
            "components": {
                "engagement": float(row["engagement_score"]),
                "adoption": float(row["adoption_score"]),
                "milestones": float(row["milestone_score"]),
                "support": float(row["support_score"]),
                "growth": float(row["growth_score"]),
            },
            "risk_factors": orjson.loads(row["risk_factors"]),
            "score_model_version": row["score_model_version"],
            "scored_at": row["scored_at"],
            "emitted_at": now,
        }
    )
