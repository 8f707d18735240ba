"""Composition root: wires settings, pool, broker, pipeline, relay and sweep.

`Service` owns every long-lived resource. `start()` brings them up in
dependency order, `stop()` takes them down in reverse: the subscribers stop
first (a batch in flight either commits whole or rolls back), then the relay
and sweep, then the producer and the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from healthscore.config import Settings
from healthscore.consumers import BatchHandler, SeekToStoredOffsets
from healthscore.contracts import SupportEvent, UsageEvent
from healthscore.db import create_pool
from healthscore.gctuning import FullCollectionPacer
from healthscore.ingest.decode import Decoder
from healthscore.ingest.dlq import DeadLetterQueue
from healthscore.ingest.pipeline import BatchOutcome, BatchPipeline
from healthscore.kafka_admin import ensure_topics, service_topics
from healthscore.ops.asyncapi import asyncapi_html, asyncapi_json, declare_outputs
from healthscore.ops.gauges import GaugeRefresher
from healthscore.ops.http import OpsApp
from healthscore.ops.metrics import Metrics
from healthscore.ops.readiness import ReadinessChecker
from healthscore.ops.server import OpsServer
from healthscore.outbox import OutboxRelay
from healthscore.scoring.model import ScoreModel, load_model
from healthscore.sweep import SilenceSweep

log = structlog.get_logger(__name__)


async def _raw_records(message: Any) -> Any:
    """FastStream decoder: hand the handler the raw aiokafka records.

    Validation happens per record in `ingest.decode`, so one bad message is
    dead-lettered instead of failing the batch it came in.
    """
    return message.raw_message


def _typed_handler(handler: BatchHandler | None, payload: Any) -> Any:
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
    handler: BatchHandler | None,
    listener: SeekToStoredOffsets | None,
) -> tuple[KafkaBroker, Any]:
    """The FastStream broker with its one subscriber and the declared outputs.

    With no handler it only describes the service (for the AsyncAPI export).
    """
    s = settings
    broker = KafkaBroker(bootstrap, apply_types=False, logger=None)
    # One subscriber for both input topics: one consumer per process, one
    # group join, and one transaction per fetch whichever topic it came from.
    subscriber = broker.subscriber(
        s.usage_topic,
        s.support_topic,
        batch=True,
        group_id=s.consumer_group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        max_records=s.batch_max_records,
        batch_timeout_ms=s.batch_timeout_ms,
        max_partition_fetch_bytes=s.kafka_max_partition_fetch_bytes,
        fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
        session_timeout_ms=s.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(300, s.kafka_session_timeout_ms // 3),
        listener=listener,
        decoder=_raw_records,
        title="healthscore:consume",
        description=(
            f"UsageEvent records from {s.usage_topic} and SupportEvent records from "
            f"{s.support_topic}, consumed in batches by one consumer group "
            f"({s.consumer_group}); an invalid record goes to <topic>{s.dlq_suffix} with "
            "headers naming the error."
        ),
    )
    subscriber(_typed_handler(handler, UsageEvent | SupportEvent))
    declare_outputs(broker, s)
    return broker, subscriber


@dataclass
class ServiceOptions:
    run_relay: bool = True
    run_sweep: bool = True
    create_topics: bool = True
    serve_http: bool = True
    gauge_interval_seconds: float = 5.0
    # the band/risk gauges read all of customer_health
    distribution_interval_seconds: float = 60.0
    # a full garbage collection after every this many batches (0: the interpreter's
    # own schedule); set where the process's collector is tuned (gctuning)
    full_gc_every_batches: int = 0


@dataclass
class Service:
    settings: Settings
    options: ServiceOptions = field(default_factory=ServiceOptions)
    model: ScoreModel | None = None
    pool: asyncpg.Pool[Any] | None = None
    producer: AIOKafkaProducer | None = None
    broker: KafkaBroker | None = None
    pipeline: BatchPipeline | None = None
    relay: OutboxRelay | None = None
    sweep: SilenceSweep | None = None
    listeners: list[SeekToStoredOffsets] = field(default_factory=list)
    handlers: list[BatchHandler] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    gauges: GaugeRefresher | None = None
    readiness: ReadinessChecker | None = None
    http_port: int | None = None
    _http_server: OpsServer | None = None
    outcomes: list[BatchOutcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        url = self.settings.database_url
        if url is None:
            raise ValueError("DATABASE_URL is not set")
        return url.get_secret_value()

    @property
    def bootstrap(self) -> str:
        if self.settings.kafka_bootstrap_servers is None:
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS is not set")
        return self.settings.kafka_bootstrap_servers

    async def start(self) -> None:
        s = self.settings
        self.model = load_model(s.model_path)
        if self.options.create_topics:
            await ensure_topics(
                self.bootstrap,
                service_topics(s),
                s.topic_partitions,
                compacted=frozenset({s.health_topic}),
            )
        self.pool = await create_pool(
            self.database_url, s.database_role, min_size=1, max_size=s.database_pool_size
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=s.kafka_idempotent_producer,
            linger_ms=5,
            # dead letters carry the original bytes, which may be larger than
            # what the service accepts (that is why they are dead)
            max_request_size=16 * 1024 * 1024,
        )
        await self.producer.start()
        self.pipeline = BatchPipeline(
            pool=self.pool,
            decoder=Decoder(s.usage_topic, s.support_topic, s.max_message_bytes),
            dlq=DeadLetterQueue(self.producer, s.dlq_suffix),
            model=self.model,
            consumer_group=s.consumer_group,
            rescore_step_seconds=s.silence_rescore_after_seconds,
        )
        self.broker = self._build_broker()
        await self.broker.start()
        for handler in self.handlers:
            self._spawn(handler.drain_held(self._stop))
        if self.options.run_relay:
            self.relay = OutboxRelay(
                self.pool,
                self.producer,
                s.alert_topic,
                s.health_topic,
                on_published=lambda kind: self.metrics.alerts_published.labels(kind).inc(),
            )
            self._spawn(self.relay.run(s.relay_interval_seconds, self._stop))
        if self.options.run_sweep:
            self.sweep = SilenceSweep(
                self.pool,
                self.model,
                s.consumer_group,
                s.silence_rescore_after_seconds,
                on_run=self._on_sweep,
            )
            self._spawn(
                self.sweep.run(s.sweep_interval_seconds, self._stop, s.dedupe_retention_days)
            )
        self.gauges = GaugeRefresher(
            self.pool,
            self.metrics,
            self.bootstrap,
            s.consumer_group,
            [s.usage_topic, s.support_topic],
        )
        self._spawn(
            self.gauges.run(
                self.options.gauge_interval_seconds,
                self._stop,
                self.options.distribution_interval_seconds,
            )
        )
        if self.options.serve_http:
            await self._start_http()
        log.info(
            "service_started",
            group=s.consumer_group,
            topics=[s.usage_topic, s.support_topic],
            ops_port=self.http_port,
        )

    async def _start_http(self) -> None:
        s = self.settings
        self.readiness = ReadinessChecker(
            {
                "postgres": self._check_postgres,
                "kafka": self._check_kafka,
                "partitions": self._check_partitions,
            },
            interval=s.readiness_interval_seconds,
            timeout=s.readiness_check_timeout_seconds,
        )
        self._spawn(self.readiness.run(self._stop))
        show = s.asyncapi_show_servers
        app = OpsApp(
            self.metrics,
            self.readiness,
            asyncapi_json=lambda: asyncapi_json(self._require_broker(), show),
            asyncapi_html=lambda: asyncapi_html(self._require_broker(), show),
            max_per_second=s.ops_max_requests_per_second,
        )
        server = OpsServer(app.handle)
        await server.start(s.ops_host, s.ops_port)
        self._http_server = server
        self.http_port = server.port

    def _require_broker(self) -> KafkaBroker:
        assert self.broker is not None
        return self.broker

    async def _check_postgres(self) -> str | None:
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        return None

    async def _check_kafka(self) -> str | None:
        assert self.producer is not None
        # a real round trip: an open socket to a hung broker is not "reachable"
        metadata = await self.producer.client.fetch_all_metadata()
        if not metadata.brokers():
            return "the cluster reports no brokers"
        return None

    async def _check_partitions(self) -> str | None:
        if not any(listener.assigned for listener in self.listeners):
            return "no input partitions assigned to this process (yet)"
        return None

    def _on_sweep(self, duration: float, alert_kinds: list[str]) -> None:
        self.metrics.sweep_runs.inc()
        self.metrics.sweep_duration.observe(duration)
        for kind in alert_kinds:
            self.metrics.alerts_raised.labels(kind).inc()

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro))

    def _build_broker(self) -> KafkaBroker:
        s = self.settings
        assert self.pool is not None and self.pipeline is not None
        holder: dict[str, Any] = {}
        listener = SeekToStoredOffsets(
            self.pool,
            s.consumer_group,
            lambda: holder["subscriber"].consumer,
            on_change=self._on_rebalance,
        )
        self.listeners.append(listener)
        handler = BatchHandler(
            self.pipeline,
            lambda: holder["subscriber"].consumer,
            on_outcome=self._record_outcome,
            on_failure=lambda exc: self.metrics.batch_failures.inc(),
            after_batch=FullCollectionPacer(self.options.full_gc_every_batches).after_batch,
        )
        listener.on_revoked = handler.forget
        listener.on_positioned = handler.positioned
        self.handlers.append(handler)
        broker, holder["subscriber"] = build_broker(s, self.bootstrap, handler, listener)
        return broker

    def _on_rebalance(self, change: str, partitions: int) -> None:
        self.metrics.rebalances.labels(change).inc()
        log.info("rebalance", change=change, partitions=partitions)

    def _record_outcome(self, outcome: BatchOutcome, duration: float) -> None:
        self.metrics.observe_batch(outcome, duration)
        for rejection in outcome.rejections:
            record = rejection.record
            log.warning(
                "message_rejected",
                reason=rejection.reason,
                detail=rejection.detail,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
        # keep a short history of summaries only: the rejections hold the records
        outcome.rejections = []
        self.outcomes.append(outcome)
        if len(self.outcomes) > 200:
            del self.outcomes[:100]
        log.info(
            "batch_committed",
            records=outcome.records,
            applied=outcome.applied,
            duplicates=outcome.duplicates,
            replayed_skipped=outcome.skipped_replayed,
            rejected=outcome.rejected,
            organizations_rescored=outcome.organizations_rescored,
            milestones=outcome.milestones,
            alerts=outcome.alerts,
            offsets_from={f"{t}:{p}": o for (t, p), o in outcome.first_offsets.items()},
            offsets={f"{t}:{p}": o for (t, p), o in outcome.next_offsets.items()},
            # partitions the event-time alignment held back, from this offset on
            held_from={f"{t}:{p}": o for (t, p), o in outcome.held_from.items()},
            duration_ms=round(duration * 1000, 1),
            phases_ms=outcome.timings_ms,
        )

    async def wait(self) -> None:
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        self._stop.set()
        if self.broker is not None:
            await self.broker.stop()
        if self._http_server is not None:
            self._http_server.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.producer is not None:
            await self.producer.stop()
        if self.pool is not None:
            await self.pool.close()
        log.info("service_stopped")
