"""Composition root: the service's one object graph, its lifespan and its runner.

`build` wires every component from the settings without any I/O (the
PostgreSQL pool and the producer are built closed): the batch pipeline, the
offset protocol and the hold-back buffer behind the batch handler, the
FastStream broker that calls it, the relay, projector, sweep, gauges,
readiness checker, alert outcome labeller, promotion and (with
SHADOW_MODEL_PATH) the shadow scorer. The result, `Components`, is immutable; a part a variant
switches off (`ServiceOptions`) is None.

`lifespan` opens what `build` made, in dependency order, on one
`AsyncExitStack` (topics, pool, producer, the salvaging consumer, then every
background loop in one `asyncio.TaskGroup`), and closes it in reverse.
FastStream's ASGI app (`AsgiFastStream`, with the ops endpoints as its routes)
runs it around the broker: entered before the broker starts, left after it
stops, so a batch in flight commits or rolls back whole before anything closes.

`running` binds the ops port first (a taken port refuses start-up before
anything opens), builds, runs the app's lifespan, and serves the ops routes
with uvicorn until the caller's block ends. `healthscore serve`, `replay`, the
demo, the naive benchmark baseline and the tests all start the service
through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from faststream.asgi import AsgiFastStream
from faststream.asgi.types import ASGIApp, Receive, Scope, Send
from faststream.kafka import KafkaBroker

from healthscore import __version__
from healthscore.compiled import core_build
from healthscore.config import Settings
from healthscore.core.partitions import PartitionKey
from healthscore.core.quality import aggregate_settings, aggregates_differ, scoring_settings
from healthscore.core.scoring.model import ScoreModel, load_model, shipped_models
from healthscore.errors import ModelConfigError, StartupRefused
from healthscore.service.batch_log import BatchLog
from healthscore.service.broker import build_broker
from healthscore.service.consumers import HELD_IDLE_SECONDS, BatchHandler
from healthscore.service.dead_letters import DeadLetterRelay
from healthscore.service.gctuning import (
    FULL_COLLECTION_MAX_INTERVAL_SECONDS,
    FullCollectionPacer,
)
from healthscore.service.holdback import HoldBack
from healthscore.service.ingest.decode import Decoder
from healthscore.service.ingest.dlq import DeadLetterQueue
from healthscore.service.ingest.pipeline import BatchOutcome, BatchPipeline
from healthscore.service.kafka_admin import ensure_topics, service_topics, topic_configs
from healthscore.service.kafka_clients import KafkaConnection, stop_producer
from healthscore.service.kafka_offsets import KafkaOffsets
from healthscore.service.kafka_salvage import CorruptRecordMonitor, install_salvaging_consumer
from healthscore.service.ops import serving
from healthscore.service.ops.asyncapi import asyncapi_html, asyncapi_json
from healthscore.service.ops.checks import readiness_checks, readiness_notes
from healthscore.service.ops.drift import UsageDrift
from healthscore.service.ops.gauges import GaugeRefresher
from healthscore.service.ops.lag import HighWatermarkProbe, UnreadPartitions
from healthscore.service.ops.metrics import Metrics
from healthscore.service.ops.readiness import ReadinessChecker
from healthscore.service.ops.routes import OpsRoutes, not_found_response
from healthscore.service.outbox import OutboxRelay
from healthscore.service.outcomes import OutcomeLabeller
from healthscore.service.periodic import Step, every
from healthscore.service.projector import Projector, catch_up_wait
from healthscore.service.promotion import Promotion, record_model
from healthscore.service.shadow import ShadowGauges, ShadowScorer
from healthscore.service.sweep import SilenceSweep
from healthscore.store.db import database_tls, opened, service_pool
from healthscore.store.dburl import unreachable
from healthscore.store.migrate import (
    load_migrations,
    migrations_path,
    missing_migrations,
    named_run,
    newer_migrations,
)

log = structlog.get_logger(__name__)

# relay and projector back off up to this long while they fail
LOOP_MAX_BACKOFF_SECONDS = 5.0
STALENESS_WATCH_SECONDS = 1.0
# how often the promotion looks for organizations the read model shows under
# another model version (it counts them less often: promotion.Promotion)
PROMOTION_INTERVAL_SECONDS = 1.0
# on a stop, how long the producer may flush what it holds: each publisher keeps in
# PostgreSQL what the broker did not acknowledge, so a stop during a broker outage
# gives up on it rather than outlast the pod's grace period
PRODUCER_FLUSH_ON_STOP_SECONDS = 5.0
# on a stop, how long the health feed's follow-ups may take (their sends' acks, the
# re-queue): the feed may end on an older score of those cut, until they change again
FEED_FOLLOW_UPS_ON_STOP_SECONDS = 5.0
# on a stop, how long the background loops may take to end once cancelled, and the
# pool to close its connections (then it drops them: the server rolls back what they
# had not committed)
LOOPS_STOP_SECONDS = 5.0
POOL_CLOSE_ON_STOP_SECONDS = 5.0
# a stop asked for while the service still starts: how long what started may take to
# stop before the process exits without it. Above the Kafka clients' request timeout
# (40 s): a consumer's close waits for its group request in flight (a JoinGroup a
# broker holds); below the deployment's 60 s grace period
START_UP_STOP_SECONDS = 45.0
# a stop of the running service that takes longer than this is logged with each task
# and where it waits (its bounded steps take about 27 s at most together, with both
# the broker and PostgreSQL gone; the consumer's own stop is bounded by aiokafka's
# request timeout alone); one not ended after `START_UP_STOP_SECONDS` is given up on as
# a start is: the process exits without it (nothing committed is lost), the log naming
# what held it
STOP_REPORT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """What a variant of the service switches off or tunes (defaults: `healthscore serve`)."""

    run_relay: bool = True
    # the health feed the projector publishes beside customer_health
    publish_health: bool = True
    # the silence sweep, and the silence rescorings batches make before events
    run_sweep: bool = True
    create_topics: bool = True
    # the read model written in each batch's own transaction instead of projected off
    # the event path (the naive benchmark baseline's way: no projector then)
    read_model_in_transaction: bool = False
    # each batch's offsets committed to Kafka too, for lag tooling (PostgreSQL has
    # them either way)
    commit_to_kafka: bool = True
    gauge_interval_seconds: float = 5.0
    # the band/risk gauges read all of customer_health
    distribution_interval_seconds: float = 60.0
    # a full garbage collection after every this many batches (0: the interpreter's
    # own schedule); set where the process's collector is tuned (gctuning)
    full_gc_every_batches: int = 0
    # and one when none ran for this long (no records), by the `full_collection` loop
    full_gc_max_interval_seconds: float = FULL_COLLECTION_MAX_INTERVAL_SECONDS


@dataclass(frozen=True, slots=True)
class Components:
    """The running service's parts (a part its options switch off is None)."""

    settings: Settings
    options: ServiceOptions
    # set when the service stops: every background loop ends
    stop: asyncio.Event
    # where the ops endpoints listen (the bound port when OPS_PORT=0)
    ops_port: int
    model: ScoreModel
    metrics: Metrics
    kafka: KafkaConnection
    pool: asyncpg.Pool[Any]
    producer: AIOKafkaProducer
    pipeline: BatchPipeline
    holdback: HoldBack
    offsets: KafkaOffsets
    handler: BatchHandler
    # the full garbage collections: between batches, and when none ran for a while
    collections: FullCollectionPacer
    broker: KafkaBroker
    # the recent batch outcomes and totals
    outcomes: BatchLog
    # records the Kafka client could not parse and the consumer got past (kafka_salvage)
    corrupt_records: CorruptRecordMonitor
    gauges: GaugeRefresher
    readiness: ReadinessChecker
    relay: OutboxRelay | None
    # publishes what batches dead-lettered (None with the relay off: a replay keeps them)
    dead_letters: DeadLetterRelay | None
    projector: Projector | None
    sweep: SilenceSweep | None
    # what the batches announce to the relay and the projector
    wakes: Wakes
    # live alert decisions labelled retained/churned, precision and lead time gauges
    alert_outcomes: OutcomeLabeller
    # the live population's usage volume against the model's (None: it records none)
    usage_drift: UsageDrift | None
    # re-projects organizations scored by another model version (with the projector)
    promotion: Promotion | None = None
    # the candidate model scored beside the live one (SHADOW_MODEL_PATH)
    shadow: ShadowScorer | None = None
    shadow_gauges: ShadowGauges | None = None


def _model_setting(name: str, path: Path) -> ScoreModel:
    """The model a setting names; a file that is not a valid model (e.g. half-written)
    refuses the start in one line naming the setting, not a traceback."""
    try:
        model = load_model(path)
    except ModelConfigError as exc:
        raise StartupRefused(f"{name}={path} is not a usable model: {exc}") from None
    shipped = shipped_models().get(model.version)
    if shipped is not None and scoring_settings(model) != scoring_settings(shipped):
        # every score it publishes would say it is the shipped model, and a promotion
        # would compare it with the shipped file's settings
        raise StartupRefused(
            f"{name}={path} is version {model.version} but not the shipped "
            f"{model.version}: give an edited or refitted model a version of its own"
        )
    return model


def build(settings: Settings, options: ServiceOptions, ops_port: int) -> Components:
    """Every component, wired; nothing opened yet (see `lifespan`)."""
    s, o = settings, options
    if s.database_url is None:
        raise StartupRefused("DATABASE_URL is not set")
    if s.kafka_bootstrap_servers is None:
        raise StartupRefused("KAFKA_BOOTSTRAP_SERVERS is not set")
    bootstrap = s.kafka_bootstrap_servers
    kafka = KafkaConnection.from_settings(s, bootstrap)
    stop = asyncio.Event()  # set when the service stops (`running`)
    topics = s.input_topics
    model = _model_setting("MODEL_PATH", s.model_path)
    candidate = (
        None
        if s.shadow_model_path is None
        else _model_setting("SHADOW_MODEL_PATH", s.shadow_model_path)
    )
    if (
        candidate is not None
        and candidate.version == model.version
        and scoring_settings(candidate) != scoring_settings(model)
    ):
        # its rows and alerts would be keyed as the live model's version, and the
        # report would read "candidate v4 against the live model v4"
        raise StartupRefused(
            f"SHADOW_MODEL_PATH={s.shadow_model_path} has the live model's version "
            f"{model.version} but other settings: give the candidate a version of its own"
        )
    metrics = Metrics()
    metrics.build_info.labels(
        __version__, load_migrations(migrations_path())[-1].version, core_build()
    ).set(1)
    if o.run_sweep:  # the sweep's replicas purge the event ids past it
        metrics.dedupe_retention.set(s.dedupe_retention_days * 86_400)
    pool = service_pool(
        s.database_url.get_secret_value(),
        s.database_role,
        min_size=1,
        max_size=s.database_pool_size,
        tls=database_tls(s),
        # a replica frozen mid-batch would otherwise hold its partitions' offset rows
        # (and its states) from their next owner for as long as its connection lives
        idle_transaction_limit=s.transaction_idle_limit_seconds,
        # and one frozen half-way through sending a statement (PostgreSQL 17 or later)
        transaction_time_limit=s.transaction_time_limit_seconds,
    )
    producer = kafka.producer(
        acks="all",
        enable_idempotence=s.kafka_idempotent_producer,
        linger_ms=5,
        # dead letters carry the original bytes, which may be larger than
        # what the service accepts (that is why they are dead)
        max_request_size=s.kafka_max_request_bytes,
    )
    pipeline = BatchPipeline(
        pool=pool,
        decoder=Decoder(
            s.usage_topic, s.support_topic, s.max_message_bytes, profile_topic=s.profile_topic
        ),
        model=model,
        consumer_group=s.consumer_group,
        rescore_step_seconds=s.silence_rescore_after_seconds,
        silence_rescoring=o.run_sweep,
        read_model_in_transaction=o.read_model_in_transaction,
        owned_states=s.owned_states_max,
    )

    async def true_ends(partitions: list[PartitionKey]) -> dict[PartitionKey, int]:
        async with HighWatermarkProbe(kafka) as probe:
            return await probe.high_watermarks(partitions)

    def show_consuming() -> None:
        metrics.consuming(s.input_topics, offsets.assigned - offsets.refused.keys())

    def on_rebalance(change: str, partitions: int) -> None:
        if change == "revoked":
            # their next owner writes them now: what this process holds would only
            # fail its version checks
            pipeline.forget_owned_states()
        metrics.rebalances.labels(change).inc()
        show_consuming()
        log.info("rebalance", change=change, partitions=partitions)

    def on_refused(key: PartitionKey, why: str | None) -> None:
        metrics.partitions_refused.labels(key[0], str(key[1])).set(0 if why is None else 1)
        show_consuming()

    holdback = HoldBack(
        pipeline.decode,
        live_lag_records=s.alignment_live_lag_records,
        always_aligned=frozenset({s.profile_topic}),
    )
    offsets = KafkaOffsets(
        pool,
        s.consumer_group,
        holdback,
        on_change=on_rebalance,
        true_ends=true_ends,
        on_refused=on_refused,
        commit_to_kafka=o.commit_to_kafka,
        commit_interval=s.kafka_commit_interval_ms / 1000,
        stop=stop,
    )
    show_consuming()  # nothing yet: every input topic at 0 until the first assignment
    outcomes = BatchLog(metrics)
    wakes = Wakes()
    collections = FullCollectionPacer(
        o.full_gc_every_batches, s.batch_max_records, o.full_gc_max_interval_seconds
    )
    handler = BatchHandler(
        pipeline,
        offsets,
        holdback,
        on_outcome=wakes.announcing(outcomes.record),
        on_failure=lambda exc: metrics.batch_failures.inc(),
        after_batch=collections.after_batch,
        on_gap=lambda gap: metrics.offset_gaps.labels(gap.topic).inc(),
        min_interval=(s.batch_min_interval_ms / 1000, s.batch_max_records),
    )
    broker = build_broker(
        s,
        bootstrap,
        handler,
        offsets,
        on_error=lambda source: metrics.framework_errors.labels(source).inc(),
    )
    relay = (
        OutboxRelay(
            pool,
            producer,
            s.alert_topic,
            on_published=lambda kind: metrics.alerts_published.labels(kind).inc(),
        )
        if o.run_relay
        else None
    )
    dead_letters = (
        DeadLetterRelay(
            pool,
            DeadLetterQueue(producer, s.dlq_suffix),
            on_published=lambda topic, n: metrics.dead_letters_published.labels(topic).inc(n),
            on_withheld=lambda topic: metrics.dead_letters_withheld.labels(topic).inc(),
        )
        if o.run_relay
        else None
    )

    def on_projection(organizations: int, duration: float) -> None:
        metrics.read_model_projected.inc(organizations)
        metrics.projection_duration.observe(duration)

    projector = (
        None
        if o.read_model_in_transaction
        else Projector(
            pool,
            model,
            producer,
            s.health_topic if o.publish_health else None,
            page_size=s.projector_page_size,
            on_pass=on_projection,
            shards=s.projector_shards,
            idle_limit=s.transaction_idle_limit_seconds,
            on_requeue=lambda outcome: metrics.read_model_requeues.labels(outcome).inc(),
            late_record_bound=s.health_feed_late_record_seconds,
            coalesce_for=lambda: catch_up_wait(
                holdback.catch_up_lag(),
                s.read_model_catch_up_after_seconds,
                s.read_model_catch_up_window_seconds,
            ),
        )
    )
    if projector is not None and s.read_model_live_in_batch:
        pipeline.project_live_batches(
            projector.project_in_batch, projector.takes_live_batches, projector.follow_failed_feed
        )

    def on_sweep(duration: float, alert_kinds: list[str]) -> None:
        metrics.sweep_runs.inc()
        metrics.sweep_duration.observe(duration)
        for kind in alert_kinds:
            metrics.alerts_raised.labels(kind).inc()

    unread = UnreadPartitions(kafka, s.activity_topics, offsets.partitions_of)
    sweep = (
        SilenceSweep(
            pool,
            model,
            s.consumer_group,
            s.silence_rescore_after_seconds,
            topics=s.activity_topics,
            on_run=on_sweep,
            dedupe_retention_days=s.dedupe_retention_days,
            unread=unread,
            on_purge=metrics.event_ids_purged.inc,
            history_retention_days=s.history_retention_days,
            on_history_purge=metrics.score_history_purged.inc,
            settle_seconds=s.silence_settle_seconds,
        )
        if o.run_sweep
        else None
    )
    if sweep is not None:
        metrics.event_ids_oldest_age.set_function(sweep.oldest_event_id_age)
    corrupt_records = CorruptRecordMonitor(metrics.corrupt_records)
    shadow = shadow_gauges = None
    if candidate is not None:
        differ = aggregates_differ(model, candidate)
        if differ:
            # the stored aggregates are the live model's: the candidate's scores are
            # then not those it would compute from the events (a replay would)
            log.warning("shadow_model_aggregates_differ", settings=differ)
        shadow = ShadowScorer(
            pool,
            candidate,
            page_size=s.projector_page_size,
            on_page=lambda scored, _duration: metrics.shadow_scored.inc(scored),
        )
        shadow_gauges = ShadowGauges(pool, metrics, candidate.version, model.version)
    readiness = ReadinessChecker(
        readiness_checks(
            pool,
            producer,
            offsets,
            projector,
            s.read_model_staleness_max_seconds,
            corrupt_records,
            handler,
        ),
        interval=s.readiness_interval_seconds,
        timeout=s.readiness_check_timeout_seconds,
        notes=readiness_notes(projector, corrupt_records),
        on_result=lambda result: metrics.readiness_round(result.checks),
    )
    metrics.follow_readiness(readiness.status)
    return Components(
        wakes=wakes,
        settings=s,
        options=o,
        stop=stop,
        ops_port=ops_port,
        model=model,
        metrics=metrics,
        kafka=kafka,
        pool=pool,
        producer=producer,
        pipeline=pipeline,
        holdback=holdback,
        offsets=offsets,
        handler=handler,
        collections=collections,
        broker=broker,
        outcomes=outcomes,
        corrupt_records=corrupt_records,
        gauges=GaugeRefresher(
            pool,
            metrics,
            kafka,
            s.consumer_group,
            topics,
            o.distribution_interval_seconds,
            on_beyond_the_log=offsets.refuse_beyond_the_log,
        ),
        readiness=readiness,
        relay=relay,
        dead_letters=dead_letters,
        projector=projector,
        sweep=sweep,
        alert_outcomes=OutcomeLabeller(
            pool, metrics, s.consumer_group, s.activity_topics, model, unread=unread
        ),
        usage_drift=UsageDrift.for_model(pool, metrics, model, s.usage_drift_sample_organizations),
        promotion=(
            None
            if projector is None
            else Promotion(
                pool,
                model.version,
                metrics,
                page_size=s.projector_page_size,
                live_aggregates=aggregate_settings(model),
            )
        ),
        shadow=shadow,
        shadow_gauges=shadow_gauges,
    )


@dataclass(frozen=True, slots=True)
class Loop:
    interval: float
    step: Step
    name: str
    max_backoff: float | None = None
    wake: asyncio.Event | None = None
    min_pause: float = 0.0


@dataclass(frozen=True, slots=True)
class Wakes:
    """What a committed batch announces to the loops it gave work: alerts to the
    relay, changed states to the projector (they poll only for the rest)."""

    relay: asyncio.Event = field(default_factory=asyncio.Event)
    dead_letters: asyncio.Event = field(default_factory=asyncio.Event)
    projection: asyncio.Event = field(default_factory=asyncio.Event)

    def announcing(
        self, record: Callable[[BatchOutcome, float], Awaitable[None] | None]
    ) -> Callable[[BatchOutcome, float], Awaitable[None] | None]:
        def on_outcome(outcome: BatchOutcome, duration: float) -> Awaitable[None] | None:
            if outcome.alerts:
                self.relay.set()
            if outcome.rejections:
                self.dead_letters.set()
            if outcome.applied:
                self.projection.set()
            return record(outcome, duration)

        return on_outcome


def background_loops(c: Components) -> list[Loop]:
    """Every periodic task of the service (`periodic.every` runs each)."""
    s, o = c.settings, c.options
    loops = [
        Loop(HELD_IDLE_SECONDS, c.handler.drain_held, "drain_held"),
        Loop(o.gauge_interval_seconds, c.gauges.refresh, "gauge_refresh"),
        Loop(s.readiness_interval_seconds, c.readiness.step, "readiness_round"),
    ]
    if o.full_gc_every_batches > 0 and o.full_gc_max_interval_seconds > 0:
        loops.append(Loop(o.full_gc_max_interval_seconds, c.collections.step, "full_collection"))
    if s.kafka_commit_interval_ms > 0:
        loops.append(Loop(s.kafka_commit_interval_ms / 1000, c.offsets.flush, "kafka_commit"))
    if c.relay is not None:
        loops.append(
            Loop(
                s.relay_interval_seconds,
                c.relay.step,
                "relay",
                LOOP_MAX_BACKOFF_SECONDS,
                wake=c.wakes.relay,
            )
        )
    if c.dead_letters is not None:
        loops.append(
            Loop(
                s.relay_interval_seconds,
                c.dead_letters.step,
                "dead_letter_relay",
                LOOP_MAX_BACKOFF_SECONDS,
                wake=c.wakes.dead_letters,
            )
        )
    if c.projector is not None:
        projector = c.projector

        async def watch_staleness() -> None:
            c.metrics.read_model_staleness.set(await projector.measure_staleness())
            c.metrics.health_feed_owed_age.set(await projector.feed_owed_age())

        loops.append(
            Loop(
                s.projector_idle_seconds,
                projector.step,
                "projection",
                LOOP_MAX_BACKOFF_SECONDS,
                wake=c.wakes.projection,
                min_pause=s.projector_interval_seconds,
            )
        )
        # backs off as the others do: while PostgreSQL is down it failed every second
        loops.append(
            Loop(
                STALENESS_WATCH_SECONDS,
                watch_staleness,
                "staleness_check",
                LOOP_MAX_BACKOFF_SECONDS,
            )
        )
    if c.sweep is not None:
        loops.append(Loop(s.sweep_interval_seconds, c.sweep.step, "sweep"))
    loops.append(Loop(s.outcome_interval_seconds, c.alert_outcomes.step, "alert_outcomes"))
    if c.usage_drift is not None:
        loops.append(Loop(s.usage_drift_interval_seconds, c.usage_drift.step, "usage_drift"))
    if c.promotion is not None:
        loops.append(Loop(PROMOTION_INTERVAL_SECONDS, c.promotion.step, "promotion"))
    if c.shadow is not None and c.shadow_gauges is not None:
        loops.append(
            Loop(s.shadow_interval_seconds, c.shadow.step, "shadow", LOOP_MAX_BACKOFF_SECONDS)
        )
        loops.append(Loop(s.outcome_interval_seconds, c.shadow_gauges.refresh, "shadow_report"))
    return loops


@contextlib.asynccontextmanager
async def lifespan(c: Components) -> AsyncIterator[None]:
    """Open the components in dependency order, run the loops; close in reverse."""
    s = c.settings
    async with contextlib.AsyncExitStack() as stack:
        # built in `build`: closed on every way out, whether it started or not
        stack.push_async_callback(stop_producer, c.producer, PRODUCER_FLUSH_ON_STOP_SECONDS)
        with _unreachable_kafka(s):
            if c.options.create_topics:
                await ensure_topics(
                    c.kafka,
                    service_topics(s),
                    s.topic_partitions,
                    s.topic_replication_factor,
                    configs=topic_configs(s),
                )
        try:
            await stack.enter_async_context(
                opened(c.pool, s.database_role, close_within=POOL_CLOSE_ON_STOP_SECONDS)
            )
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            url = s.database_url.get_secret_value() if s.database_url else "?"
            raise StartupRefused(unreachable("DATABASE_URL", url, exc)) from exc
        await _refuse_an_unmigrated_database(c.pool)
        await record_model(c.pool, c.model)
        # before the pool closes: a check still waiting on a server that stopped answering
        stack.callback(c.readiness.close)
        with _unreachable_kafka(s):
            await start_producer(c.producer, s.kafka_idempotent_producer)
        if c.projector is not None:
            # after the consumer and the projector's loop stopped, before the pool closes
            # and the producer stops: feeds a stop cut off are followed up (queued again)
            stack.push_async_callback(c.projector.settle, FEED_FOLLOW_UPS_ON_STOP_SECONDS)
        with _unreachable_kafka(s):  # it connects FastStream's own producer
            await install_salvaging_consumer(c.broker, c.corrupt_records, c.offsets.consumer_built)
        # FastStream stops the broker before this exit runs; this stops one whose
        # start failed half-way
        stack.push_async_callback(_stop_unless_stopped, c.broker)
        projector = c.projector
        if projector is not None:
            c.metrics.read_model_staleness_target.set(s.read_model_staleness_target_seconds)
            c.metrics.read_model_coalescing.set_function(lambda: projector.coalescing)
            # no batch commits any more: leave the read model caught up, if quickly
            stack.push_async_callback(_drain, projector, s.projector_drain_on_stop_seconds)
        stack.push_async_callback(c.gauges.close)
        await stack.enter_async_context(_loops(background_loops(c), c.stop, c.metrics))
        yield


@contextlib.contextmanager
def _unreachable_kafka(s: Settings) -> Iterator[None]:
    """A broker that cannot be reached at start-up: one line, not a traceback (the
    orchestrator restarts the process; the line says what to check)."""
    try:
        yield
    except KafkaConnectionError as exc:
        raise StartupRefused(
            f"cannot reach the Kafka brokers at KAFKA_BOOTSTRAP_SERVERS "
            f"({s.kafka_bootstrap_servers}): {exc}"
        ) from exc


async def _refuse_an_unmigrated_database(pool: asyncpg.Pool[Any]) -> None:
    async with pool.acquire() as conn:
        missing = await missing_migrations(conn)
        newer = [] if missing else await newer_migrations(conn)
    if newer:
        # an older replica of a rolling deploy, or an image rolled back without its
        # database: it runs on, and says so, as its statements may not fit that schema
        log.warning(
            "schema_newer_than_release",
            applied=newer[-1],
            newest_shipped=load_migrations(migrations_path())[-1].file_name,
        )
    if missing:
        raise StartupRefused(
            f"the database DATABASE_URL names lacks {len(missing)} migration(s) this release "
            f"needs ({named_run(missing)}): apply them to it (healthscore migrate, or serve "
            "without --no-migrate; MIGRATION_DATABASE_URL, when set, must name the same "
            "database)"
        )


async def _stop_unless_stopped(broker: KafkaBroker) -> None:
    """Stop `broker` unless its subscribers were stopped already: a stop waits up to
    its graceful timeout for the batch in flight, and one that did not end the first
    time (its connection waiting on a server that does not answer) would be waited
    for again."""
    if broker.running or any(subscriber.running for subscriber in broker.subscribers):
        await broker.stop()


async def _drain(projector: Projector, timeout: float) -> None:
    """Project what is queued, for `timeout` at most. The drain's own timeout is
    checked between passes only, and a pass waits for the health feed's acks (with
    the broker away, its metadata for the request timeout): cut short, the pass
    rolls back and its organizations stay queued for the next process."""
    try:
        async with asyncio.timeout(timeout):
            await projector.drain(timeout=timeout)
    except TimeoutError:
        log.warning("read_model_drain_cut", seconds=timeout)
    except Exception as exc:
        log.warning("read_model_drain_failed", error=type(exc).__name__, message=str(exc)[:300])


@contextlib.asynccontextmanager
async def _loops(loops: list[Loop], stop: asyncio.Event, metrics: Metrics) -> AsyncIterator[None]:
    """Every loop in one TaskGroup, on a task of its own (what the service does
    meanwhile never passes through the group). On exit `stop` is set: the loops
    end at their next pause; what is mid-step then (a probe, a page) is cancelled.
    Each step's outcome is counted (`healthscore_background_steps_total`)."""

    names = {loop.name for loop in loops}

    async def run() -> None:
        async with asyncio.TaskGroup() as group:
            for loop in loops:
                metrics.background_started(loop.name)
                group.create_task(
                    every(
                        loop.interval,
                        loop.step,
                        stop,
                        loop.name,
                        loop.max_backoff,
                        loop.wake,
                        loop.min_pause,
                        metrics.background_step,
                        metrics.background_step_began,
                    ),
                    name=loop.name,
                )

    task = asyncio.create_task(run(), name="background-loops")
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        # a step cancelled while its connection waits on a server that does not answer
        # (a network path to PostgreSQL that stopped delivering) ends only when that
        # connection's release does, which has no time limit: the stop goes on without it
        await asyncio.wait([task], timeout=LOOPS_STOP_SECONDS)
        if task.done():
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        else:
            stuck = [t.get_name() for t in asyncio.all_tasks() if t.get_name() in names]
            log.warning("background_loops_not_stopped", seconds=LOOPS_STOP_SECONDS, loops=stuck)


class _OpsApp(AsgiFastStream):
    """FastStream's ASGI app whose answer to an unknown HTTP path names the routes."""

    def __init__(self, *args: Any, not_found: ASGIApp, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._not_found = not_found

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().not_found(scope, receive, send)
            return
        await self._not_found(scope, receive, send)


def asgi_app(c: Components, on_started: Callable[[], None]) -> AsgiFastStream:
    """FastStream's ASGI app: the broker, the ops routes, and `lifespan` around them."""
    show = c.settings.asyncapi_show_servers
    routes = OpsRoutes(
        c.metrics,
        c.readiness,
        asyncapi_json=lambda: asyncapi_json(c.broker, c.settings, show),
        asyncapi_html=lambda: asyncapi_html(c.broker, c.settings, show),
        max_per_second=c.settings.ops_max_requests_per_second,
    )
    return _OpsApp(
        c.broker,
        not_found=not_found_response([path for path, _ in routes.routes]),
        asgi_routes=routes.routes,
        lifespan=lambda: lifespan(c),
        after_startup=[on_started],
        logger=None,
    )


@contextlib.asynccontextmanager
async def running(
    settings: Settings, options: ServiceOptions | None = None
) -> AsyncIterator[Components]:
    """The service, up from the bound ops port to the served routes, until the block ends.

    Stopping runs in reverse: the ops routes, then the broker (a batch in flight
    commits or rolls back whole), the background loops, the read model's last
    projection, the health feed's follow-ups, the pool and the producer.
    """
    s = settings
    try:
        with contextlib.closing(serving.bind_ops_socket(s.ops_host, s.ops_port)) as sock:
            c = build(s, options or ServiceOptions(), sock.getsockname()[1])
            broker_started = asyncio.Event()
            app = asgi_app(c, broker_started.set)
            async with app.start_lifespan_context():
                await broker_started.wait()
                async with serving.serve(app, sock):
                    log.info(
                        "service_started",
                        group=s.consumer_group,
                        topics=s.input_topics,
                        ops_port=c.ops_port,
                        core=core_build(),
                    )
                    try:
                        yield c
                    finally:
                        c.stop.set()
    finally:
        log.info("service_stopped")


async def serve_until(
    stop: asyncio.Event,
    settings: Settings,
    options: ServiceOptions | None = None,
    stop_within: float = START_UP_STOP_SECONDS,
) -> bool:
    """Run the service until `stop` is set; False when the stop (during start-up or
    after) did not end within `stop_within` seconds (the caller exits without waiting
    for it: PostgreSQL rolls back what was not committed, so nothing is lost).

    A stop set while the service still starts cancels the start: a broker or database
    that stops answering half-way (a group coordinator that never comes) would hold it,
    and the signal with it, for good. What had started stops as on any exit.
    """
    up = asyncio.Event()

    async def serve() -> None:
        async with running(settings, options):
            up.set()
            await stop.wait()

    service = asyncio.create_task(serve(), name="service")
    stopped = asyncio.create_task(stop.wait(), name="stop-signal")
    try:
        await asyncio.wait([service, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not service.done() and not up.is_set():
        log.warning("start_up_interrupted", seconds=stop_within)
        service.cancel()
        await asyncio.wait([service], timeout=stop_within)
        if not service.done():
            log.error("start_up_not_stopped", seconds=stop_within, tasks=_tasks_waiting())
            return False
        if service.cancelled():
            refused = _refusal_cut_short(service)
            if refused is not None:
                raise refused  # the start had been refused: the signal only cut its cleanup
        elif service.exception() is not None:
            # stopping what had started failed: the process stops all the same
            error = service.exception()
            log.warning("start_up_stop_failed", error=type(error).__name__, message=str(error))
        return True
    if stop.is_set() and not await _stopped_within(service, stop_within):
        return False
    await service  # a refused start-up raises here
    return True


async def _stopped_within(service: asyncio.Task[None], stop_within: float) -> bool:
    """Whether the running service's stop ended within `stop_within` seconds; one
    slower than `STOP_REPORT_SECONDS` is logged with where it waits, and then again."""
    report = min(STOP_REPORT_SECONDS, stop_within)
    await asyncio.wait([service], timeout=report)
    if service.done():
        return True
    log.warning("stop_slow", seconds=report, tasks=_tasks_waiting())
    await asyncio.wait([service], timeout=stop_within - report)
    if service.done():
        return True
    log.error("stop_not_finished", seconds=stop_within, tasks=_tasks_waiting())
    return False


def _refusal_cut_short(task: asyncio.Task[None]) -> StartupRefused | None:
    """The refusal a cancelled start was unwinding from when the cancel came, if any."""
    try:
        task.result()
    except asyncio.CancelledError as cancelled:
        cause: BaseException | None = cancelled
        while cause is not None:
            if isinstance(cause, StartupRefused):
                return cause
            cause = cause.__context__
    return None


def _tasks_waiting(limit: int = 30) -> list[str]:
    """Each pending task and where it waits, innermost: what holds a stop that hangs.

    A task inside an `async with` of an async generator's context manager (the
    service's `running`, FastStream's lifespan) shows only `__aexit__`: the generator
    is not reachable from it, so each running async generator is listed too (found
    through the garbage collector: this runs only when a stop or start hangs)."""
    found: list[str] = []
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            found.append(f"{task.get_name()}: {_innermost(task.get_coro())}")
    for generator in gc.get_objects():
        if isinstance(generator, types.AsyncGeneratorType) and generator.ag_running:
            found.append(f"async generator {generator.__qualname__}: {_innermost(generator)}")
    return sorted(found)[:limit]


def _innermost(awaited: Any, depth: int = 3) -> str:
    """Where a coroutine (or async generator) and what it awaits wait: the innermost
    `depth` frames, outermost first (the library's frame, then its caller's)."""
    frames: list[str] = []
    while awaited is not None:
        frame = (
            getattr(awaited, "cr_frame", None)
            or getattr(awaited, "gi_frame", None)
            or getattr(awaited, "ag_frame", None)
        )
        if frame is not None:
            code = frame.f_code
            frames.append(f"{code.co_qualname} ({Path(code.co_filename).name}:{frame.f_lineno})")
        awaited = (
            getattr(awaited, "cr_await", None)
            or getattr(awaited, "gi_yieldfrom", None)
            or getattr(awaited, "ag_await", None)
        )
    return " > ".join(frames[-depth:])


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
