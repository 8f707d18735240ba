"""Helpers for the fault tests: produce with coordinates, find and kill a batch transaction.

The kill helpers freeze the service process with SIGSTOP before they SIGKILL
it. While it is frozen it can send nothing more to PostgreSQL, so what
`pg_stat_activity` shows for its backends is exactly what the kill will cut:
a kill counts as "inside a batch transaction" only when, with the process
frozen, one of its backends still holds an open transaction that has written
`consumer_offsets` (only the batch pipeline does) and is not running COMMIT.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest

from healthscore_lab.simulator import SimulatedMessage
from healthscore_lab.simulator.kafka import topic_of
from tests.utils.harness import Topics, consume_all
from tests.utils.postgres_relay import PostgresRelay

# The backends of the service (the pool sets application_name 'healthscore'; it logs in
# with the URL's user and runs as healthscore_writer through the startup `role` setting,
# so pg_stat_activity.usename names the login user, not the writer role) inside a
# transaction that holds a lock of one of the modes `$2` on the table `$1`.
TRANSACTIONS_LOCKING = """
SELECT a.pid, a.xact_start, a.state, a.query
FROM pg_stat_activity a
WHERE a.datname = current_database()
  AND a.pid <> pg_backend_pid()
  AND (a.application_name = 'healthscore' OR a.usename = 'healthscore_writer')
  AND a.xact_start IS NOT NULL
  AND a.state IN ('active', 'idle in transaction')
  AND EXISTS (
      SELECT 1 FROM pg_locks l
      WHERE l.pid = a.pid
        AND l.relation = $1::regclass
        AND l.mode = ANY($2::text[])
        AND l.granted)
"""
# The batch transaction: it has written or locked consumer_offsets. The relay's
# transactions never touch consumer_offsets; the sweep is off (--no-sweep); the offset
# read on partition assignment takes only an AccessShareLock.
BATCH_TRANSACTIONS = ("consumer_offsets", ["RowShareLock", "RowExclusiveLock"])

BACKEND = "SELECT xact_start, state, wait_event, query FROM pg_stat_activity WHERE pid = $1"

# a transaction that has written the read model (a projector pass, or a live batch
# projecting its own changes)
PROJECTED = ("customer_health", ["RowExclusiveLock"])

HOLDS_LOCK = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks WHERE pid = $1 AND relation = $2::regclass AND mode = ANY($3::text[])
)
"""

# Where in its transaction `freeze_inside_batch_transaction` leaves the process: anywhere,
# or between two statements (its backend 'idle in transaction', waiting for the next one).
# Half-way through sending a pipeline is `freeze_mid_pipeline`'s
FreezePoint = Literal["anywhere", "between_statements"]

# the backend's transaction has written or locked rows (it has a transaction id)
LOCKED_ROWS = "SELECT backend_xid IS NOT NULL FROM pg_stat_activity WHERE pid = $1"


@dataclass(frozen=True)
class Produced:
    """One produced message and where the broker put it."""

    message: SimulatedMessage
    topic: str
    partition: int
    offset: int


async def produce_recorded(
    producer: AIOKafkaProducer,
    messages: Iterable[SimulatedMessage],
    topics: Topics,
    rate: float | None = None,
    log: list[Produced] | None = None,
) -> list[Produced]:
    """Like `healthscore_lab.simulator.produce` onto the test's input topics, but keep
    each message's RecordMetadata.

    Record timestamps are the event times (a malformed message takes the
    previous one's), as the simulator's producer does. `log`, when given, is
    filled as acks arrive so that a concurrent task can watch progress.
    """
    produced: list[Produced] = [] if log is None else log
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending: list[tuple[SimulatedMessage, asyncio.Future[Any]]] = []
    last_ms: int | None = None

    async def drain() -> None:
        results = await asyncio.gather(*(future for _, future in pending))
        for (message, _), meta in zip(pending, results, strict=True):
            produced.append(Produced(message, meta.topic, meta.partition, meta.offset))
        pending.clear()

    for sent, message in enumerate(messages):
        if rate is not None:
            delay = started + sent / rate - loop.time()
            if delay > 0:
                await drain()
                await asyncio.sleep(max(delay, 0.01))
        if message.occurred_at is not None:
            last_ms = int(message.occurred_at.timestamp() * 1000)
        topic = topic_of(message, topics.usage, topics.support, topics.profile)
        future = await producer.send(
            topic, value=message.value, key=message.key, timestamp_ms=last_ms
        )
        pending.append((message, future))
        if len(pending) >= 1000:
            await drain()
    await drain()
    return produced


def end_offsets(produced: Iterable[Produced]) -> dict[tuple[str, int], int]:
    """Per (topic, partition): the offset after the last produced record."""
    ends: dict[tuple[str, int], int] = {}
    for p in produced:
        key = (p.topic, p.partition)
        ends[key] = max(ends.get(key, 0), p.offset + 1)
    return ends


async def stored_offsets(conn: asyncpg.Connection[Any], group: str) -> dict[tuple[str, int], int]:
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer_group = $1",
        group,
    )
    return {(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}


@dataclass(frozen=True)
class KillReport:
    in_transaction: bool
    backend_state: str | None
    query: str | None
    # a live batch that had written its projection (customer_health) and not committed:
    # its health feed sent or awaited (`kill_while_a_live_batch_awaits_its_feed`)
    feed_in_flight: bool = False


def _open_transaction(row: Any, xact_start: datetime | None) -> bool:
    if row is None or row["xact_start"] is None:
        return False
    if xact_start is not None and row["xact_start"] != xact_start:
        return False
    if row["state"] == "idle in transaction":
        return True
    query = (row["query"] or "").lstrip().upper()
    return bool(row["state"] == "active" and not query.startswith(("COMMIT", "END")))


async def _frozen_batch_backend(
    conn: asyncpg.Connection[Any], settle: float
) -> tuple[int, Any] | None:
    """With the service frozen: its backend that is inside a batch transaction, if any."""
    await asyncio.sleep(settle)  # let the backend finish reading what was already sent
    for row in await conn.fetch(TRANSACTIONS_LOCKING, *BATCH_TRANSACTIONS):
        again = await conn.fetchrow(BACKEND, row["pid"])
        if _open_transaction(again, row["xact_start"]):
            return int(row["pid"]), again
    return None


async def freeze_classify_kill(
    pid: int, conn: asyncpg.Connection[Any], settle: float = 0.03
) -> KillReport:
    """SIGSTOP, look at the frozen process's backends, SIGKILL; say what the kill cut."""
    os.kill(pid, signal.SIGSTOP)
    try:
        found = await _frozen_batch_backend(conn, settle)
    finally:
        os.kill(pid, signal.SIGKILL)
    if found is None:
        return KillReport(False, None, None)
    row = found[1]
    return KillReport(True, row["state"], row["query"])


async def kill_inside_batch_transaction(
    pid: int, conn: asyncpg.Connection[Any], timeout: float, settle: float = 0.03
) -> KillReport | None:
    """Poll pg_stat_activity until the service is inside a batch transaction, then kill it.

    Each sighting is confirmed with the process frozen (SIGSTOP); a sighting
    the process got past before it froze (the COMMIT had already gone out) is
    released with SIGCONT and the hunt goes on. Returns None, with the process
    still running, if no batch transaction was caught within `timeout`.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not await conn.fetch(TRANSACTIONS_LOCKING, *BATCH_TRANSACTIONS):
            await asyncio.sleep(0.002)
            continue
        os.kill(pid, signal.SIGSTOP)
        try:
            found = await _frozen_batch_backend(conn, settle)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            raise
        if found is not None:
            os.kill(pid, signal.SIGKILL)
            row = found[1]
            return KillReport(True, row["state"], row["query"])
        os.kill(pid, signal.SIGCONT)
    return None


async def kill_while_a_live_batch_awaits_its_feed(
    pid: int, conn: asyncpg.Connection[Any], timeout: float
) -> KillReport | None:
    """SIGKILL the service while a live batch (READ_MODEL_LIVE_IN_BATCH) waits between its
    projection and its commit: its backend idle in the transaction that stores the
    batch's offsets, its last statement the customer_health upsert, so the process is
    publishing the health feed of what it projected. A projector pass writes
    customer_health too, but stores no offsets: a freeze on one is undone. None, with
    the process running, if no such moment was caught within `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        backend = await freeze_inside_batch_transaction(
            pid, conn, left, locking=PROJECTED, at="between_statements"
        )
        if backend is None:
            return None
        row = await conn.fetchrow(BACKEND, backend)
        query = str(row["query"] or "") if row is not None else ""
        if await conn.fetchval(HOLDS_LOCK, backend, *BATCH_TRANSACTIONS) and re.search(
            r"\bcustomer_health\b", query
        ):
            os.kill(pid, signal.SIGKILL)
            return KillReport(True, "idle in transaction", query, feed_in_flight=True)
        os.kill(pid, signal.SIGCONT)
    return None


async def freeze_inside_batch_transaction(
    pid: int,
    conn: asyncpg.Connection[Any],
    timeout: float,
    settle: float = 0.03,
    locking: tuple[str, list[str]] = BATCH_TRANSACTIONS,
    at: FreezePoint = "anywhere",
) -> int | None:
    """Poll pg_stat_activity until the service is inside a batch transaction (or one
    holding the lock `locking` names: a table and lock modes) and leave it frozen
    there (SIGSTOP, as a paused VM: its connections stay open); return the backend of
    that transaction. None, with the process running again, if none was caught within
    `timeout`. `at`: only where the backend waits for the next statement
    (`FreezePoint`); a freeze elsewhere is undone and tried again.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not await conn.fetch(TRANSACTIONS_LOCKING, *locking):
            await asyncio.sleep(0.002)
            continue
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(settle)  # the backend finishes reading what was sent
            caught = await _caught_backend(conn, locking, at)
            if caught is not None:
                return caught
        except BaseException:
            os.kill(pid, signal.SIGCONT)
            raise
        os.kill(pid, signal.SIGCONT)
    return None


async def _caught_backend(
    conn: asyncpg.Connection[Any],
    locking: tuple[str, list[str]],
    at: FreezePoint | Literal["mid_pipeline"],
) -> int | None:
    """With the service frozen: its backend inside a transaction holding `locking`, at
    the point `at`, that has locked rows (an xid: not one still introspecting types)."""
    for row in await conn.fetch(TRANSACTIONS_LOCKING, *locking):
        again = await conn.fetchrow(BACKEND, row["pid"])
        if (
            _open_transaction(again, row["xact_start"])
            and _frozen_at(again, at)
            and await conn.fetchval(LOCKED_ROWS, row["pid"])
        ):
            return int(row["pid"])
    return None


def _frozen_at(backend: Any, at: FreezePoint | Literal["mid_pipeline"]) -> bool:
    if at == "between_statements":
        return bool(backend["state"] == "idle in transaction")
    if at == "mid_pipeline":  # a statement bound, the rest of its pipeline awaited
        return bool(backend["state"] == "active" and backend["wait_event"] == "ClientRead")
    return True


async def freeze_mid_pipeline(
    pid: int,
    conn: asyncpg.Connection[Any],
    relay: PostgresRelay,
    timeout: float,
    locking: tuple[str, list[str]] = BATCH_TRANSACTIONS,
) -> int | None:
    """Leave the service frozen (SIGSTOP) half-way through sending a pipeline inside a
    batch transaction (or one holding the lock `locking` names): `relay`, its path to
    PostgreSQL, has delivered a statement's Bind and holds its Execute, so the backend
    is 'active', waiting on ClientRead, in a transaction that has locked rows. Returns
    that backend; None, with the process running and the relay passing everything, if
    none was caught within `timeout`. A cut that fell outside such a transaction is
    undone and tried again.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not await conn.fetch(TRANSACTIONS_LOCKING, *locking):
            await asyncio.sleep(0.002)
            continue
        try:
            await asyncio.wait_for(relay.cut_after_next_bind(), 1.0)
        except TimeoutError:
            relay.resume()
            continue
        os.kill(pid, signal.SIGSTOP)
        try:
            # the backend takes a moment to process the Bind it was handed
            settled = time.monotonic() + 1.0
            while time.monotonic() < settled:
                caught = await _caught_backend(conn, locking, "mid_pipeline")
                if caught is not None:
                    return caught
                await asyncio.sleep(0.02)
        except BaseException:
            relay.resume()
            os.kill(pid, signal.SIGCONT)
            raise
        relay.resume()
        os.kill(pid, signal.SIGCONT)
    return None


async def read_topic(
    bootstrap: str, topic: str, expect: int, timeout: float = 60.0, settle: float = 1.0
) -> list[Any]:
    """Every record of `topic` from the beginning: at least `expect`, then `settle` seconds more."""
    return await consume_all(bootstrap, topic, expect=expect, timeout=timeout, settle=settle)


async def evict_group_members(bootstrap: str, group: str) -> int:
    """Make the coordinator drop every member of `group` now (LeaveGroup on their behalf).

    A SIGKILLed consumer never leaves its group, so the restarted one would
    wait for the dead member's session to expire (~20 s per restart here). The
    crash tests are about the database, not about that timeout: they send the
    LeaveGroup the dead process could not. Call it only when no live member
    is in the group. Returns how many members were removed.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    members: list[str] = []
    try:
        coordinator = await admin.find_coordinator(group)
        described = await admin.describe_consumer_groups([group], coordinator)
        members = [
            member[0]
            for response in described
            for description in response.groups
            for member in description[5]
        ]
        for member_id in members:
            await admin._send_request_to_node(coordinator, LeaveGroupRequest(group, member_id))
    except (KafkaError, TimeoutError):
        return 0  # best effort: without it the restart only waits out the session
    finally:
        await admin.close()
    return len(members)


# The relay in a child process that sends itself RELAY_SIGNAL (SIGKILL: dies; SIGSTOP:
# freezes) from the `after_publish` seam: after the broker acked every alert of the
# page, before the rows are marked sent. RELAY_PUBLISH_TIMEOUT, when set, bounds the
# publish. What relay_alerts ended with is printed (a frozen relay, thawed).
RELAY_THEN_SIGNAL = """
import asyncio, os, signal
from aiokafka import AIOKafkaProducer
from healthscore.store.db import create_pool
from healthscore.service.outbox import OutboxRelay

async def main():
    pool = await create_pool(os.environ["RELAY_DATABASE_URL"], "healthscore_writer")
    producer = AIOKafkaProducer(
        bootstrap_servers=os.environ["RELAY_BOOTSTRAP"], acks="all", enable_idempotence=False
    )
    await producer.start()
    bound = os.environ.get("RELAY_PUBLISH_TIMEOUT")
    sent = getattr(signal, os.environ["RELAY_SIGNAL"])
    relay = OutboxRelay(
        pool, producer, os.environ["RELAY_ALERT_TOPIC"],
        **({"publish_timeout": float(bound)} if bound else {}),
        after_publish=lambda: os.kill(os.getpid(), sent),
    )
    try:
        published = await relay.relay_alerts()
        print(f"relay_alerts returned {published}", flush=True)
    except Exception as exc:
        print(f"relay_alerts raised {type(exc).__name__}", flush=True)

asyncio.run(main())
"""


def relay_child_env(
    database_url: str, bootstrap: str, alert_topic: str, signal_name: str, **extra: str
) -> dict[str, str]:
    """The environment RELAY_THEN_SIGNAL reads."""
    env = dict(os.environ)
    env.update(
        RELAY_DATABASE_URL=database_url,
        RELAY_BOOTSTRAP=bootstrap,
        RELAY_ALERT_TOPIC=alert_topic,
        RELAY_SIGNAL=signal_name,
        **extra,
    )
    return env


def run_relay_then_die(
    database_url: str, bootstrap: str, alert_topic: str, timeout: float = 60.0
) -> tuple[int, str]:
    """RELAY_THEN_SIGNAL with SIGKILL; return (returncode, output). The child is killed
    if it hangs."""
    child = subprocess.Popen(
        [sys.executable, "-c", RELAY_THEN_SIGNAL],
        env=relay_child_env(database_url, bootstrap, alert_topic, "SIGKILL"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, _ = child.communicate(timeout=timeout)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    return child.returncode, output.decode(errors="replace")
