"""A health-feed record whose send timed out can still land: the feed must end on the
newest score all the same.

Two replicas' projectors share a real tansu broker through a TCP relay (the broker
advertises it); PostgreSQL is real. One replica's network path stalls (the relay holds
what its connections send, as a path that stops delivering does): its pass times out
on the feed, commits the read model and owes the feed. The organizations change and the
other replica projects and publishes their newer scores. Then the stalled path heals
and the first replica's request, still in its producer, is delivered after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from structlog.testing import capture_logs

from healthscore.core.scoring.model import default_model
from healthscore.service import projector as projector_module
from healthscore.service.projector import Projector, SentFeed
from healthscore.store import sql
from healthscore.store.db import create_pool
from tests.integration.test_live_projection import (
    RealProducer,
    _feed,
    _newest_on_the_feed,
    _rows,
)
from tests.integration.test_owned_states import _batches, _Log, _pipeline
from tests.utils.harness import erase_now, make_topics
from tests.utils.kafka_relay import KafkaRelay, relayed_broker
from tests.utils.states import stored_states

STALLED = "replica-stalled"
OTHER = "replica-other"


@pytest.fixture(autouse=True)
def _short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    # the pass's wait for the feed and the pause after a failure, shortened for a test
    monkeypatch.setattr(projector_module, "PASS_FEED_TIMEOUT_SECONDS", 2.0)
    monkeypatch.setattr(projector_module, "FEED_PAUSE_SECONDS", 1.0)


async def _producer(bootstrap: str, client_id: str) -> AIOKafkaProducer:
    # a request timeout longer than the stall: the held request is still awaited
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        request_timeout_ms=30000,
        retry_backoff_ms=200,
    )
    await producer.start()
    return producer


class _StalledPath(NamedTuple):
    """Two replicas' producers on one broker behind a relay that can stall one of them."""

    relay: KafkaRelay
    bootstrap: str
    pool: asyncpg.Pool
    stalled: AIOKafkaProducer
    other: AIOKafkaProducer


@contextlib.asynccontextmanager
async def _stalled_path(url: str) -> AsyncIterator[_StalledPath]:
    async with relayed_broker() as broker:
        pool = await create_pool(url, "healthscore_writer", min_size=1, max_size=4)
        stalled = await _producer(broker.bootstrap, STALLED)
        other = await _producer(broker.bootstrap, OTHER)
        try:
            yield _StalledPath(broker.relay, broker.bootstrap, pool, stalled, other)
        finally:
            for producer in (stalled, other):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), 10)
            await pool.close()


class _Replicas(NamedTuple):
    """Two replicas behind the relay, the first batch applied and projected by `mine`
    (the stalled replica: its path works until `give_up` stalls it)."""

    relay: KafkaRelay
    bootstrap: str
    pool: asyncpg.Pool
    stalled: AIOKafkaProducer
    other: AIOKafkaProducer
    producer: Any  # what `mine` sends with: `stalled`, or `wrap(stalled)`
    health: str
    pipeline: Any
    mine: Projector
    batches: list[Any]  # the three of test_owned_states._batches

    async def give_up(self) -> None:
        """The second batch applied, the path stalled: `mine`'s pass gives up on its
        feed and owes it."""
        await self.pipeline.process(self.batches[1])
        self.relay.stall(STALLED)
        assert await asyncio.wait_for(self.mine.project_once(), 30) == 6


@contextlib.asynccontextmanager
async def _replicas(
    url: str, *, wrap: Any = None, **projector_options: Any
) -> AsyncIterator[_Replicas]:
    """`_stalled_path`, a topic, a pipeline on the other replica's producer, and the
    stalled replica's projector (its producer wrapped by `wrap`, if given) after its
    first pass."""
    batches = _batches(_Log())
    async with _stalled_path(url) as (relay, bootstrap, pool, stalled, other):
        topics = await make_topics(bootstrap, partitions=1)
        pipeline = _pipeline(pool, other, 0)
        await pipeline.process(batches[0])
        producer = stalled if wrap is None else wrap(stalled)
        mine = Projector(pool, default_model(), producer, topics.health, **projector_options)
        assert await mine.project_once() == 6  # the path works: the feed is published
        yield _Replicas(
            relay, bootstrap, pool, stalled, other, producer, topics.health, pipeline, mine, batches
        )


async def test_a_feed_record_acknowledged_late_is_followed_by_the_newest_score(
    database_factory: Any, migrated_template: str
) -> None:
    """Before, the late record was the organization's last on the compacted feed: the
    replica that timed out never learned it landed, and the other had already published
    the newer score and cleared what was owed; the feed showed an older score than
    customer_health until the organization changed again."""
    url = await database_factory(template=migrated_template)
    model = default_model()
    admin = await asyncpg.connect(url)
    async with _replicas(url) as r:
        # the path stalls: the pass times out on its feed and owes it
        await r.give_up()
        assert len(await _rows(url, "SELECT * FROM health_feed_owed")) == 6

        # the organizations change; the other replica publishes their newer scores, and
        # leaves what was owed: the stalled records may still land, so their debt is due
        # only after HEALTH_FEED_LATE_RECORD_SECONDS (a SIGKILL of this replica before
        # it learns they landed must not lose it)
        await r.pipeline.process(r.batches[2])
        theirs = Projector(r.pool, model, r.other, r.health)
        assert await theirs.project_once() == 6
        assert (
            await _rows(
                url, "SELECT not_before > now() + interval '60 seconds' FROM health_feed_owed"
            )
            == [(True,)] * 6
        )

        # the path heals: the stalled request lands after the newer scores
        r.relay.heal(STALLED)
        await asyncio.wait_for(r.stalled.flush(), 30)  # its sends have all ended
        for _ in range(50):  # and what follows them has had its turn
            if await _rows(url, "SELECT * FROM read_model_pending"):
                break
            await asyncio.sleep(0.1)
        # any replica's passes, as the service runs them, until nothing is left
        for projector in (theirs, r.mine, theirs):
            await projector.drain(timeout=30)
        newest = _newest_on_the_feed(await stored_states(admin), model)
        shown = {
            str(row[0]): (float(row[1]), row[2].isoformat())
            for row in await _rows(
                url, "SELECT organization_id, health_score, scored_at FROM customer_health"
            )
        }
        assert shown == newest
        assert await _feed(r.bootstrap, r.health, 18) == newest
    await admin.close()


def _dies(projector: Projector) -> None:
    """The replica dies (SIGKILL): none of its follow-ups, nor its lease on their debts,
    runs again."""
    for follow_up in list(projector._late_feeds):
        follow_up.cancel()
    if projector._lease is not None:
        projector._lease.cancel()


async def _republished_after_the_bound(
    admin: asyncpg.Connection, bootstrap: str, topic: str, theirs: Projector, model: Any
) -> None:
    """The tail of the late-record tests: the stalled older records have landed after the
    newer scores (the hazard), the debt waits for its bound (a pass publishes nothing
    before it), and a pass after it republishes the newest scores, the feed's last."""
    from tests.utils.harness import consume_all

    newest = _newest_on_the_feed(await stored_states(admin), model)
    landed = await _feed(bootstrap, topic, 18)
    assert all(landed[org] != newest[org] for org in newest), (landed, newest)  # hazard
    due_in = await admin.fetchval(
        "SELECT extract(epoch FROM min(not_before) - now())::float8 FROM health_feed_owed"
    )
    assert due_in is not None, "nothing owed: the newer scores cleared the debt"
    assert due_in > 0, "the test was too slow to see the debt wait"
    assert await theirs.project_once() == 0
    await asyncio.sleep(due_in + 0.5)
    assert await theirs.project_once() == 6  # the owed records, from customer_health
    assert len(await consume_all(bootstrap, topic, expect=24, settle=1.0)) == 24
    assert await _feed(bootstrap, topic, 24) == newest
    assert await admin.fetch("SELECT * FROM health_feed_owed") == []


async def _newer_scores_then_the_stalled_records(admin: asyncpg.Connection, r: _Replicas) -> None:
    """The organizations change and the other replica publishes their newer scores (the
    stalled replica's debt left), then the path heals: `_republished_after_the_bound`."""
    await r.pipeline.process(r.batches[2])
    theirs = Projector(r.pool, default_model(), r.other, r.health)
    assert await theirs.drain(timeout=30) == 6  # the newer scores; the debt left
    r.relay.heal(STALLED)
    await _republished_after_the_bound(admin, r.bootstrap, r.health, theirs, default_model())


async def test_records_given_up_on_by_a_replica_that_dies_are_republished_after_the_bound(
    database_factory: Any, migrated_template: str
) -> None:
    """A pass gives up on its stalled feed and owes it; the replica then dies (its
    follow-ups never run). The organizations change, another replica publishes their
    newer scores, then the stalled older records land. Before, the debt was due at once
    and that publish cleared it: the compacted feed ended on the older scores until each
    organization changed again. Now the debt waits until the records cannot land any
    more, and a pass of the surviving replica republishes the newest scores then."""
    url = await database_factory(template=migrated_template)
    admin = await asyncpg.connect(url)
    async with _replicas(url, late_record_bound=12.0) as r:
        await r.give_up()  # given up on: owed
        _dies(r.mine)
        await _newer_scores_then_the_stalled_records(admin, r)
    await admin.close()


class _SendsSignalled(RealProducer):
    """A real producer whose batch sends set `sent`: the test knows the pass's page is
    on its way (held by the stalled path) and the pass waits for its acks."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        super().__init__(producer)
        self.sent = asyncio.Event()

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        ack = await super().send_batch(batch, topic, partition=partition)
        self.sent.set()
        return ack

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any:
        ack = await super().send(topic, value=value, key=key)
        self.sent.set()
        return ack


async def _cancel_a_pass_in_flight(
    mine: Projector, signalled: _SendsSignalled, relay: KafkaRelay
) -> None:
    """Stall the path and cancel a pass of `mine` (a stop) while its page is on its way
    (PASS_FEED_TIMEOUT_SECONDS long enough that it is still waiting)."""
    relay.stall(STALLED)
    signalled.sent.clear()
    cut = asyncio.ensure_future(mine.project_once())
    await asyncio.wait_for(signalled.sent.wait(), 30)  # its page is on its way
    await asyncio.sleep(0.2)
    assert not cut.done()
    cut.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cut


async def test_a_pass_cancelled_while_its_feed_is_stalled_is_followed_by_the_newest_score(
    database_factory: Any, migrated_template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop cancels a pass that waits for its feed (the path to the broker stalled):
    its transaction rolls back, the organizations change, and another replica publishes
    their newer scores. Then the path heals and the cancelled pass's records land after
    them. Before, a cancelled pass was not followed up (only failures were, and
    cancellation is not one): the compacted feed ended on the older scores. `settle`,
    which the service runs on a stop before its pool closes, waits for the follow-up."""
    from tests.utils.harness import consume_all

    # the pass must still be waiting when the stop comes, however slow the machine
    monkeypatch.setattr(projector_module, "PASS_FEED_TIMEOUT_SECONDS", 60.0)
    url = await database_factory(template=migrated_template)
    model = default_model()
    admin = await asyncpg.connect(url)
    requeued: list[str] = []
    async with _replicas(url, wrap=_SendsSignalled, on_requeue=requeued.append) as r:
        await r.pipeline.process(r.batches[1])
        await _cancel_a_pass_in_flight(r.mine, r.producer, r.relay)
        assert len(await _rows(url, "SELECT * FROM read_model_pending")) == 6  # rolled back

        await r.pipeline.process(r.batches[2])
        theirs = Projector(r.pool, model, r.other, r.health)
        assert await theirs.drain(timeout=30) == 6
        r.relay.heal(STALLED)
        await r.mine.settle(30)  # its sends ended (landed late), its organizations queued
        # the hazard happened: the cut pass's older scores are last on the feed
        newest = _newest_on_the_feed(await stored_states(admin), model)
        landed = await _feed(r.bootstrap, r.health, 18)
        assert set(landed) == set(newest)
        assert all(landed[org] != newest[org] for org in newest), (landed, newest)
        assert requeued == ["queued"]
        assert len(await _rows(url, "SELECT * FROM read_model_pending")) == 6

        await theirs.drain(timeout=30)
        records = await consume_all(r.bootstrap, r.health, expect=24, settle=1.0)
        assert len(records) == 24
        assert await _feed(r.bootstrap, r.health, 24) == newest
    await admin.close()


async def test_a_pass_clears_only_the_debt_it_read(
    database_factory: Any, migrated_template: str
) -> None:
    """A pass reads a debt as due and publishes it; meanwhile another replica's stop (or
    a pass of another shard count giving up on the organization) owes it for later. The
    pass's clearing must leave that newer debt: before, it deleted by organization, and
    the stalled records it stood for could land last on the feed, counted `deferred`.
    (Review 31b's reproduction, kept.)"""
    url = await database_factory(template=migrated_template)
    pool = await create_pool(url, "healthscore_writer", min_size=2, max_size=4)
    try:
        first, _, _ = _batches(_Log())
        await _pipeline(pool, None, 0).process(first)
        await Projector(pool, default_model(), None, None).drain(timeout=30)
        org = (await _rows(url, "SELECT organization_id FROM customer_health LIMIT 1"))[0][0]
        async with pool.acquire() as conn:
            await conn.execute(sql.OWE_HEALTH_FEED, [org])  # due at once
        async with (
            pool.acquire() as passing,
            pool.acquire() as stopping,
            passing.transaction(),
        ):
            owed = await passing.fetch(sql.OWED_HEALTH_FEED, 1000, 1, 0)
            assert [r["organization_id"] for r in owed] == [org]
            await asyncio.wait_for(stopping.execute(sql.OWE_HEALTH_FEED_LATER, [org], 120.0), 5)
            await passing.execute(
                sql.FEED_PUBLISHED,
                [r["organization_id"] for r in owed],
                [r["not_before"] for r in owed],
            )
        left = await _rows(
            url,
            "SELECT organization_id, not_before > now() + interval '100 s' FROM health_feed_owed",
        )
        assert left == [(org, True)]
    finally:
        await pool.close()


async def test_a_debt_is_renewed_while_its_records_are_unanswered(
    database_factory: Any, migrated_template: str
) -> None:
    """The bound runs from the sender's last sign of life, not from the give-up: while
    the stalled records are unanswered (the idempotent producer retries until the broker
    answers), the replica's follow-up renews the debt, so a pass of another replica after
    the first bound publishes nothing of it. The replica then dies; the newer scores
    go out, the stalled records land after them, and a pass republishes the newest once
    the renewed bound has passed. Before, the debt fell due a bound after the give-up and
    was cleared while the records could still land."""
    bound = 9.0
    url = await database_factory(template=migrated_template)
    admin = await asyncpg.connect(url)
    async with _replicas(url, late_record_bound=bound) as r:
        await r.give_up()  # given up on: owed
        theirs = Projector(r.pool, default_model(), r.other, r.health)
        await asyncio.sleep(bound + 2.0)  # past the first bound: renewed meanwhile
        assert await theirs.project_once() == 0
        _dies(r.mine)
        await _newer_scores_then_the_stalled_records(admin, r)
    await admin.close()


async def test_a_live_batch_whose_feed_is_unanswered_owes_it_for_later(
    database_factory: Any, migrated_template: str
) -> None:
    """A live batch projecting its own changes gives up on its stalled feed: the
    organizations go back to the projector (which writes and publishes them now) and
    their feed is owed for after the bound, as a pass's given up on is: the stalled
    records may land after the projector's newer ones."""
    url = await database_factory(template=migrated_template)
    first, _, _ = _batches(_Log())
    async with _stalled_path(url) as (relay, bootstrap, pool, stalled, other):
        topics = await make_topics(bootstrap, partitions=1)
        pipeline = _pipeline(pool, other, 1000)
        mine = Projector(pool, default_model(), stalled, topics.health, late_record_bound=600.0)
        pipeline.project_live_batches(
            mine.project_in_batch, mine.takes_live_batches, mine.follow_failed_feed
        )
        await stalled.partitions_for(topics.health)  # known before the stall: sent into it
        relay.stall(STALLED)
        outcome = await asyncio.wait_for(pipeline.process(first), 60)
        assert outcome.applied == 18 and outcome.projected_in_batch == 0
        assert len(await _rows(url, "SELECT * FROM read_model_pending")) == 6
        owed = await _rows(
            url, "SELECT not_before > now() + interval '500 seconds' FROM health_feed_owed"
        )
        assert owed == [(True,)] * 6
        relay.heal(STALLED)


async def test_a_give_up_whose_transaction_then_fails_is_owed_again_at_once(
    database_factory: Any, migrated_template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass gives up on its stalled feed (its debt written in its transaction), then the
    transaction fails: the debt rolls back with it while the records are still on their
    way. It is owed again at once, not at the lease's next round (a third of the bound:
    a replica killed meanwhile would have left nothing). Review 31c's reproduction."""
    url = await database_factory(template=migrated_template)
    async with _replicas(url, late_record_bound=600.0) as r:
        await r.pipeline.process(r.batches[1])
        r.relay.stall(STALLED)
        monkeypatch.setattr(sql, "MARK_PROJECTED", "SELECT 1/0, $1::uuid[], $2::bigint[]")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await asyncio.wait_for(r.mine.project_once(), 30)
        owed = "SELECT count(*) FROM health_feed_owed WHERE not_before > now() + interval '500 s'"
        for _ in range(50):
            if await _rows(url, owed) == [(6,)]:
                break
            await asyncio.sleep(0.1)
        assert await _rows(url, owed) == [(6,)]
        await r.mine.settle(0.5)
        r.relay.heal(STALLED)


async def test_a_renewal_waiting_on_an_erasure_owes_its_tombstone(
    database_factory: Any, migrated_template: str
) -> None:
    """A renewal of X and Y waits behind X's erasure (between its delete and its commit):
    once the erasure commits, X's feed debt can no longer be written (a foreign key
    violation, for the whole statement). Tried again, X is an erased organization whose
    tombstone is owed for later and Y's debt is renewed; before, both were left as they
    were and a stop counted every follow-up cut. Review 31c's reproduction."""
    from healthscore.store import erasure

    url = await database_factory(template=migrated_template)
    pool = await create_pool(url, "healthscore_writer", min_size=2, max_size=4)
    eraser = await asyncpg.connect(url, server_settings={"role": "healthscore_eraser"})
    try:
        first, _, _ = _batches(_Log())
        await _pipeline(pool, None, 0).process(first)
        await Projector(pool, default_model(), None, None).drain(timeout=30)
        orgs = sorted(r[0] for r in await _rows(url, "SELECT organization_id FROM customer_health"))
        x, y = orgs[0], orgs[1]
        async with pool.acquire() as conn:
            await conn.execute(sql.OWE_HEALTH_FEED_LATER, [x, y], 60.0)
        due = "SELECT not_before FROM health_feed_owed WHERE organization_id = $1"
        before = (await _rows(url, due, y))[0][0]
        async with eraser.transaction():
            await eraser.fetchval(erasure.CLAIM_ORGANIZATION, x)
            carried = await eraser.fetchval(erasure.FEED_DEBT_NOT_DUE, x)
            await eraser.fetchval(erasure.RECORD_TOMBSTONE, x, "{}")  # then the delete (0121)
            await eraser.execute(erasure.DELETE_ORGANIZATION, x)
            renewing = Projector(pool, default_model(), None, None, late_record_bound=120.0)
            owe = asyncio.ensure_future(renewing._owe_later([x, y]))
            await asyncio.sleep(0.5)
            assert not owe.done()  # waits for the erasure
            await eraser.fetchval(erasure.OWE_FEED_TOMBSTONE, x, carried)
        assert await owe is None
        assert (await _rows(url, due, y))[0][0] > before
        tombstone = await _rows(
            url,
            "SELECT not_before > now() + interval '100 s' FROM health_feed_tombstones_owed"
            " WHERE organization_id = $1",
            x,
        )
        assert tombstone == [(True,)]
    finally:
        await eraser.close()
        await pool.close()


async def test_a_feed_the_broker_refuses_is_owed_at_once(
    database_factory: Any, migrated_template: str, tmp_path: Any
) -> None:
    """Refused, every send answered with an error: nothing of it can land later, so its
    debt is due at once (not held for HEALTH_FEED_LATE_RECORD_SECONDS, which would keep
    the feed behind a fixed refusal two more minutes)."""
    from tests.utils.harness import broker_refusing

    url = await database_factory(template=migrated_template)
    first, _, _ = _batches(_Log())
    topic = f"customer.health.refused-{uuid.uuid4().hex[:6]}"
    async with broker_refusing(tmp_path / "registry", topic, [], 1) as bootstrap:
        producer = await _producer(bootstrap, "refused")
        pool = await create_pool(url, "healthscore_writer", min_size=1, max_size=2)
        try:
            await _pipeline(pool, producer, 0).process(first)
            mine = Projector(pool, default_model(), producer, topic, late_record_bound=600.0)
            assert await asyncio.wait_for(mine.project_once(), 30) == 6
            owed = await _rows(url, "SELECT not_before FROM health_feed_owed")
            assert owed == [(None,)] * 6
        finally:
            await pool.close()
            await asyncio.wait_for(producer.stop(), 10)


async def test_a_live_batch_takes_an_organization_whose_debt_is_not_due(
    database_factory: Any, migrated_template: str
) -> None:
    """An organization owed for later (its records may still land) stays on the live
    path: no pass reads the debt before it falls due, and then it skips the row a batch
    holds. Only a due debt leaves the organization to the projector."""
    url = await database_factory(template=migrated_template)
    first, second, _ = _batches(_Log())
    async with _stalled_path(url) as (_relay, bootstrap, pool, _stalled, other):
        topics = await make_topics(bootstrap, partitions=1)
        pipeline = _pipeline(pool, other, 1000)
        live = Projector(pool, default_model(), other, topics.health)
        pipeline.project_live_batches(
            live.project_in_batch, live.takes_live_batches, live.follow_failed_feed
        )
        assert (await pipeline.process(first)).projected_in_batch == 6
        orgs = [r[0] for r in await _rows(url, "SELECT organization_id FROM customer_health")]
        async with pool.acquire() as conn:
            assert await conn.fetchval(sql.OWE_HEALTH_FEED_LATER, orgs[:2], 600.0) == 2
            await conn.execute(sql.OWE_HEALTH_FEED, orgs[2:3])  # due at once
        assert (await pipeline.process(second)).projected_in_batch == 5
        queued = [r[0] for r in await _rows(url, "SELECT organization_id FROM read_model_pending")]
        assert queued == orgs[2:3]


async def test_a_follow_up_a_stop_cuts_is_owed_for_later_and_counted(
    database_factory: Any, migrated_template: str
) -> None:
    """On a stop, `settle` waits a bounded time for the follow-ups: one whose records the
    broker never acknowledges (the path still stalled) is cancelled, its organizations
    owed for later (due after the bound) and counted `deferred`; a follow-up asked for
    after it is counted as cut at once (the pool is closing)."""
    url = await database_factory(template=migrated_template)
    outcomes: list[str] = []
    async with _replicas(url, on_requeue=outcomes.append, late_record_bound=600.0) as r:
        await r.give_up()  # owed, followed
        due = "SELECT organization_id, not_before FROM health_feed_owed ORDER BY 1"
        given_up = await _rows(url, due)
        assert len(given_up) == 6
        await asyncio.sleep(0.2)
        with capture_logs() as logs:
            await r.mine.settle(0.5)
            r.mine.follow_failed_feed(SentFeed(["x"], [asyncio.get_running_loop().create_future()]))
        assert outcomes == ["deferred", "cut"]
        assert [e["event"] for e in logs if e["event"].startswith("health_feed_follow")] == [
            "health_feed_follow_ups_deferred",
            "health_feed_follow_ups_cut",
        ]
        # the stop moved the debt on: a bound from the stop, not from the give-up
        stopped = await _rows(url, due)
        assert [org for org, _ in stopped] == [org for org, _ in given_up]
        assert all(s[1] > g[1] for s, g in zip(stopped, given_up, strict=True))
        r.relay.heal(STALLED)


async def test_a_stop_owes_the_feed_of_a_pass_it_cancelled_for_after_the_bound(
    database_factory: Any, migrated_template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop cancels a pass waiting for its stalled feed (its transaction rolls back:
    nothing of it is owed) and its follow-up never gets an answer within the stop's
    wait. Another replica publishes the organizations' newer scores, then the stalled
    older records land. Before, the follow-up was cut and the compacted feed ended on
    the older scores until each organization changed again; the stop now owes them for
    after the bound, and a pass of the other replica republishes the newest then."""
    monkeypatch.setattr(projector_module, "PASS_FEED_TIMEOUT_SECONDS", 60.0)
    url = await database_factory(template=migrated_template)
    admin = await asyncpg.connect(url)
    outcomes: list[str] = []
    async with _replicas(
        url, wrap=_SendsSignalled, on_requeue=outcomes.append, late_record_bound=12.0
    ) as r:
        await r.pipeline.process(r.batches[1])
        await _cancel_a_pass_in_flight(r.mine, r.producer, r.relay)
        # rolled back, nothing of it owed by the pass; its follow-up owes it at once
        owed = "SELECT count(*) FROM health_feed_owed WHERE not_before > now()"
        for _ in range(50):
            if await admin.fetchval(owed) == 6:
                break
            await asyncio.sleep(0.1)
        assert await admin.fetchval(owed) == 6
        await r.mine.settle(0.5)
        assert outcomes == ["deferred"]
        await _newer_scores_then_the_stalled_records(admin, r)
    await admin.close()


async def test_a_late_record_of_an_organization_erased_meanwhile_is_followed_by_its_tombstone(
    database_factory: Any, migrated_template: str
) -> None:
    """An organization is erased while a replica's feed of it is stalled: the erasure's
    tombstone goes out first, then the path heals and the stalled score lands after it.
    Before, the compacted feed ended on that score: downstream showed an erased
    organization again. The replica that learns its record landed late publishes the
    tombstone again."""
    from tests.integration.test_owned_states import _org
    from tests.utils.harness import consume_all

    url = await database_factory(template=migrated_template)
    gone = _org(3)
    async with _replicas(url) as r:
        await r.give_up()  # owed

        # erased, its tombstone published (as `healthscore erase` does) on the other path
        await erase_now(url, uuid.UUID(gone))
        await r.other.send_and_wait(r.health, key=gone.encode(), value=None)

        r.relay.heal(STALLED)
        await asyncio.wait_for(r.stalled.flush(), 30)
        values: list[bytes | None] = []
        for _ in range(100):  # the follow-up of the late record has had its turn
            records = await consume_all(r.bootstrap, r.health, timeout=2.0, done=lambda _: False)
            values = [rec.value for rec in records if rec.key == gone.encode()]
            if values and values[-1] is None and len(values) >= 4:
                break
            await asyncio.sleep(0.1)
        # its scores, the erasure's tombstone, the stalled score after it, and last a
        # tombstone again
        assert None in values[:-1] and values[values.index(None) + 1] is not None, values
        assert values[-1] is None, values


async def test_an_organization_erased_while_its_record_may_land_is_tombstoned_last(
    database_factory: Any, migrated_template: str
) -> None:
    """As above, but the replica whose stalled record may still land dies before it
    does (no follow-up publishes the tombstone again). Before, the erasure's delete
    cascaded the organization's feed debt away: the score landed after the tombstone and
    stayed the erased organization's last record on the compacted feed. The erasure
    now carries the debt's due time over to the tombstone it owes, and a pass publishes
    the tombstone again once due."""
    from tests.integration.test_owned_states import _org
    from tests.utils.harness import consume_all

    url = await database_factory(template=migrated_template)
    gone = _org(3)
    admin = await asyncpg.connect(url)
    async with _replicas(url, late_record_bound=12.0) as r:
        await r.give_up()  # owed for later

        # erased, its tombstone published at once on the other path (as `healthscore
        # erase` does), and marked published as the command marks it
        erased = await erase_now(url, uuid.UUID(gone))
        await r.other.send_and_wait(r.health, key=gone.encode(), value=None)
        await admin.execute(
            sql.FEED_TOMBSTONES_PUBLISHED, [uuid.UUID(gone)], [erased.tombstone_owed_since]
        )
        # the replica dies before its lease renews anything (a renewal after the erasure
        # owes the tombstone too: test_a_renewal_waiting_on_an_erasure_owes_its_tombstone)
        _dies(r.mine)
        r.relay.heal(STALLED)
        await asyncio.wait_for(r.stalled.flush(), 30)

        theirs = Projector(r.pool, default_model(), r.other, r.health)
        due_in = await admin.fetchval(
            "SELECT extract(epoch FROM not_before - now())::float8"
            " FROM health_feed_tombstones_owed WHERE organization_id = $1",
            uuid.UUID(gone),
        )
        assert due_in is not None, "the erasure dropped the debt: no tombstone will follow"
        assert due_in > 0, "the test was too slow to see the tombstone wait"
        assert await theirs.publish_owed_tombstones() == 0
        await asyncio.sleep(due_in + 0.5)
        assert await theirs.publish_owed_tombstones() == 1
        records = await consume_all(r.bootstrap, r.health, timeout=2.0, done=lambda _: False)
        values = [rec.value for rec in records if rec.key == gone.encode()]
        # its score, the erasure's tombstone, the stalled score after it, a tombstone last
        assert None in values[:-1] and values[values.index(None) + 1] is not None, values
        assert values[-1] is None, values
        assert await admin.fetch("SELECT * FROM health_feed_tombstones_owed") == []
    await admin.close()


async def test_an_owed_tombstone_is_published_by_a_pass_once_the_broker_takes_it(
    database_factory: Any, migrated_template: str
) -> None:
    """An erasure whose command could not publish the feed's tombstone (it owes it, in
    its first transaction): a pass whose path to the broker is stalled keeps it owed,
    a pass after the path heals publishes it and clears it. Before, nothing but running
    the erasure again published it: the compacted feed kept the erased organization's
    last score."""
    from tests.integration.test_owned_states import _org
    from tests.utils.harness import consume_all

    url = await database_factory(template=migrated_template)
    gone = _org(3)
    owed = "SELECT organization_id FROM health_feed_tombstones_owed"
    async with _replicas(url) as r:
        await erase_now(url, uuid.UUID(gone))
        # the command's own publish never happened: the tombstone is owed
        assert [str(row[0]) for row in await _rows(url, owed)] == [gone]

        r.relay.stall(STALLED)
        assert await asyncio.wait_for(r.mine.publish_owed_tombstones(), 30) == 0
        assert [str(row[0]) for row in await _rows(url, owed)] == [gone]
        # the feed lags the read model (the organization is gone from it): the owed-feed
        # gauge, which the feed's alert watches, says so
        assert await r.mine.feed_owed_age() > 0

        r.relay.heal(STALLED)
        published = 0
        for _ in range(100):  # the pause after the failure, then a pass
            published = await asyncio.wait_for(r.mine.publish_owed_tombstones(), 30)
            if published:
                break
            await asyncio.sleep(0.1)
        assert published == 1
        assert await _rows(url, owed) == []
        assert await r.mine.feed_owed_age() == 0.0
        records = await consume_all(r.bootstrap, r.health, timeout=4.0, done=lambda _: False)
        values = [rec.value for rec in records if rec.key == gone.encode()]
        assert values[0] is not None and values[-1] is None, values


async def test_a_tombstone_owed_again_while_a_pass_publishes_the_owed_one_stays_owed(
    database_factory: Any, migrated_template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass publishes an erased organization's owed tombstone; before it clears the
    entry, a late feed record of the organization lands after that tombstone, and the
    replica that learns of it cannot publish the tombstone again: it owes it (the same
    entry, ON CONFLICT DO NOTHING). The pass then cleared the entry by id, and with it
    the newer debt: the compacted feed kept the erased organization's late score, and
    nothing owed its tombstone any more."""
    from healthscore.service.keyed_batches import send_keyed
    from healthscore.store import sql
    from tests.integration.test_owned_states import _org
    from tests.utils.harness import consume_all

    url = await database_factory(template=migrated_template)
    gone = _org(3)
    owed = "SELECT organization_id FROM health_feed_tombstones_owed"
    async with _replicas(url) as r:
        await erase_now(url, uuid.UUID(gone))

        async def late_record_after(producer: Any, topic: str, records: Any) -> None:
            await send_keyed(producer, topic, records)
            # another replica's feed record given up on lands after the tombstone...
            await send_keyed(r.other, topic, [(gone.encode(), b'{"health_score": 50}')])
            # ...and its tombstone could not be published again: owed
            async with r.pool.acquire() as conn:
                await conn.execute(sql.OWE_FEED_TOMBSTONES, [uuid.UUID(gone)])

        monkeypatch.setattr(projector_module, "send_keyed", late_record_after)
        assert await r.mine.publish_owed_tombstones() == 1
        monkeypatch.setattr(projector_module, "send_keyed", send_keyed)
        # the newer debt outlives the pass that paid the older one
        assert [str(row[0]) for row in await _rows(url, owed)] == [gone]
        assert await r.mine.publish_owed_tombstones() == 1
        assert await _rows(url, owed) == []
        records = await consume_all(r.bootstrap, r.health, timeout=4.0, done=lambda _: False)
        values = [rec.value for rec in records if rec.key == gone.encode()]
        assert values[-1] is None, values
