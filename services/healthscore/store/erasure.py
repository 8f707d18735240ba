"""The statements of `healthscore erase` (run as healthscore_eraser, migration 0095).

One organization per transaction, in two steps. The first removes everything keyed
to the organization by a foreign key (deleting its `organizations` row: ON DELETE
CASCADE), records the tombstone and removes its dead letters not yet published, while it
holds every stored consumer offset: a batch locks its partitions' offset rows first,
so the erasure waits for the batches in flight and every later batch's statements see
the tombstone. The dead letters go in the first step because the dead-letter relay
would publish them (the erased payload) were the command killed before the second.
The second deletes its processed event ids (a scan of a large table, better not made
while consumers wait: no writer adds ids of an erased organization any more; nothing
publishes them) and marks the erasure finished (`completed_at`, migration 0096); it is
made once for a page of organizations, whose first steps committed one by one.
"""

from __future__ import annotations

# a consumer waits at most this long behind an erasure's locks, and an erasure
# behind a long batch or projector pass fails (and is run again) rather than queue
ERASE_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', '10s', true)"

# first, holding nothing a batch waits for: the relays' pages in flight (a page holds
# its leader lock while the broker acknowledges it: 75 s at most per topic, the
# dead-letter relay's up to three input topics and a one-at-a-time pass), then no page
# until the erasure commits (migrations 0116, 0117). No statement timeout cancels that
# wait, and an erasure whose client stalls mid-transaction lets the relays go within a
# minute
RELAYS_LOCK_TIMEOUT = (
    "SELECT set_config('lock_timeout', '600s', true),"
    " set_config('statement_timeout', '0', true),"
    " set_config('idle_in_transaction_session_timeout', '60s', true)"
)
WAIT_FOR_THE_RELAYS = "SELECT erasure_waits_for_the_relays()"

LOCK_CONSUMERS = """
SELECT 1 FROM consumer_offsets
ORDER BY consumer_group, topic, partition
FOR UPDATE
"""

# RETURNING: the first erasure of the organization (a repeat keeps the first's record)
RECORD_TOMBSTONE = """
INSERT INTO erased_organizations (organization_id, rows_removed) VALUES ($1, $2::jsonb)
ON CONFLICT (organization_id) DO NOTHING
RETURNING erased_at
"""

# before the delete: a writer's uncommitted row of the id (an import page or batch
# creating the organization) makes this wait for that transaction, so the delete
# sees what it created (migration 0098); RETURNING: inserted here, not counted
CLAIM_ORGANIZATION = """
INSERT INTO organizations (id) VALUES ($1)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

DELETE_ORGANIZATION = "DELETE FROM organizations WHERE id = $1"

# a page of organizations at a time: the table has no index on the organization (one
# more entry per event on the hot path), so each statement is a scan of it
DELETE_PROCESSED_EVENTS = """
WITH removed AS (
    DELETE FROM processed_events WHERE organization_id = ANY($1::uuid[])
    RETURNING organization_id
)
SELECT organization_id, count(*) AS removed FROM removed GROUP BY organization_id
"""

# its dead letters not yet published, by key (in any spelling the consumer reads as
# the id: `decode.key_organization` parses the key as a UUID, so the case, braces,
# a urn:uuid: prefix, hyphens and surrounding whitespace vary; refused as invalid_key)
# or by the id in the value: erase_dead_letters() (migration 0099), SECURITY DEFINER,
# so that the eraser reads no dead letter of another organization; it refuses an
# organization whose erasure is not recorded (RECORD_TOMBSTONE first, migration 0104)
# or whose state is still stored (DELETE_ORGANIZATION, which cascades, first: 0105)
DELETE_DEAD_LETTERS = "SELECT erase_dead_letters($1)"

# the first erasure's dead letters, counted after its tombstone was recorded
ADD_ROWS_REMOVED = """
UPDATE erased_organizations
SET rows_removed = rows_removed || $2::jsonb
WHERE organization_id = $1 AND completed_at IS NULL
"""

# the rows deleted per table (cascades included), read before and after an erasure's
# deletes: what it removes, counted without reading rows row-level security hides from
# it (the counters also hold earlier transactions' deletes not reported yet)
ROWS_DELETED = """
SELECT relname AS table_name, n_tup_del AS deleted
FROM pg_stat_xact_user_tables
WHERE n_tup_del > 0
ORDER BY relname
"""

# an erasure recorded before whose second step never committed (the command killed
# between its steps): this run finishes it
ERASURE_UNFINISHED = """
SELECT completed_at IS NULL FROM erased_organizations WHERE organization_id = $1
"""

# the second step's counts beside the first's, by the run that finishes the erasure
FINISH_ERASURE = """
UPDATE erased_organizations
SET rows_removed = rows_removed || $2::jsonb, completed_at = now()
WHERE organization_id = $1 AND completed_at IS NULL
"""

ERASED = """
SELECT organization_id, erased_at, erased_by, rows_removed::text AS rows_removed,
       completed_at
FROM erased_organizations
ORDER BY erased_at, organization_id
"""

# a feed record of the organization sent and not answered may still land until this
# (its debt, migration 0106): read, and locked, before the delete cascades it away, by
# a function running as the owner (the eraser reads no other organization's debt, 0107)
FEED_DEBT_NOT_DUE = "SELECT erased_feed_debt_due($1)"

# the health feed's tombstone, owed with the erasure (in its first transaction): the
# command publishes it, else the running service's projector does (migration 0097)
# owed anew by a run again (RETURNING: the entry this run's publish pays, migration 0101);
# $2: due again then, after a record that may still land (FEED_DEBT_NOT_DUE, 0107)
OWE_FEED_TOMBSTONE = """
INSERT INTO health_feed_tombstones_owed AS t (organization_id, not_before) VALUES ($1, $2)
ON CONFLICT (organization_id) DO UPDATE
SET owed_since = clock_timestamp(), not_before = greatest(t.not_before, EXCLUDED.not_before)
RETURNING owed_since
"""
