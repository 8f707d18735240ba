"""One batch, one transaction: gather, compute, apply.

The transaction that writes a batch's effects also moves each partition's
stored next offset, so the database alone says how far the service got. The
consumer seeks to those offsets on assignment; Kafka's committed offsets are
written afterwards for lag tooling only. A crash at any instant therefore
leaves either the whole batch (effects + offsets) or none of it.

Two guards make the effects count once even when Kafka delivers a record
again: records below the stored offset are skipped (redelivery after a
crash or a rebalance), and an event id already in `processed_events` is
skipped (upstream duplicates, within the retention window). The same id with
another payload is not a duplicate but a conflict, and is dead-lettered.

A third guard makes sure nothing is skipped: a partition's stored offset only
moves over records that this transaction applied or dead-lettered. A batch
whose first record of a partition lies beyond the stored offset (a gap: records
the client fetched but never handed over) raises `OffsetGap` before anything
commits, and the consumer seeks back to the stored offset.

A batch that fails on its data (the database refuses a value, the scoring core
raises) is not an outage: it is split in halves until the one record that
fails alone is found, and that record is dead-lettered as `unprocessable`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from healthscore.core.alignment import AlignmentView, align
from healthscore.core.effects import (
    BatchEffects,
    compute_batch_effects,
    silence_plan,
    silence_slices,
)
from healthscore.core.events import Event, SupportEvent
from healthscore.core.interactions import InteractionRecord
from healthscore.core.partitions import PartitionKey
from healthscore.core.scoring.model import ScoreModel
from healthscore.core.scoring.state import OrganizationState
from healthscore.errors import InvalidStoredOffset, OffsetGap
from healthscore.service.ingest.decode import (
    Decoded,
    Decoder,
    RawRecord,
    Rejection,
    as_sent_event_json,
    canonical_event_json,
    event_json,
    key_organization,
)
from healthscore.service.ingest.dlq import dead_letter_columns
from healthscore.service.ingest.owned import OwnedStates
from healthscore.service.projector import SentFeed, project_in_transaction
from healthscore.store import Connection, sql
from healthscore.store.effects_writer import write_effects
from healthscore.store.records import interaction_from_row, storable
from healthscore.store.states import (
    States,
    lock_states,
    rescored_states,
    save_locked_states,
    save_states_checked,
    stored_states,
)

# Errors that say "this data cannot be applied", not "the database or broker is
# away": the batch is narrowed down to the record instead of retried forever.
# A unique violation is left out on purpose: a race between replicas heals.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.CheckViolationError,
    asyncpg.NotNullViolationError,
    asyncpg.ForeignKeyViolationError,
    asyncpg.ProgramLimitExceededError,
    # raised by the pure core on values it cannot compute with
    ValueError,
    ArithmeticError,
    TypeError,
    LookupError,
)


SILENCE_BUDGET = 100_000
"""Silence rescorings one batch transaction may make: every event may end a year of
silence (`core.effects.SILENCE_HORIZON`, 1,460 rescorings), so a batch of events a year
apart would otherwise compute millions in one transaction, and hold them all."""

SILENCE_SLICE = 1_000
"""Silence rescorings a batch computes between two yields of the event loop (as the
sweep's `SWEEP_SLICE`): up to `SILENCE_BUDGET` of them take seconds, and heartbeats,
the projector and the ops endpoints share the loop."""


class PartlyCommitted(Exception):
    """A batch failed after parts of it committed on their own (a bisection): what
    those parts did (`committed`: their rejections are in the outbox, their events
    applied, so they are logged and counted like any batch's) and why the rest failed
    (`cause`, handled as the batch's failure: the rest is fetched again)."""

    def __init__(self, committed: BatchOutcome, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.committed = committed
        self.cause = cause


class TooManyUnprocessable(Exception):
    """More records of one batch failed alone than a data problem explains.

    A bug that fails every record must block loudly and be retried, not
    dead-letter the whole stream one record at a time.
    """


# projects states a live batch saved (each with its version) in the batch's transaction
ProjectInBatch = Callable[
    [Connection, Sequence[tuple[OrganizationState, int]], SentFeed], Awaitable[int]
]


class LiveProjection(NamedTuple):
    """How live batches project their own changes (`BatchPipeline.project_live_batches`)."""

    project: ProjectInBatch
    # whether the consumer is live now
    live: Callable[[], bool]
    # takes the feed a batch sent and did not commit
    follow_failed: Callable[[SentFeed], None]


@dataclass
class BatchOutcome:
    """What one batch did: the canonical log line and the metrics read this."""

    records: int = 0
    # stand-ins (`RawRecord.skipped_to`: offsets no record was handed over for, such as
    # transaction markers) whose offsets the batch stored as passed; not records
    passed_over: int = 0
    skipped_replayed: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    organizations_rescored: int = 0
    # organizations whose state the consumer held, read, or found changed by another
    # writer (computed again under lock)
    states_held: int = 0
    states_read: int = 0
    states_changed_elsewhere: int = 0
    # organizations this batch projected itself (live projection)
    projected_in_batch: int = 0
    alerts: dict[str, int] = field(default_factory=dict)
    milestones: int = 0
    consumed_by_topic: dict[str, int] = field(default_factory=dict)
    applied_by_topic: dict[str, int] = field(default_factory=dict)
    duplicates_by_topic: dict[str, int] = field(default_factory=dict)
    redelivered_by_topic: dict[str, int] = field(default_factory=dict)
    # records of erased organizations (migration 0095), skipped: neither applied nor
    # dead-lettered (a dead letter would copy the erased payload to its topic)
    erased_by_topic: dict[str, int] = field(default_factory=dict)
    erased_organizations: list[str] = field(default_factory=list)
    # applied records that carried fields the contract does not name, by topic; and a
    # few of them (topic, the names, partition, offset) for the log's first sighting
    unknown_fields_by_topic: dict[str, int] = field(default_factory=dict)
    unknown_field_samples: list[tuple[str, tuple[str, ...], int, int]] = field(default_factory=list)
    record_timestamps_ms: list[int] = field(default_factory=list)
    first_offsets: dict[PartitionKey, int] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    held_from: dict[PartitionKey, int] = field(default_factory=dict)
    frontiers: dict[PartitionKey, float] = field(default_factory=dict)
    next_offsets: dict[PartitionKey, int] = field(default_factory=dict)
    # partitions the alignment took for live traffic (applied as they came)
    live: frozenset[PartitionKey] = frozenset()
    rejections: list[Rejection] = field(default_factory=list)
    # the transactions the batch took (more than one: bisected, or cut in parts)
    transactions: int = 1

    def merge(self, later: BatchOutcome) -> BatchOutcome:
        """This outcome followed by `later` (the parts of a bisected batch)."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(later, f.name)
            if isinstance(mine, int):
                setattr(self, f.name, mine + theirs)
            elif isinstance(mine, list):
                mine.extend(theirs)
            elif isinstance(mine, frozenset):
                setattr(self, f.name, mine | theirs)
            elif f.name in ("first_offsets",):
                for key, value in theirs.items():
                    mine[key] = min(mine.get(key, value), value)
            elif f.name in ("next_offsets", "frontiers", "held_from"):
                for key, value in theirs.items():
                    mine[key] = max(mine.get(key, value), value)
            else:  # counters and timings
                for key, value in theirs.items():
                    mine[key] = mine.get(key, 0) + value
        return self


class BatchPipeline:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        decoder: Decoder,
        model: ScoreModel,
        consumer_group: str,
        rescore_step_seconds: float,
        max_unprocessable_per_batch: int = 10,
        silence_rescoring: bool = False,
        read_model_in_transaction: bool = False,
        owned_states: int = 0,
        silence_budget: int = SILENCE_BUDGET,
    ) -> None:
        self._pool = pool
        # silence rescorings one transaction may make (a batch past it is cut in two)
        self._silence_budget = silence_budget
        # states held between batches (OwnedStates; 0: every batch reads them)
        self._owned = OwnedStates(owned_states)
        # partitions whose offset rows exist (created by this pipeline or found)
        self._offset_rows: set[PartitionKey] = set()
        # the naive baseline's way: the read model in every batch's transaction
        self._read_model_in_transaction = read_model_in_transaction
        # live projection (`project_live_batches`): how, and whether the consumer is live
        self._live_projection: LiveProjection | None = None
        self._max_unprocessable = max_unprocessable_per_batch
        self._decoder = decoder
        self._model = model
        self._group = consumer_group
        self._rescore_step = rescore_step_seconds
        # with the silence sweep on: rescore an organization's silence before its
        # next event (see healthscore.service.sweep), so that it does not depend on timing
        self._silence_step = rescore_step_seconds if silence_rescoring else None

    def project_live_batches(
        self,
        project: ProjectInBatch,
        live: Callable[[], bool],
        follow_failed: Callable[[SentFeed], None],
    ) -> None:
        """Let each batch that starts while `live()` project its own changes in its
        transaction with `project` (the projector's `project_in_batch`), instead of
        queueing them for the projector: live, every organization changes about once a
        projector pass, so there is nothing to coalesce and the queue's round trip only
        adds staleness. While the consumer catches up (`live()` false) changes are
        queued, and the projector coalesces them. An organization queued before the
        batch (by the sweep, an import, a promotion, an earlier catching-up batch)
        stays queued: the projector may be writing an older state of it, and its entry
        is what makes the projector write it again when it sees the state moved on.
        A batch that sent its feed and then did not commit hands the sends to
        `follow_failed` (the projector's `follow_failed_feed`).
        """
        self._live_projection = LiveProjection(project, live, follow_failed)

    def forget_owned_states(self) -> None:
        self._owned.clear()

    def decode(self, records: Sequence[RawRecord]) -> list[Decoded | Rejection]:
        return [self._decoder.decode(r) for r in records]

    async def process(
        self, records: Sequence[RawRecord], view: AlignmentView | None = None
    ) -> BatchOutcome:
        """Decode and apply a fetched batch (see `process_items`)."""
        started = time.perf_counter()
        items = self.decode(records)
        outcome = await self.process_items(items, view)
        outcome.timings_ms["decode"] = round((time.perf_counter() - started) * 1000, 1) - sum(
            outcome.timings_ms.values()
        )
        return outcome

    async def process_items(
        self,
        items: Sequence[Decoded | Rejection],
        view: AlignmentView | None = None,
        positioned: Mapping[PartitionKey, int] | None = None,
    ) -> BatchOutcome:
        """Apply decoded records; with `view`, only their event-time-aligned part.

        Records held back by the alignment are not applied and not stored as
        consumed: `outcome.held_from` says from which offset on, per partition.
        `positioned` holds the offsets the consumer was explicitly sought to
        since its last batch of that partition: a fetch from there may start
        later (the log has nothing to hand over in between: transaction
        markers, compaction), which is no gap. A stand-in for offsets the
        client passed (`RawRecord.skipped_to`: transaction markers) moves the
        stored offset past them and is neither applied nor dead-lettered.
        """
        if not items:
            return BatchOutcome()
        alignment = align(items, view)
        unprocessable: list[int] = [0]
        outcome = await self._apply_isolating(
            list(alignment.applied), positioned or {}, unprocessable
        )
        outcome.held_from = alignment.held_from
        outcome.frontiers = alignment.frontiers
        outcome.live = alignment.live
        return outcome

    async def _apply_isolating(
        self,
        items: list[Decoded | Rejection],
        positioned: Mapping[PartitionKey, int],
        unprocessable: list[int],
    ) -> BatchOutcome:
        """Apply `items`; on a data error, bisect down to the record that fails alone.

        Each half commits on its own with its offsets, so a crash in the middle
        of a bisection resumes exactly where the database says.
        """
        try:
            return await self._apply(items, positioned)
        except _SplitBefore as split:
            cut = split.index
        except DATA_ERRORS as exc:
            if len(items) == 1:
                unprocessable[0] += 1
                if unprocessable[0] > self._max_unprocessable:
                    raise TooManyUnprocessable(
                        f"more than {self._max_unprocessable} records of one batch failed "
                        f"alone; the last with {type(exc).__name__}: {exc}"
                    ) from exc
                return await self._dead_letter_unprocessable(items[0], exc, positioned)
            cut = len(items) // 2
        first = await self._apply_isolating(items[:cut], positioned, unprocessable)
        try:
            second = await self._apply_isolating(items[cut:], positioned, unprocessable)
        except PartlyCommitted as partly:
            raise PartlyCommitted(first.merge(partly.committed), partly.cause) from partly.cause
        except Exception as exc:
            # the first part committed: its dead letters and events must not go unsaid
            raise PartlyCommitted(first, exc) from exc
        return first.merge(second)

    async def _dead_letter_unprocessable(
        self,
        item: Decoded | Rejection,
        exc: BaseException,
        positioned: Mapping[PartitionKey, int],
    ) -> BatchOutcome:
        """Dead-letter the one record that fails alone and move its offset past it."""
        record = item.record
        tp = (record.topic, record.partition)
        outcome = BatchOutcome(records=1)
        rejection = Rejection(record, "unprocessable", f"{type(exc).__name__}: {str(exc)[:300]}")
        async with self._pool.acquire() as conn, conn.transaction():
            stored, _, _, _ = await self._lock_offsets_and_claim(
                conn, [tp], [], [], [], ensure=True
            )
            if record.offset < stored[tp]:
                outcome.skipped_replayed = 1
                _count(outcome.redelivered_by_topic, record.topic)
                return outcome
            _check_no_gap(tp, record.offset, stored[tp], positioned)
            await conn.execute(sql.INSERT_DEAD_LETTERS, *dead_letter_columns([rejection]))
            await conn.execute(
                sql.SAVE_OFFSETS, self._group, [tp[0]], [tp[1]], [record.offset + 1], [None]
            )
        _count(outcome.consumed_by_topic, record.topic)
        outcome.first_offsets[tp] = record.offset
        outcome.next_offsets[tp] = record.offset + 1
        outcome.rejected["unprocessable"] = 1
        outcome.rejections = [rejection]
        return outcome

    async def _apply(
        self, decoded: list[Decoded | Rejection], positioned: Mapping[PartitionKey, int]
    ) -> BatchOutcome:
        # the health feed a live batch sent
        sent = SentFeed()
        try:
            try:
                return await self._apply_once(decoded, positioned, sent)
            except _OffsetRowsGone:
                # reset or removed since this consumer first saw them: create and start over
                self._offset_rows.clear()
                return await self._apply_once(decoded, positioned, sent)
        except (Exception, asyncio.CancelledError):
            # a stop's cancellation too: the feed's last word must come from a
            # committed state
            if self._live_projection is not None:
                self._live_projection.follow_failed(sent)
            raise

    async def _lock_offsets_and_claim(
        self,
        conn: Connection,
        partitions: list[PartitionKey],
        events: list[Decoded],
        digests: list[bytes],
        to_read: list[str],
        rejected_ids: Sequence[str] = (),
        ensure: bool = False,
    ) -> tuple[dict[PartitionKey, int], set[int], States, set[str]]:
        """Lock the partitions' stored offsets, claim the ids of the events at or after
        them, read the states of `to_read` (without row locks) and say which of them
        and of `rejected_ids` were erased (their events are not claimed; a held
        organization erased since is found by its checked save,
        `_compute_and_save_states`).

        One round trip: the offset rows are created only for partitions this
        pipeline has not seen yet (they are never removed while it runs, except
        by an offset reset, which `_apply` recovers from; `ensure` creates them
        whatever this pipeline has seen). States are read for
        every organization of the batch that is not held, before knowing which
        events are new: a duplicate's organization is read for nothing.
        """
        ensured = ensure or not self._offset_rows.issuperset(partitions)
        if ensured:
            await conn.execute(
                sql.ENSURE_OFFSET_ROWS,
                self._group,
                [tp[0] for tp in partitions],
                [tp[1] for tp in partitions],
            )
        bodies = [d.event for d in events]
        rows = await conn.fetch(
            sql.LOCK_OFFSETS_AND_CLAIM_EVENT_IDS,
            self._group,
            [tp[0] for tp in partitions],
            [tp[1] for tp in partitions],
            [e.event_id for e in bodies],
            [e.organization_id for e in bodies],
            [storable(e.occurred_at) for e in bodies],
            digests,
            [d.record.topic for d in events],
            [d.record.partition for d in events],
            [d.record.offset for d in events],
            to_read,
            list(rejected_ids),
        )
        stored: dict[PartitionKey, int] = {}
        claimed: set[int] = set()  # the claimed event ids' integers (see _sort_claimed)
        state_rows = []
        erased: set[str] = set()
        for row in rows:
            if row["organization_id"] is not None:
                if row["health_version"] is None:  # a tombstone, not a state row
                    erased.add(str(row["organization_id"]))
                else:
                    state_rows.append(row)
            elif row["event_id"] is not None:
                claimed.add(row["event_id"].int)
            else:
                stored[(row["topic"], row["partition"])] = int(row["next_offset"])
        if set(stored) != set(partitions):
            gone = set(partitions) - set(stored)
            if not ensured:
                raise _OffsetRowsGone(gone)
            raise InvalidStoredOffset(f"offset rows missing for {gone}")
        self._offset_rows.update(partitions)
        return stored, claimed, stored_states(state_rows), erased

    async def _apply_once(
        self,
        decoded: list[Decoded | Rejection],
        positioned: Mapping[PartitionKey, int],
        sent: SentFeed,
    ) -> BatchOutcome:
        """One transaction: effects, dead letters and offsets of `decoded` (`sent`: the
        organizations whose health feed it sends, live)."""
        # a stand-in (`RawRecord.skipped_to`) is no record: it only moves the offset
        stand_ins = sum(1 for d in decoded if d.record.skipped_to is not None)
        outcome = BatchOutcome(records=len(decoded) - stand_ins, passed_over=stand_ins)
        last: dict[PartitionKey, int] = {}
        first = outcome.first_offsets
        for item in decoded:
            record = item.record
            tp = (record.topic, record.partition)
            last[tp] = max(last.get(tp, -1), record.last_offset)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        partitions = sorted(last)
        if not partitions:
            return outcome

        marks = _Marks(outcome.timings_ms)
        async with self._pool.acquire() as conn, conn.transaction():
            marks.lap("begin")
            claimable = [d for d in decoded if isinstance(d, Decoded)]
            digests = [payload_digest(d) for d in claimable]
            to_read = self._owned.absent(sorted({d.organization for d in claimable}))
            # each rejected record's organizations (its value searched once): whether
            # they were erased, looked up with the states, theirs not read
            named = _rejected_organizations(decoded)
            rejected_ids = sorted(set().union(*named.values())) if named else []
            stored, claimed, read, erased = await self._lock_offsets_and_claim(
                conn, partitions, claimable, digests, to_read, rejected_ids
            )
            fresh: list[Decoded | Rejection] = []
            first_fresh: dict[PartitionKey, int] = {}
            for item in decoded:
                record = item.record
                tp = (record.topic, record.partition)
                if record.offset < stored[tp]:
                    if record.skipped_to is None:
                        outcome.skipped_replayed += 1
                        _count(outcome.redelivered_by_topic, record.topic)
                    continue
                first_fresh[tp] = min(first_fresh.get(tp, record.offset), record.offset)
                if record.skipped_to is None:  # a stand-in only moves the offset
                    fresh.append(item)
            for tp, offset in first_fresh.items():
                _check_no_gap(tp, offset, stored[tp], positioned)
            if erased:
                fresh = self._skip_erased(fresh, erased, named, outcome)
            events = [d for d in fresh if isinstance(d, Decoded)]
            dead = [d for d in fresh if isinstance(d, Rejection)]
            digest_of = {id(d): digest for d, digest in zip(claimable, digests, strict=True)}
            new_events, duplicates, conflicts = await _sort_claimed(
                conn, events, [digest_of[id(d)] for d in events], claimed
            )
            dead.extend(conflicts)
            marks.lap("claim")
            outcome.duplicates = len(duplicates)
            for item in duplicates:
                _count(outcome.duplicates_by_topic, item.record.topic)
            try:
                effects, saved, erased_since = await self._compute_and_save_states(
                    conn,
                    [d.event for d in new_events],
                    sorted({d.organization for d in new_events}),
                    read,
                    marks,
                    outcome,
                )
            except _SilenceBudget as over:
                # its records before that event in one transaction, the rest after
                raise _SplitBefore(
                    next(
                        index
                        for index, item in enumerate(decoded)
                        if isinstance(item, Decoded) and item.event is over.event
                    )
                ) from None
            if erased_since:
                # erased after this batch claimed their ids: unclaimed, skipped
                late = [d for d in new_events if d.organization in erased_since]
                await conn.execute(sql.UNCLAIM_EVENT_IDS, [d.event.event_id for d in late])
                new_events = [d for d in new_events if d.organization not in erased_since]
                _skipped_erased(late, erased_since, named, outcome)
            for event, owner in effects.misrouted:
                dead.append(_misrouted_rejection(events, event, owner))
            if effects.misrouted:
                later = _later_copies_of_misrouted(decoded, effects.misrouted)
                if later is not None:
                    # sorted as repeats of an id that stays unclaimed: start over with
                    # the records before the first of them, then the rest
                    raise _SplitBefore(later)
                # not applied, so not processed: a corrected resend with the same
                # event id must not be dropped as a duplicate
                await conn.execute(
                    sql.UNCLAIM_EVENT_IDS, [event.event_id for event, _ in effects.misrouted]
                )
            max_times = _max_event_times(events)
            next_offsets = {tp: max(stored[tp], last[tp] + 1) for tp in partitions}
            offsets = (
                sql.SAVE_OFFSETS,
                [
                    self._group,
                    [tp[0] for tp in partitions],
                    [tp[1] for tp in partitions],
                    [next_offsets[tp] for tp in partitions],
                    [max_times.get(tp) for tp in partitions],
                ],
            )
            # the effects and the offsets in one round trip
            await write_effects(conn, effects, self._model, outcome.timings_ms, also=[offsets])
            if self._read_model_in_transaction:
                await project_in_transaction(conn, rescored_states(effects), self._model)
            elif self._live_projection is not None and saved and self._live_projection.live():
                outcome.projected_in_batch = await _project_own_changes(
                    conn, self._live_projection.project, effects, saved, sent
                )
            marks.lap("write")
            # into the outbox with the offsets: the relay sends them once committed
            # (healthscore.service.dead_letters), so no dead-letter topic holds a batch
            if dead:
                await conn.execute(sql.INSERT_DEAD_LETTERS, *dead_letter_columns(dead))
            marks.lap("dead_letters")
        marks.lap("commit")
        self._owned.give_back(saved)

        misrouted = {id(event) for event, _ in effects.misrouted}
        sampled: set[tuple[str, tuple[str, ...]]] = set()
        for topic, count in outcome.erased_by_topic.items():
            outcome.consumed_by_topic[topic] = outcome.consumed_by_topic.get(topic, 0) + count
        for item in fresh:
            if isinstance(item, Decoded) and item.organization in erased_since:
                continue  # counted as erased
            _count(outcome.consumed_by_topic, item.record.topic)
            # a dead-lettered record's timestamp is the broken producer's too: one at
            # 1970 added 57 years to the latency's sum
            if item.record.timestamp_ms and isinstance(item, Decoded):
                outcome.record_timestamps_ms.append(item.record.timestamp_ms)
            if isinstance(item, Decoded) and item.unknown:
                record = item.record
                _count(outcome.unknown_fields_by_topic, record.topic)
                # one sample per set of names: a harmless extra field every record
                # carries must not crowd out the misspelled one a few records carry
                if (
                    len(outcome.unknown_field_samples) < UNKNOWN_FIELD_SAMPLES
                    and (record.topic, item.unknown) not in sampled
                ):
                    sampled.add((record.topic, item.unknown))
                    outcome.unknown_field_samples.append(
                        (record.topic, item.unknown, record.partition, record.offset)
                    )
        for item in new_events:
            if id(item.event) not in misrouted:
                _count(outcome.applied_by_topic, item.record.topic)
        outcome.applied = effects.applied
        outcome.organizations_rescored = len(effects.rescored)
        outcome.milestones = len(effects.milestones)
        for alert in effects.alerts:
            kind = str(alert.decision.kind)
            outcome.alerts[kind] = outcome.alerts.get(kind, 0) + 1
        for rejection in dead:
            outcome.rejected[rejection.reason] = outcome.rejected.get(rejection.reason, 0) + 1
        outcome.rejections = dead
        outcome.next_offsets = next_offsets
        return outcome

    def _skip_erased(
        self,
        fresh: list[Decoded | Rejection],
        erased: set[str],
        named: Mapping[int, list[str]],
        outcome: BatchOutcome,
    ) -> list[Decoded | Rejection]:
        """`fresh` less the records of erased organizations (counted in `outcome`); a
        state still held of one is dropped."""
        kept: list[Decoded | Rejection] = []
        skipped: list[Decoded | Rejection] = []
        for item in fresh:
            if isinstance(item, Decoded):
                gone = item.organization in erased
            else:
                gone = not erased.isdisjoint(named.get(id(item), ()))
            (skipped if gone else kept).append(item)
        _skipped_erased(skipped, erased, named, outcome)
        self._owned.take(sorted(erased))
        return kept

    async def _compute_and_save_states(
        self,
        conn: Connection,
        events: list[Event],
        orgs: list[str],
        read: States,
        marks: _Marks,
        outcome: BatchOutcome,
    ) -> tuple[BatchEffects, dict[str, tuple[bytes, int]], set[str]]:
        """Compute the effects of `events` (of the organizations `orgs`, sorted) and save the
        states: first, as the batch's first writes.

        States come from what this consumer holds (`OwnedStates`) or are read
        without locks; each save is checked against the version it was computed
        from. The organizations another writer changed meanwhile are locked,
        read and computed again; every other organization's effects stand, as
        each effect belongs to one organization. Saving the states before any
        other row means that a batch waiting for a state row holds no row that
        the holder of that row (the sweep) could wait for.
        """
        if not events:
            return BatchEffects(), {}, set()
        states, versions, missing = self._owned.take(orgs)
        outcome.states_held = len(versions)
        outcome.states_read = len(missing)
        # read with the claim (an organization not held then is not held now; were one
        # missing anyway, it would be saved as new, refused, and locked and read again)
        read_states, read_versions = read
        for org in missing:
            if org in read_versions:
                versions[org] = read_versions[org]
                if org in read_states:
                    states[org] = read_states[org]
        cuts: list[int] = []
        if self._silence_step is not None:
            cuts, over = silence_plan(
                events, states, self._silence_step, SILENCE_SLICE, self._silence_budget
            )
            if over is not None:
                raise _SilenceBudget(events[over])
        interactions = await _read_interactions(conn, events)
        marks.lap("load")
        effects = await self._compute(events, states, interactions, cuts)
        marks.lap("compute")
        saved, changed = await save_states_checked(
            conn, rescored_states(effects), versions, self._rescore_step, events_applied=True
        )
        marks.lap("w_states")
        erased: set[str] = set()
        if changed:
            outcome.states_changed_elsewhere = len(changed)
            # a row gone, or refused as new: erased since the batch's claim, perhaps
            erased = {
                str(row["organization_id"])
                for row in await conn.fetch(sql.ERASED_AMONG, sorted(changed))
            }
            kept = effects.without(changed)
            changed -= erased
            again = [e for e in events if str(e.organization_id) in changed]
            fresh, fresh_versions = await lock_states(conn, sorted(changed))
            # the interactions the kept organizations made in this batch are not stored
            # yet: an event of a recomputed organization reusing one's id is misrouted
            known = await _read_interactions(conn, again)
            known.update(kept.interactions)
            redo = await self._compute(again, fresh, known)
            resaved = await save_locked_states(
                conn, rescored_states(redo), fresh_versions, self._rescore_step, events_applied=True
            )
            effects = kept.merge(redo)
            saved.update(resaved)
            marks.lap("w_changed")
        return effects, saved, erased

    async def _compute(
        self,
        events: list[Event],
        states: dict[str, OrganizationState],
        interactions: dict[str, InteractionRecord],
        cuts: list[int] | None = None,
    ) -> BatchEffects:
        """The effects of `events`; long silences they end are computed a slice at a
        time (`SILENCE_SLICE`; `cuts`, when the caller found them already), giving the
        event loop back in between."""
        step = self._silence_step
        if cuts is None:
            cuts = [] if step is None else silence_slices(events, states, step, SILENCE_SLICE)
        effects: BatchEffects | None = None
        for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
            if start:
                await asyncio.sleep(0)
            part = compute_batch_effects(events[start:end], states, interactions, self._model, step)
            effects = part if effects is None else effects.merge(part)
        assert effects is not None
        return effects


async def _project_own_changes(
    conn: Connection,
    project: ProjectInBatch,
    effects: BatchEffects,
    saved: Mapping[str, tuple[bytes, int]],
    sent: SentFeed,
) -> int:
    """Project, in the batch's transaction, the organizations whose queue entry this
    batch made (after its state saves: it holds their rows, so nobody else can queue
    or change them before it commits); those queued before it stay queued. `sent`
    receives them before their feed is sent."""
    states = [s for s in rescored_states(effects) if s.organization_id in saved]
    if not states:
        return 0
    rows = await conn.fetch(
        sql.TAKE_OWN_PENDING,
        [s.organization_id for s in states],
        [saved[s.organization_id][1] for s in states],
    )
    own = {str(row["organization_id"]) for row in rows}
    sent.organizations.extend(sorted(own))
    return await project(
        conn,
        [(s, saved[s.organization_id][1]) for s in states if s.organization_id in own],
        sent,
    )


async def _read_interactions(conn: Connection, events: list[Event]) -> dict[str, InteractionRecord]:
    interaction_ids = sorted({e.interaction_id for e in events if isinstance(e, SupportEvent)})
    interactions: dict[str, InteractionRecord] = {}
    if interaction_ids:
        for row in await conn.fetch(sql.READ_INTERACTIONS, interaction_ids):
            record = interaction_from_row(row)
            interactions[record.id] = record
    return interactions


def _key_organization(rejection: Rejection) -> str | None:
    """The organization a rejected record's key names, if it names one."""
    organization = key_organization(rejection.record.key)
    return None if organization is None else str(organization)


# an id as the erasure finds it in a dead letter's value (`erase_dead_letters()`,
# migration 0099: the canonical spelling, either case)
_UUID_IN_VALUE = re.compile(
    rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
# ids looked up per rejected record, its key's and the first ones in its value: a
# value is bounded by the topic's message size, not its ids
IDS_PER_REJECTION = 64


def _rejection_organizations(rejection: Rejection) -> list[str]:
    """The organizations a rejected record may be about: the one its key names and
    the ids its value holds (one without a key, or a key that names another or
    nothing, must not reach a dead-letter topic when it is an erased organization's)."""
    found = dict.fromkeys(
        str(UUID(m.group().decode())).lower()
        for m in itertools.islice(
            _UUID_IN_VALUE.finditer(rejection.record.value or b""), IDS_PER_REJECTION
        )
    )
    org = _key_organization(rejection)
    return [org, *found] if org is not None else list(found)


def _rejected_organizations(decoded: Sequence[Decoded | Rejection]) -> dict[int, list[str]]:
    """The organizations each rejected record may be about, by the record's id() (rare:
    parsed only for them, once per batch)."""
    return {
        id(item): _rejection_organizations(item)
        for item in decoded
        if isinstance(item, Rejection) and item.record.skipped_to is None
    }


def _skipped_erased(
    items: Sequence[Decoded | Rejection],
    erased: set[str],
    named: Mapping[int, list[str]],
    outcome: BatchOutcome,
) -> None:
    # in order of first appearance, each once (a dict: a bulk offboarding may put
    # thousands in one batch); a rejected record by the erased organization it names
    shown = dict.fromkeys(outcome.erased_organizations)
    for item in items:
        _count(outcome.erased_by_topic, item.record.topic)
        if isinstance(item, Decoded):
            shown.setdefault(item.organization)
        else:
            shown.update(dict.fromkeys(o for o in named.get(id(item), ()) if o in erased))
    outcome.erased_organizations[:] = shown


def _check_no_gap(
    tp: PartitionKey, first: int, stored: int, positioned: Mapping[PartitionKey, int]
) -> None:
    """The stored offset may only move over records handed to this batch."""
    if first > stored and positioned.get(tp) != stored:
        raise OffsetGap(tp[0], tp[1], stored, first)


def payload_digest(item: Decoded) -> bytes:
    """What was applied under an event id: topic and the event as validated.

    The validated form with nested keys sorted, times in UTC and properties'
    numbers by value (`canonical_event_json`), not the raw bytes, so that a
    producer re-serializing the same event (another key order at any depth,
    other whitespace, its times at another offset, `1.0` as `1`) repeats it
    exactly. Digests stored by earlier releases
    are compared with new ones: `canonical_event_json` must give the same
    bytes for the same event forever.
    """
    return _digest(item.record.topic, canonical_event_json(item.event))


def legacy_payload_digest(item: Decoded) -> bytes:
    """The digest releases before 2026-12-04 stored: nested keys in the order parsed.

    A repeat of an id claimed by such a release (within the dedupe window) is
    compared with this too, so the change of digest is no conflict.
    """
    return _digest(item.record.topic, event_json(item.event))


def as_sent_payload_digest(item: Decoded) -> bytes:
    """The digest releases from 2026-12-04 until times were put in UTC and numbers read
    by value stored: nested keys sorted, the values as sent (compared like
    `legacy_payload_digest`)."""
    return _digest(item.record.topic, as_sent_event_json(item.event))


def _digest(topic: str, body: bytes) -> bytes:
    return hashlib.blake2b(topic.encode() + b"\0" + body, digest_size=16).digest()


async def _sort_claimed(
    conn: Connection, events: list[Decoded], digests: list[bytes], claimed: set[int]
) -> tuple[list[Decoded], list[Decoded], list[Rejection]]:
    """Split `events` (at or after the stored offsets) by their claimed ids into first
    occurrences, duplicates and conflicts.

    A duplicate repeats what was applied under its id (same digest); a
    conflict reuses the id for another payload and is dead-lettered. Ids are compared
    as their integers (`UUID.int`, a slot): a `uuid.UUID` hashes in Python, four
    times per event here.
    """
    if not events:
        return [], [], []
    applied: dict[int, bytes | None] = {}
    repeated = [d.event.event_id for d in events if d.event.event_id.int not in claimed]
    if repeated:
        for row in await conn.fetch(sql.READ_EVENT_DIGESTS, repeated):
            applied[row["event_id"].int] = row["payload_digest"]
    fresh: list[Decoded] = []
    duplicates: list[Decoded] = []
    conflicts: list[Rejection] = []
    for item, digest in zip(events, digests, strict=True):
        event_id = item.event.event_id.int
        if event_id in claimed:
            claimed.discard(event_id)  # later copies in this batch compare with this one
            applied[event_id] = digest
            fresh.append(item)
        elif (stored := applied.get(event_id)) in (None, digest) or stored in (
            legacy_payload_digest(item),
            as_sent_payload_digest(item),
        ):
            # ids applied before digests were kept count as plain duplicates
            duplicates.append(item)
        else:
            conflicts.append(
                Rejection(
                    item.record,
                    "event_id_conflict",
                    f"event_id {item.event.event_id} was applied before with another "
                    "payload (another body or organization) or from another input topic",
                )
            )
    return fresh, duplicates, conflicts


class _SilenceBudget(Exception):
    """The batch's silence rescorings pass the budget at `event` (cut before it)."""

    def __init__(self, event: Event) -> None:
        super().__init__(event)
        self.event = event


class _SplitBefore(Exception):
    """The batch must be applied as two: the records before `index`, then the rest."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


def _later_copies_of_misrouted(
    decoded: Sequence[Decoded | Rejection], misrouted: Sequence[tuple[SupportEvent, str]]
) -> int | None:
    """The index of the first record that repeats the id of a misrouted event, if any.

    A misrouted event is not applied and its id is unclaimed, yet this batch sorted
    its later copies against it: a corrected resend as a conflict, an exact repeat
    as a duplicate. After it in a batch of their own, they are sorted as the
    first occurrences they are. Only copies after a misrouted event count, so
    both parts are smaller than the batch.
    """
    refused = {id(event) for event, _owner in misrouted}
    seen: set[UUID] = set()  # ids of the misrouted events met so far
    for index, item in enumerate(decoded):
        if not isinstance(item, Decoded):
            continue
        if id(item.event) in refused:
            seen.add(item.event.event_id)
        elif item.event.event_id in seen:
            return index
    return None


class _OffsetRowsGone(Exception):
    """Offset rows this pipeline saw before are gone (an offset reset): start the batch over."""


class _Marks:
    """Milliseconds spent in each phase of a batch, for the canonical log line."""

    def __init__(self, into: dict[str, float]) -> None:
        self._into = into
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self._into[phase] = round((now - self._last) * 1000, 1)
        self._last = now


UNKNOWN_FIELD_SAMPLES = 20
"""Records with unknown fields a batch keeps for the log (it counts them all)."""


def _count(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def _max_event_times(events: list[Decoded]) -> dict[PartitionKey, datetime]:
    """Per partition, the newest event time seen: the sweep's event-time clock."""
    newest: dict[PartitionKey, datetime] = {}
    for item in events:
        tp = (item.record.topic, item.record.partition)
        occurred = item.event.occurred_at
        # aware times compare as instants: only each partition's newest is converted
        if tp not in newest or occurred > newest[tp]:
            newest[tp] = occurred
    return {tp: storable(occurred.astimezone(UTC)) for tp, occurred in newest.items()}


def _misrouted_rejection(events: list[Decoded], event: SupportEvent, owner: str) -> Rejection:
    record = next(d.record for d in events if d.event is event)
    # the producing team reads the dead letter: which other organization holds the
    # interaction is for the log (the on-call engineer), not for them
    return Rejection(
        record,
        "interaction_org_mismatch",
        f"interaction {event.interaction_id} belongs to another organization, "
        f"not {event.organization_id}",
        logged=f"owner {owner}",
    )
