"""The FastStream broker: one batch subscriber for the input topics, and the outputs
declared for the AsyncAPI document.

The composition root builds it with the batch handler and the offset protocol
(as the rebalance listener); `ops.asyncapi` builds one without them, only to
describe the service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from faststream.kafka import KafkaBroker
from faststream.kafka.message import FAKE_CONSUMER, KafkaMessage
from faststream.middlewares import AckPolicy

from healthscore.config import Settings
from healthscore.contracts import (
    ChurnRiskAlert,
    HealthUpdate,
    OrganizationProfile,
    SupportEvent,
    UsageEvent,
)
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.ops.logging import framework_logger

Handler = Callable[[Sequence[Any]], Awaitable[None]]

# Range first: each topic's partitions are split alike among the members, so the
# process that owns usage partition p owns support and profile partition p too, the
# organizations whose states it holds (design.md, Ownership), whatever the replica
# count; round-robin over all topic-partitions pairs them only when the partition
# count is a multiple of it. Round-robin stays listed so that a group whose members
# still run an older version (round-robin only) keeps a common protocol during a
# rolling upgrade.
ASSIGNORS = (RangePartitionAssignor, RoundRobinPartitionAssignor)


async def _records_as_they_are(records: tuple[Any, ...]) -> KafkaMessage:
    """FastStream parser: the fetched records, untouched.

    FastStream's own batch parser decodes every header value as UTF-8 and
    raises on a binary or null one before the handler runs, which dropped the
    whole fetch. Headers are the service's business (`ingest.decode`).
    """
    first, last = records[0], records[-1]
    return KafkaMessage(
        records,
        body=[],
        message_id=f"{first.topic}-{first.offset}-{last.offset}",
        consumer=FAKE_CONSUMER,
    )


async def _raw_records(message: Any) -> Any:
    """FastStream decoder: hand the handler the raw aiokafka records.

    Validation happens per record in `ingest.decode`, so one bad message is
    dead-lettered instead of failing the batch it came in.
    """
    return message.raw_message


def _typed_handler(handler: Handler | None, payload: Any) -> Any:
    """A subscriber function whose annotation names the contract model.

    FastStream reads the annotation for the AsyncAPI document only: the broker
    runs with apply_types=False, so the handler receives raw records.
    """

    async def handle(records: Any) -> None:
        if handler is None:
            raise RuntimeError("this broker only describes the service")
        await handler(records)

    handle.__annotations__ = {"records": list[payload], "return": None}
    handle.__name__ = "consume_events"
    return handle


def build_broker(
    settings: Settings,
    bootstrap: str,
    handler: Handler | None = None,
    listener: ConsumerRebalanceListener | None = None,
    on_error: Callable[[str], None] | None = None,
) -> KafkaBroker:
    """The broker with its one subscriber and the declared outputs.

    Without a handler it only describes the service (the AsyncAPI export).
    """
    s = settings
    broker = KafkaConnection.from_settings(s, bootstrap).broker(
        apply_types=False,
        logger=framework_logger(on_error) if on_error is not None else None,
    )
    # One subscriber for the input topics: one consumer per process, one
    # group join, and one transaction per fetch whichever topic it came from.
    subscriber = broker.subscriber(
        *s.input_topics,
        batch=True,
        group_id=s.consumer_group,
        partition_assignment_strategy=ASSIGNORS,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        # an aborted transaction's records are never handed over (on Kafka; the
        # embedded broker has no transactions); an open one holds its partition
        isolation_level="read_committed",
        max_records=s.batch_max_records,
        batch_timeout_ms=s.batch_timeout_ms,
        max_partition_fetch_bytes=s.kafka_max_partition_fetch_bytes,
        fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
        session_timeout_ms=s.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(300, s.kafka_session_timeout_ms // 3),
        listener=listener,
        parser=_records_as_they_are,
        decoder=_raw_records,
        title="healthscore:consume",
        description=(
            f"UsageEvent records from {s.usage_topic}, SupportEvent records from "
            f"{s.support_topic} and OrganizationProfile records from {s.profile_topic}, "
            "consumed in batches by one consumer group "
            f"({s.consumer_group}); an invalid record goes to <topic>{s.dlq_suffix} with "
            "headers naming the error."
        ),
    )
    subscriber(_typed_handler(handler, UsageEvent | SupportEvent | OrganizationProfile))
    declare_outputs(broker, s)
    return broker


def input_payloads(settings: Settings) -> dict[str, str]:
    """Each input topic and the name of its contract model: the one subscriber's
    annotation names the three together, which the AsyncAPI document would show as
    every topic carrying any of them (`ops.asyncapi` sets each topic's own)."""
    return {
        settings.usage_topic: UsageEvent.__name__,
        settings.support_topic: SupportEvent.__name__,
        settings.profile_topic: OrganizationProfile.__name__,
    }


def declare_outputs(broker: KafkaBroker, settings: Settings) -> None:
    """Describe the output topics in the AsyncAPI document.

    The outbox relay and the DLQ send through one aiokafka producer of their
    own (batched acks, raw header bytes); these publisher declarations give
    the document each output's channel and payload schema.
    """
    broker.publisher(
        settings.alert_topic,
        schema=ChurnRiskAlert,
        title=f"{settings.alert_topic}:publish",
        description="One alert per risk episode step; key = organization_id; "
        "alert_id is deterministic, so consumers drop repeats. Headers: content-type "
        "application/json and correlation_id, the alert_id (the same on every re-send).",
    )
    broker.publisher(
        settings.health_topic,
        schema=HealthUpdate,
        title=f"{settings.health_topic}:publish",
        description="Latest score of each organization; compacted; key = organization_id.",
    )
    for source, dlq in settings.dlq_topics.items():
        broker.publisher(
            dlq,
            schema=bytes,
            title=f"{dlq}:publish",
            description=f"Rejected records of {source}, original bytes unchanged; headers "
            "name the error and the source coordinates.",
        )
