"""A JSON object naming a key twice.

RFC 8259 leaves which value counts to each parser: Python's and msgspec's keep the last,
a proxy, a log or another language may keep the first. Wherever a person's or a
program's JSON decides something (a reward recorded through the API, a model file), the
service refuses it instead of choosing for them. (The topics' decoder has its own,
cheaper check on the hot path: `service.ingest.decode.duplicate_key`.)
"""

from __future__ import annotations

import json
from typing import Any


class _RepeatedKey(ValueError):
    pass


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)
    return dict(pairs)


def repeated_key(text: str | bytes) -> str | None:
    """The first key some object of `text` names twice, shown for a message (repr, cut
    to 40 characters); None when none does, or when `text` is not JSON (the caller's
    own parser says why)."""
    try:
        json.loads(text, object_pairs_hook=_refuse_repeats)
    except _RepeatedKey as exc:
        shown = repr(exc.args[0])
        return shown if len(shown) <= 40 else shown[:40] + "..."
    except (ValueError, RecursionError):
        return None
    return None
