"""Every PostgreSQL advisory-lock key the service takes, in one place.

Keys are 64-bit integers, unique across the database: two purposes sharing a key
would serialize each other or, worse, let one leader stand in for another.
"""

# session-level, held while `healthscore migrate` applies files
MIGRATION = int.from_bytes(b"healthsc", "big", signed=True)
# transaction-level leader locks (store.sql.TRY_LEADER_LOCK): one active at a time
RELAY = 0x6865616C7468_01  # "health" + 1
# 0x6865616C7468_02 was the single projector's; retired for PROJECTOR_SHARD below
SWEEP = 0x6865616C7468_03
SHADOW = 0x6865616C7468_04
OUTCOMES = 0x6865616C7468_05
DEAD_LETTER_RELAY = 0x6865616C7468_06

# two-key transaction-level locks (store.sql.TRY_SHARD_LOCK): (purpose, shard). The
# two-key form is a lock space of its own: these never meet the keys above.
PROJECTOR_SHARD = 0x68700002  # "hp" + 2: one projector per read-model queue shard
