"""The read model is a projection of organization state, off the event path.

A consumer batch commits what must be exact (dedupe ids, state, interactions,
milestones, the alert outbox, offsets) and queues each organization it
changed in `read_model_pending`: one row per organization, written by its first
change not yet projected (later changes find it and write nothing). The
projector takes the oldest queued organizations page by page, scores each
current state once with its explanations as of its newest event (`project`:
every event applied shows, decision point or not), upserts `customer_health`,
publishes the health feed and removes the entries whose state still has the
version it projected.

The read model does not wait for the broker: a pass commits `customer_health` and
removes its entries whether or not the feed is acknowledged, and owes the feed of
what the broker did not take (`health_feed_owed`). A later pass of the shard publishes
the owed records from `customer_health` (each organization's newest projected score),
holding those rows (FOR SHARE) until it commits, so that no newer projection of them
is published before.

It coalesces like Kafka Streams' record cache: an organization changed by many
batches since the last pass is projected once. When ingest outruns it, each
pass covers more events per organization, instead of ingest slowing down. Its
lag is measured, not hoped for: `staleness()` is the age of the oldest change
not yet projected (`healthscore_read_model_staleness_seconds`).

The queue is split into shards by organization (`shards`, PROJECTOR_SHARDS):
each shard is projected by one process at a time (a transaction-level advisory
lock per shard), so the service's processes share the projection instead of
one of them doing all of it beside its own consumer. The queue is read without
row locks and entries are removed with SKIP LOCKED on the state rows, so a batch
never waits for the projector's writes or broker round trips (only for the
instant between that removal and its commit).
Publishing and deleting are not atomic: a crash between them publishes the
same score again on the compacted feed, never a wrong one. A pass (or live batch)
that sent its feed and then failed queues those organizations again
(`queue_again`): its session may have ended under it (a replica frozen past
TRANSACTION_IDLE_LIMIT_SECONDS) and another process published newer states before
its older ones went out.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import structlog
from aiokafka.errors import KafkaError

from healthscore.core.scoring.model import ScoreModel
from healthscore.core.scoring.results import HealthScore
from healthscore.core.scoring.score import score
from healthscore.core.scoring.state import (
    OrganizationState,
    current_as_of,
    open_interaction_count,
    unpack_state,
)
from healthscore.service.keyed_batches import BatchingProducer, send_keyed
from healthscore.service.periodic import AT_ONCE, LOCK_BUSY_RETRY
from healthscore.store import Connection, locks, sql
from healthscore.store.records import to_datetime
from healthscore.store.states import erased_among

log = structlog.get_logger(__name__)

# organizations scored between two returns to the event loop
YIELD_EVERY = 50
# a live batch waits this long at most for the health feed of what it projected, and
# after a failure leaves the feed (and its projection) to the projector this long
FEED_TIMEOUT_SECONDS = 2.0
FEED_PAUSE_SECONDS = 30.0
# a pass waits this long at most for the feed of its page before it commits the read
# model without it (the feed is then owed); a page is acknowledged in far less
PASS_FEED_TIMEOUT_SECONDS = 10.0
# how often a pass looks for erased organizations' owed health-feed tombstones (rare:
# an erasure whose own publish failed)
OWED_TOMBSTONES_EVERY_SECONDS = 2.0
# queueing organizations again after a feed that outlived its transaction: the waits
# between attempts (PostgreSQL restarting), then the follow-up is given up and counted
REQUEUE_RETRY_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0)
# one attempt's bound (a connection, then the statement, which waits for a pass holding
# the organization's entry: a page's feed wait at most)
REQUEUE_ATTEMPT_SECONDS = 15.0
# on a stop, how long cancelled follow-ups may take to unwind before the pool closes
FOLLOW_UP_UNWIND_SECONDS = 1.0
# on a stop, how long owing the cut follow-ups' organizations may take
OWE_LATER_SECONDS = 3.0


@dataclass(slots=True)
class SentFeed:
    """Health-feed records a transaction sends before it commits: their organizations
    (listed before the send) and the sends' futures. Should the transaction not commit
    (failed, or cancelled by a stop), the records may land all the same, even later
    than a newer score another process publishes: `Projector.follow_failed_feed`."""

    organizations: list[UUID | str] = field(default_factory=list)
    acks: list[asyncio.Future[Any]] = field(default_factory=list)
    # followed already (the feed wait ran out before the transaction ended)
    followed: bool = False


def in_flight(acks: Sequence[asyncio.Future[Any]]) -> bool:
    """Whether some of the sends have no answer yet (given up on, not refused): they
    may still land."""
    return any(not ack.done() for ack in acks)


@dataclass(frozen=True, slots=True)
class Projected:
    organization_id: UUID
    version: int
    state: OrganizationState
    health: HealthScore


def project(state: OrganizationState, model: ScoreModel) -> HealthScore | None:
    """The read model's score of `state`: as of its newest event (or a later silence
    rescoring, `current_as_of`), with explanations.

    Every event applied is in it, decision point or not: when the last event was
    one, the batch recorded this very score in the state (scoring the recorded
    state again at the same instant gives the same numbers: the day's own entry
    is not part of the 7- and 30-day changes); when it was not, it is the score
    that event's decision will record.
    """
    as_of = current_as_of(state)
    if as_of is None:
        return None
    return score(state, as_of, model, explain=True)


def _projected(
    states: Sequence[tuple[OrganizationState, int]], model: ScoreModel
) -> list[Projected]:
    """The states (each with the version it has) that have a score, with it."""
    page = []
    for state, version in states:
        health = project(state, model)
        if health is not None:
            page.append(Projected(UUID(state.organization_id), version, state, health))
    return page


async def project_in_transaction(
    conn: Connection, states: list[OrganizationState], model: ScoreModel
) -> None:
    """Write the read model of `states` in the caller's transaction and dequeue them.

    Not the service's way (that is the projector, off the event path): the naive
    benchmark baseline writes the read model with every event, as a
    one-transaction-per-message consumer would.
    """
    page = _projected([(state, 0) for state in states], model)
    if page:
        await _upsert_customer_health(conn, page, model)
        await conn.execute(sql.DEQUEUE_PROJECTED, [p.organization_id for p in page])


def catch_up_wait(backlog_seconds: float, after: float, window: float) -> float:
    """How long the projector leaves a change queued, given how long the consumer's
    backlog takes to apply: nothing for live traffic and short bursts (a backlog of
    less than `after` seconds), else as long as the backlog, at most `window`."""
    return 0.0 if backlog_seconds < after else min(window, backlog_seconds)


class CatchUpHolds:
    """How long the projector leaves queued changes: each change the catch-up wait in
    force when it was queued (`catch_up_wait`), not the one in force now.

    The wait follows the consumer's backlog, which shrinks as it catches up. Held to the
    current wait, the changes queued early in a catch-up were taken as the backlog
    shrank, and each organization was projected again for its next few events. Held to
    the wait of its own time, a change waits no longer than the backlog it joined took
    to apply: a reader still sees an event at most twice as late as the backlog made
    it, and the catch-up's end (the wait back to 0) takes everything queued at once.
    The waits are sampled every `sample_every` seconds of this process's clock; the hold
    is an age, so the database's clock compares it with its own times.
    """

    def __init__(self, sample_every: float = 1.0) -> None:
        self._every = sample_every
        # (when, the wait then), since the catch-up began; the first one still due
        self._samples: deque[tuple[float, float]] = deque()

    def hold(self, now: float, wait: float) -> float:
        """The age under which queued changes are left now, given the wait in force."""
        if wait <= 0:
            self._samples.clear()
            return 0.0
        if not self._samples or now - self._samples[-1][0] >= self._every:
            self._samples.append((now, wait))
        # what was queued before the catch-up began is due; a sample's span (until the
        # next one) is due as far as its wait has passed
        cutoff = self._samples[0][0]
        newest_due = 0
        for index, (at, waited) in enumerate(self._samples):
            if at + waited <= now:
                ends = self._samples[index + 1][0] if index + 1 < len(self._samples) else now
                cutoff = max(cutoff, min(now - waited, ends))
                newest_due = index
        for _ in range(newest_due):
            self._samples.popleft()
        return now - cutoff


def feed_wait(wait: float, idle_limit: float) -> float:
    """How long a transaction waits for the health feed: `wait`, or half of
    PostgreSQL's idle limit (`idle_limit`, 0: none) when that is less. The transaction
    idles meanwhile, and a wait the limit cut would end its session: the pass would
    fail instead of owing its feed."""
    return min(wait, idle_limit / 2) if idle_limit > 0 else wait


COALESCING_LOGGED_AFTER = 30.0
"""Seconds a start or end of coalescing holds before `read_model_coalescing` says so."""


class Projector:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        model: ScoreModel,
        producer: BatchingProducer | None,
        health_topic: str | None,
        page_size: int = 1000,
        on_pass: Callable[[int, float], None] | None = None,
        shards: int = 1,
        coalesce_for: Callable[[], float] = lambda: 0.0,
        idle_limit: float = 0.0,
        on_requeue: Callable[[str], None] | None = None,
        late_record_bound: float = 120.0,
    ) -> None:
        self._pool = pool
        self._model = model
        self._producer = producer
        self._health_topic = health_topic
        self._page = page_size
        self._on_pass = on_pass
        self._shards = max(1, shards)
        # how old a queued change must be before it is projected (seconds)
        self._coalesce_for = coalesce_for
        self._holds = CatchUpHolds()
        # PostgreSQL ends a session idle this long in a transaction (0: never); a pass
        # or live batch waits for the feed inside its transaction, so for less than it
        self._idle_limit = idle_limit
        # counts each follow-up of a feed that outlived its transaction ("queued",
        # "failed", "deferred", "cut")
        self._on_requeue = on_requeue
        # how long a health-feed record whose send was given up on (a pass's, a live
        # batch's, a follow-up a stop cut) may still land: its organization's feed is
        # owed, due only after it (`sql.OWE_HEALTH_FEED_LATER`)
        self._late_record_bound = late_record_bound
        self.projected = 0
        # the latest `measure_staleness()`, in seconds
        self.latest_staleness = 0.0
        # how long the last pass left changes queued to coalesce them (seconds)
        self.coalescing = 0.0
        # whether the consumer was catching up at the last pass
        self._catching_up = False
        # since when it has been as it is, and what the log last said
        self._catching_up_since = 0.0
        self._logged_catching_up = False
        # until when (monotonic) live batches leave their changes to the projector
        self._feed_paused_until = 0.0
        # feeds given up on or outlived by their transaction, still followed to learn
        # whether the broker took them (later); each with its organizations
        self._late_feeds: dict[asyncio.Task[None], list[UUID | str]] = {}
        # set once a stop waited for them (`settle`): no follow-up starts after it
        self._settled = False
        # renews the follow-ups' debts while any waits (`_lease_debts`)
        self._lease: asyncio.Task[None] | None = None
        # when (monotonic) a pass last looked for owed tombstones
        self._tombstones_looked_at = -math.inf

    async def project_once(self) -> int:
        """Project a page of the oldest queued organizations of every shard that no
        other process holds; return how many entries were taken."""
        return sum(taken or 0 for taken in await self._pass(0.0))

    async def _pass(self, min_age: float) -> list[int | None]:
        """The entries taken from each shard, in the order passed (None: another
        process held the shard)."""
        # from a random shard: processes passing at once mostly take different ones
        first = random.randrange(self._shards)
        taken = [
            await self._project_shard((first + index) % self._shards, min_age)
            for index in range(self._shards)
        ]
        if time.monotonic() - self._tombstones_looked_at >= OWED_TOMBSTONES_EVERY_SECONDS:
            self._tombstones_looked_at = time.monotonic()
            await self.publish_owed_tombstones()
        return taken

    async def publish_owed_tombstones(self) -> int:
        """Publish the health-feed tombstones of erased organizations that no broker took
        yet (`health_feed_tombstones_owed`: the erasure's own publish failed, or its
        command was killed first); how many were published."""
        if not self._feeds() or not self._feed_up():
            return 0
        assert self._producer is not None and self._health_topic is not None
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(sql.OWED_FEED_TOMBSTONES, self._page)
        if not rows:
            return 0
        erased = [r["organization_id"] for r in rows]
        try:
            await asyncio.wait_for(
                send_keyed(
                    self._producer,
                    self._health_topic,
                    [(str(org).encode(), None) for org in erased],
                ),
                PASS_FEED_TIMEOUT_SECONDS,
            )
        except (TimeoutError, KafkaError) as exc:
            # still owed; a tombstone landing late is as good as one in time
            self._feed_paused_until = time.monotonic() + FEED_PAUSE_SECONDS
            log.warning("health_feed_tombstones_owed", organizations=len(erased), error=repr(exc))
            return 0
        async with self._pool.acquire() as conn:
            await conn.execute(
                sql.FEED_TOMBSTONES_PUBLISHED, erased, [r["owed_since"] for r in rows]
            )
        log.info("health_feed_tombstones_published", organizations=len(erased))
        return len(erased)

    async def _project_shard(self, shard: int, min_age: float) -> int | None:
        started = time.perf_counter()
        sent = SentFeed()
        try:
            return await self._project_page(shard, min_age, started, sent)
        except (Exception, asyncio.CancelledError):
            # a stop's cancellation too: what was sent may still land
            self.follow_failed_feed(sent)
            raise

    async def _project_page(
        self, shard: int, min_age: float, started: float, sent: SentFeed
    ) -> int | None:
        """One pass over `shard`; `sent` receives the organizations whose feed is being
        sent, and the sends. The read model commits whether or not the feed is
        acknowledged: what the broker did not take is owed (`health_feed_owed`) and sent
        by a later pass."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                sql.PENDING_PROJECTION,
                self._page,
                self._shards,
                shard,
                min_age,
                locks.PROJECTOR_SHARD,
            )
            if not rows[0]["held"]:
                return None
            rows = [r for r in rows if r["organization_id"] is not None]
            page = []
            for index, row in enumerate(rows):
                if index % YIELD_EVERY == YIELD_EVERY - 1:
                    # the consumer shares this event loop: let its batches in
                    await asyncio.sleep(0)
                if row["state"] is None:
                    continue
                state = unpack_state(row["state"])
                health = project(state, self._model)
                if health is not None:
                    page.append(Projected(row["organization_id"], row["version"], state, health))
            previous = await _upsert_customer_health(conn, page, self._model) if page else {}
            # read after the upsert: this page's own rows are its newest, and locked
            owed = (
                await conn.fetch(sql.OWED_HEALTH_FEED, self._page, self._shards, shard)
                if self._feeds() and self._feed_up()
                else []
            )
            in_page = {p.organization_id for p in page}
            owed_only = [r for r in owed if r["organization_id"] not in in_page]
            if not rows and not owed_only:
                return 0
            if self._feeds():
                published = False
                if (page or owed_only) and self._feed_up():
                    sent.organizations.extend(in_page)
                    sent.organizations.extend(r["organization_id"] for r in owed_only)
                    published = await self._publish_or_pause(page, previous, owed_only, sent)
                if published and owed:
                    await conn.execute(
                        sql.FEED_PUBLISHED,
                        [r["organization_id"] for r in owed],
                        [r["not_before"] for r in owed],
                    )
                elif not published and in_flight(sent.acks):
                    # given up on, not refused: the records may still land, after a newer
                    # score published meanwhile, even should this process die before
                    # its follow-up sees them land. Owed for after they no longer can.
                    await conn.execute(
                        sql.OWE_HEALTH_FEED_LATER,
                        sorted({UUID(str(org)) for org in sent.organizations}),
                        self._late_record_bound,
                    )
                elif not published and page:
                    await conn.execute(sql.OWE_HEALTH_FEED, list(in_page))
            if rows:
                await conn.execute(
                    sql.MARK_PROJECTED,
                    [r["organization_id"] for r in rows],
                    [r["version"] for r in rows],
                )
        self.projected += len(page)
        if self._on_pass is not None and (rows or owed_only):
            self._on_pass(len(page), time.perf_counter() - started)
        return len(rows) + len(owed_only)

    def _feed_wait(self, wait: float) -> float:
        return feed_wait(wait, self._idle_limit)

    def _feeds(self) -> bool:
        return self._producer is not None and self._health_topic is not None

    def _feed_up(self) -> bool:
        """Whether the feed did not just fail: after a failure passes owe theirs at once
        for a while, instead of each waiting for the broker first."""
        return time.monotonic() >= self._feed_paused_until

    async def _publish_or_pause(
        self,
        page: list[Projected],
        previous: dict[UUID, float | None],
        owed: Sequence[asyncpg.Record],
        sent: SentFeed,
    ) -> bool:
        """Publish the page's feed and the owed records (their sends into `sent`); False
        (and the feed paused) when the broker did not acknowledge them in time."""
        acks = sent.acks
        try:
            await asyncio.wait_for(
                self._publish(page, previous, owed, acks),
                self._feed_wait(PASS_FEED_TIMEOUT_SECONDS),
            )
        except (TimeoutError, KafkaError) as exc:
            self._follow(sent, after_failure=False)
            self._feed_paused_until = time.monotonic() + FEED_PAUSE_SECONDS
            log.warning(
                "health_feed_owed",
                organizations=len(page) + len(owed),
                error=repr(exc),
                paused_seconds=FEED_PAUSE_SECONDS,
            )
            return False
        return True

    async def project_in_batch(
        self,
        conn: Connection,
        states: Sequence[tuple[OrganizationState, int]],
        sent: SentFeed,
    ) -> int:
        """Project `states` (each as a live batch saved it, with its version) in the
        batch's transaction, and publish their health feed before it commits (a batch
        that fails is applied again and publishes the same scores, as a pass does);
        `sent` receives the sends (the batch follows them up should it not commit).

        Only for organizations nobody had queued (`sql.TAKE_OWN_PENDING`): no pass can
        be writing an older state of them meanwhile.
        """
        started = time.perf_counter()
        page = _projected(states, self._model)
        if page:
            previous = await _upsert_customer_health(conn, page, self._model)
            try:
                await asyncio.wait_for(
                    self._publish(page, previous, acks=sent.acks),
                    self._feed_wait(FEED_TIMEOUT_SECONDS),
                )
            except (TimeoutError, KafkaError) as exc:
                self._follow(sent, after_failure=False)
                # ingestion never waits on the feed: these go back to the projector,
                # and live batches queue theirs too for a while
                self._feed_paused_until = time.monotonic() + FEED_PAUSE_SECONDS
                await conn.execute(
                    sql.QUEUE_FOR_PROJECTOR,
                    [p.organization_id for p in page],
                    [p.version for p in page],
                )
                if in_flight(sent.acks):
                    # the records may still land after the projector's newer ones (as a
                    # pass's given up on): their newest scores again once they cannot
                    await conn.execute(
                        sql.OWE_HEALTH_FEED_LATER,
                        [p.organization_id for p in page],
                        self._late_record_bound,
                    )
                log.warning(
                    "health_feed_failed_in_batch",
                    organizations=len(page),
                    error=repr(exc),
                    paused_seconds=FEED_PAUSE_SECONDS,
                )
                return 0
            self.projected += len(page)
            if self._on_pass is not None:
                self._on_pass(len(page), time.perf_counter() - started)
        return len(page)

    def takes_live_batches(self) -> bool:
        """Whether live batches should project their own changes now: the consumer is
        live (nothing to coalesce) and the health feed did not just fail in a batch."""
        return self._coalesce_for() == 0.0 and time.monotonic() >= self._feed_paused_until

    async def _publish(
        self,
        page: list[Projected],
        previous: dict[UUID, float | None],
        owed: Sequence[asyncpg.Record] = (),
        acks: list[asyncio.Future[Any]] | None = None,
    ) -> None:
        """Publish the feed of `page` and of `owed`; `acks` receives the sends' futures."""
        if self._producer is None or self._health_topic is None:
            return
        now = datetime.now(UTC)
        version = self._model.version
        records = [
            (
                str(p.organization_id).encode(),
                health_message(p, previous.get(p.organization_id), version, now),
            )
            for p in page
        ]
        records += [(str(r["organization_id"]).encode(), owed_message(r, now)) for r in owed]
        await send_keyed(self._producer, self._health_topic, records, acks)

    def follow_failed_feed(self, sent: SentFeed) -> None:
        """Follow the feed of a pass or live batch that did not commit (failed, or
        cancelled by a stop). Its entries came back with the rollback, unless its
        session had ended (a replica frozen past TRANSACTION_IDLE_LIMIT_SECONDS) and
        another process published newer states meanwhile; and what it sent may land
        after them. Once its sends have ended, if the broker took any, its
        organizations are queued again, so that a pass publishes their newest score
        after whatever landed."""
        if sent.followed and in_flight(sent.acks) and not self._settled:
            # given up on first (its debt in the transaction that just rolled back): the
            # follow-up runs, but the debt must be owed again now, not at the lease's round
            self._track(self._renew_debts(sent.organizations), list(sent.organizations))
        self._follow(sent, after_failure=True)

    def _follow(self, sent: SentFeed, after_failure: bool) -> None:
        """Follow sends given up on (`after_failure` False: a feed not acknowledged in
        time, its read model committed and the feed owed) or outlived by their
        transaction (True). The producer still delivers what it was given, possibly
        after another process published newer scores of these organizations (its path
        healed, a slow broker caught up), and the compacted feed would end on the
        older one. Once the sends end (taken, refused, or expired; with the idempotent
        producer never expired: only the broker's answer ends them), the
        organizations are queued again if the broker took any. `settle` waits for
        these on a stop. Sends are followed once; none sent, nothing to follow."""
        if not sent.acks or sent.followed:
            return
        sent.followed = True
        if self._settled:
            # the stop's wait is over: the pool is closing
            self._count_requeue("cut")
            log.warning(
                "health_feed_follow_ups_cut",
                follow_ups=1,
                organizations=len(sent.organizations),
                seconds=0.0,
                error="asked for after the stop's wait: the pool is closing",
            )
            return
        self._track(
            self._follow_up(list(sent.acks), list(sent.organizations), after_failure),
            list(sent.organizations),
        )

    def _track(self, work: Coroutine[Any, Any, None], organizations: list[UUID | str]) -> None:
        """Run `work` (a follow-up, or a debt owed at once) as a task `settle` waits for,
        and keep the lease on the debts of the follow-ups' organizations running."""
        task = asyncio.create_task(work, name="health-feed-follow-up")
        self._late_feeds[task] = organizations
        task.add_done_callback(self._follow_up_done)
        if self._late_record_bound > 0 and (self._lease is None or self._lease.done()):
            self._lease = asyncio.create_task(self._lease_debts(), name="health-feed-debt-lease")

    def _follow_up_done(self, task: asyncio.Task[None]) -> None:
        self._late_feeds.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("health_feed_follow_up_failed", error=repr(task.exception()))

    async def _follow_up(
        self,
        acks: list[asyncio.Future[Any]],
        organizations: list[UUID | str],
        after_failure: bool,
    ) -> None:
        # A transaction that did not commit left no debt (a pass's give-up owed one, due
        # a bound later): owed now while its records are unanswered; the lease renews it
        # while they stay so (`_lease_debts`)
        if after_failure and in_flight(acks):
            await self._renew_debts(organizations)
        # wait() leaves the futures as they are should this be cancelled
        await asyncio.wait(acks)
        # every outcome read (an unread exception is logged when collected)
        landed = [not ack.cancelled() and ack.exception() is None for ack in acks]
        if not any(landed):
            return  # nothing landed: nothing to follow
        if not after_failure:
            log.info("health_feed_acknowledged_late", organizations=len(organizations))
        if await self._queue_again(organizations):
            await self._tombstone_erased([UUID(str(org)) for org in organizations])

    async def _queue_again(self, organizations: Sequence[UUID | str]) -> bool:
        """`queue_again`, tried again while PostgreSQL is away; counted either way."""
        for attempt, pause in enumerate((*REQUEUE_RETRY_SECONDS, None)):
            try:
                async with asyncio.timeout(REQUEUE_ATTEMPT_SECONDS):
                    await queue_again(self._pool, organizations)
            except Exception as exc:  # any: the follow-up must end counted
                if pause is not None:
                    await asyncio.sleep(pause)
                    continue
                # the feed may end on an older score until the organization changes
                log.error(
                    "projection_requeue_failed",
                    organizations=len(organizations),
                    attempts=attempt + 1,
                    error=repr(exc),
                )
                self._count_requeue("failed")
                return False
            self._count_requeue("queued")
            return True
        raise AssertionError("unreachable")

    def _count_requeue(self, outcome: str) -> None:
        if self._on_requeue is not None:
            self._on_requeue(outcome)

    async def settle(self, within: float) -> None:
        """On a stop, before the pool closes and the producer stops: let the follow-ups
        of feeds given up on or outlived by their transaction end (their sends
        acknowledged or expired, their organizations queued again), `within` seconds
        at most. Those still waiting (the broker did not answer) are cancelled and their
        organizations owed, due only after `late_record_bound` seconds, by when their
        records can no longer land: a later pass of any replica republishes the newest
        scores after them (counted `deferred`, logged `health_feed_follow_ups_deferred`).
        Should that fail (PostgreSQL away too), and for any follow-up asked for after
        this, they are counted as `cut` and logged (`health_feed_follow_ups_cut`)."""
        pending: set[asyncio.Task[None]] = set()
        if self._late_feeds:
            _, pending = await asyncio.wait(set(self._late_feeds), timeout=within)
        self._settled = True
        if self._lease is not None:
            self._lease.cancel()
        if not pending:
            return
        organizations = [org for task in pending for org in self._late_feeds.get(task, [])]
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=FOLLOW_UP_UNWIND_SECONDS)
        error = await self._owe_later(organizations)
        outcome = "deferred" if error is None else "cut"
        for _ in pending:
            self._count_requeue(outcome)
        if error is None:
            log.info(
                "health_feed_follow_ups_deferred",
                follow_ups=len(pending),
                organizations=len(set(organizations)),
                seconds=within,
                due_after_seconds=self._late_record_bound,
            )
            return
        log.warning(
            "health_feed_follow_ups_cut",
            follow_ups=len(pending),
            organizations=len(set(organizations)),
            seconds=within,
            error=error,
        )

    async def _owe_later(self, organizations: Sequence[UUID | str]) -> str | None:
        """Owe the feed of `organizations` (an erased one's tombstone), due after
        `late_record_bound` seconds (`sql.OWE_HEALTH_FEED_LATER`); None when every one is
        owed, else why not (what failed, or how many have neither a saved state nor an
        erasure: one whose first state the cut transaction was creating)."""
        wanted: list[UUID] = []
        try:
            wanted = sorted({UUID(str(org)) for org in organizations})
            async with asyncio.timeout(OWE_LATER_SECONDS), self._pool.acquire() as conn:
                for attempt in range(2):
                    try:
                        owed = await conn.fetchval(
                            sql.OWE_HEALTH_FEED_LATER, wanted, self._late_record_bound
                        )
                        break
                    except asyncpg.ForeignKeyViolationError:
                        # an erasure of one of them committed while this waited on it:
                        # again, it is an erased organization now (its tombstone owed)
                        if attempt:
                            raise
        except Exception as exc:  # any: the caller goes on, the loss counted
            return repr(exc)
        if owed < len(wanted):
            return f"{len(wanted) - owed} of {len(wanted)} organizations are nowhere to owe"
        return None

    async def _renew_debts(self, organizations: Sequence[UUID | str]) -> None:
        """Owe (again) the feed of `organizations` for later, logging a failure."""
        error = await self._owe_later(organizations)
        if error is not None:
            log.warning(
                "health_feed_debt_not_renewed",
                organizations=len(set(organizations)),
                error=error,
            )

    async def _lease_debts(self) -> None:
        """While follow-ups wait for records the broker has not answered, renew their
        organizations' debts every third of the bound, in one statement for all of them,
        so that each falls due only a bound after this process last could send; ends
        when no follow-up is left (the next one starts it again)."""
        while True:
            await asyncio.sleep(max(1.0, self._late_record_bound / 3))
            waiting = {org for orgs in self._late_feeds.values() for org in orgs}
            if not waiting or self._settled:
                return
            await self._renew_debts(sorted(waiting, key=str))

    async def _tombstone_erased(self, organizations: list[UUID]) -> None:
        """Publish the feed's tombstone again for those of `organizations` erased since
        their late record was sent: it may have landed after the erasure's tombstone, and
        the compacted feed would end on a score of an erased organization. Best effort,
        like `queue_again`: the runbook says to run the erasure again when the feed was
        behind."""
        if self._producer is None or self._health_topic is None:
            return
        erased: set[str] = set()
        try:
            async with self._pool.acquire() as conn:
                erased = set(await erased_among(conn, organizations))
            if erased:
                await send_keyed(
                    self._producer,
                    self._health_topic,
                    [(org.encode(), None) for org in sorted(erased)],
                )
                log.info("health_feed_tombstones_published_again", organizations=len(erased))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, KafkaError) as exc:
            owed = False
            if erased:
                # owed: a later pass publishes them (`publish_owed_tombstones`)
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    async with self._pool.acquire() as conn:
                        await conn.execute(
                            sql.OWE_FEED_TOMBSTONES, [UUID(org) for org in sorted(erased)]
                        )
                    owed = True
            log.warning(
                "health_feed_tombstones_failed",
                organizations=len(organizations),
                owed=owed,
                error=repr(exc),
            )

    async def staleness(self) -> float:
        """Seconds since the oldest change not yet projected (0 when none is queued)."""
        return await self._age(sql.READ_MODEL_STALENESS)

    async def feed_owed_age(self) -> float:
        """Seconds since the oldest health-feed record (or erased organization's
        tombstone) the broker did not take was owed (0 when none is): how long the feed
        has lagged the read model."""
        return await self._age(sql.OWED_HEALTH_FEED_AGE)

    async def _age(self, query: str) -> float:
        """The age in seconds `query` measures on the database's clock (the times it
        compares are the database's: this process's clock must not enter)."""
        async with self._pool.acquire() as conn:
            age: float = await conn.fetchval(query)
        return max(0.0, age)

    async def drain(self, pause: float = 0.05, timeout: float | None = 300.0) -> int:
        """Project until the queue is empty (tests, replay); how many projected.
        `timeout` None: no limit (`healthscore replay --timeout 0`)."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        total = 0
        while True:
            taken = await self.project_once()
            total += taken
            if taken == 0:
                async with self._pool.acquire() as conn:
                    if await conn.fetchval(sql.OLDEST_PENDING_PROJECTION) is None:
                        return total
                if time.monotonic() > deadline:
                    raise TimeoutError("the read model did not catch up")
                await asyncio.sleep(pause)

    async def step(self) -> float | None:
        """Project a page per shard; a full page goes on at once, an empty queue waits.

        While the consumer catches up (`coalesce_for`), a change is taken once it has
        been queued as long as the wait in force when it was queued (`CatchUpHolds`):
        the organization's later changes are projected with it, one write for many
        batches. The freshness this costs is none that a reader would see: the events
        being applied are older than that already. Live changes are taken at once.
        """
        wait = self._coalesce_for()
        now = time.monotonic()
        if (wait > 0) != self._catching_up:
            self._catching_up = wait > 0
            self._catching_up_since = now
        # logged once a change has held COALESCING_LOGGED_AFTER: a partition hovering
        # at the live threshold turned it on and off 16 times a minute (review 36b)
        if (
            self._catching_up != self._logged_catching_up
            and now - self._catching_up_since >= COALESCING_LOGGED_AFTER
        ):
            self._logged_catching_up = self._catching_up
            log.info("read_model_coalescing", seconds=round(wait, 1))
        self.coalescing = self._holds.hold(time.monotonic(), wait)
        taken = await self._pass(self.coalescing)
        if max(n or 0 for n in taken) >= self._page:
            return AT_ONCE
        # a shard another process was projecting may hold this process's newest changes
        return LOCK_BUSY_RETRY if None in taken else None

    async def measure_staleness(self) -> float:
        """`staleness()`, kept as `latest_staleness` for readiness (a periodic step)."""
        self.latest_staleness = await self.staleness()
        return self.latest_staleness


async def queue_again(pool: asyncpg.Pool[Any], sent: Sequence[UUID | str]) -> None:
    """Queue organizations whose feed was sent by a transaction that then failed
    (`Projector.follow_failed_feed`), at their current versions.

    Their entries came back with the rollback, unless another process took them
    meanwhile: a replica frozen inside a pass or a live batch past
    TRANSACTION_IDLE_LIMIT_SECONDS loses its session, another projects and publishes
    the newer states, and the thawed one then sends the states it read. The feed is
    compacted on the organization, so its last record must come from a newer pass:
    queued again (after the sends ended), one comes.
    """
    async with pool.acquire() as conn:
        await conn.execute(sql.QUEUE_AGAIN, list(sent))


async def _upsert_customer_health(
    conn: Connection, page: list[Projected], model: ScoreModel
) -> dict[UUID, float | None]:
    """Write the page's rows; return each organization's previous score."""
    healths = [p.health for p in page]
    states = [p.state for p in page]
    rows = await conn.fetch(
        sql.UPSERT_CUSTOMER_HEALTH,
        [p.organization_id for p in page],
        [h.score for h in healths],
        [h.components["engagement"] for h in healths],
        [h.components["adoption"] for h in healths],
        [h.components["milestones"] for h in healths],
        [h.components["support"] for h in healths],
        [h.components["growth"] for h in healths],
        [h.churn_probability for h in healths],
        [factors_json(h.risk_factors) for h in healths],
        [feature_usage_json(s.features) for s in states],
        [h.change_7d for h in healths],
        [h.change_30d for h in healths],
        [h.active_users_30d for h in healths],
        [open_interaction_count(s) for s in states],
        [len(s.milestones) for s in states],
        [to_datetime(s.last_event_at) for s in states],
        [to_datetime(s.last_login_at) for s in states],
        [to_datetime(current_as_of(s)) for s in states],
        model.version,
    )
    return {r["organization_id"]: r["previous_score"] for r in rows}


def owed_message(row: asyncpg.Record, now: datetime) -> bytes:
    """The `customer.health.v1` record of an owed organization, from its customer_health
    row (`sql.OWED_HEALTH_FEED`): what `health_message` sent when it was projected."""
    return _feed_record(
        organization_id=row["organization_id"],
        health_score=row["health_score"],
        previous_score=row["previous_score"],
        health_status=row["health_status"],
        churn_probability=row["churn_probability"],
        risk_level=row["risk_level"],
        components={
            "engagement": row["engagement_score"],
            "adoption": row["adoption_score"],
            "milestones": row["milestone_score"],
            "support": row["support_score"],
            "growth": row["growth_score"],
        },
        risk_factors=orjson.loads(row["risk_factors"]),
        score_model_version=row["score_model_version"],
        scored_at=row["scored_at"],
        emitted_at=now,
    )


def factor_dicts(factors: Any) -> list[dict[str, Any]]:
    return [
        {"factor": f.factor, "value": f.value, "impact": f.impact, "detail": f.detail}
        for f in factors
    ]


def factors_json(factors: Any) -> str:
    return orjson.dumps(factor_dicts(factors)).decode()


def feature_usage_json(features: dict[str, list[float]]) -> str:
    return orjson.dumps(
        {
            name: {"count": int(v[0]), "last_used_at": to_datetime(v[1])}
            for name, v in features.items()
        }
    ).decode()


def health_message(
    projected: Projected, previous_score: float | None, model_version: str, now: datetime
) -> bytes:
    """A `customer.health.v1` record: the organization's latest score."""
    health = projected.health
    return _feed_record(
        organization_id=projected.organization_id,
        health_score=health.score,
        previous_score=previous_score,
        health_status=str(health.status),
        churn_probability=health.churn_probability,
        risk_level=str(health.risk_level),
        components={name: health.components[name] for name in FEED_COMPONENTS},
        risk_factors=factor_dicts(health.risk_factors),
        score_model_version=model_version,
        scored_at=to_datetime(current_as_of(projected.state)),
        emitted_at=now,
    )


# the components a health feed record carries, in its order
FEED_COMPONENTS = ("engagement", "adoption", "milestones", "support", "growth")


def _feed_record(
    *,
    organization_id: UUID,
    health_score: float,
    previous_score: float | None,
    health_status: str,
    churn_probability: float,
    risk_level: str,
    components: dict[str, float],
    risk_factors: list[dict[str, Any]],
    score_model_version: str,
    scored_at: datetime | None,
    emitted_at: datetime,
) -> bytes:
    """One `customer.health.v1` record, whichever source its figures come from."""
    return orjson.dumps(
        {
            "organization_id": str(organization_id),
            "health_score": health_score,
            "previous_score": previous_score,
            "health_status": health_status,
            "churn_probability": churn_probability,
            "risk_level": risk_level,
            "components": components,
            "risk_factors": risk_factors,
            "score_model_version": score_model_version,
            "scored_at": scored_at,
            "emitted_at": emitted_at,
        }
    )
