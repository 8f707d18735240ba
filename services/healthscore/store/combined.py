"""Several data-modifying statements sent as one: each a CTE of one WITH.

A batch's writes go to different tables and none reads another's rows, so they
need not be separate round trips: with the two service processes, PostgreSQL,
the broker and the projector sharing two cores, each round trip waits for the
scheduler about as long as the statement runs. Only fixed statements of the
store modules are combined (their `$n` renumbered in order); no text comes from
input. The sub-statements run on one snapshot and in no guaranteed order, so a
statement that must see another's rows (a foreign key's parent row inserted in
the same batch) runs before, on its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

_PARAMETER = re.compile(r"\$(\d+)")

Part = tuple[str, Sequence[Any]]


def _renumber(offset: int) -> Callable[[re.Match[str]], str]:
    return lambda match: f"${int(match.group(1)) + offset}"


@lru_cache(maxsize=64)
def _combined_text(parts: tuple[tuple[str, int], ...]) -> str:
    ctes = []
    offset = 0
    for index, (statement, count) in enumerate(parts):
        body = _PARAMETER.sub(_renumber(offset), statement.strip())
        ctes.append(f"w{index} AS (\n{body}\n)")
        offset += count
    return "WITH " + ",\n".join(ctes) + "\nSELECT 1"


def combine(parts: Sequence[Part]) -> tuple[str, list[Any]]:
    """One statement and its arguments for `parts` ((statement, its arguments) each)."""
    text = _combined_text(tuple((statement, len(args)) for statement, args in parts))
    return text, [arg for _statement, args in parts for arg in args]
