"""The naive baseline: one FastStream message, one Postgres transaction.

This is how most tutorials write a Kafka-to-Postgres consumer: a per-message
subscriber (no `batch=True`) whose handler opens a transaction, does the
work for that one event and commits. It reuses the service's pure core and
its SQL so that it writes exactly the same effects with the same guarantees
(stored offsets in the same transaction, event-id dedupe, dead letters,
rescoring, outbox alerts); only the unit of work differs. The benchmark runs
it as a child process:

    python -m healthscore.bench.naive STATS.json

with the service's environment (DATABASE_URL, topics, CONSUMER_GROUP...).
On SIGTERM it stops and writes its counters and commit times to STATS.json.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from healthscore.config import Settings
from healthscore.consumers import SeekToStoredOffsets, to_raw
from healthscore.contracts import SupportEvent
from healthscore.db import create_pool
from healthscore.ingest.decode import Decoded, Decoder, RawRecord, Rejection
from healthscore.ingest.dlq import DeadLetterQueue
from healthscore.ingest.effects import BatchEffects, compute_batch_effects
from healthscore.interactions import InteractionRecord
from healthscore.scoring.model import ScoreModel, load_model
from healthscore.scoring.state import OrganizationState, decode_state
from healthscore.store import sql
from healthscore.store.effects_writer import write_effects
from healthscore.store.records import interaction_from_row


class NaiveHandler:
    """Per message: decode, then one transaction that does everything for it."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        decoder: Decoder,
        dlq: DeadLetterQueue,
        model: ScoreModel,
        settings: Settings,
    ) -> None:
        self._pool = pool
        self._decoder = decoder
        self._dlq = dlq
        self._model = model
        self._group = settings.consumer_group
        self._rescore_step = settings.silence_rescore_after_seconds
        self.records = 0
        self.applied = 0
        self.duplicates = 0
        self.rejected = 0
        self.first_commit: float | None = None
        self.last_commit: float | None = None

    async def __call__(self, message: Any) -> None:
        record = to_raw(message)
        item = self._decoder.decode(record)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                sql.ENSURE_OFFSET_ROWS, self._group, [record.topic], [record.partition]
            )
            row = await conn.fetchrow(
                sql.LOCK_OFFSETS, self._group, [record.topic], [record.partition]
            )
            assert row is not None
            if record.offset < int(row["next_offset"]):
                return  # redelivered: already applied
            if isinstance(item, Decoded):
                await self._apply(conn, item)
            else:
                await self._dlq.publish([item])
                self.rejected += 1
            occurred = item.event.occurred_at if isinstance(item, Decoded) else None
            await conn.execute(
                sql.SAVE_OFFSETS,
                self._group,
                [record.topic],
                [record.partition],
                [record.offset + 1],
                [occurred],
            )
        self.records += 1
        now = time.time()
        if self.first_commit is None:
            self.first_commit = now
        self.last_commit = now

    async def _apply(self, conn: Any, item: Decoded) -> None:
        event = item.event
        claimed = await conn.fetch(
            sql.CLAIM_EVENT_IDS, [event.event_id], [event.organization_id], [event.occurred_at]
        )
        if not claimed:
            self.duplicates += 1
            return
        org = event.organization_id
        await conn.execute(sql.ENSURE_ORGANIZATIONS, [org])
        await conn.execute(sql.ENSURE_STATE_ROWS, [org])
        states: dict[str, OrganizationState] = {}
        for row in await conn.fetch(sql.LOCK_STATES, [org]):
            if row["state"] != "null":
                states[str(row["organization_id"])] = decode_state(row["state"])
        interactions: dict[str, InteractionRecord] = {}
        if isinstance(event, SupportEvent):
            for row in await conn.fetch(sql.READ_INTERACTIONS, [event.interaction_id]):
                stored = interaction_from_row(row)
                interactions[stored.id] = stored
        effects: BatchEffects = compute_batch_effects([event], states, interactions, self._model)
        if effects.misrouted:
            # not applied, so not processed (as the batch pipeline does)
            await conn.execute(sql.UNCLAIM_EVENT_IDS, [event.event_id])
            await self._dlq.publish(
                [
                    _misrouted(item.record, owner)
                    for _, owner in effects.misrouted  # at most this one event
                ]
            )
            self.rejected += 1
            return
        await write_effects(conn, effects, self._model, self._rescore_step)
        self.applied += effects.applied


def _misrouted(record: RawRecord, owner: str) -> Rejection:
    return Rejection(record, "interaction_org_mismatch", f"interaction belongs to {owner}")


async def run() -> dict[str, Any]:
    settings = Settings()
    assert settings.database_url is not None and settings.kafka_bootstrap_servers is not None
    model = load_model(settings.model_path)
    pool = await create_pool(
        settings.database_url.get_secret_value(), settings.database_role, min_size=1, max_size=2
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=settings.kafka_idempotent_producer,
    )
    await producer.start()
    handler = NaiveHandler(
        pool,
        Decoder(settings.usage_topic, settings.support_topic, settings.max_message_bytes),
        DeadLetterQueue(producer, settings.dlq_suffix),
        model,
        settings,
    )
    broker = KafkaBroker(settings.kafka_bootstrap_servers, apply_types=False, logger=None)
    holder: dict[str, Any] = {}
    listener = SeekToStoredOffsets(pool, settings.consumer_group, lambda: holder["sub"].consumer)

    async def raw(message: Any) -> Any:
        return message.raw_message

    subscriber = broker.subscriber(
        settings.usage_topic,
        settings.support_topic,
        group_id=settings.consumer_group,
        auto_offset_reset="earliest",
        listener=listener,
        decoder=raw,
    )
    holder["sub"] = subscriber
    subscriber(handler)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    print("naive_started", flush=True)
    try:
        await stop.wait()
    finally:
        await broker.stop()
        await producer.stop()
        await pool.close()
    return {
        "records": handler.records,
        "applied": handler.applied,
        "duplicates": handler.duplicates,
        "rejected": handler.rejected,
        "first_commit": handler.first_commit,
        "last_commit": handler.last_commit,
    }


def main() -> None:
    stats = asyncio.run(run())
    Path(sys.argv[1]).write_bytes(orjson.dumps(stats))


if __name__ == "__main__":
    main()
