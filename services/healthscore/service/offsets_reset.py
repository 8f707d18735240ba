"""`healthscore offsets-reset`: move a consumer group's stored offsets, on purpose.

The `consumer_offsets` table is the service's progress: on assignment it seeks
each partition to the stored next offset, and a partition without a row starts
at the log start. When a topic is recreated (or its records deleted) while the
database survives, the stored offsets lie above the new log's end (or below its
start) and the service cannot go on from them. This command is the way out:

- `earliest`: delete the rows; the service reads each partition from its log start.
- `latest`: store the true high watermark; the records up to it are skipped and
  their events are never applied.
- `offset`: store the given offset (within the log).

It shows the plan (before/after per partition) and applies it only when told
to, in one transaction that first checks the rows are still what was shown.
The service must be stopped while it runs (or restarted right after).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import asyncpg

from healthscore.core.partitions import PartitionKey
from healthscore.errors import HealthscoreError
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.ops.lag import HighWatermarkProbe
from healthscore.store.db import DatabaseTLS, connect
from healthscore.store.offsets_reset import (
    delete_offsets,
    selected_offsets,
    service_sessions,
    set_offsets,
)

Mode = Literal["earliest", "latest", "offset"]

OPTION = {"earliest": "--to-earliest", "latest": "--to-latest", "offset": "--to-offset"}


class OffsetsResetError(HealthscoreError):
    """The reset cannot be planned or applied; the message says why."""


@dataclass(frozen=True, slots=True)
class PartitionReset:
    topic: str
    partition: int
    log_start: int | None  # None: the partition is not on the broker
    high_watermark: int | None
    before: int | None  # stored next offset; None: no row
    after: int | None  # None: no row (the service starts at the log start)
    note: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass
class ResetPlan:
    group: str
    topics: list[str]
    partition: int | None
    mode: Mode
    to_offset: int | None
    partitions: list[PartitionReset]

    @property
    def changes(self) -> list[PartitionReset]:
        return [p for p in self.partitions if p.changed]

    @property
    def skipped_records(self) -> int:
        return sum(_skipped(p) for p in self.partitions)


def _where_now(before: int | None, start: int, end: int) -> int | None:
    """Where the service would start the partition; None when it cannot (outside the log)."""
    if before is None:
        return start
    return before if start <= before <= end else None


def _skipped(p: PartitionReset) -> int:
    if p.log_start is None or p.high_watermark is None or not p.changed:
        return 0
    now = _where_now(p.before, p.log_start, p.high_watermark)
    then = p.log_start if p.after is None else p.after
    origin = p.log_start if now is None else now
    return max(0, then - origin)


def _note(before: int | None, after: int | None, start: int, end: int) -> str:
    parts: list[str] = []
    if before is not None and before > end:
        parts.append("stored offset is above the high watermark")
    elif before is not None and before < start:
        parts.append("stored offset is below the log start")
    if before == after:
        return "; ".join([*parts, "unchanged"])
    now = _where_now(before, start, end)
    then = start if after is None else after
    if now is None:
        if then > start:
            parts.append(f"skips {then - start} record(s): never applied")
        else:
            parts.append(f"reads all {end - start} record(s)" if end > start else "log is empty")
    elif then > now:
        parts.append(f"skips {then - now} record(s): never applied")
    elif then < now:
        parts.append(f"reads {now - then} record(s) again")
    else:
        parts.append("same position")
    return "; ".join(parts)


def plan_reset(
    group: str,
    topics: list[str],
    partition: int | None,
    mode: Mode,
    to_offset: int | None,
    starts: dict[PartitionKey, int],
    ends: dict[PartitionKey, int],
    stored: dict[PartitionKey, int],
    topics_named: bool = True,
) -> ResetPlan:
    """What the reset would change; `starts`/`ends` are the broker's partitions.

    A topic the operator named (`topics_named`), or a partition, that is neither on
    the broker nor stored for the group is refused: a mistyped name must not pass for
    "nothing to change" (exit 0). The service's own input topics, when none is named,
    may not exist yet (a profile topic never created)."""
    known = set(ends) | set(stored)
    unknown = []
    for topic in topics:
        exists = sorted(p for t, p in known if t == topic)
        if not exists:
            if topics_named:
                unknown.append(
                    f"topic {topic!r} is not on the broker and has no stored offset"
                    + ("" if partition is None else f" for partition {partition}")
                )
        elif partition is not None and partition not in exists and topics_named:
            unknown.append(
                f"{topic} has no partition {partition} (partitions on the broker or stored: "
                + ", ".join(map(str, exists))
                + ")"
            )
    if unknown:
        raise OffsetsResetError(f"consumer group {group!r}: " + "; ".join(unknown))
    keys = sorted(k for k in known if k[0] in topics and (partition is None or k[1] == partition))
    if partition is not None and not keys and any(t in topics for t, _ in known):
        raise OffsetsResetError(f"no topic of {', '.join(topics)} has a partition {partition}")
    rows: list[PartitionReset] = []
    problems: list[str] = []
    for key in keys:
        topic, part = key
        before = stored.get(key)
        if key not in ends:
            after = None if mode == "earliest" else before
            note = (
                "not on the broker: row deleted"
                if after is None
                else "not on the broker: unchanged (--to-earliest deletes the row)"
            )
            rows.append(PartitionReset(topic, part, None, None, before, after, note))
            continue
        start, end = starts[key], ends[key]
        if mode == "earliest":
            after = None
        elif mode == "latest":
            after = end
        else:
            assert to_offset is not None
            after = to_offset
            if not start <= to_offset <= end:
                problems.append(f"{topic}:{part} ({start}..{end})")
        if before is None and after == start:
            after = None  # no row already means "from the log start"
        rows.append(
            PartitionReset(topic, part, start, end, before, after, _note(before, after, start, end))
        )
    if problems:
        raise OffsetsResetError(
            f"--to-offset {to_offset} lies outside the log of "
            + ", ".join(problems)
            + ": pick an offset from the log start to the high watermark (or --partition)"
        )
    return ResetPlan(group, topics, partition, mode, to_offset, rows)


def format_plan(plan: ResetPlan) -> list[str]:
    option = OPTION[plan.mode] + (f" {plan.to_offset}" if plan.mode == "offset" else "")
    lines = [f"offsets-reset {option} of consumer group {plan.group!r}:"]
    if not plan.partitions:
        lines.append("  no stored offsets and no partitions on the broker for these topics")
        return lines
    width = max(len("topic"), *(len(p.topic) for p in plan.partitions))

    def show(value: int | None) -> str:
        return "-" if value is None else str(value)

    lines.append(
        f"  {'topic':<{width}} {'partition':>9} {'log start':>10} {'high':>10} "
        f"{'stored':>10}    {'after':<10} note"
    )
    for p in plan.partitions:
        lines.append(
            f"  {p.topic:<{width}} {p.partition:>9} {show(p.log_start):>10} "
            f"{show(p.high_watermark):>10} {show(p.before):>10} -> {show(p.after):<10} {p.note}"
        )
    lines.append(
        "  (stored/after '-': no stored row, the service starts that partition at its log start)"
    )
    return lines


async def read_log_bounds(
    kafka: KafkaConnection, topics: list[str]
) -> tuple[dict[PartitionKey, int], dict[PartitionKey, int]]:
    """Log start and true high watermark of every partition of `topics` on the broker."""
    async with HighWatermarkProbe(kafka) as probe:
        partitions = await probe.partitions(topics)
        starts = await probe.log_starts(partitions)
        ends = await probe.high_watermarks(partitions)
    return starts, ends


async def apply_plan(conn: asyncpg.Connection, plan: ResetPlan) -> None:
    """Apply the plan in one transaction, if the stored rows are still as planned."""
    async with conn.transaction():
        current = await selected_offsets(conn, plan.group, plan.topics, plan.partition, lock=True)
        moved = [
            f"{p.topic}:{p.partition} {p.before} -> {current.get((p.topic, p.partition))}"
            for p in plan.partitions
            if current.get((p.topic, p.partition)) != p.before
        ]
        if moved:
            raise OffsetsResetError(
                "the stored offsets changed since they were read ("
                + ", ".join(moved)
                + "): the service is running; stop it and run the command again"
            )
        await delete_offsets(
            conn,
            plan.group,
            [(p.topic, p.partition) for p in plan.changes if p.after is None],
        )
        await set_offsets(
            conn,
            plan.group,
            {(p.topic, p.partition): p.after for p in plan.changes if p.after is not None},
        )


async def run_offsets_reset(
    database_url: str,
    kafka: KafkaConnection,
    group: str,
    topics: list[str],
    partition: int | None,
    mode: Mode,
    to_offset: int | None,
    apply: bool,
    out: Callable[[str], None] = print,
    tls: DatabaseTLS = None,
    topics_named: bool = True,
) -> int:
    """The command: plan, show, and apply with `apply`. 0 done (or dry run), 2 refused."""
    starts, ends = await read_log_bounds(kafka, topics)
    conn = await connect(
        database_url, tls, server_settings={"application_name": "healthscore-offsets-reset"}
    )
    try:
        stored = await selected_offsets(conn, group, topics, partition)
        plan = plan_reset(
            group, topics, partition, mode, to_offset, starts, ends, stored, topics_named
        )
        for line in format_plan(plan):
            out(line)
        if not stored and plan.partitions:
            # a mistyped --group reads like a group that never consumed these topics
            out(
                f"note: consumer group {group!r} has no stored offsets for these topics: "
                "is it the service's (CONSUMER_GROUP)?"
            )
        if not plan.changes:
            out("nothing to change")
            return 0
        skipped = plan.skipped_records
        if skipped:
            out(
                f"warning: {skipped} record(s) will be skipped: their events are never applied "
                "(scores, milestones and alerts miss them)"
            )
        running = await service_sessions(conn)
        if running:
            out(
                f"warning: {running} session(s) of a running service are connected to this "
                "database: stop the service first, or restart it right after this"
            )
        if not apply:
            out(
                f"dry run: nothing changed; run again with --yes to apply "
                f"{len(plan.changes)} change(s)"
            )
            return 0
        await apply_plan(conn, plan)
        out(
            f"applied: {len(plan.changes)} partition(s) of group {group!r} changed in one "
            "transaction; start (or restart) the service to read from there"
        )
        return 0
    finally:
        await conn.close()
