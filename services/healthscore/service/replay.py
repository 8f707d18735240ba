"""`healthscore replay`: rebuild all derived state from the topics.

A fresh consumer group reads the input topics from the beginning into the
given (empty) database and stops once every partition's stored offset has
reached the high watermark taken at the start. Scores depend on event time
only, so the rebuilt scores, milestones and alert ids equal the live run's.
Alerts land in the outbox but are not published unless asked: the
notification service has seen them already.

With the silence sweep (as `serve` runs by default) the replay makes the same
silence rescorings as the live run: batches rescore an organization's silence
before its next event, and once the log is applied the sweep rescores the
silent organizations up to the log's watermark (see `healthscore.service.sweep`).
`sweep=False` matches a live run with `--no-sweep`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from healthscore.config import Settings
from healthscore.errors import StartupRefused
from healthscore.service.app import ServiceOptions, running
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.ops.lag import HighWatermarkProbe
from healthscore.store.db import connect, database_tls
from healthscore.store.migrate import apply_migrations
from healthscore.store.offsets import stored_offsets


@dataclass
class ReplayResult:
    events_applied: int
    organizations: int
    alerts: int
    seconds: float
    # history rows (organization-days) whose last score is a silence rescoring
    silence_days: int = 0


async def replay(
    settings: Settings,
    publish_alerts: bool = False,
    timeout: float = 3600.0,
    group: str | None = None,
    full_gc_every_batches: int = 0,
    sweep: bool = True,
) -> ReplayResult:
    assert settings.database_url is not None and settings.kafka_bootstrap_servers is not None
    admin_url = (settings.migration_database_url or settings.database_url).get_secret_value()
    tls = database_tls(settings)
    await apply_migrations(admin_url, tls=tls)
    conn = await connect(admin_url, tls)
    try:
        # progress rows too: a replay killed after batches of dead letters only
        organizations = await conn.fetchval("SELECT count(*) FROM organization_state")
        progress = await conn.fetchval("SELECT count(*) FROM consumer_offsets")
    finally:
        await conn.close()
    if organizations or progress:
        # its consumer group is new each run: nothing to resume from (operations.md)
        raise StartupRefused(
            f"replay needs an empty database: DATABASE_URL's has {organizations} organization "
            f"state(s) and {progress} stored offset(s) (the live database, or an interrupted "
            "replay, which cannot be resumed): create a new empty database and replay into it"
        )
    topics = settings.input_topics
    async with HighWatermarkProbe(KafkaConnection.from_settings(settings)) as probe:
        targets = await probe.high_watermarks(await probe.partitions(topics))
    replay_group = group or f"{settings.consumer_group}-replay-{uuid.uuid4().hex[:8]}"
    # a replay is a catch-up from start to end: aligned throughout, so that it
    # decides in the log's event-time order whatever its fetch sizes
    replay_settings = settings.model_copy(
        update={"consumer_group": replay_group, "alignment_live_lag_records": 0}
    )
    options = ServiceOptions(
        run_relay=publish_alerts,
        run_sweep=sweep,
        publish_health=publish_alerts,
        full_gc_every_batches=full_gc_every_batches,
    )
    started = time.monotonic()
    async with running(replay_settings, options) as service:
        while True:
            conn = await connect(admin_url, tls)
            try:
                stored = await stored_offsets(conn, replay_group)
            finally:
                await conn.close()
            if all(stored.get(tp, 0) >= end for tp, end in targets.items()):
                break
            if time.monotonic() - started > timeout:
                raise TimeoutError("replay did not reach the end of the topics in time")
            await asyncio.sleep(0.2)
        if service.sweep is not None:
            # the whole log is applied: rescore the silence up to its watermark
            await service.sweep.drain()
        if service.projector is not None:
            # and the read model reflects all of it
            await service.projector.drain(timeout=timeout)
    conn = await connect(admin_url, tls)
    try:
        applied = await conn.fetchval("SELECT count(*) FROM processed_events")
        organizations = await conn.fetchval("SELECT count(*) FROM customer_health")
        alerts = await conn.fetchval("SELECT count(*) FROM alert_outbox")
        silence_days = await conn.fetchval(
            "SELECT count(*) FROM health_score_history WHERE cause = 'sweep'"
        )
    finally:
        await conn.close()
    return ReplayResult(applied, organizations, alerts, time.monotonic() - started, silence_days)
