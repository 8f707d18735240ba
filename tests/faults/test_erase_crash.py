"""`healthscore erase` killed with SIGKILL between its two transactions.

The first transaction committed (the `organizations` row is gone, the tombstone is
recorded); the second (its event ids) never ran, and the health feed got no tombstone.
Nothing of the organization that the service would publish may be left in the meantime
(a pending dead letter goes to `<topic>.dlq` with the erased payload), `erase --list`
must say the erasure is unfinished, and running the same command again must finish it
and say so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest

from healthscore.service.ingest.decode import RawRecord, Rejection
from healthscore.service.ingest.dlq import dead_letter_columns
from healthscore.store import sql
from tests.integration.test_erase_organization import (
    _erase,
    _eraser_login,
    _health_feed_of,
    _rows_of,
)
from tests.utils.fault_tools import (
    Oracle,
    RecordingProducer,
    assert_exactly_once,
    produce_stream,
    simulated_stream,
    wait_all_applied,
)
from tests.utils.faults import BATCH_TRANSACTIONS, TRANSACTIONS_LOCKING, _frozen_batch_backend
from tests.utils.harness import (
    ServiceProcess,
    Topics,
    fetch,
    fetchval,
    make_producer,
    make_topics,
    service_settings,
)

pytestmark = pytest.mark.faults


def _erase_process(
    database_url: str, bootstrap: str, topics: Topics, org: str
) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.pop("MIGRATION_DATABASE_URL", None)
    env.update(
        {
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_IDEMPOTENT_PRODUCER": "false",
            "HEALTH_TOPIC": topics.health,
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "healthscore.cli", "erase", "--organization", org, "--yes"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _seed(database_url: str, topics: Topics, org: uuid.UUID) -> None:
    """The organization with event ids and a pending dead letter, as a batch leaves them."""
    rejection = Rejection(
        RawRecord(
            topics.usage,
            0,
            7,
            str(org).encode(),
            orjson.dumps({"organization_id": str(org), "note": "jane@example.com"}),
        ),
        "unknown_event_type",
        "no-such-type",
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO organizations (id) VALUES ($1)", org)
        await conn.executemany(
            "INSERT INTO processed_events (event_id, organization_id, occurred_at) "
            "VALUES ($1, $2, $3)",
            [(uuid.uuid4(), org, datetime.now(UTC)) for _ in range(3)],
        )
        await conn.execute(sql.INSERT_DEAD_LETTERS, *dead_letter_columns([rejection]))
    finally:
        await conn.close()


async def test_erase_killed_between_its_transactions_is_seen_and_finished_by_a_rerun(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    org = uuid.uuid4()
    await _seed(migrated_database, topics, org)

    # a session holding one of its event ids: the second transaction waits on it
    holder = await asyncpg.connect(migrated_database)
    async with _eraser_login(migrated_database) as (eraser_url, _login):
        try:
            tx = holder.transaction()
            await tx.start()
            await holder.execute(
                "SELECT 1 FROM processed_events WHERE organization_id = $1 FOR UPDATE", org
            )
            process = _erase_process(eraser_url, kafka_bootstrap, topics, str(org))
            try:
                for _ in range(600):
                    erased = await fetchval(
                        migrated_database,
                        "SELECT count(*) FROM erased_organizations WHERE organization_id = $1",
                        org,
                    )
                    if erased or process.poll() is not None:
                        break
                    await asyncio.sleep(0.05)
                assert erased == 1, process.communicate(timeout=30)
                # the first transaction committed; the process waits in the second
                await asyncio.sleep(0.5)
                assert process.poll() is None
                process.send_signal(signal.SIGKILL)
                process.communicate(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.communicate(timeout=30)
            await tx.rollback()
        finally:
            await holder.close()

        assert (
            await fetchval(
                migrated_database, "SELECT count(*) FROM organizations WHERE id = $1", org
            )
            == 0
        )
        # nothing the running service would publish is left: a pending dead letter of it
        # goes to the dead-letter topic, the erased payload with it
        pending = await fetchval(
            migrated_database,
            "SELECT count(*) FROM dead_letter_outbox WHERE record_key = $1",
            str(org).encode(),
        )
        assert pending == 0

        # the operator sees that it is unfinished
        listed = await _erase(eraser_url, kafka_bootstrap, topics, "--list")
        assert listed.returncode == 0, listed.stderr
        line = next(line for line in listed.stdout.splitlines() if line.startswith(str(org)))
        assert line.split("\t")[4] == "unfinished", line
        assert "1 erasure(s) unfinished" in listed.stderr, listed.stderr

        # the same command again finishes it, and says so
        again = await _erase(
            eraser_url, kafka_bootstrap, topics, "--organization", str(org), "--yes"
        )
        assert again.returncode == 0, again.stderr
        assert "finished now" in again.stdout, again.stdout
        assert "processed_events" in again.stdout, again.stdout
        listed = await _erase(eraser_url, kafka_bootstrap, topics, "--list")
        line = next(line for line in listed.stdout.splitlines() if line.startswith(str(org)))
        assert line.split("\t")[4] != "unfinished", line
        assert "unfinished" not in listed.stderr, listed.stderr

    assert (
        await fetchval(
            migrated_database,
            "SELECT count(*) FROM processed_events WHERE organization_id = $1",
            org,
        )
        == 0
    )
    audit = await fetch(
        migrated_database,
        "SELECT rows_removed::text AS r, completed_at FROM erased_organizations "
        "WHERE organization_id = $1",
        org,
    )
    removed = orjson.loads(audit[0]["r"])
    # the audit holds what both steps removed, the second's from the run that finished it
    assert removed["processed_events"] == 3 and removed["dead_letter_outbox"] == 1, removed
    assert audit[0]["completed_at"] is not None
    assert (await _health_feed_of(kafka_bootstrap, topics.health, str(org)))[-1:] == [None]


async def test_serve_killed_while_an_erasure_waits_on_its_batch(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """`serve` is frozen inside a batch transaction (it holds its partitions' offset
    rows), the erasure starts and waits on them, then `serve` is killed with SIGKILL and
    restarted: the erasure completes, nothing of the organization comes back, and every
    other organization's events are applied exactly once."""
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics, batch_max_records=50)
    messages = simulated_stream(events=1200, organizations=12, seed=2525, duplicate_rate=0.02)
    orgs = sorted({m.organization_id for m in messages if m.organization_id})
    gone = orgs[0]
    oracle = Oracle.of(m for m in messages if m.organization_id != gone)
    service = ServiceProcess(settings)
    service.start(str(tmp_path / "serve-1.log"))
    watcher = await asyncpg.connect(migrated_database)
    raw = await make_producer(kafka_bootstrap)
    producer = RecordingProducer(raw)
    erasing: subprocess.Popen[str] | None = None
    try:
        async with _eraser_login(migrated_database) as (eraser_url, login):
            sending = asyncio.create_task(produce_stream(producer, messages, topics, rate=400))
            assert service.process is not None
            pid = service.process.pid
            # the organization has rows, and the offset rows exist (a group's first
            # batch creates them: an erasure cannot wait on rows not committed yet)
            for _ in range(600):
                seen = await watcher.fetchval(
                    "SELECT count(*) FROM organization_state WHERE organization_id = $1",
                    uuid.UUID(gone),
                )
                if seen:
                    break
                await asyncio.sleep(0.05)
            assert seen
            caught = False
            deadline = time.monotonic() + 30
            while not caught and time.monotonic() < deadline:
                if not await watcher.fetch(TRANSACTIONS_LOCKING, *BATCH_TRANSACTIONS):
                    await asyncio.sleep(0.002)
                    continue
                os.kill(pid, signal.SIGSTOP)
                if await _frozen_batch_backend(watcher, 0.03) is not None:
                    caught = True
                else:
                    os.kill(pid, signal.SIGCONT)
            assert caught, "no batch transaction caught"
            erasing = _erase_process(eraser_url, kafka_bootstrap, topics, gone)
            # the erasure waits on the frozen batch's offset rows
            for _ in range(1200):
                waiting = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE usename = $1 AND wait_event_type = 'Lock'",
                    login,
                )
                if waiting or erasing.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            assert erasing.poll() is None, erasing.communicate(timeout=30)
            assert waiting == 1, await watcher.fetch(
                "SELECT usename, state, wait_event_type, wait_event, query "
                "FROM pg_stat_activity WHERE datname = current_database()"
            )
            os.kill(pid, signal.SIGKILL)
            service.process.wait(timeout=30)
            out, err = await asyncio.to_thread(erasing.communicate, timeout=120)
            assert erasing.returncode == 0, (out, err)
            assert "1 organization(s) erased" in out, out
            service.start(str(tmp_path / "serve-2.log"))
            await sending
            await raw.flush()
            await wait_all_applied(
                migrated_database,
                oracle,
                120,
                last_offsets=producer.last_offsets,
                group=settings.consumer_group,
            )
        await assert_exactly_once(
            migrated_database, oracle, producer.last_offsets, settings.consumer_group
        )
        assert await _rows_of(migrated_database, gone) == {}
        feed = await _health_feed_of(kafka_bootstrap, topics.health, gone)
        assert feed[-1:] == [None], feed[-3:]
    finally:
        if erasing is not None and erasing.poll() is None:
            erasing.kill()
            erasing.communicate(timeout=30)
        await raw.stop()
        await watcher.close()
        service.terminate()
