"""A consumer holds its organizations' states between batches, and that changes nothing.

Through the real `BatchPipeline` and PostgreSQL (the pipeline's own
`healthscore_writer` role): the same batches give the same stored states,
history, milestones, interactions and alerts whether the pipeline holds the
states or reads them every batch; a held state that another writer changed
(a plain SQL write standing in for the sweep, or a second replica during a
rebalance) is noticed by its version, read again under lock and its events
computed from it, while the other organizations of the batch keep what was
computed for them.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from healthscore.core.scoring.model import default_model
from healthscore.core.scoring.state import pack_state, unpack_state
from healthscore.service.ingest import pipeline as pipeline_module
from healthscore.service.ingest.decode import Decoder, RawRecord
from healthscore.service.ingest.pipeline import BatchOutcome, BatchPipeline
from healthscore.service.periodic import LOCK_BUSY_RETRY
from healthscore.service.projector import Projector
from healthscore.store import locks, sql
from healthscore.store.db import create_pool
from tests.utils.states import event_counts, stored_state, stored_states

USAGE, SUPPORT = "usage.owned", "support.owned"
T0 = datetime(2026, 11, 1, 9, tzinfo=UTC)
KINDS = ("login", "feature_used", "client_added", "form_created", "payment_received")


def _org(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"owned-org-{i}"))


class _Log:
    """A partitioned log handed to the pipeline in batches, offsets contiguous per partition."""

    def __init__(self) -> None:
        self._next: dict[tuple[str, int], int] = {}
        self._n = 0

    def usage(self, org: int, kind: str, at: datetime) -> RawRecord:
        self._n += 1
        body: dict[str, Any] = {
            "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"owned-event-{self._n}")),
            "organization_id": _org(org),
            "user_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"owned-user-{org}-{self._n % 3}")),
            "type": kind,
            "feature": "calendar" if kind == "feature_used" else None,
            "occurred_at": at.isoformat(),
        }
        return self._record(USAGE, org, body)

    def support(self, org: int, action: str, at: datetime) -> RawRecord:
        self._n += 1
        body: dict[str, Any] = {
            "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"owned-event-{self._n}")),
            "organization_id": _org(org),
            "interaction_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"owned-interaction-{org}")),
            "action": action,
            "interaction_type": "complaint",
            "channel": "email",
            "priority": "urgent",
            "sentiment": "negative",
            "occurred_at": at.isoformat(),
        }
        return self._record(SUPPORT, org, body)

    def _record(self, topic: str, org: int, body: dict[str, Any]) -> RawRecord:
        partition = org % 2
        offset = self._next.get((topic, partition), 0)
        self._next[(topic, partition)] = offset + 1
        return RawRecord(topic, partition, offset, _org(org).encode(), orjson.dumps(body), 0)


def _batches(log: _Log) -> list[list[RawRecord]]:
    """Three batches over six organizations: new ones, held ones, one with a complaint."""
    batches: list[list[RawRecord]] = []
    for b in range(3):
        day = T0 + timedelta(days=b)
        batch = [
            log.usage(org, KINDS[(org + n) % len(KINDS)], day + timedelta(hours=n))
            for org in range(6)
            for n in range(3)
        ]
        if b == 1:
            batch.append(log.support(2, "opened", day + timedelta(hours=5)))
        if b == 2:
            batch.append(log.support(2, "resolved", day + timedelta(hours=5)))
        batches.append(batch)
    return batches


def _pipeline(
    pool: asyncpg.Pool[Any], producer: AIOKafkaProducer, held: int, **options: Any
) -> BatchPipeline:
    return BatchPipeline(
        pool=pool,
        decoder=Decoder(USAGE, SUPPORT, 64 * 1024),
        model=default_model(),
        consumer_group="owned",
        rescore_step_seconds=6 * 3600,
        owned_states=held,
        **options,
    )


SNAPSHOT = {
    "state": "SELECT organization_id, state_msgpack AS s, health_version FROM organization_state",
    "history": "SELECT organization_id, day, health_score, churn_probability, risk_level, cause "
    "FROM health_score_history",
    "milestones": "SELECT organization_id, milestone_type, achieved_at FROM success_milestones",
    "interactions": "SELECT id, status, event_count FROM support_interactions",
    "alerts": "SELECT alert_id, kind, episode FROM alert_outbox",
    "queued": "SELECT organization_id, version FROM read_model_pending",
    "processed": "SELECT event_id FROM processed_events",
}


async def _snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return {
            name: sorted(tuple(r.values()) for r in await conn.fetch(query))
            for name, query in SNAPSHOT.items()
        }
    finally:
        await conn.close()


async def _run(
    url: str, producer: AIOKafkaProducer, held: int, batches: list[list[RawRecord]]
) -> list[BatchOutcome]:
    pool = await create_pool(url, "healthscore_writer", min_size=1, max_size=1)
    try:
        pipeline = _pipeline(pool, producer, held)
        return [await pipeline.process(batch) for batch in batches]
    finally:
        await pool.close()


async def test_held_states_write_what_read_states_write(
    database_factory: Any, migrated_template: str, producer: AIOKafkaProducer
) -> None:
    held_url = await database_factory(template=migrated_template)
    read_url = await database_factory(template=migrated_template)
    batches = _batches(_Log())

    held = await _run(held_url, producer, 1000, batches)
    read = await _run(read_url, producer, 0, batches)

    assert [o.states_held for o in held] == [0, 6, 6]
    assert [o.states_read for o in held] == [6, 0, 0]
    assert [o.states_held for o in read] == [0, 0, 0]
    assert [o.states_read for o in read] == [6, 6, 6]
    assert [o.applied for o in held] == [o.applied for o in read] == [18, 19, 19]
    assert await _snapshot(held_url) == await _snapshot(read_url)


async def test_a_state_changed_by_another_writer_is_read_again(
    database_factory: Any, migrated_template: str, producer: AIOKafkaProducer
) -> None:
    url = await database_factory(template=migrated_template)
    reference_url = await database_factory(template=migrated_template)
    log = _Log()
    first = [log.usage(org, "login", T0 + timedelta(hours=org)) for org in range(4)]
    second = [log.usage(org, "feature_used", T0 + timedelta(hours=9 + org)) for org in range(4)]

    pool = await create_pool(url, "healthscore_writer", min_size=1, max_size=1)
    admin = await asyncpg.connect(url)
    try:
        pipeline = _pipeline(pool, producer, 1000)
        await pipeline.process(first)
        # another writer (the sweep, a replica) moves organization 1's state on
        moved = await stored_state(admin, _org(1))
        assert moved is not None
        await admin.execute(
            "UPDATE organization_state SET state_msgpack = $2, health_version = health_version + 1"
            " WHERE organization_id = $1",
            uuid.UUID(_org(1)),
            pack_state(msgspec.structs.replace(moved, event_count=100)),
        )
        outcome = await pipeline.process(second)
        states = await stored_states(admin)
        versions = {
            r["org"]: r["health_version"]
            for r in await admin.fetch(
                "SELECT organization_id::text AS org, health_version FROM organization_state"
            )
        }
        counts = {org: (state.event_count, versions[org]) for org, state in states.items()}
    finally:
        await admin.close()
        await pool.close()

    assert outcome.states_held == 4 and outcome.states_read == 0
    assert outcome.states_changed_elsewhere == 1
    assert outcome.applied == 4 and outcome.organizations_rescored == 4
    # organization 1 continued from the other writer's state, once; the others from theirs
    assert counts[_org(1)] == (101, 3)
    assert {counts[_org(org)] for org in (0, 2, 3)} == {(2, 2)}
    # and the rest of what the batch wrote is what a pipeline without held states writes
    # for the same batches (the other writer's change aside)
    await _run(reference_url, producer, 0, [first, second])
    ours, reference = await _snapshot(url), await _snapshot(reference_url)
    for name in ("milestones", "interactions", "alerts", "processed"):
        assert ours[name] == reference[name], name


async def test_a_replica_that_took_the_partition_over_is_not_overwritten(
    database_factory: Any, migrated_template: str, producer: AIOKafkaProducer
) -> None:
    """A rebalance: replica B writes an organization replica A still holds; A's next batch
    continues from B's state instead of overwriting it with its own stale one."""
    url = await database_factory(template=migrated_template)
    log = _Log()
    batches = [[log.usage(0, "login", T0 + timedelta(hours=h))] for h in range(3)]
    pool_a = await create_pool(url, "healthscore_writer", min_size=1, max_size=1)
    pool_b = await create_pool(url, "healthscore_writer", min_size=1, max_size=1)
    try:
        a = _pipeline(pool_a, producer, 1000)
        b = _pipeline(pool_b, producer, 1000)
        await a.process(batches[0])
        await b.process(batches[1])  # B owns the partition now; A was not told
        outcome = await a.process(batches[2])
        conn = await asyncpg.connect(url)
        try:
            row = await conn.fetchrow(
                "SELECT state_msgpack, health_version FROM organization_state"
            )
        finally:
            await conn.close()
    finally:
        await pool_a.close()
        await pool_b.close()
    assert outcome.states_changed_elsewhere == 1
    assert row is not None
    assert (unpack_state(row["state_msgpack"]).event_count, row["health_version"]) == (3, 3)


async def test_the_queue_holds_an_organization_from_its_first_unprojected_change(
    database_factory: Any, migrated_template: str, producer: AIOKafkaProducer
) -> None:
    """Later saves leave the entry alone; the projector removes it only while the state
    still has the version it projected, and never under a writer holding the row."""
    url = await database_factory(template=migrated_template)
    log = _Log()
    org = uuid.UUID(_org(0))
    pool = await create_pool(url, "healthscore_writer", min_size=2, max_size=2)
    admin = await asyncpg.connect(url)

    async def queued() -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await admin.fetch("SELECT version FROM read_model_pending")]

    try:
        pipeline = _pipeline(pool, producer, 1000)
        await pipeline.process([log.usage(0, "login", T0)])
        queued_at = await admin.fetchval("SELECT queued_at FROM read_model_pending")
        await pipeline.process([log.usage(0, "login", T0 + timedelta(hours=1))])
        # the second save wrote no queue row: the entry is the first change's
        assert await queued() == [(1,)]
        assert await admin.fetchval("SELECT queued_at FROM read_model_pending") == queued_at
        projector = Projector(pool, default_model(), None, None)
        assert await projector.project_once() == 1
        assert await queued() == []
        assert list((await event_counts(admin)).values()) == [2]
        assert await admin.fetchval("SELECT count(*) FROM customer_health") == 1

        await pipeline.process([log.usage(0, "login", T0 + timedelta(hours=2))])  # version 3
        async with pool.acquire() as conn:
            # a projector that read version 2 before this save: the entry stays
            await conn.execute(sql.MARK_PROJECTED, [org], [2])
            assert await queued() == [(3,)]
            # a writer holds the state row (saving a newer version): the entry stays
            holder = admin.transaction()
            await holder.start()
            await admin.execute(
                "SELECT 1 FROM organization_state WHERE organization_id = $1 FOR UPDATE", org
            )
            await conn.execute(sql.MARK_PROJECTED, [org], [3])
            await holder.rollback()
            assert await queued() == [(3,)]
            await conn.execute(sql.MARK_PROJECTED, [org], [3])
            assert await queued() == []
    finally:
        await admin.close()
        await pool.close()


async def test_projectors_share_the_queue_by_shard(
    database_factory: Any, migrated_template: str, producer: AIOKafkaProducer
) -> None:
    """A shard another process projects is left to it; every other shard is projected,
    and nothing is projected twice."""
    url = await database_factory(template=migrated_template)
    log = _Log()
    pool = await create_pool(url, "healthscore_writer", min_size=2, max_size=3)
    admin = await asyncpg.connect(url)
    shards = 4
    try:
        pipeline = _pipeline(pool, producer, 1000)
        await pipeline.process([log.usage(org, "login", T0) for org in range(40)])
        by_shard: dict[int, set[str]] = {}
        for org in range(40):
            by_shard.setdefault(uuid.UUID(_org(org)).bytes[15] % shards, set()).add(_org(org))
        assert len(by_shard) == shards  # every shard has organizations to project
        busy = 2
        # another process holds shard 2 (the projector's own lock, taken here by hand)
        holder = admin.transaction()
        await holder.start()
        assert await admin.fetchval(sql.TRY_SHARD_LOCK, locks.PROJECTOR_SHARD, busy)
        projector = Projector(pool, default_model(), None, None, shards=shards)
        assert await projector.project_once() == 40 - len(by_shard[busy])
        queued = {
            str(r[0]) for r in await admin.fetch("SELECT organization_id FROM read_model_pending")
        }
        assert queued == by_shard[busy]
        # woken, it comes back soon for the shard it could not take (not after its idle poll)
        assert await projector.step() == LOCK_BUSY_RETRY
        await holder.rollback()
        # two projectors at once: the rest is projected once, by one of them
        other = Projector(pool, default_model(), None, None, shards=shards)
        taken = await asyncio.gather(projector.project_once(), other.project_once())
        assert sum(taken) == len(by_shard[busy])
        assert projector.projected + other.projected == 40
        assert await admin.fetchval("SELECT count(*) FROM read_model_pending") == 0
        assert await admin.fetchval("SELECT count(*) FROM customer_health") == 40
        assert await projector.step() is None  # nothing queued, no shard busy: wait
    finally:
        await admin.close()
        await pool.close()


async def test_offset_rows_created_once_and_again_after_a_reset(
    database_factory: Any, migrated_template: str, producer: AIOKafkaProducer
) -> None:
    """The pipeline creates a partition's offset row on its first batch only; an offset
    reset that removes the rows under a running pipeline costs a restarted batch, not
    an error, and records below a stored offset are never claimed."""
    url = await database_factory(template=migrated_template)
    log = _Log()
    first = [log.usage(0, "login", T0 + timedelta(hours=n)) for n in range(3)]
    second = [log.usage(0, "login", T0 + timedelta(hours=3 + n)) for n in range(3)]
    pool = await create_pool(url, "healthscore_writer", min_size=1, max_size=1)
    admin = await asyncpg.connect(url)
    try:
        pipeline = _pipeline(pool, producer, 1000)
        assert (await pipeline.process(first)).applied == 3
        # the row the first batch created: a later batch finds it and moves it on
        assert (await pipeline.process(second)).applied == 3
        assert await admin.fetchval("SELECT next_offset FROM consumer_offsets") == 6

        # below the stored offset: skipped and not claimed, even an id never seen
        unseen = msgspec.structs.replace(log.usage(0, "login", T0 + timedelta(hours=7)), offset=1)
        again = await pipeline.process([*second, unseen])
        assert (again.skipped_replayed, again.duplicates, again.applied) == (4, 0, 0)
        assert await admin.fetchval("SELECT count(*) FROM processed_events") == 6

        # an offset reset removes the rows under the running pipeline: the batch
        # starts over, recreates the row at 0, and the dedupe ids still hold
        await admin.execute("DELETE FROM consumer_offsets")
        replayed = await pipeline.process(first + second)
        assert (replayed.skipped_replayed, replayed.duplicates, replayed.applied) == (0, 6, 0)
        assert await admin.fetchval("SELECT next_offset FROM consumer_offsets") == 6
        assert await admin.fetchval("SELECT count(*) FROM processed_events") == 6
    finally:
        await admin.close()
        await pool.close()


async def test_a_recomputed_organization_sees_the_interactions_its_batch_created(
    database_factory: Any, migrated_template: str, producer: AIOKafkaProducer
) -> None:
    """Organization 0 opens an interaction and organization 1, whose held state another
    writer changed, reuses its id in the same batch: organization 1's events are computed
    again, and must find the interaction organization 0 created (not yet in the
    database): its event is misrouted, organization 0's interaction stays its own."""
    url = await database_factory(template=migrated_template)
    log = _Log()
    first = [log.usage(org, "login", T0 + timedelta(hours=org)) for org in range(2)]
    shared = str(uuid.uuid5(uuid.NAMESPACE_URL, "owned-shared-interaction"))

    def opened(org: int, hours: int) -> RawRecord:
        record = log.support(org, "opened", T0 + timedelta(hours=hours))
        assert record.value is not None
        body = orjson.loads(record.value)
        body["interaction_id"] = shared
        return msgspec.structs.replace(record, value=orjson.dumps(body))

    # organization 1's login changes its state: its save finds the other writer's version
    second = [opened(0, 5), log.usage(1, "login", T0 + timedelta(hours=6)), opened(1, 7)]
    pool = await create_pool(url, "healthscore_writer", min_size=1, max_size=1)
    admin = await asyncpg.connect(url)
    try:
        pipeline = _pipeline(pool, producer, 1000)
        await pipeline.process(first)
        await admin.execute(
            "UPDATE organization_state SET health_version = health_version + 1 "
            "WHERE organization_id = $1",
            uuid.UUID(_org(1)),
        )
        outcome = await pipeline.process(second)
        interaction = await admin.fetchrow(
            "SELECT organization_id, event_count FROM support_interactions WHERE id = $1",
            uuid.UUID(shared),
        )
    finally:
        await admin.close()
        await pool.close()
    assert outcome.states_changed_elsewhere == 1
    assert outcome.rejected == {"interaction_org_mismatch": 1}
    assert interaction is not None
    assert (str(interaction["organization_id"]), interaction["event_count"]) == (_org(0), 1)


async def test_an_interaction_opened_meanwhile_by_another_replica_is_not_overwritten(
    database_factory: Any,
    migrated_template: str,
    producer: AIOKafkaProducer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two replicas, each with one support partition, open the same interaction id for
    two organizations at once: replica B reads the interactions before replica A's batch
    commits, and writes after it. The interaction stays organization 0's, as A wrote it;
    B's event is dead-lettered as `interaction_org_mismatch` (the batch is computed again
    and finds the owner), and nothing of it counts in organization 1's state."""
    url = await database_factory(template=migrated_template)
    log = _Log()
    shared = str(uuid.uuid5(uuid.NAMESPACE_URL, "owned-raced-interaction"))

    def opened(org: int, kind: str) -> RawRecord:
        record = log.support(org, "opened", T0)
        assert record.value is not None
        body = orjson.loads(record.value)
        body["interaction_id"] = shared
        body["interaction_type"] = kind
        return msgspec.structs.replace(record, value=orjson.dumps(body))

    batch_a = [opened(0, "complaint")]  # partition 0: replica A
    batch_b = [opened(1, "billing_inquiry"), log.usage(1, "login", T0)]  # partition 1: B
    pool_a = await create_pool(url, "healthscore_writer", min_size=1, max_size=1)
    pool_b = await create_pool(url, "healthscore_writer", min_size=1, max_size=1)
    a = _pipeline(pool_a, producer, 0)
    b = _pipeline(pool_b, producer, 0)
    read_interactions = pipeline_module._read_interactions
    raced: list[BatchOutcome] = []
    racing = False

    async def read_then_let_a_commit(conn: Any, events: Any) -> Any:
        nonlocal racing
        found = await read_interactions(conn, events)
        if not racing:  # B's first read: A's batch commits before B writes
            racing = True
            raced.append(await a.process(batch_a))
        return found

    monkeypatch.setattr(pipeline_module, "_read_interactions", read_then_let_a_commit)
    admin = await asyncpg.connect(url)
    try:
        outcome = await b.process(batch_b)
        row = await admin.fetchrow(
            "SELECT organization_id, interaction_type, event_count FROM support_interactions "
            "WHERE id = $1",
            uuid.UUID(shared),
        )
        state = await stored_state(admin, _org(1))
    finally:
        await admin.close()
        await pool_a.close()
        await pool_b.close()
    assert raced and raced[0].applied == 1
    assert row is not None
    assert (str(row["organization_id"]), row["interaction_type"], row["event_count"]) == (
        _org(0),
        "complaint",
        1,
    )
    assert outcome.rejected == {"interaction_org_mismatch": 1}
    assert outcome.applied == 1  # organization 1's login
    assert state is not None and state.open_interactions == {}


async def test_a_batch_past_its_silence_budget_commits_in_parts_to_the_same_end(
    database_factory: Any, migrated_template: str, producer: AIOKafkaProducer
) -> None:
    """Events a year apart each end a year of silence (1,460 rescorings): a batch past
    the silence budget commits in parts, and writes what one transaction writes."""
    log = _Log()
    batch = [log.usage(0, "login", datetime(1990 + k, 3, 1, tzinfo=UTC)) for k in range(8)]
    batch += [log.usage(org, "login", T0 + timedelta(hours=org)) for org in range(1, 5)]

    async def run(budget: int) -> tuple[BatchOutcome, dict[str, list[tuple[Any, ...]]]]:
        url = await database_factory(template=migrated_template)
        pool = await create_pool(url, "healthscore_writer", min_size=1, max_size=1)
        try:
            pipeline = _pipeline(
                pool, producer, 1000, silence_rescoring=True, silence_budget=budget
            )
            outcome = await pipeline.process(batch)
        finally:
            await pool.close()
        return outcome, await _snapshot(url)

    whole, whole_rows = await run(10**9)
    cut, cut_rows = await run(3_000)  # two years of silence: cut every other event
    assert whole.transactions == 1
    assert cut.transactions == 4
    assert cut.applied == whole.applied == 12
    assert len(whole_rows["history"]) > 7 * 365
    # the same rows, but for the versions: each part saved the state once more
    for rows in (cut_rows, whole_rows):
        rows["state"] = [row[:2] for row in rows["state"]]
        rows["queued"] = [row[:1] for row in rows["queued"]]
    assert cut_rows == whole_rows
