"""One batch, one transaction: gather, compute, apply.

The transaction that writes a batch's effects also moves each partition's
stored next offset, so the database alone says how far the service got. The
consumer seeks to those offsets on assignment; Kafka's committed offsets are
written afterwards for lag tooling only. A crash at any instant therefore
leaves either the whole batch (effects + offsets) or none of it.

Two guards make the effects count once even when Kafka delivers a record
again: records below the stored offset are skipped (redelivery after a
crash or a rebalance), and an event id already in `processed_events` is
skipped (upstream duplicates, within the retention window).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from healthscore.contracts import SupportEvent, UsageEvent
from healthscore.errors import InvalidStoredOffset
from healthscore.ingest.alignment import AlignmentView, align
from healthscore.ingest.decode import Decoded, Decoder, RawRecord, Rejection
from healthscore.ingest.dlq import DeadLetterQueue
from healthscore.ingest.effects import BatchEffects, compute_batch_effects
from healthscore.interactions import InteractionRecord
from healthscore.scoring.model import ScoreModel
from healthscore.scoring.state import OrganizationState, decode_state
from healthscore.store import Connection, sql
from healthscore.store.effects_writer import write_effects
from healthscore.store.records import interaction_from_row

TopicPartition = tuple[str, int]


@dataclass
class BatchOutcome:
    """What one batch did: the canonical log line and the metrics read this."""

    records: int = 0
    skipped_replayed: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    organizations_rescored: int = 0
    alerts: dict[str, int] = field(default_factory=dict)
    milestones: int = 0
    consumed_by_topic: dict[str, int] = field(default_factory=dict)
    applied_by_topic: dict[str, int] = field(default_factory=dict)
    duplicates_by_topic: dict[str, int] = field(default_factory=dict)
    redelivered_by_topic: dict[str, int] = field(default_factory=dict)
    record_timestamps_ms: list[int] = field(default_factory=list)
    first_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    held_from: dict[TopicPartition, int] = field(default_factory=dict)
    frontiers: dict[TopicPartition, float] = field(default_factory=dict)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)


class BatchPipeline:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        decoder: Decoder,
        dlq: DeadLetterQueue,
        model: ScoreModel,
        consumer_group: str,
        rescore_step_seconds: float,
        silence_rescoring: bool = False,
    ) -> None:
        self._pool = pool
        self._decoder = decoder
        self._dlq = dlq
        self._model = model
        self._group = consumer_group
        self._rescore_step = rescore_step_seconds
        # with the silence sweep on: rescore an organization's silence before its
        # next event (see healthscore.sweep), so that it does not depend on timing
        self._silence_step = rescore_step_seconds if silence_rescoring else None

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
        self, items: Sequence[Decoded | Rejection], view: AlignmentView | None = None
    ) -> BatchOutcome:
        """Apply decoded records; with `view`, only their event-time-aligned part.

        Records held back by the alignment are not applied and not stored as
        consumed: `outcome.held_from` says from which offset on, per partition.
        """
        outcome = BatchOutcome(records=len(items))
        if not items:
            return outcome
        alignment = align(items, view)
        decoded = alignment.applied
        outcome.held_from = alignment.held_from
        outcome.frontiers = alignment.frontiers
        outcome.records = len(decoded)
        last: dict[TopicPartition, int] = {}
        first = outcome.first_offsets
        for item in decoded:
            record = item.record
            tp = (record.topic, record.partition)
            last[tp] = max(last.get(tp, -1), record.offset)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        partitions = sorted(last)
        if not partitions:
            return outcome

        marks = _Marks(outcome.timings_ms)
        async with self._pool.acquire() as conn, conn.transaction():
            marks.lap("begin")
            stored = await _lock_offsets(conn, self._group, partitions)
            fresh: list[Decoded | Rejection] = []
            for item in decoded:
                record = item.record
                tp = (record.topic, record.partition)
                if record.offset < stored[tp]:
                    outcome.skipped_replayed += 1
                    _count(outcome.redelivered_by_topic, record.topic)
                    continue
                fresh.append(item)
            events = [d for d in fresh if isinstance(d, Decoded)]
            dead = [d for d in fresh if isinstance(d, Rejection)]

            new_events, duplicates = await _claim_new_events(conn, events)
            marks.lap("claim")
            outcome.duplicates = len(duplicates)
            for item in duplicates:
                _count(outcome.duplicates_by_topic, item.record.topic)
            effects = await self._compute(conn, [d.event for d in new_events], marks)
            for event, owner in effects.misrouted:
                dead.append(_misrouted_rejection(events, event, owner))
            if effects.misrouted:
                # not applied, so not processed: a corrected resend with the same
                # event id must not be dropped as a duplicate
                await conn.execute(
                    sql.UNCLAIM_EVENT_IDS, [event.event_id for event, _ in effects.misrouted]
                )
            # dead letters leave before the commit: see DeadLetterQueue.publish
            await self._dlq.publish(dead)
            marks.lap("dead_letters")
            await write_effects(conn, effects, self._model, self._rescore_step, outcome.timings_ms)
            marks.lap("write")
            max_times = _max_event_times(events)
            next_offsets = {tp: max(stored[tp], last[tp] + 1) for tp in partitions}
            await conn.execute(
                sql.SAVE_OFFSETS,
                self._group,
                [tp[0] for tp in partitions],
                [tp[1] for tp in partitions],
                [next_offsets[tp] for tp in partitions],
                [max_times.get(tp) for tp in partitions],
            )
        marks.lap("commit")

        misrouted = {id(event) for event, _ in effects.misrouted}
        for item in fresh:
            _count(outcome.consumed_by_topic, item.record.topic)
            if item.record.timestamp_ms:
                outcome.record_timestamps_ms.append(item.record.timestamp_ms)
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

    async def _compute(
        self, conn: Connection, events: list[UsageEvent | SupportEvent], marks: _Marks
    ) -> BatchEffects:
        if not events:
            return BatchEffects()
        orgs = sorted({e.organization_id for e in events})
        states = await _lock_states(conn, orgs)
        interaction_ids = sorted({e.interaction_id for e in events if isinstance(e, SupportEvent)})
        interactions: dict[str, InteractionRecord] = {}
        if interaction_ids:
            for row in await conn.fetch(sql.READ_INTERACTIONS, interaction_ids):
                record = interaction_from_row(row)
                interactions[record.id] = record
        marks.lap("load")
        effects = compute_batch_effects(
            events, states, interactions, self._model, self._silence_step
        )
        marks.lap("compute")
        return effects


async def _lock_offsets(
    conn: Connection, group: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    topics = [tp[0] for tp in partitions]
    numbers = [tp[1] for tp in partitions]
    await conn.execute(sql.ENSURE_OFFSET_ROWS, group, topics, numbers)
    rows = await conn.fetch(sql.LOCK_OFFSETS, group, topics, numbers)
    stored = {(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
    if set(stored) != set(partitions):
        raise InvalidStoredOffset(f"offset rows missing for {set(partitions) - set(stored)}")
    return stored


async def _lock_states(conn: Connection, orgs: list[UUID]) -> dict[str, OrganizationState]:
    """Lock (creating where missing) the state rows of `orgs`; decode the stored ones.

    Most organizations of a batch exist already, so they are locked first and
    only the missing ones pay for the two inserts.
    """
    states: dict[str, OrganizationState] = {}

    async def lock(some: list[UUID]) -> set[UUID]:
        """Lock and decode the existing rows of `some` (a new row holds JSON null)."""
        found: set[UUID] = set()
        for row in await conn.fetch(sql.LOCK_STATES, some):
            found.add(row["organization_id"])
            if row["state"] != "null":
                states[str(row["organization_id"])] = decode_state(row["state"])
        return found

    found = await lock(orgs)
    missing = [org for org in orgs if org not in found]
    if missing:
        await conn.execute(sql.ENSURE_ORGANIZATIONS, missing)
        created = {r["organization_id"] for r in await conn.fetch(sql.ENSURE_STATE_ROWS, missing)}
        raced = [org for org in missing if org not in created]
        if raced:
            await lock(raced)  # created by another transaction meanwhile: lock theirs
    return states


async def _claim_new_events(
    conn: Connection, events: list[Decoded]
) -> tuple[list[Decoded], list[Decoded]]:
    """Insert the batch's event ids; split into first occurrences and duplicates."""
    if not events:
        return [], []
    bodies = [d.event for d in events]
    rows = await conn.fetch(
        sql.CLAIM_EVENT_IDS,
        [e.event_id for e in bodies],
        [e.organization_id for e in bodies],
        [e.occurred_at for e in bodies],
    )
    claimed: set[UUID] = {r["event_id"] for r in rows}
    fresh: list[Decoded] = []
    duplicates: list[Decoded] = []
    for item in events:
        if item.event.event_id in claimed:
            claimed.discard(item.event.event_id)  # later copies in this batch are duplicates
            fresh.append(item)
        else:
            duplicates.append(item)
    return fresh, duplicates


class _Marks:
    """Milliseconds spent in each phase of a batch, for the canonical log line."""

    def __init__(self, into: dict[str, float]) -> None:
        self._into = into
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self._into[phase] = round((now - self._last) * 1000, 1)
        self._last = now


def _count(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def _max_event_times(events: list[Decoded]) -> dict[TopicPartition, datetime]:
    """Per partition, the newest event time seen: the sweep's event-time clock."""
    result: dict[TopicPartition, datetime] = {}
    for item in events:
        tp = (item.record.topic, item.record.partition)
        occurred = item.event.occurred_at.astimezone(UTC)
        if tp not in result or occurred > result[tp]:
            result[tp] = occurred
    return result


def _misrouted_rejection(events: list[Decoded], event: SupportEvent, owner: str) -> Rejection:
    record = next(d.record for d in events if d.event is event)
    return Rejection(
        record,
        "interaction_org_mismatch",
        f"interaction {event.interaction_id} belongs to organization {owner}, "
        f"not {event.organization_id}",
    )
