"""Named SQL of `healthscore offsets-reset`: read, lock and rewrite stored offsets.

A person runs it on purpose (the service stopped), never the service itself.
Every statement takes the consumer group and a selection of topics (and
optionally one partition) as `$n` parameters; nothing is built from input.
"""

from __future__ import annotations

from healthscore.core.partitions import PartitionKey
from healthscore.store import Connection

SELECTED_OFFSETS = """
SELECT topic, partition, next_offset
FROM consumer_offsets
WHERE consumer_group = $1 AND topic = ANY($2::text[]) AND ($3::int IS NULL OR partition = $3)
ORDER BY topic, partition
"""

# the same rows, locked until the transaction ends: what the plan was made
# from must still be there when it is applied
LOCK_SELECTED_OFFSETS = """
SELECT topic, partition, next_offset
FROM consumer_offsets
WHERE consumer_group = $1 AND topic = ANY($2::text[]) AND ($3::int IS NULL OR partition = $3)
ORDER BY topic, partition
FOR UPDATE
"""

# no row: the service starts the partition at the log start
DELETE_OFFSETS = """
DELETE FROM consumer_offsets o
USING unnest($2::text[], $3::int[]) AS x(topic, partition)
WHERE o.consumer_group = $1 AND o.topic = x.topic AND o.partition = x.partition
"""

# max_event_time stays: it is the event time of what was applied, which the
# database still holds
SET_OFFSETS = """
INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
SELECT $1, topic, partition, next_offset
FROM unnest($2::text[], $3::int[], $4::bigint[]) AS x(topic, partition, next_offset)
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
SET next_offset = EXCLUDED.next_offset, updated_at = now()
"""

# the service's pool names its sessions `healthscore` (db.create_pool)
SERVICE_SESSIONS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'healthscore'
  AND pid <> pg_backend_pid()
"""


async def selected_offsets(
    conn: Connection, group: str, topics: list[str], partition: int | None, lock: bool = False
) -> dict[PartitionKey, int]:
    """Stored next offsets of `group` for `topics` (only `partition` when given)."""
    query = LOCK_SELECTED_OFFSETS if lock else SELECTED_OFFSETS
    rows = await conn.fetch(query, group, topics, partition)
    return {(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}


async def delete_offsets(conn: Connection, group: str, keys: list[PartitionKey]) -> None:
    if keys:
        await conn.execute(DELETE_OFFSETS, group, [t for t, _ in keys], [p for _, p in keys])


async def set_offsets(conn: Connection, group: str, offsets: dict[PartitionKey, int]) -> None:
    if offsets:
        keys = sorted(offsets)
        await conn.execute(
            SET_OFFSETS,
            group,
            [t for t, _ in keys],
            [p for _, p in keys],
            [offsets[k] for k in keys],
        )


async def service_sessions(conn: Connection) -> int:
    """Open sessions of a running service on this database (0 when it is stopped)."""
    return int(await conn.fetchval(SERVICE_SESSIONS))
