"""The naive baseline: one FastStream message, one Postgres transaction.

This is how most tutorials write a Kafka-to-Postgres consumer: a per-message
subscriber (no `batch=True`) whose handler opens a transaction, does the
work for that one event and commits. It reuses the service's pure core and
its SQL so that it writes exactly the same effects with the same guarantees
(stored offsets in the same transaction, event-id dedupe, dead letters,
rescoring, outbox alerts); only the unit of work differs. The benchmark runs
it as a child process:

    python -m healthscore_lab.bench.naive STATS.json

with the service's environment (DATABASE_URL, topics, CONSUMER_GROUP...).
A message is handled as a batch of one by the service's own `BatchPipeline`.
On SIGTERM it stops and writes its counters and commit times to STATS.json.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from healthscore.config import Settings
from healthscore.core.scoring.model import load_model
from healthscore.service.consumers import to_raw
from healthscore.service.holdback import HoldBack
from healthscore.service.ingest.decode import Decoder
from healthscore.service.ingest.dlq import DeadLetterQueue
from healthscore.service.ingest.pipeline import BatchPipeline
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.kafka_offsets import KafkaOffsets
from healthscore.service.kafka_salvage import CorruptRecordMonitor, install_salvaging_consumer
from healthscore.store.db import create_pool, database_tls


class NaiveHandler:
    """Per message: the service's own batch pipeline, on a batch of one record.

    So the effects and guarantees are exactly the service's (the same SQL, the
    same pure core); only the unit of work, one transaction per event, differs.
    """

    def __init__(self, pipeline: BatchPipeline) -> None:
        self._pipeline = pipeline
        self.records = 0
        self.applied = 0
        self.duplicates = 0
        self.rejected = 0
        self.first_commit: float | None = None
        self.last_commit: float | None = None

    async def __call__(self, message: Any) -> None:
        outcome = await self._pipeline.process([to_raw(message)])
        if outcome.skipped_replayed:
            return  # redelivered: already applied
        self.records += 1
        self.applied += outcome.applied
        self.duplicates += outcome.duplicates
        self.rejected += sum(outcome.rejected.values())
        now = time.time()
        if self.first_commit is None:
            self.first_commit = now
        self.last_commit = now


async def run() -> dict[str, Any]:
    settings = Settings()
    assert settings.database_url is not None and settings.kafka_bootstrap_servers is not None
    model = load_model(settings.model_path)
    pool = await create_pool(
        settings.database_url.get_secret_value(),
        settings.database_role,
        min_size=1,
        max_size=2,
        tls=database_tls(settings),
    )
    kafka = KafkaConnection.from_settings(settings)
    producer = kafka.producer(
        acks="all",
        enable_idempotence=settings.kafka_idempotent_producer,
    )
    await producer.start()
    pipeline = BatchPipeline(
        pool=pool,
        decoder=Decoder(settings.usage_topic, settings.support_topic, settings.max_message_bytes),
        dlq=DeadLetterQueue(producer, settings.dlq_suffix),
        model=model,
        consumer_group=settings.consumer_group,
        rescore_step_seconds=settings.silence_rescore_after_seconds,
        # as a tutorial consumer would: the dashboard's table with every event
        read_model_in_transaction=True,
    )
    handler = NaiveHandler(pipeline)
    broker = kafka.broker(apply_types=False, logger=None)
    listener = KafkaOffsets(pool, settings.consumer_group, HoldBack(pipeline.decode))

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
    subscriber(handler)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await install_salvaging_consumer(broker, CorruptRecordMonitor(), listener.consumer_built)
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
