"""Opaque keyset cursors: the last row's sort key, for the statement's `>` condition.

A cursor is base64url JSON `[sort, value, id]`. It carries no filters, so
changing a filter with an old cursor still yields a consistent page of the new
filter; it names its sort, so a cursor of another sort is refused.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from healthscore.errors import HealthscoreError


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
