"""`healthscore erase` while a relay publishes a page holding the organization's rows.

The alert relay and the dead-letter relay read a page, publish it (for as long as
the broker takes, up to their publish timeout) and only then mark or delete its rows.
An erasure that committed in between deleted rows already on their way: the alert of
an organization the operator had just certified erased reached the notification
service, and its dead letter (the erased payload) the dead-letter topic. The erasure
now takes both relays' leader locks first (migration 0116), so it waits for the page in
flight and the publish comes before the erasure, never after; and it takes them before
the stored offsets, so a broker slow to acknowledge holds up the erasure, not the batches.

Real PostgreSQL, the relays as the service's role, the erasure as healthscore_eraser,
the records through the real broker: the producer is the real one, wrapped so that
its first send waits until the erasure started meanwhile waits on a lock.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import orjson

from healthscore.service.dead_letters import DeadLetterRelay
from healthscore.service.erasure import Erasure
from healthscore.service.ingest.decode import RawRecord, Rejection
from healthscore.service.ingest.dlq import DeadLetterQueue, dead_letter_columns
from healthscore.service.outbox import OutboxRelay
from healthscore.store import sql
from healthscore.store.db import create_pool
from tests.integration.test_erase_races import _waiting
from tests.utils.harness import consume_all, erase_now, fetchval, make_producer, make_topics


class ErasedMidPage:
    """The real producer; its first send starts the erasure of `organization` and waits
    until the erasure waits on a lock (the page's relay) before it goes to the broker,
    `slow` seconds later (a broker slow to acknowledge)."""

    def __init__(
        self, producer: Any, database_url: str, organization: uuid.UUID, slow: float = 0.0
    ) -> None:
        self._producer = producer
        self._database_url = database_url
        self._organization = organization
        self._slow = slow
        self.erasing: asyncio.Task[Erasure] | None = None
        # while the erasure waited: whether a batch could take the stored offsets' rows
        self.offsets_free: bool | None = None

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        if self.erasing is None:
            self.erasing = asyncio.create_task(erase_now(self._database_url, self._organization))
            monitor = await asyncpg.connect(self._database_url)
            try:
                await _waiting(monitor, 1, self.erasing)
                if self._slow:
                    await asyncio.sleep(self._slow)
                    assert not self.erasing.done(), self.erasing.result()
                    async with monitor.transaction():
                        # what a batch takes first: free while the erasure waits
                        self.offsets_free = bool(
                            await monitor.fetch("SELECT 1 FROM consumer_offsets FOR UPDATE NOWAIT")
                        )
            finally:
                await monitor.close()
        return await self._producer.send(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


async def _pending_alert(database_url: str) -> tuple[uuid.UUID, uuid.UUID]:
    """An organization with an alert the relay has not published: (its id, the alert's)."""
    organization, alert_id = uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO organizations (id) VALUES ($1)", organization)
        await conn.execute(
            "INSERT INTO alert_outbox (alert_id, organization_id, kind, episode, payload)"
            " VALUES ($1, $2, 'risk_raised', 1, $3::jsonb)",
            alert_id,
            organization,
            orjson.dumps({"alert_id": str(alert_id)}).decode(),
        )
    finally:
        await conn.close()
    return organization, alert_id


async def test_an_alert_in_a_page_in_flight_goes_out_before_the_erasure_commits(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    organization, alert_id = await _pending_alert(migrated_database)
    pool = await create_pool(migrated_database, "healthscore_writer")
    producer = await make_producer(kafka_bootstrap)
    wrapped = ErasedMidPage(producer, migrated_database, organization)
    try:
        assert await OutboxRelay(pool, wrapped, topics.alerts).relay_alerts() == 1
        assert wrapped.erasing is not None
        # the erasure waited for the page, then removed the row the page had published
        erasure = await asyncio.wait_for(wrapped.erasing, 30)
        published = await consume_all(kafka_bootstrap, topics.alerts, expect=1)
    finally:
        await producer.stop()
        await pool.close()
    assert erasure.first and erasure.rows.get("alert_outbox") == 1, erasure.rows
    assert [orjson.loads(r.value)["alert_id"] for r in published] == [str(alert_id)]
    # and a relay after the erasure has nothing of it to send
    assert await fetchval(migrated_database, "SELECT count(*) FROM alert_outbox") == 0


async def test_a_dead_letter_in_a_page_in_flight_goes_out_before_the_erasure_commits(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    organization = uuid.uuid4()
    value = orjson.dumps({"organization_id": str(organization), "subject": "Jane Doe"})
    rejection = Rejection(
        RawRecord(topics.support, 0, 7, str(organization).encode(), value, 1_700_000_000_000, ()),
        "missing_field",
        "event_id: Field required",
    )
    pool = await create_pool(migrated_database, "healthscore_writer")
    producer = await make_producer(kafka_bootstrap)
    wrapped = ErasedMidPage(producer, migrated_database, organization)
    try:
        async with pool.acquire() as conn:
            await conn.execute(sql.INSERT_DEAD_LETTERS, *dead_letter_columns([rejection]))
        relay = DeadLetterRelay(pool, DeadLetterQueue(wrapped, ".dlq"))
        assert await relay.relay_dead_letters() == 1
        assert wrapped.erasing is not None
        erasure = await asyncio.wait_for(wrapped.erasing, 30)
        published = await consume_all(kafka_bootstrap, f"{topics.support}.dlq", expect=1)
    finally:
        await producer.stop()
        await pool.close()
    # the dead letter left before the erasure; the erasure found none left to remove
    assert erasure.first and "dead_letter_outbox" not in erasure.rows, erasure.rows
    assert [r.value for r in published] == [value]
    assert await fetchval(migrated_database, "SELECT count(*) FROM dead_letter_outbox") == 0


async def test_an_erasure_behind_a_slow_page_holds_no_batch_up(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A broker slow to acknowledge holds the relay's page longer than an erasure's lock
    timeout (10 s): the erasure waits for the relay before it takes the stored offsets,
    so batches go on meanwhile, and it does not give up."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    organization, _alert_id = await _pending_alert(migrated_database)
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute(
            "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)"
            " VALUES ('g', $1, 0, 0)",
            topics.usage,
        )
    finally:
        await conn.close()
    pool = await create_pool(migrated_database, "healthscore_writer")
    producer = await make_producer(kafka_bootstrap)
    wrapped = ErasedMidPage(producer, migrated_database, organization, slow=12.0)
    try:
        assert await OutboxRelay(pool, wrapped, topics.alerts).relay_alerts() == 1
        assert wrapped.erasing is not None
        erasure = await asyncio.wait_for(wrapped.erasing, 30)
    finally:
        await producer.stop()
        await pool.close()
    assert wrapped.offsets_free is True
    assert erasure.first and erasure.rows.get("alert_outbox") == 1, erasure.rows
