"""The per-partition progress the service keeps in PostgreSQL."""

from __future__ import annotations

from healthscore.core.partitions import PartitionKey
from healthscore.store import Connection, sql


async def stored_offsets(conn: Connection, group: str) -> dict[PartitionKey, int]:
    """Next offset to apply per (topic, partition) of `group`."""
    rows = await conn.fetch(sql.READ_OFFSETS, group)
    return {(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
