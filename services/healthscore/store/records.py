"""Conversions between domain values (POSIX seconds, msgspec structs) and rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson

from healthscore.core.interactions import InteractionRecord

# The contract's first and last instants (0001-01-01T00:00:00Z, 9999-12-31T23:59:59.999999Z)
# are datetime.min and datetime.max, which asyncpg sends as PostgreSQL's -infinity and
# infinity: they are stored one microsecond inside instead (`storable`).
_FIRST = datetime.min.replace(tzinfo=UTC)
_LAST = datetime.max.replace(tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# A float is about 30 µs coarse at year 9999: its last instants round up to datetime.max's
# seconds or past it (9999-12-31T23:59:59.999999Z is 253402300800.0, year 10000 to
# `fromtimestamp`)
_LAST_SECONDS = _LAST.timestamp()


def storable(value: datetime) -> datetime:
    """`value` (aware), or the nearest instant PostgreSQL stores as itself, not as ±infinity."""
    if value <= _FIRST:
        return _FIRST + _MICROSECOND
    if value >= _LAST:
        return _LAST - _MICROSECOND
    return value


def to_datetime(seconds: float | None) -> datetime | None:
    if seconds is None:
        return None
    if seconds >= _LAST_SECONDS:
        # a valid timestamp of the last microseconds of year 9999 (follow_up_at has no
        # other bound) rounded up in the float: not year 10000, which no datetime holds
        return _LAST - _MICROSECOND
    return storable(datetime.fromtimestamp(seconds, UTC))


def to_seconds(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _uuid(value: str | None) -> UUID | None:
    return None if value is None else UUID(value)


def interaction_from_row(row: Any) -> InteractionRecord:
    return InteractionRecord(
        id=str(row["id"]),
        organization_id=str(row["organization_id"]),
        interaction_type=row["interaction_type"],
        channel=row["channel"],
        status=row["status"],
        priority=row["priority"],
        sentiment=row["sentiment"],
        outcome=row["outcome"],
        assigned_to=None if row["assigned_to"] is None else str(row["assigned_to"]),
        subject=row["subject"],
        follow_up_required=row["follow_up_required"],
        follow_up_at=to_seconds(row["follow_up_at"]),
        follow_up_completed_at=to_seconds(row["follow_up_completed_at"]),
        opened_at=to_seconds(row["opened_at"]),
        resolved_at=to_seconds(row["resolved_at"]),
        closed_at=to_seconds(row["closed_at"]),
        first_event_at=row["first_event_at"].timestamp(),
        last_event_at=row["last_event_at"].timestamp(),
        field_event_times=orjson.loads(row["field_event_times"]),
        event_count=row["event_count"],
    )


def interaction_columns(records: list[InteractionRecord]) -> list[list[Any]]:
    """Column arrays for UPSERT_INTERACTIONS ($1..$20)."""
    return [
        [UUID(r.id) for r in records],
        [UUID(r.organization_id) for r in records],
        [r.interaction_type for r in records],
        [r.channel for r in records],
        [r.status for r in records],
        [r.priority for r in records],
        [r.sentiment for r in records],
        [r.outcome for r in records],
        [_uuid(r.assigned_to) for r in records],
        [r.subject for r in records],
        [r.follow_up_required for r in records],
        [to_datetime(r.follow_up_at) for r in records],
        [to_datetime(r.follow_up_completed_at) for r in records],
        [to_datetime(r.opened_at) for r in records],
        [to_datetime(r.resolved_at) for r in records],
        [to_datetime(r.closed_at) for r in records],
        [to_datetime(r.first_event_at) for r in records],
        [to_datetime(r.last_event_at) for r in records],
        [orjson.dumps(r.field_event_times).decode() for r in records],
        [r.event_count for r in records],
    ]
