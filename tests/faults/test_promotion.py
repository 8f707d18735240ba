"""A model promotion under faults: SIGKILL and a PostgreSQL crash in the middle of it.

`healthscore serve` runs as a child process on model v3 over a simulated stream
until the read model shows every organization under v3. It is then killed and
started on v4 (a promotion) with a small projector page, so that the promotion
takes many pages, and with a shadow candidate whose half-lives differ from the
live model's and which raises an episode at every organization's first score.
Events keep arriving for a part of the organizations (the others are left to the
promotion alone). In the middle of the promotion the service is SIGKILLed and
restarted: once inside a page of the shadow walk (the candidate's first, from the
process's start), once frozen inside a projector page (its customer_health upsert
written, not committed); then PostgreSQL is crash-stopped and restarted under it.

At the end: every organization shows v4 (`customer_health.score_model_version`),
the read model and the health feed equal the projection of each stored state
under v4, every valid event is applied once, the alert outbox satisfies the
oracle's episode rules and is exactly what the alert topic carries, and nothing
of the shadow model (its alerts, its version) reached the live tables or topics.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import asyncpg
import msgspec
import pytest

from healthscore.config import DEFAULT_MODEL_PATH
from healthscore.core.scoring.model import V3_MODEL_PATH, default_model, v3_model
from healthscore_lab.devservices import Services
from healthscore_lab.simulator import SimulatedMessage, SimulationConfig, generate
from tests.faults.oracle import Oracle
from tests.faults.test_crash_recovery import (
    _log_tail,
    _start_and_wait_assigned,
    _wait_for_offsets,
    _wait_for_relay,
    check_alert_topic,
    check_database,
    check_read_model,
)
from tests.integration.test_score_quality import eager
from tests.utils.faults import (
    TRANSACTIONS_LOCKING,
    Produced,
    end_offsets,
    evict_group_members,
    produce_recorded,
)
from tests.utils.harness import (
    ServiceProcess,
    fetchval,
    make_producer,
    make_topics,
    service_settings,
)

pytestmark = pytest.mark.faults

PAGE = 4  # PROJECTOR_PAGE_SIZE: the promotion queues this many organizations a second
ORGANIZATIONS = 120
CANDIDATE = "v4-short-memory"
ON_V3 = "SELECT count(*) FROM customer_health WHERE score_model_version = 'v3'"


def _stream(seed: int) -> list[SimulatedMessage]:
    """30 days of the simulator's stream, ending now: duplicates, bad records, profiles."""
    config = SimulationConfig.ending_now(
        timedelta(days=30),
        organizations=ORGANIZATIONS,
        events=3000,
        seed=seed,
        duplicate_rate=0.02,
        malformed_rate=0.002,
        profile_share=0.2,
    )
    return list(generate(config))


def _candidate(path: Path) -> Path:
    """v4 with halved half-lives, raising at every first score and never recovering."""
    live = default_model()
    halved = msgspec.structs.replace(
        live.half_life_days,
        **{
            name: getattr(live.half_life_days, name) / 2
            for name in live.half_life_days.__struct_fields__
        },
    )
    candidate = msgspec.structs.replace(eager(live, CANDIDATE), half_life_days=halved)
    path.write_bytes(msgspec.json.encode(candidate))
    return path


STILL_OPEN = """
SELECT count(*) FROM pg_stat_activity
WHERE pid = $1 AND xact_start = $2 AND state IN ('active', 'idle in transaction')
  AND NOT upper(ltrim(query)) LIKE 'COMMIT%'
"""


async def _kill_while_writing(pid: int, database_url: str, table: str, timeout: float) -> bool:
    """SIGKILL the service while one of its transactions has written `table` and not
    committed (confirmed with the process frozen); False: none caught, killed anyway."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # a projector page that upserted customer_health, a shadow page shadow_health
            rows = await conn.fetch(TRANSACTIONS_LOCKING, table, ["RowExclusiveLock"])
            if not rows:
                await asyncio.sleep(0.002)
                continue
            os.kill(pid, signal.SIGSTOP)
            await asyncio.sleep(0.03)
            for row in rows:
                if await conn.fetchval(STILL_OPEN, row["pid"], row["xact_start"]):
                    os.kill(pid, signal.SIGKILL)
                    return True
            os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
        return False
    finally:
        await conn.close()


async def _kill_inside_a_page(
    service: ServiceProcess,
    database_url: str,
    table: str,
    timeout: float,
    kafka_bootstrap: str,
    group: str,
) -> None:
    """SIGKILL `service` inside one of its transactions writing `table` (a projector
    page: customer_health; a shadow page: shadow_health); its group forgets it."""
    assert service.process is not None
    caught = await _kill_while_writing(service.process.pid, database_url, table, timeout)
    assert caught, f"no page writing {table} caught open"
    service.process.wait(10)
    await evict_group_members(kafka_bootstrap, group)


async def _wait(
    database_url: str,
    query: str,
    predicate: Callable[[int], bool],
    timeout: float,
    service: ServiceProcess,
    log: str,
) -> int:
    """Poll `query` (a count) until `predicate` holds, through a PostgreSQL restart."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        assert service.alive, f"the service exited:\n{_log_tail(log)}"
        try:
            value = await fetchval(database_url, query)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            # the server is restarting
            value = None
        if value is not None and predicate(value):
            return int(value)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{query}: last {value!r}\n{_log_tail(log)}")


async def test_promotion_completes_through_a_sigkill_and_a_postgres_restart(
    services: Services, migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    assert default_model().version == "v4" and v3_model().version == "v3"
    topics = await make_topics(kafka_bootstrap, partitions=4)
    group = f"promotion-{uuid.uuid4().hex[:8]}"
    settings = service_settings(migrated_database, kafka_bootstrap, topics, group=group)
    messages = _stream(seed=20261204)
    first, rest = messages[:2000], messages[2000:]
    # after the switch, events keep arriving for a quarter of the organizations only:
    # the rest are re-projected by the promotion alone
    busy = sorted({m.organization_id for m in messages if m.organization_id})[::4]
    rest = [m for m in rest if m.organization_id is None or m.organization_id in busy]
    oracle = Oracle.from_stream((m.valid, m.value) for m in first + rest)

    log = str(tmp_path / "service.log")
    common = {"PROJECTOR_PAGE_SIZE": str(PAGE)}
    on_v3 = ServiceProcess(settings, {**common, "MODEL_PATH": str(V3_MODEL_PATH)})
    shadow = {
        "SHADOW_MODEL_PATH": str(_candidate(tmp_path / "candidate.json")),
        "SHADOW_INTERVAL_SECONDS": "0.2",
    }
    on_v4 = ServiceProcess(settings, {**common, **shadow, "MODEL_PATH": str(DEFAULT_MODEL_PATH)})
    produced: list[Produced] = []
    producer = await make_producer(kafka_bootstrap)
    monitor = None
    try:
        # 1. model v3 consumes the first part; the read model is all v3
        await _start_and_wait_assigned(on_v3, log, 60)
        await produce_recorded(producer, first, topics, log=produced)
        first_monitor = await asyncpg.connect(migrated_database)
        try:
            await _wait_for_offsets(first_monitor, group, end_offsets(produced), on_v3, 60, log)
        finally:
            await first_monitor.close()
        scored = await _wait(
            migrated_database,
            "SELECT count(*) FROM customer_health WHERE score_model_version = 'v3'"
            " AND NOT EXISTS (SELECT 1 FROM read_model_pending)",
            lambda n: n >= ORGANIZATIONS // 2,
            60,
            on_v3,
            log,
        )
        # 2. killed, started on v4, and SIGKILLed inside a page of the candidate's first
        # walk: every organization is still to be scored then, from the process's start
        # (a walk that resumes later has only the organizations changed since, which a
        # fast walk scores within milliseconds of the batch: the poll could miss it)
        on_v3.kill()
        await evict_group_members(kafka_bootstrap, group)
        on_v4.start(log)
        await _kill_inside_a_page(
            on_v4, migrated_database, "shadow_health", 30, kafka_bootstrap, group
        )
        # 3. started again while events keep coming; SIGKILL inside a projector page
        # with part of the read model promoted, part not
        await _start_and_wait_assigned(on_v4, log, 60)
        production = asyncio.create_task(
            produce_recorded(producer, rest, topics, rate=len(rest) / 6.0, log=produced)
        )
        left = await _wait(
            migrated_database, ON_V3, lambda n: 0 < n <= scored - 2 * PAGE, 60, on_v4, log
        )
        await _kill_inside_a_page(
            on_v4, migrated_database, "customer_health", 15, kafka_bootstrap, group
        )
        await _start_and_wait_assigned(on_v4, log, 60)
        # 4. PostgreSQL crash-stopped while the promotion goes on
        restarted = services.postgres_server is not None
        if restarted:
            now_left = await _wait(migrated_database, ON_V3, lambda n: n > 0, 60, on_v4, log)
            left_at_crash = await _wait(
                migrated_database, ON_V3, lambda n: 0 < n < now_left, 60, on_v4, log
            )
            await asyncio.to_thread(services.restart_postgres, "immediate", 1.5)
        # 5. everything applied, published, promoted
        await asyncio.wait_for(production, 60)
        ends = end_offsets(produced)
        assert sum(ends.values()) == len(first) + len(rest)
        await _wait(migrated_database, ON_V3, lambda n: n == 0, 90, on_v4, log)
        monitor = await asyncpg.connect(migrated_database)
        await _wait_for_offsets(monitor, group, ends, on_v4, 90, log)
        await _wait_for_relay(monitor, 60, log)
        await check_database(monitor, oracle)
        projected = await check_read_model(monitor, kafka_bootstrap, topics, 60)
        alerts = await check_alert_topic(monitor, kafka_bootstrap, topics)
        versions = {
            r[0] for r in await monitor.fetch("SELECT score_model_version FROM customer_health")
        }
        assert versions == {"v4"}, versions
        # the shadow model ran, raised, and none of it is live
        shadow_alerts = {
            str(r[0]) for r in await monitor.fetch("SELECT alert_id FROM shadow_alerts")
        }
        live_alerts = {str(r[0]) for r in await monitor.fetch("SELECT alert_id FROM alert_outbox")}
        assert shadow_alerts, "the shadow model never decided an alert"
        assert not shadow_alerts & live_alerts
        shadow_versions = {
            r[0] for r in await monitor.fetch("SELECT score_model_version FROM shadow_health")
        }
        assert shadow_versions == {CANDIDATE}, shadow_versions
    finally:
        on_v3.kill()
        on_v4.kill()
        await producer.stop()
        if monitor is not None:
            await monitor.close()
    print(
        f"\npromotion v3 -> v4: {scored} organizations on v3, killed inside a shadow page,"
        f" then with {left} left inside a projector page"
        + (f", PostgreSQL restarted with {left_at_crash} left" if restarted else "")
        + f"; {projected} projected under v4, {alerts} live alerts, "
        f"{len(shadow_alerts)} shadow alerts kept off the topic; "
        f"{time.monotonic() - started:.1f}s"
    )


@pytest.mark.slow
async def test_rolling_deploy_with_one_replica_per_model(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A replica on v3 and one on v4 in one group (docs/operations.md, Promotion: they
    re-project each other's organizations until the old one stops): once it stops,
    the promotion finishes and every check holds as after a plain restart."""
    started = time.monotonic()
    topics = await make_topics(kafka_bootstrap, partitions=4)
    group = f"rolling-{uuid.uuid4().hex[:8]}"
    settings = service_settings(migrated_database, kafka_bootstrap, topics, group=group)
    messages = _stream(seed=20261205)
    oracle = Oracle.from_stream((m.valid, m.value) for m in messages)
    common = {"PROJECTOR_PAGE_SIZE": str(PAGE)}
    old = ServiceProcess(settings, {**common, "MODEL_PATH": str(V3_MODEL_PATH)})
    new = ServiceProcess(settings, {**common, "MODEL_PATH": str(DEFAULT_MODEL_PATH)})
    old_log, new_log = str(tmp_path / "old.log"), str(tmp_path / "new.log")
    produced: list[Produced] = []
    producer = await make_producer(kafka_bootstrap)
    monitor = None
    try:
        await _start_and_wait_assigned(old, old_log, 60)
        production = asyncio.create_task(
            produce_recorded(producer, messages, topics, rate=len(messages) / 8.0, log=produced)
        )
        await asyncio.sleep(2.0)
        await _start_and_wait_assigned(new, new_log, 60)
        await asyncio.wait_for(production, 60)
        ends = end_offsets(produced)
        monitor = await asyncpg.connect(migrated_database)
        await _wait_for_offsets(monitor, group, ends, new, 90, new_log)
        both = {
            r[0]: r[1]
            for r in await monitor.fetch(
                "SELECT score_model_version, count(*) FROM customer_health GROUP BY 1"
            )
        }
        await asyncio.sleep(3.0)
        both_later = {
            r[0]: r[1]
            for r in await monitor.fetch(
                "SELECT score_model_version, count(*) FROM customer_health GROUP BY 1"
            )
        }
        old.terminate()
        stopped = time.monotonic()
        await _wait(migrated_database, ON_V3, lambda n: n == 0, 120, new, new_log)
        settled = time.monotonic() - stopped
        await _wait_for_relay(monitor, 60, new_log)
        await check_database(monitor, oracle)
        projected = await check_read_model(monitor, kafka_bootstrap, topics, 60)
        alerts = await check_alert_topic(monitor, kafka_bootstrap, topics)
    finally:
        old.kill()
        new.kill()
        await producer.stop()
        if monitor is not None:
            await monitor.close()
    print(
        f"\nrolling: both running {both} then {both_later}; v4 everywhere {settled:.1f}s after"
        f" the old stopped; {projected} projected, {alerts} alerts;"
        f" {time.monotonic() - started:.1f}s"
    )
