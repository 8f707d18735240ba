"""Opaque keyset cursors: the last row's sort key, for the statement's `>` condition.

A cursor is base64url JSON `[sort, value, id]`. It carries no filters, so
changing a filter with an old cursor still yields a consistent page of the new
filter; it names its sort, so a cursor of another sort is refused. A row whose sort
key moves across the cursor between two pages is sent twice or not at all (the next
page starts at the key, not after the rows sent: docs/design.md). It is not
signed: a client may write any position, and row-level security still decides
every row it gets; but its value is read as its sort's type (`numeric_value`,
`time_value`, `real_value`) before it reaches a statement, so a position this API
could not have written is a 400, not a failed statement.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import orjson

from healthscore.contracts._common import utc_representable
from healthscore.errors import HealthscoreError

T = TypeVar("T")


class InvalidCursor(HealthscoreError):
    """A cursor this API did not make, or made for another sort."""


@dataclass(frozen=True)
class Cursor:
    sort: str
    value: str | None  # the sort column as text (exact for numeric), NULL in a NULL tail
    id: uuid.UUID

    def encode(self) -> str:
        raw = orjson.dumps([self.sort, self.value, str(self.id)])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, sort: str) -> Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        parsed: Any = orjson.loads(raw)
        got_sort, value, row_id = parsed
        cursor = Cursor(str(got_sort), None if value is None else str(value), uuid.UUID(row_id))
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError, AttributeError):
        raise InvalidCursor("the cursor is not one this API returned") from None
    if cursor.sort != sort:
        raise InvalidCursor(f"the cursor belongs to sort={cursor.sort}, not sort={sort}")
    return cursor


# the sort columns are numeric(5,4), (5,2) and (6,2): anything this far from them is
# not a value of theirs (and PostgreSQL refuses exponents beyond its numeric's)
_NUMERIC_EXPONENTS = range(-16, 17)


def _position(cursor: Cursor, parse: Callable[[str], T], valid: Callable[[T], bool]) -> T | None:
    """The cursor's position read as its sort's type; `InvalidCursor` when it is not one."""
    if cursor.value is None:
        return None
    try:
        value = parse(cursor.value)
    except (ValueError, ArithmeticError):  # decimal.InvalidOperation is the latter
        value = None
    if value is None or not valid(value):
        raise InvalidCursor(f"the cursor's position is not a value of sort={cursor.sort}")
    return value


def numeric_value(cursor: Cursor) -> Decimal | None:
    """The position of a numeric sort (a score, a probability, a change)."""
    return _position(
        cursor, Decimal, lambda v: v.is_finite() and v.adjusted() in _NUMERIC_EXPONENTS
    )


def _in_utc_range(value: datetime) -> bool:
    # the statement binds it in UTC: year 1 at +14:00 or year 9999 at -14:00 is a
    # time of no year the driver (or Python) can write
    return value.tzinfo is not None and utc_representable(value)


def time_value(cursor: Cursor) -> datetime | None:
    """The position of a timestamp sort, with its offset (as the API writes it)."""
    return _position(cursor, datetime.fromisoformat, _in_utc_range)


def real_value(cursor: Cursor) -> float | None:
    """The position of a relevance sort (a similarity, 0 to 1; bound as a `real`,
    which 1e308 overflows)."""
    return _position(cursor, float, lambda v: 0.0 <= v <= 1.0)
