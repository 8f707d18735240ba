"""A relay that freezes holding the relay lock does not stop every other replica's.

Two processes, one database: relay A runs in a child process and freezes itself
(SIGSTOP, as a paused VM or a host cut off from the network would: its
connection stays open, PostgreSQL sees no end of it) right after the broker acked
its page, before the rows are marked sent. While A is frozen, relay B (this
process) must take over within A's bounded hold of the lock and publish the same
alerts with the same ids, in the order they were raised; A, thawed, marks nothing
and publishes nothing new.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict

import asyncpg
import orjson
import pytest

from healthscore.service.outbox import OutboxRelay
from healthscore.store.db import create_pool
from tests.utils.faults import RELAY_THEN_SIGNAL, relay_child_env
from tests.utils.harness import consume_all, make_producer, make_topics

pytestmark = pytest.mark.faults

# relay A's publish bound (its session ends HOLD_MARGIN_SECONDS after it): short here
HOLD_SECONDS = 1.0

KINDS = ("risk_raised", "risk_escalated", "recovered")


async def _insert_episodes(url: str, organizations: list[uuid.UUID]) -> list[str]:
    """One episode per organization, interleaved across them; the ids in raise order."""
    ids = []
    conn = await asyncpg.connect(url)
    try:
        for org in organizations:
            await conn.execute("INSERT INTO organizations (id) VALUES ($1)", org)
        for kind in KINDS:
            for org in organizations:
                alert_id = uuid.uuid5(org, kind)
                payload = {"alert_id": str(alert_id), "organization_id": str(org), "kind": kind}
                await conn.execute(
                    "INSERT INTO alert_outbox (alert_id, organization_id, kind, episode, payload) "
                    "VALUES ($1, $2, $3, 1, $4::jsonb)",
                    alert_id,
                    org,
                    kind,
                    orjson.dumps(payload).decode(),
                )
                ids.append(str(alert_id))
    finally:
        await conn.close()
    return ids


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


async def _until_frozen(child: asyncio.subprocess.Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _state(child.pid) != "T":
        assert child.returncode is None, "relay A exited instead of freezing"
        assert time.monotonic() < deadline, "relay A never reached its publish"
        await asyncio.sleep(0.05)


async def test_a_frozen_relay_holding_the_lock_is_taken_over(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    organizations = [uuid.uuid4() for _ in range(4)]
    raised_order = await _insert_episodes(migrated_database, organizations)

    env = relay_child_env(
        migrated_database,
        kafka_bootstrap,
        topics.alerts,
        "SIGSTOP",
        RELAY_PUBLISH_TIMEOUT=str(HOLD_SECONDS),
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RELAY_THEN_SIGNAL,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    pool = await create_pool(migrated_database, "healthscore_writer")
    producer = await make_producer(kafka_bootstrap)
    try:
        await _until_frozen(child, 60.0)
        # A holds the relay lock, frozen: B takes over once A's hold has run out
        relay = OutboxRelay(pool, producer, topics.alerts)
        published: int | None = None
        deadline = time.monotonic() + 60.0
        while published is None and time.monotonic() < deadline:
            published = await relay.relay_alerts()
            if published is None:
                await asyncio.sleep(0.2)
        assert _state(child.pid) == "T", "A must still be frozen for this to be a take-over"
        assert published == len(raised_order), "B never took over from the frozen relay"
        assert await relay.relay_alerts() == 0
        # thawed, A finds its session gone: it marks nothing
        os.kill(child.pid, signal.SIGCONT)
        output, _ = await asyncio.wait_for(child.communicate(), 60)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await producer.stop()
        await pool.close()
    assert "relay_alerts raised" in output.decode(errors="replace"), output

    conn = await asyncpg.connect(migrated_database)
    try:
        rows = await conn.fetch("SELECT published_at, publish_attempts FROM alert_outbox")
    finally:
        await conn.close()
    assert all(r["published_at"] is not None and r["publish_attempts"] == 1 for r in rows)

    # A's page and B's, both whole: each alert twice with its one id, and every
    # organization's alerts first seen in the order they were raised
    records = await consume_all(
        kafka_bootstrap, topics.alerts, expect=2 * len(raised_order), settle=1.0
    )
    ids = [orjson.loads(r.value)["alert_id"] for r in records]
    assert Counter(ids) == Counter(raised_order * 2)
    first_seen: dict[bytes, list[str]] = defaultdict(list)
    for record, alert_id in zip(records, ids, strict=True):
        if alert_id not in first_seen[record.key]:
            first_seen[record.key].append(alert_id)
    for org in organizations:
        expected = [str(uuid.uuid5(org, kind)) for kind in KINDS]
        assert first_seen[str(org).encode()] == expected
