"""Composition root: wires settings, pool, broker, pipeline, relay and sweep.

`Service` owns every long-lived resource. `start()` brings them up in
dependency order, `stop()` takes them down in reverse: the subscribers stop
first (a batch in flight either commits whole or rolls back), then the relay
and sweep, then the producer and the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from faststream.kafka import KafkaBroker
from faststream.kafka.message import FAKE_CONSUMER, KafkaMessage
from faststream.middlewares import AckPolicy

from healthscore.config import Settings
from healthscore.contracts import SupportEvent, UsageEvent
from healthscore.core.partitions import PartitionKey
from healthscore.core.scoring.model import ScoreModel, load_model
from healthscore.errors import StartupRefused
from healthscore.service.consumers import HELD_IDLE_SECONDS, BatchHandler
from healthscore.service.gctuning import FullCollectionPacer
from healthscore.service.holdback import HoldBack
from healthscore.service.ingest.decode import Decoder
from healthscore.service.ingest.dlq import DeadLetterQueue
from healthscore.service.ingest.pipeline import BatchOutcome, BatchPipeline
from healthscore.service.kafka_admin import ensure_topics, service_topics
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.kafka_offsets import KafkaOffsets
from healthscore.service.kafka_salvage import CorruptRecordMonitor, install_salvaging_consumer
from healthscore.service.ops.asyncapi import asyncapi_html, asyncapi_json, declare_outputs
from healthscore.service.ops.gauges import GaugeRefresher
from healthscore.service.ops.http import OpsApp
from healthscore.service.ops.lag import HighWatermarkProbe
from healthscore.service.ops.logging import framework_logger
from healthscore.service.ops.metrics import Metrics
from healthscore.service.ops.readiness import ReadinessChecker
from healthscore.service.ops.server import OpsServer
from healthscore.service.outbox import OutboxRelay
from healthscore.service.periodic import every
from healthscore.service.projector import Projector
from healthscore.service.sweep import SilenceSweep
from healthscore.store.db import create_pool, database_tls

log = structlog.get_logger(__name__)


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
    listener: KafkaOffsets | None,
    on_error: Callable[[str], None] | None = None,
) -> tuple[KafkaBroker, Any]:
    """The FastStream broker with its one subscriber and the declared outputs.

    With no handler it only describes the service (for the AsyncAPI export).
    """
    s = settings
    broker = KafkaConnection.from_settings(s, bootstrap).broker(
        apply_types=False,
        logger=framework_logger(on_error) if on_error is not None else None,
    )
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
        parser=_records_as_they_are,
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


def bind_ops_socket(host: str, port: int) -> socket.socket:
    """The ops endpoints' listening socket (port 0: any free port).

    Bound first in `Service.start`, so a taken port stops start-up with one
    line naming the setting, before any producer or pool is open.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise StartupRefused(
            f"the ops endpoints cannot listen on OPS_HOST={host!r} ({exc}): set OPS_HOST "
            "to an address of this machine"
        ) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartupRefused(
            f"the ops endpoints cannot listen on {host}:{port} ({exc.strerror or exc}): set "
            "OPS_PORT to a free port (0 = any free port) or OPS_HOST to another address"
        ) from exc
    return sock


async def start_producer(producer: AIOKafkaProducer, idempotent: bool) -> None:
    """Start `producer`; a broker that refuses idempotence stops start-up with one line.

    An idempotent producer asks the broker for a producer id (InitProducerId)
    once it has bootstrapped; a broker without idempotence (the embedded tansu
    broker) or a cluster denying IdempotentWrite answers with an error. The
    service does not fall back to a non-idempotent producer on its own: that
    would weaken delivery (duplicates on retries) behind the operator's back.
    """
    try:
        await producer.start()
    except KafkaError as exc:
        bootstrapped = bool(producer.client.cluster.brokers())
        if idempotent and bootstrapped and not isinstance(exc, KafkaConnectionError):
            raise StartupRefused(
                f"the broker refused an idempotent producer (InitProducerId answered "
                f"{type(exc).__name__}): set KAFKA_IDEMPOTENT_PRODUCER=false for a broker "
                "without idempotence (such as the embedded tansu broker), or allow "
                "IdempotentWrite for this client on the cluster"
            ) from exc
        raise


@dataclass
class ServiceOptions:
    run_relay: bool = True
    # the read model: customer_health and the health feed, projected from state
    run_projector: bool = True
    publish_health: bool = True
    # the silence sweep, and the silence rescorings batches make before events
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
    projector: Projector | None = None
    read_model_staleness: float = 0.0
    listeners: list[KafkaOffsets] = field(default_factory=list)
    handlers: list[BatchHandler] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    gauges: GaugeRefresher | None = None
    readiness: ReadinessChecker | None = None
    # records the Kafka client could not parse and the consumer got past (kafka_salvage)
    corrupt_records: CorruptRecordMonitor | None = None
    http_port: int | None = None
    _http_server: OpsServer | None = None
    _ops_socket: socket.socket | None = None
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

    @property
    def kafka(self) -> KafkaConnection:
        return KafkaConnection.from_settings(self.settings, self.bootstrap)

    async def start(self) -> None:
        """Bring everything up; if this raises, `stop()` closes what was opened."""
        s = self.settings
        if self.options.serve_http:
            self._ops_socket = bind_ops_socket(s.ops_host, s.ops_port)
        self.model = load_model(s.model_path)
        if self.options.create_topics:
            await ensure_topics(
                self.kafka,
                service_topics(s),
                s.topic_partitions,
                s.topic_replication_factor,
                compacted=frozenset({s.health_topic}),
            )
        self.pool = await create_pool(
            self.database_url,
            s.database_role,
            min_size=1,
            max_size=s.database_pool_size,
            tls=database_tls(s),
        )
        self.producer = self.kafka.producer(
            acks="all",
            enable_idempotence=s.kafka_idempotent_producer,
            linger_ms=5,
            # dead letters carry the original bytes, which may be larger than
            # what the service accepts (that is why they are dead)
            max_request_size=16 * 1024 * 1024,
        )
        await start_producer(self.producer, s.kafka_idempotent_producer)
        self.pipeline = BatchPipeline(
            pool=self.pool,
            decoder=Decoder(s.usage_topic, s.support_topic, s.max_message_bytes),
            dlq=DeadLetterQueue(self.producer, s.dlq_suffix),
            model=self.model,
            consumer_group=s.consumer_group,
            rescore_step_seconds=s.silence_rescore_after_seconds,
            silence_rescoring=self.options.run_sweep,
        )
        self.broker = self._build_broker()
        self.corrupt_records = CorruptRecordMonitor(self.metrics.corrupt_records)
        await install_salvaging_consumer(
            self.broker, self.corrupt_records, self.listeners[0].consumer_built
        )
        await self.broker.start()
        for handler in self.handlers:
            self._spawn(every(HELD_IDLE_SECONDS, handler.drain_held, self._stop, "drain_held"))
        if self.options.run_relay:
            self.relay = OutboxRelay(
                self.pool,
                self.producer,
                s.alert_topic,
                on_published=lambda kind: self.metrics.alerts_published.labels(kind).inc(),
            )
            self._spawn(every(s.relay_interval_seconds, self.relay.step, self._stop, "relay", 5.0))
        if self.options.run_projector:
            self.projector = Projector(
                self.pool,
                self.model,
                self.producer,
                s.health_topic if self.options.publish_health else None,
                page_size=s.projector_page_size,
                on_pass=self._on_projection,
            )
            self._spawn(
                every(
                    s.projector_interval_seconds, self.projector.step, self._stop, "projection", 5.0
                )
            )
            self.metrics.read_model_staleness_target.set(s.read_model_staleness_target_seconds)
            self._spawn(every(1.0, self._watch_staleness, self._stop, "staleness_check"))
        if self.options.run_sweep:
            self.sweep = SilenceSweep(
                self.pool,
                self.model,
                s.consumer_group,
                s.silence_rescore_after_seconds,
                topics=[s.usage_topic, s.support_topic],
                on_run=self._on_sweep,
                dedupe_retention_days=s.dedupe_retention_days,
            )
            self._spawn(every(s.sweep_interval_seconds, self.sweep.step, self._stop, "sweep"))
        self.gauges = GaugeRefresher(
            self.pool,
            self.metrics,
            self.kafka,
            s.consumer_group,
            [s.usage_topic, s.support_topic],
            self.options.distribution_interval_seconds,
        )
        self._spawn(
            every(
                self.options.gauge_interval_seconds,
                self.gauges.refresh,
                self._stop,
                "gauge_refresh",
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
                "read_model": self._check_read_model,
                "corrupt_records": self._check_corrupt_records,
            },
            interval=s.readiness_interval_seconds,
            timeout=s.readiness_check_timeout_seconds,
            notes=self._readiness_notes,
        )
        self._spawn(
            every(s.readiness_interval_seconds, self.readiness.step, self._stop, "readiness_round")
        )
        show = s.asyncapi_show_servers
        app = OpsApp(
            self.metrics,
            self.readiness,
            asyncapi_json=lambda: asyncapi_json(self._require_broker(), show),
            asyncapi_html=lambda: asyncapi_html(self._require_broker(), show),
            max_per_second=s.ops_max_requests_per_second,
        )
        server = OpsServer(app.handle)
        assert self._ops_socket is not None
        # the socket bound first in start(): a taken port stopped start-up already
        await server.start(sock=self._ops_socket)
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

    async def _check_read_model(self) -> str | None:
        limit = self.settings.read_model_staleness_max_seconds
        if self.projector is not None and self.read_model_staleness > limit:
            return (
                f"the read model is {self.read_model_staleness:.0f} s behind the state "
                f"(READ_MODEL_STALENESS_MAX_SECONDS={limit:g})"
            )
        return None

    async def _check_corrupt_records(self) -> str | None:
        # a salvaged record is dead-lettered and shown in the notes; only one the
        # consumer cannot get past makes the service unready
        monitor = self.corrupt_records
        if monitor is not None and monitor.unresolved is not None:
            return f"cannot get past an unreadable record: {monitor.unresolved}"
        return None

    def _readiness_notes(self) -> dict[str, Any]:
        notes: dict[str, Any] = {
            "read_model_staleness_seconds": round(self.read_model_staleness, 3)
        }
        if self.corrupt_records is not None and self.corrupt_records.total:
            notes.update(self.corrupt_records.describe())
        return notes

    async def _check_partitions(self) -> str | None:
        if not any(listener.assigned for listener in self.listeners):
            return "no input partitions assigned to this process (yet)"
        refused = {k: v for listener in self.listeners for k, v in listener.refused.items()}
        if refused:
            (topic, partition), why = sorted(refused.items())[0]
            more = f" (+{len(refused) - 1} more)" if len(refused) > 1 else ""
            return f"not consuming {topic}:{partition}: {why}{more}; see healthscore offsets-reset"
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
        holdback = HoldBack(self.pipeline.decode, live_lag_records=s.alignment_live_lag_records)
        offsets = KafkaOffsets(
            self.pool,
            s.consumer_group,
            holdback,
            on_change=self._on_rebalance,
            true_ends=self._true_ends,
            on_refused=lambda key, why: self.metrics.partitions_refused.labels(
                key[0], str(key[1])
            ).set(0 if why is None else 1),
        )
        self.listeners.append(offsets)
        handler = BatchHandler(
            self.pipeline,
            offsets,
            holdback,
            on_outcome=self._record_outcome,
            on_failure=lambda exc: self.metrics.batch_failures.inc(),
            after_batch=FullCollectionPacer(self.options.full_gc_every_batches).after_batch,
            on_gap=lambda gap: self.metrics.offset_gaps.labels(gap.topic).inc(),
        )
        self.handlers.append(handler)
        broker, _ = build_broker(
            s,
            self.bootstrap,
            handler,
            offsets,
            on_error=lambda source: self.metrics.framework_errors.labels(source).inc(),
        )
        return broker

    async def _true_ends(self, partitions: list[PartitionKey]) -> dict[PartitionKey, int]:
        async with HighWatermarkProbe(self.kafka) as probe:
            return await probe.high_watermarks(partitions)

    def _on_projection(self, organizations: int, duration: float) -> None:
        self.metrics.read_model_projected.inc(organizations)
        self.metrics.projection_duration.observe(duration)

    async def _watch_staleness(self) -> None:
        """The read model's staleness gauge, refreshed every second."""
        assert self.projector is not None
        self.read_model_staleness = await self.projector.measure_staleness()
        self.metrics.read_model_staleness.set(self.read_model_staleness)

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
        if self.projector is not None:
            # no batch commits any more: leave the read model caught up, if quickly
            with contextlib.suppress(Exception):
                await self.projector.drain(timeout=self.settings.projector_drain_on_stop_seconds)
        if self._http_server is not None:
            self._http_server.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.gauges is not None:
            await self.gauges.close()
        if self.producer is not None:
            await self.producer.stop()
        if self.pool is not None:
            await self.pool.close()
        self._close_ops_socket()
        log.info("service_stopped")

    def _close_ops_socket(self) -> None:
        """Close the ops listener itself only when no server took it over.

        Closing the bare socket under a loop that still watches it would free
        its descriptor number for the next connection while the loop's
        registration for it lives on; the server closes it in `stop()` then.
        """
        if self._http_server is None and self._ops_socket is not None:
            self._ops_socket.close()
