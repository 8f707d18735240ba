"""What the readiness checker asks of the running service (`ops.readiness` runs them).

Each check answers None when fine, else why not; the notes are O(1) facts shown
beside the checks in /readyz that do not make the service unready.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from healthscore.service.consumers import BatchHandler
from healthscore.service.kafka_offsets import KafkaOffsets
from healthscore.service.kafka_salvage import CorruptRecordMonitor
from healthscore.service.ops.readiness import Check
from healthscore.service.projector import Projector

# batches failing this long, this many in a row, without one committing: not ready (a
# release that fails every batch holds its rollout instead of replacing every replica;
# the Deployment's minReadySeconds is longer than a failing start-up takes to show it)
BATCHES_FAILING_UNREADY_SECONDS = 10.0
BATCHES_FAILING_UNREADY_COUNT = 3
# a failure older than this, with none since, is not the batches failing now: a batch
# that failed is fetched again within seconds (the retry's pause is 5 s at most), so
# this says its partitions went to another replica or stopped delivering
BATCHES_FAILURE_FRESH_SECONDS = 30.0


def readiness_checks(
    pool: asyncpg.Pool[Any],
    producer: AIOKafkaProducer,
    offsets: KafkaOffsets,
    projector: Projector | None,
    staleness_max_seconds: float,
    corrupt_records: CorruptRecordMonitor,
    handler: BatchHandler,
) -> dict[str, Check]:
    async def postgres() -> str | None:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        return None

    async def kafka() -> str | None:
        # a real round trip: an open socket to a hung broker is not "reachable"
        metadata = await producer.client.fetch_all_metadata()
        if not metadata.brokers():
            return "the cluster reports no brokers"
        return None

    async def partitions() -> str | None:
        if not offsets.assigned:
            return "no input partitions assigned to this process (yet)"
        refused = offsets.refused
        if refused:
            (topic, partition), why = sorted(refused.items())[0]
            more = f" (+{len(refused) - 1} more)" if len(refused) > 1 else ""
            return f"not consuming {topic}:{partition}: {why}{more}; see healthscore offsets-reset"
        return None

    async def read_model() -> str | None:
        if projector is None:
            return None
        # what a catching-up replica leaves queued on purpose is not being behind
        behind = projector.latest_staleness - projector.coalescing
        if behind > staleness_max_seconds:
            return (
                f"the read model is {projector.latest_staleness:.0f} s behind the state, "
                f"{projector.coalescing:.0f} s of it coalescing while catching up "
                f"(READ_MODEL_STALENESS_MAX_SECONDS={staleness_max_seconds:g})"
            )
        return None

    async def corrupt() -> str | None:
        # a salvaged record is dead-lettered and shown in the notes; only one the
        # consumer cannot get past makes the service unready
        return corrupt_records.stuck()

    async def batches() -> str | None:
        since = handler.failing_since
        if since is None or handler.failing_batches < BATCHES_FAILING_UNREADY_COUNT:
            return None
        now = time.monotonic()
        if now - handler.last_failed_at > BATCHES_FAILURE_FRESH_SECONDS:
            return None
        failing = now - since
        if failing < BATCHES_FAILING_UNREADY_SECONDS:
            return None
        return (
            f"{handler.failing_batches} batches in a row failed over {failing:.0f} s, none "
            f"committed (the last: {handler.last_failure}); batch_failed_will_retry says why"
        )

    return {
        "postgres": postgres,
        "kafka": kafka,
        "partitions": partitions,
        "read_model": read_model,
        "corrupt_records": corrupt,
        "batches": batches,
    }


def readiness_notes(
    projector: Projector | None, corrupt_records: CorruptRecordMonitor
) -> Callable[[], dict[str, Any]]:
    def notes() -> dict[str, Any]:
        staleness = projector.latest_staleness if projector is not None else 0.0
        facts: dict[str, Any] = {"read_model_staleness_seconds": round(staleness, 3)}
        if corrupt_records.total:
            facts.update(corrupt_records.describe())
        return facts

    return notes
