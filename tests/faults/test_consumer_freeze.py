"""A replica frozen inside a transaction does not stall the other replicas.

`healthscore serve` A consumes a simulated stream and is frozen (SIGSTOP, as a
paused VM or a host cut off from the network would be: its connections stay open,
PostgreSQL sees no end of them) inside one of its transactions: a batch, holding
the row locks of its partitions' stored offsets and of the states it saved; or a
projector pass, holding its shard's lock and queue entries after writing
`customer_health`. The group drops A and replica B takes its partitions over. B's
batches lock the same offset rows and its projector needs the same shard: they must
not wait for as long as A stays frozen, only until PostgreSQL ends A's session for
idling in its transaction (`TRANSACTION_IDLE_LIMIT_SECONDS`, short here) or, A frozen
half-way through sending a batch statement (its Bind delivered, its Execute held back
by a relay on A's path to PostgreSQL: the backend active, reading the rest, not idle),
for its transaction's length (`TRANSACTION_TIME_LIMIT_SECONDS`,
PostgreSQL's transaction_timeout; without it B waits for good). B applies
the whole stream and projects it; A, thawed, commits nothing of what was cut off
(its session is gone), joins the group again, and what it sends then (a pass's
health feed) is followed by the newest states: every valid event is applied once,
and the read model and the feed show each organization's stored state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from healthscore_lab.simulator import SimulationConfig, generate
from tests.faults.oracle import Oracle
from tests.faults.test_crash_recovery import (
    _count_log_events,
    _start_and_wait_assigned,
    _wait_for_offsets,
    check_database,
    check_read_model,
)
from tests.utils.faults import (
    BACKEND,
    BATCH_TRANSACTIONS,
    FreezePoint,
    Produced,
    end_offsets,
    evict_group_members,
    freeze_inside_batch_transaction,
    freeze_mid_pipeline,
    produce_recorded,
    stored_offsets,
)
from tests.utils.harness import ServiceProcess, make_producer, make_topics, service_settings
from tests.utils.postgres_relay import PostgresRelay

pytestmark = pytest.mark.faults

# how long PostgreSQL lets a session of the service idle inside a transaction (here)
IDLE_LIMIT_SECONDS = 3
# how long it lets one's transaction last (PostgreSQL 17+; the tests' server is 18):
# above the idle limit, and above these batches' and passes' fraction of a second
TIME_LIMIT_SECONDS = 8
# B must apply the stream long before this; without the bound it waits for A forever
TAKEOVER_TIMEOUT = 90.0

SESSION = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"

# a projector pass that has written customer_health (live batches do not: off here)
PROJECTOR_PASS = ("customer_health", ["RowExclusiveLock"])

# where A is frozen: the transaction (a table it locks and the lock modes) and the point
# in it. Between two statements, its backend is 'idle in transaction', which the idle
# limit bounds; half-way through sending a pipeline (Bind delivered, Execute not), its
# backend is 'active', waiting on ClientRead for the rest, which only the time limit
# bounds (without it, B waits for as long as A stays frozen)
FROZEN: dict[str, tuple[tuple[str, list[str]], FreezePoint | None]] = {
    "batch": (BATCH_TRANSACTIONS, "between_statements"),
    "projector_pass": (PROJECTOR_PASS, "between_statements"),
    "batch_mid_send": (BATCH_TRANSACTIONS, None),
}


@pytest.mark.parametrize("inside", list(FROZEN))
async def test_a_replica_frozen_inside_a_transaction_does_not_stall_the_others(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path, inside: str
) -> None:
    locking, at = FROZEN[inside]
    topics = await make_topics(kafka_bootstrap, partitions=4)
    group = f"freeze-{uuid.uuid4().hex[:8]}"
    settings = service_settings(
        migrated_database, kafka_bootstrap, topics, group=group, batch_max_records=200
    )
    config = SimulationConfig.ending_now(
        timedelta(days=20),
        organizations=120,
        events=3000,
        seed=20261205,
        duplicate_rate=0.02,
        malformed_rate=0.002,
    )
    messages = list(generate(config))
    oracle = Oracle.from_stream((m.valid, m.value) for m in messages)
    first, rest = messages[: len(messages) // 2], messages[len(messages) // 2 :]

    env = {
        "TRANSACTION_IDLE_LIMIT_SECONDS": str(IDLE_LIMIT_SECONDS),
        "TRANSACTION_TIME_LIMIT_SECONDS": str(TIME_LIMIT_SECONDS),
    }
    # A reaches PostgreSQL through a relay that can hold back the rest of a pipeline
    relay = await PostgresRelay.to(migrated_database)
    settings_a = settings.model_copy(
        update={"database_url": SecretStr(relay.url(migrated_database))}
    )
    frozen, successor = ServiceProcess(settings_a, env), ServiceProcess(settings, env)
    log_a, log_b = str(tmp_path / "a.log"), str(tmp_path / "b.log")
    producer = await make_producer(kafka_bootstrap)
    monitor = await asyncpg.connect(migrated_database)
    produced: list[Produced] = []
    try:
        await _start_and_wait_assigned(frozen, log_a, 60.0)
        assert frozen.process is not None
        production = asyncio.create_task(
            produce_recorded(producer, first, topics, rate=len(first) / 3.0, log=produced)
        )
        # frozen in a later batch: one that locks offset rows A's earlier batches stored
        deadline = time.monotonic() + 30.0
        while not sum((await stored_offsets(monitor, group)).values()):
            assert time.monotonic() < deadline, "A committed no batch"
            await asyncio.sleep(0.02)
        backend = (
            await freeze_mid_pipeline(frozen.process.pid, monitor, relay, 15.0, locking)
            if at is None
            else await freeze_inside_batch_transaction(
                frozen.process.pid, monitor, 15.0, locking=locking, at=at
            )
        )
        # what A's backend was doing (before the idle limit can end it)
        caught = None if backend is None else await monitor.fetchrow(BACKEND, backend)
        await production
        assert backend is not None, f"no {inside} transaction of A caught open"
        assert caught is not None
        held = await stored_offsets(monitor, group)

        # A stays frozen; the group forgets it (as its session timeout would) and B joins
        await evict_group_members(kafka_bootstrap, group)
        await _start_and_wait_assigned(successor, log_b, 60.0)
        await produce_recorded(producer, rest, topics, log=produced)
        ends = end_offsets(produced)
        started = time.monotonic()
        await _wait_for_offsets(monitor, group, ends, successor, TAKEOVER_TIMEOUT, log_b)
        print(
            f"replica frozen inside a {inside}:",
            {"stored_at_freeze": sum(held.values()), "end": sum(ends.values())},
            f"B caught up {time.monotonic() - started:.1f}s after the last produce;",
            f"A's backend was {caught['state']}, {caught['wait_event']}:",
            (caught["query"] or "")[:60].split(),
        )
        # while A stays frozen, B projects everything, A's shard included
        await check_read_model(monitor, kafka_bootstrap, topics, 60.0)
        # PostgreSQL ended A's session: its locks went with it, its transaction with them
        assert await monitor.fetchval(SESSION, backend) == 0

        # A thawed: its cut-off batch fails (the session is gone), it rejoins, nothing
        # more is applied and nothing twice
        rejoined = _count_log_events(log_a, "partitions_assigned")
        os.kill(frozen.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60.0
        while _count_log_events(log_a, "partitions_assigned") <= rejoined:
            assert frozen.alive and time.monotonic() < deadline, "A never rejoined"
            await asyncio.sleep(0.1)
        await _wait_for_offsets(monitor, group, ends, frozen, 30.0, log_a)
        await check_database(monitor, oracle)
        await check_read_model(monitor, kafka_bootstrap, topics, 60.0)
    finally:
        if frozen.process is not None and frozen.alive:
            os.kill(frozen.process.pid, signal.SIGCONT)
        frozen.kill()
        successor.kill()
        await producer.stop()
        await monitor.close()
        await relay.close()
