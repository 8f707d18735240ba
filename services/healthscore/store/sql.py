"""Named SQL of the hot path. Every statement takes arrays and works on a set.

No statement is built from input: identifiers are fixed here, values travel
as `$n` parameters (arrays unnested server-side), one round trip per
statement per batch, whatever the batch size.
"""

ENSURE_OFFSET_ROWS = """
INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
SELECT $1, t, p, 0 FROM unnest($2::text[], $3::int[]) AS x(t, p)
ON CONFLICT DO NOTHING
"""

READ_OFFSETS = """
SELECT topic, partition, next_offset, max_event_time
FROM consumer_offsets
WHERE consumer_group = $1
ORDER BY topic, partition
"""

SAVE_OFFSETS = """
UPDATE consumer_offsets o
SET next_offset = x.next_offset,
    max_event_time = greatest(o.max_event_time, x.max_event_time),
    updated_at = now()
FROM unnest($2::text[], $3::int[], $4::bigint[], $5::timestamptz[])
     AS x(topic, partition, next_offset, max_event_time)
WHERE o.consumer_group = $1 AND o.topic = x.topic AND o.partition = x.partition
"""

# One round trip at the start of a batch: lock the stored offsets, claim the event ids
# of the records at or after them, read the states the consumer does not hold.
LOCK_OFFSETS_AND_CLAIM_EVENT_IDS = """
WITH erased AS (
    -- of the organizations whose state is read ($11: those the consumer does not hold)
    -- and of those the rejected records name ($12: their keys and the ids in their
    -- values, whose states are not read); a held one that was erased has no state row
    -- any more, which its checked save finds (ERASED_AMONG)
    SELECT organization_id FROM erased_organizations
    WHERE organization_id = ANY($11::uuid[]) OR organization_id = ANY($12::uuid[])
), locked AS (
    SELECT o.topic, o.partition, o.next_offset
    FROM consumer_offsets o
    JOIN unnest($2::text[], $3::int[]) AS x(t, p) ON o.topic = x.t AND o.partition = x.p
    WHERE o.consumer_group = $1
    ORDER BY o.topic, o.partition
    FOR UPDATE OF o
), claimed AS (
    INSERT INTO processed_events (event_id, organization_id, occurred_at, payload_digest)
    SELECT e.event_id, e.organization_id, e.occurred_at, e.payload_digest
    FROM unnest(
        $4::uuid[], $5::uuid[], $6::timestamptz[], $7::bytea[], $8::text[], $9::int[],
        $10::bigint[]
    ) WITH ORDINALITY
        AS e(event_id, organization_id, occurred_at, payload_digest, topic, partition,
             record_offset, n)
    JOIN locked l ON l.topic = e.topic AND l.partition = e.partition
    -- below the stored offset: applied or dead-lettered before, not claimed again
    WHERE e.record_offset >= l.next_offset
      AND e.organization_id <> ALL(ARRAY(SELECT organization_id FROM erased))
    -- in the batch's order: of an id twice in it (two partitions, two topics), the copy
    -- the batch applies is the first, and its digest must be the one kept; a join
    -- led by `locked` would give them in (topic, partition) order
    ORDER BY e.n
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
)
SELECT topic, partition, next_offset, NULL::uuid AS event_id,
       NULL::uuid AS organization_id, NULL::bytea AS state, NULL::bigint AS health_version
FROM locked
UNION ALL
SELECT NULL, NULL, NULL, event_id, NULL, NULL, NULL FROM claimed
UNION ALL
-- the states the consumer does not hold (see OwnedStates), without row locks: what it
-- writes back is checked against `health_version` instead
SELECT NULL, NULL, NULL, NULL, organization_id, state_msgpack, health_version
FROM organization_state
WHERE organization_id = ANY($11::uuid[])
UNION ALL
-- those organizations that were erased (migration 0095): their records are skipped,
-- their events not claimed; an organization is never both erased and stored
SELECT NULL, NULL, NULL, NULL, organization_id, NULL, NULL
FROM erased
"""

# the organizations of a batch erased since it claimed their events (the rare path
# of a batch whose saves found rows changed or gone)
ERASED_AMONG = """
SELECT organization_id FROM erased_organizations WHERE organization_id = ANY($1::uuid[])
"""

READ_EVENT_DIGESTS = """
SELECT event_id, payload_digest FROM processed_events WHERE event_id = ANY($1::uuid[])
"""

UNCLAIM_EVENT_IDS = """
DELETE FROM processed_events WHERE event_id = ANY($1::uuid[])
"""

# never an erased organization's (migration 0095): its data is not created again
ENSURE_ORGANIZATIONS = """
INSERT INTO organizations (id)
SELECT id FROM unnest($1::uuid[]) AS x(id)
WHERE NOT EXISTS (SELECT 1 FROM erased_organizations z WHERE z.organization_id = x.id)
ORDER BY id
ON CONFLICT (id) DO NOTHING
"""

# Only for the organizations LOCK_STATES did not find: an inserted row stays
# locked by the inserting transaction until it ends. RETURNING says which
# were inserted here; any other was created concurrently and must be locked.
ENSURE_STATE_ROWS = """
INSERT INTO organization_state (organization_id)
SELECT id FROM unnest($1::uuid[]) AS x(id)
WHERE NOT EXISTS (SELECT 1 FROM erased_organizations z WHERE z.organization_id = x.id)
ORDER BY id
ON CONFLICT (organization_id) DO NOTHING
RETURNING organization_id
"""

# Rows are locked in organization order by every writer that locks before it
# writes (a batch's changed-elsewhere path, the sweep, an import page). A batch's
# checked save (SAVE_STATES_CHECKED) updates without locking first, in the order its
# plan decides, so it can deadlock with one of those; PostgreSQL aborts one side and
# both retry (the batch is rewound, an import page applied again).
LOCK_STATES = """
SELECT organization_id, state_msgpack AS state, health_version
FROM organization_state
WHERE organization_id = ANY($1::uuid[])
ORDER BY organization_id
FOR UPDATE
"""

# Saves the states whose stored version is still the one they were computed
# from and queues them for the projector; RETURNING names the saved ones and
# their new versions. A row another writer (the sweep, a replica during a
# rebalance) changed meanwhile is left alone: its events are computed again.
SAVE_STATES_CHECKED = """
WITH saved AS (
UPDATE organization_state s
SET state_msgpack = x.state,
    last_event_at = x.last_event_at,
    rescore_due_at = x.rescore_due_at,
    health_version = s.health_version + 1,
    updated_at = now(),
    events_applied_at = CASE WHEN $6::boolean THEN statement_timestamp()
                             ELSE s.events_applied_at END
FROM unnest($1::uuid[], $2::bytea[], $3::timestamptz[], $4::timestamptz[], $5::bigint[])
     AS x(organization_id, state, last_event_at, rescore_due_at, version)
WHERE s.organization_id = x.organization_id AND s.health_version = x.version
RETURNING s.organization_id, s.health_version
),
queued AS (
INSERT INTO read_model_pending (organization_id, version)
SELECT organization_id, health_version FROM saved ORDER BY organization_id
ON CONFLICT (organization_id) DO NOTHING
)
SELECT organization_id, health_version AS version FROM saved
"""

# The first state of organizations no row exists for (their `organizations` row
# is ensured first). One created meanwhile by another writer is left out of
# RETURNING and computed again, as in SAVE_STATES_CHECKED.
INSERT_STATES = """
WITH created AS (
INSERT INTO organization_state (
    organization_id, state_msgpack, last_event_at, rescore_due_at, health_version,
    events_applied_at)
SELECT organization_id, state, last_event_at, rescore_due_at, 1,
       CASE WHEN $5::boolean THEN statement_timestamp() END
FROM unnest($1::uuid[], $2::bytea[], $3::timestamptz[], $4::timestamptz[])
     AS x(organization_id, state, last_event_at, rescore_due_at)
-- an organization erased since the batch claimed its events: left out like one
-- created meanwhile, and found erased (ERASED_AMONG) when computed again
WHERE NOT EXISTS (
    SELECT 1 FROM erased_organizations z WHERE z.organization_id = x.organization_id)
ORDER BY organization_id
ON CONFLICT (organization_id) DO NOTHING
RETURNING organization_id, health_version
),
queued AS (
INSERT INTO read_model_pending (organization_id, version)
SELECT organization_id, health_version FROM created ORDER BY organization_id
ON CONFLICT (organization_id) DO NOTHING
)
SELECT organization_id, health_version AS version FROM created
"""

READ_INTERACTIONS = """
SELECT id, organization_id, interaction_type, channel, status, priority, sentiment,
       outcome, assigned_to, subject, follow_up_required, follow_up_at,
       follow_up_completed_at, opened_at, resolved_at, closed_at, first_event_at,
       last_event_at, field_event_times::text AS field_event_times, event_count
FROM support_interactions
WHERE id = ANY($1::uuid[])
"""

ENSURE_USER_PROFILES = """
INSERT INTO user_profiles (id)
SELECT id FROM unnest($1::uuid[]) AS x(id) ORDER BY id
ON CONFLICT (id) DO NOTHING
"""

# An interaction never moves between organizations. The batch read the stored ones
# (READ_INTERACTIONS) and dead-letters an event of another organization's, but another
# replica's batch (another partition) can commit the same id between that read and this
# write: the row it finds then is another organization's, and overwriting it would give
# that organization this one's interaction. `event_count` is set to NULL then (the
# writer may not update `organization_id`), so the statement fails with a not-null
# violation: a data error, which makes the pipeline
# apply the batch again in parts (bisection); each part reads the row anew and
# dead-letters the event as `interaction_org_mismatch`, the rest applies.
UPSERT_INTERACTIONS = """
INSERT INTO support_interactions (
    id, organization_id, interaction_type, channel, status, priority, sentiment,
    outcome, assigned_to, subject, follow_up_required, follow_up_at,
    follow_up_completed_at, opened_at, resolved_at, closed_at, first_event_at,
    last_event_at, field_event_times, event_count)
SELECT id, organization_id, interaction_type, channel, status, priority, sentiment,
       outcome, assigned_to, subject, follow_up_required, follow_up_at,
       follow_up_completed_at, opened_at, resolved_at, closed_at, first_event_at,
       last_event_at, field_event_times::jsonb, event_count
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::uuid[], $10::text[], $11::bool[],
            $12::timestamptz[], $13::timestamptz[], $14::timestamptz[],
            $15::timestamptz[], $16::timestamptz[], $17::timestamptz[],
            $18::timestamptz[], $19::text[], $20::int[])
     AS x(id, organization_id, interaction_type, channel, status, priority, sentiment,
          outcome, assigned_to, subject, follow_up_required, follow_up_at,
          follow_up_completed_at, opened_at, resolved_at, closed_at, first_event_at,
          last_event_at, field_event_times, event_count)
ON CONFLICT (id) DO UPDATE SET
    interaction_type = EXCLUDED.interaction_type,
    channel = EXCLUDED.channel,
    status = EXCLUDED.status,
    priority = EXCLUDED.priority,
    sentiment = EXCLUDED.sentiment,
    outcome = EXCLUDED.outcome,
    assigned_to = EXCLUDED.assigned_to,
    subject = EXCLUDED.subject,
    follow_up_required = EXCLUDED.follow_up_required,
    follow_up_at = EXCLUDED.follow_up_at,
    follow_up_completed_at = EXCLUDED.follow_up_completed_at,
    opened_at = EXCLUDED.opened_at,
    resolved_at = EXCLUDED.resolved_at,
    closed_at = EXCLUDED.closed_at,
    first_event_at = EXCLUDED.first_event_at,
    last_event_at = EXCLUDED.last_event_at,
    field_event_times = EXCLUDED.field_event_times,
    event_count = CASE
        WHEN support_interactions.organization_id = EXCLUDED.organization_id
        THEN EXCLUDED.event_count
    END
"""

INSERT_MILESTONES = """
INSERT INTO success_milestones (
    organization_id, milestone_type, achieved_at, triggering_event_id,
    health_score_impact, reward_type, reward_value, reward_status)
SELECT organization_id, milestone_type, achieved_at, triggering_event_id,
       health_score_impact, reward_type, reward_value,
       CASE WHEN reward_type IS NULL THEN NULL ELSE 'pending' END
FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::uuid[], $5::float8[],
            $6::text[], $7::float8[])
     AS x(organization_id, milestone_type, achieved_at, triggering_event_id,
          health_score_impact, reward_type, reward_value)
ON CONFLICT (organization_id, milestone_type) DO NOTHING
"""

# --- the read model (the projector) ---------------------------------------------

# An organization is queued once, at its first change not yet projected (a later
# change finds the entry and leaves it: ON CONFLICT DO NOTHING, no write), so
# `queued_at` is the age of its oldest unprojected change. The projector reads
# the current state and its version; it removes the entry only if the state
# still has that version (MARK_PROJECTED).
#
# Oldest change first: the staleness bound is about the oldest one. The queue is
# read without row locks: a batch re-queueing an organization never waits.
# The queue is split into $2 shards by the organization id's last byte, so that
# several processes project at once, each shard under its own lock
# (`locks.PROJECTOR_SHARD`, $5); $3 is the shard. The lock is tried in the same
# statement (one round trip): `held` false means another process has the shard
# (no entry read); true with a NULL organization, that nothing is ready.
# The entries a pass takes are locked until it commits (SKIP LOCKED: another pass
# leaves them): two passes never project one organization at once, even under
# shard locks that do not exclude each other (processes with different
# PROJECTOR_SHARDS during a rolling deploy), so an older state is never written,
# nor its feed record published, after a newer one.
PENDING_PROJECTION = """
WITH shard AS (SELECT pg_try_advisory_xact_lock($5::int, $3::int) AS held)
SELECT shard.held, p.organization_id, p.version, p.state
FROM shard
LEFT JOIN LATERAL (
    SELECT q.organization_id, s.health_version AS version, s.state_msgpack AS state,
           q.queued_at
    FROM read_model_pending q
    JOIN organization_state s ON s.organization_id = q.organization_id
    WHERE shard.held
      AND get_byte(uuid_send(q.organization_id), 15) % $2::int = $3::int
      AND q.queued_at <= now() - make_interval(secs => $4::float8)
    ORDER BY q.queued_at, q.organization_id
    LIMIT $1
    FOR UPDATE OF q SKIP LOCKED
) p ON true
ORDER BY p.queued_at, p.organization_id
"""

OLDEST_PENDING_PROJECTION = "SELECT min(queued_at) FROM read_model_pending"

# the same age in seconds on the database's clock (0 with nothing queued): the
# staleness gauge, readiness and the bench's live sampling; the function (migrations
# 0111, 0112) is the read API's freshness too: one definition for both
READ_MODEL_STALENESS = "SELECT app_read_model_staleness()"

# An entry stays when its state moved on since the projector read it (a newer
# version: committed after the read) and when a writer holds the state row right
# now (SKIP LOCKED: a batch or the sweep is saving a newer version, which finds
# the entry and leaves it; if it rolls back, the entry is simply projected
# again). A state row this statement locks (FOR SHARE) cannot be saved until the
# projector commits, so a save after the deletion queues its organization anew.
MARK_PROJECTED = """
DELETE FROM read_model_pending q
WHERE q.organization_id IN (
    SELECT s.organization_id
    FROM organization_state s
    JOIN unnest($1::uuid[], $2::bigint[]) AS x(organization_id, version)
      ON s.organization_id = x.organization_id AND s.health_version = x.version
    ORDER BY s.organization_id
    FOR SHARE OF s SKIP LOCKED)
"""

# the naive baseline writes the read model in its own transaction: nothing to queue
# A live batch projects its own changes (BatchPipeline, "live projection"): it takes
# back the queue entries its state saves just made (at the versions it saved; an
# organization queued before it keeps its entry at an older version, and with it the
# projector's turn). Run after the saves, while the batch holds those state rows.
# An organization whose health feed is owed (`health_feed_owed`) and due is the
# projector's too: it publishes the owed record from customer_health, and a live batch
# writing and publishing a newer row meanwhile could land before that older record. A
# debt not due yet no pass reads; once due, a pass skips the row a batch holds.
TAKE_OWN_PENDING = """
DELETE FROM read_model_pending q
USING unnest($1::uuid[], $2::bigint[]) AS x(organization_id, version)
WHERE q.organization_id = x.organization_id AND q.version = x.version
  AND NOT EXISTS (
      SELECT 1 FROM health_feed_owed o
      WHERE o.organization_id = q.organization_id
        AND (o.not_before IS NULL OR o.not_before <= now()))
RETURNING q.organization_id
"""

# Back to the projector: organizations a live batch projected but could not publish
# the health feed of (the projector writes them again and publishes).
QUEUE_FOR_PROJECTOR = """
INSERT INTO read_model_pending (organization_id, version)
SELECT organization_id, version
FROM unnest($1::uuid[], $2::bigint[]) AS x(organization_id, version)
ORDER BY organization_id
ON CONFLICT (organization_id) DO NOTHING
"""

# Back to the projector, at their current versions: organizations whose health feed a
# transaction sent before it failed (`projector.queue_again`). Only those with a saved
# state: the failed transaction may have been the one creating it, and an entry the
# projector cannot join to a state would stay queued, and the read model look stale.
# DO UPDATE, not DO NOTHING: an entry a pass holds right now (it may have published
# already, before the record this follows up landed) is waited for, and if the pass
# removes it, inserted again, so a pass after that record republishes the newest state.
QUEUE_AGAIN = """
INSERT INTO read_model_pending (organization_id, version)
SELECT s.organization_id, s.health_version
FROM organization_state s
JOIN unnest($1::uuid[]) AS x(organization_id) ON s.organization_id = x.organization_id
WHERE s.health_version >= 1
ORDER BY s.organization_id
ON CONFLICT (organization_id) DO UPDATE SET version = EXCLUDED.version
"""

DEQUEUE_PROJECTED = """
DELETE FROM read_model_pending WHERE organization_id = ANY($1::uuid[])
"""

# --- the health feed the broker did not take (`health_feed_owed`) -----------------

# A pass whose feed was not acknowledged commits customer_health anyway and owes the
# feed of its organizations; an organization already owed keeps its older entry (its
# age is how long the feed has lagged the read model).
OWE_HEALTH_FEED = """
INSERT INTO health_feed_owed (organization_id)
SELECT organization_id FROM unnest($1::uuid[]) AS x(organization_id)
ORDER BY organization_id
ON CONFLICT (organization_id) DO NOTHING
"""

# The owed records of shard $3 of $2 (as PENDING_PROJECTION splits them), oldest first,
# with what the feed carries: the customer_health row, the newest projected score. Its
# rows are locked (FOR SHARE) until the pass commits, after the publish: a newer
# projection cannot be written, let alone published, before this older record goes
# out. A row another transaction is writing right now is skipped (SKIP LOCKED): that
# writer publishes its newer score, or owes it.
OWED_HEALTH_FEED = """
SELECT o.organization_id, o.not_before, h.health_score::float8 AS health_score,
       h.previous_score::float8 AS previous_score, h.health_status,
       h.churn_probability::float8 AS churn_probability, h.risk_level,
       h.engagement_score::float8 AS engagement_score,
       h.adoption_score::float8 AS adoption_score,
       h.milestone_score::float8 AS milestone_score,
       h.support_score::float8 AS support_score, h.growth_score::float8 AS growth_score,
       h.risk_factors::text AS risk_factors, h.score_model_version, h.scored_at
FROM health_feed_owed o
JOIN customer_health h ON h.organization_id = o.organization_id
WHERE get_byte(uuid_send(o.organization_id), 15) % $2::int = $3::int
  AND (o.not_before IS NULL OR o.not_before <= now())
ORDER BY o.owed_since, o.organization_id
LIMIT $1
FOR SHARE OF h SKIP LOCKED
"""

# The feed of organizations whose records were sent and not answered (a pass or live
# batch gave up on them, or did not commit; a stop cut their follow-up), owed but due
# only after $2 seconds, by when they can no longer land; then a pass republishes their
# customer_health rows (one not written yet, the cut transaction's first, waits for
# it: OWED_HEALTH_FEED joins it). The follow-up renews it while the records are still
# unanswered (`Projector._follow_up`). Any organization with a saved state (an erased
# one has none: the caller counts what was not owed); one owed already is due no
# sooner than this asks. Until then a pass that projects such an organization
# publishes its newer score and leaves the entry (OWED_HEALTH_FEED does not read it,
# FEED_PUBLISHED clears only what it read). An erased organization's record may land
# after its tombstone: its tombstone is owed (again) for then (migration 0107). The
# number of organizations owed either way.
OWE_HEALTH_FEED_LATER = """
WITH feed AS (
INSERT INTO health_feed_owed AS o (organization_id, not_before)
SELECT s.organization_id, now() + make_interval(secs => $2::float8)
FROM organization_state s
JOIN unnest($1::uuid[]) AS x(organization_id) ON s.organization_id = x.organization_id
WHERE s.health_version >= 1
ORDER BY s.organization_id
ON CONFLICT (organization_id) DO UPDATE
SET not_before = greatest(coalesce(o.not_before, now()), EXCLUDED.not_before)
RETURNING 1
),
tombstones AS (
INSERT INTO health_feed_tombstones_owed AS t (organization_id, not_before)
SELECT z.organization_id, now() + make_interval(secs => $2::float8)
FROM erased_organizations z
JOIN unnest($1::uuid[]) AS x(organization_id) ON z.organization_id = x.organization_id
ORDER BY z.organization_id
ON CONFLICT (organization_id) DO UPDATE
SET not_before = greatest(coalesce(t.not_before, now()), EXCLUDED.not_before)
RETURNING 1
)
SELECT (SELECT count(*) FROM feed) + (SELECT count(*) FROM tombstones)
"""

# published: their customer_health rows are still those the pass read (it holds them).
# Only the entries as read ($2: their not_before): one owed for later meanwhile (a
# stop's `settle` or another replica's pass gave up on the organization's records,
# which may still land) is not this pass's to clear, as with FEED_TOMBSTONES_PUBLISHED
FEED_PUBLISHED = """
DELETE FROM health_feed_owed o
USING unnest($1::uuid[], $2::timestamptz[]) AS p(organization_id, not_before)
WHERE o.organization_id = p.organization_id AND o.not_before IS NOT DISTINCT FROM p.not_before
"""

# the age in seconds of the oldest record owed (0 with none), on the database's
# clock, as READ_MODEL_STALENESS for the queue: a replica's clock running behind would
# make the gauge under-report. A debt owed for later (records that may still land)
# counts from when it was first owed too: during a broker outage every give-up is one,
# renewed while the broker does not answer, and the feed is behind all that time. An
# erased organization's owed tombstone is the feed lagging the read model too (the
# organization is gone from it); one owed again counts from then
OWED_HEALTH_FEED_AGE = """
SELECT coalesce(extract(epoch FROM now() - least(
    (SELECT min(owed_since) FROM health_feed_owed),
    (SELECT min(owed_since) FROM health_feed_tombstones_owed))), 0)::float8
"""

# erased organizations' health-feed tombstones no broker took yet (migration 0097):
# oldest first, unlocked (two replicas publishing one twice is harmless: a tombstone
# again). One due later (a record of the organization may land until then, migration
# 0107; the erasure published it at once) waits until then.
OWED_FEED_TOMBSTONES = """
SELECT organization_id, owed_since, not_before FROM health_feed_tombstones_owed
WHERE not_before IS NULL OR not_before <= now()
ORDER BY owed_since, organization_id
LIMIT $1
"""

# only the entries as read ($2: their owed_since): one owed again since (a late feed
# record landed after the tombstone) stays owed (migration 0101); and only those due:
# the erasure's own publish leaves one due later, to be published again then (0107)
FEED_TOMBSTONES_PUBLISHED = """
DELETE FROM health_feed_tombstones_owed t
USING unnest($1::uuid[], $2::timestamptz[]) AS p(organization_id, owed_since)
WHERE t.organization_id = p.organization_id AND t.owed_since = p.owed_since
  AND (t.not_before IS NULL OR t.not_before <= now())
"""

# a tombstone that could not be published again after a late feed record (the foreign
# key takes only erased organizations); owed anew, so that a publish of the older debt
# in flight does not clear it
OWE_FEED_TOMBSTONES = """
INSERT INTO health_feed_tombstones_owed (organization_id)
SELECT unnest($1::uuid[])
ON CONFLICT (organization_id) DO UPDATE SET owed_since = clock_timestamp()
"""

# previous_score: the score shown before the last change of the score
UPSERT_CUSTOMER_HEALTH = """
INSERT INTO customer_health AS h (
    organization_id, health_score, engagement_score, adoption_score, milestone_score,
    support_score, growth_score, churn_probability, risk_factors, feature_usage,
    score_change_7d, score_change_30d, active_users_30d,
    open_interactions, milestones_achieved, last_activity_at, last_login_at,
    scored_at, score_model_version)
SELECT organization_id, health_score, engagement_score, adoption_score, milestone_score,
       support_score, growth_score, churn_probability, risk_factors::jsonb,
       feature_usage::jsonb, score_change_7d, score_change_30d,
       active_users_30d, open_interactions, milestones_achieved, last_activity_at,
       last_login_at, scored_at, $19
FROM unnest($1::uuid[], $2::float8[], $3::float8[], $4::float8[], $5::float8[],
            $6::float8[], $7::float8[], $8::float8[], $9::text[], $10::text[],
            $11::float8[], $12::float8[], $13::int[], $14::int[],
            $15::int[], $16::timestamptz[], $17::timestamptz[], $18::timestamptz[])
     AS x(organization_id, health_score, engagement_score, adoption_score, milestone_score,
          support_score, growth_score, churn_probability, risk_factors, feature_usage,
          score_change_7d, score_change_30d, active_users_30d,
          open_interactions, milestones_achieved, last_activity_at, last_login_at,
          scored_at)
ORDER BY organization_id
ON CONFLICT (organization_id) DO UPDATE SET
    health_score = EXCLUDED.health_score,
    engagement_score = EXCLUDED.engagement_score,
    adoption_score = EXCLUDED.adoption_score,
    milestone_score = EXCLUDED.milestone_score,
    support_score = EXCLUDED.support_score,
    growth_score = EXCLUDED.growth_score,
    churn_probability = EXCLUDED.churn_probability,
    risk_factors = EXCLUDED.risk_factors,
    feature_usage = EXCLUDED.feature_usage,
    previous_score = CASE WHEN h.health_score IS DISTINCT FROM EXCLUDED.health_score
                          THEN h.health_score ELSE h.previous_score END,
    score_change_7d = EXCLUDED.score_change_7d,
    score_change_30d = EXCLUDED.score_change_30d,
    active_users_30d = EXCLUDED.active_users_30d,
    open_interactions = EXCLUDED.open_interactions,
    milestones_achieved = EXCLUDED.milestones_achieved,
    last_activity_at = EXCLUDED.last_activity_at,
    last_login_at = EXCLUDED.last_login_at,
    scored_at = EXCLUDED.scored_at,
    score_model_version = EXCLUDED.score_model_version
RETURNING h.organization_id, h.previous_score::float8 AS previous_score
"""

# One row per organization per event-time day (UTC; `day` is generated from
# scored_at): the day's latest score. A batch passes at most one row per
# (organization, day) (BatchEffects.history): one statement cannot update a row
# twice. An older score never replaces a newer one; of two with the same as-of
# time the later written (later applied) wins, as within a batch.
UPSERT_SCORE_HISTORY = """
INSERT INTO health_score_history AS h (
    organization_id, scored_at, health_score, churn_probability, risk_level,
    components, score_model_version, cause)
SELECT organization_id, scored_at, health_score, churn_probability, risk_level,
       components::jsonb, $7, cause
FROM unnest($1::uuid[], $2::timestamptz[], $3::float8[], $4::float8[], $5::text[],
            $6::text[], $8::text[])
     AS x(organization_id, scored_at, health_score, churn_probability, risk_level,
          components, cause)
ON CONFLICT (organization_id, day) DO UPDATE SET
    scored_at = EXCLUDED.scored_at,
    health_score = EXCLUDED.health_score,
    churn_probability = EXCLUDED.churn_probability,
    risk_level = EXCLUDED.risk_level,
    components = EXCLUDED.components,
    score_model_version = EXCLUDED.score_model_version,
    cause = EXCLUDED.cause,
    recorded_at = now()
WHERE EXCLUDED.scored_at >= h.scored_at
"""

# WITH ORDINALITY + ORDER BY: rows get their `seq` in the order decided
INSERT_ALERTS = """
INSERT INTO alert_outbox (alert_id, organization_id, kind, episode, payload)
SELECT alert_id, organization_id, kind, episode, payload::jsonb
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::text[]) WITH ORDINALITY
     AS x(alert_id, organization_id, kind, episode, payload, n)
ORDER BY n
ON CONFLICT (alert_id) DO NOTHING
"""

# --- the outbox relay ------------------------------------------------------------

PENDING_ALERTS = """
SELECT alert_id, organization_id, kind, payload::text AS payload
FROM alert_outbox
WHERE published_at IS NULL
ORDER BY seq
LIMIT $1
"""

MARK_ALERTS_SENT = """
UPDATE alert_outbox
SET published_at = now(), publish_attempts = publish_attempts + 1, last_error = NULL
WHERE alert_id = ANY($1::uuid[])
"""

RECORD_ALERT_FAILURE = """
UPDATE alert_outbox
SET publish_attempts = publish_attempts + 1, last_error = $2
WHERE alert_id = ANY($1::uuid[])
"""

# --- dead letters ----------------------------------------------------------------

# in the batch's transaction, in the batch's order; a source record once
INSERT_DEAD_LETTERS = """
INSERT INTO dead_letter_outbox (source_topic, source_partition, source_offset, record_key,
                                record_value, record_timestamp_ms, record_headers, reason,
                                detail)
SELECT topic, partition, "offset", key, value, timestamp_ms, headers, reason, detail
FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bytea[], $5::bytea[], $6::bigint[],
            $7::bytea[], $8::text[], $9::text[]) WITH ORDINALITY
     AS x(topic, partition, "offset", key, value, timestamp_ms, headers, reason, detail, n)
ORDER BY n
ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING
"""

# each source topic's first $1 in rejection order: a topic whose dead letters its
# dead-letter topic refuses holds back only its own (the topics found by a loose scan of
# dead_letter_outbox_topic_order, one index probe per topic)
PENDING_DEAD_LETTERS = """
WITH RECURSIVE topics (source_topic) AS (
    (SELECT source_topic FROM dead_letter_outbox ORDER BY source_topic LIMIT 1)
    UNION ALL
    SELECT (SELECT d.source_topic FROM dead_letter_outbox d
            WHERE d.source_topic > t.source_topic
            ORDER BY d.source_topic LIMIT 1)
    FROM topics t
    WHERE t.source_topic IS NOT NULL
)
SELECT p.*
FROM topics t
CROSS JOIN LATERAL (
    SELECT id, source_topic, source_partition, source_offset, record_key, record_value,
           record_timestamp_ms, record_headers, reason, detail, rejected_at
    FROM dead_letter_outbox d
    WHERE d.source_topic = t.source_topic
    ORDER BY d.id
    LIMIT $1
) p
ORDER BY p.id
"""

# the broker has them: the topic is their store from now on
DELETE_DEAD_LETTERS = "DELETE FROM dead_letter_outbox WHERE id = ANY($1::bigint[])"

# a dead letter its topic refused for its content alone, whose stand-in it took: the
# record as it came leaves the outbox for dead_letters_withheld, in one statement (a
# row each: coordinates repeat on a recreated topic, with other bytes; migration 0094)
WITHHOLD_DEAD_LETTERS = """
WITH refused AS (
    SELECT id, refusal FROM unnest($1::bigint[], $2::text[]) AS x(id, refusal)
), moved AS (
    DELETE FROM dead_letter_outbox d USING refused r WHERE d.id = r.id
    RETURNING d.id, d.source_topic, d.source_partition, d.source_offset, d.record_key,
              d.record_value, d.record_timestamp_ms, d.record_headers, d.reason, d.detail,
              d.rejected_at, r.refusal
)
INSERT INTO dead_letters_withheld (id, source_topic, source_partition, source_offset,
                                   record_key, record_value, record_timestamp_ms,
                                   record_headers, reason, detail, rejected_at, refusal)
SELECT * FROM moved
"""

RECORD_DEAD_LETTER_FAILURE = """
UPDATE dead_letter_outbox
SET publish_attempts = publish_attempts + 1, last_error = $2
WHERE id = ANY($1::bigint[])
"""

# Read every 5 s by every replica: while a dead-letter topic refuses its dead letters for
# hours the table can hold millions of rows, so it is counted exactly only up to $1 rows
# (an index-only scan at most that long), beyond that the planner's estimate of its rows;
# the oldest is the first in rejection order (the primary key), not a scan for min()
DEAD_LETTER_STATS = """
WITH counted AS (
    SELECT count(*) AS n FROM (SELECT 1 FROM dead_letter_outbox LIMIT $1) AS capped
)
SELECT CASE WHEN n < $1 THEN n
            ELSE greatest(n, (SELECT reltuples::bigint FROM pg_class
                              WHERE oid = 'dead_letter_outbox'::regclass))
       END AS pending,
       coalesce(extract(epoch FROM now() - (SELECT rejected_at FROM dead_letter_outbox
                                            ORDER BY id LIMIT 1)), 0)::float8 AS oldest_age
FROM counted
"""
DEAD_LETTERS_COUNTED = 100_000

# --- ops gauges ------------------------------------------------------------------

# The share of the cluster's notification queue in use (the read model's announcements
# go through it; a listener idle in a transaction keeps it from being truncated)
NOTIFICATION_QUEUE_USAGE = "SELECT pg_notification_queue_usage()"

# the records the dead-letter topics refused, kept for an operator (counted up to $1)
DEAD_LETTERS_WITHHELD_KEPT = """
SELECT count(*) FROM (SELECT 1 FROM dead_letters_withheld LIMIT $1) AS kept
"""

OUTBOX_STATS = """
SELECT count(*) AS backlog,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age
FROM alert_outbox WHERE published_at IS NULL
"""
# One scan of customer_health for both distributions. It reads the whole table
# (a million organizations: a few hundred MB), so it runs on its own, slower
# interval: at the gauges' 5 s it took a measurable share of the throughput with
# a million organizations in the tables (docs/performance.md, "Levers measured").
DISTRIBUTION = """
SELECT health_status, risk_level, count(*) AS n FROM customer_health GROUP BY 1, 2
"""

# --- silence sweep -------------------------------------------------------------

# one leader at a time (sweep, relays): a transaction-level advisory lock
TRY_LEADER_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
# A leader that waits on the broker inside its transaction (the relay: its lock held
# while a page is acknowledged) sets its own bounds for it: idle that long at most, and
# where the session has a transaction_timeout (PostgreSQL 17 or later: NULL before; not
# 0), that long at most from here on, whatever the session's limit (`serve`'s may be
# shorter than the wait). PostgreSQL starts the timer anew only when none runs: the inner
# set_config stops it, the outer starts it with $1. Stopping answering, the leader loses
# its session, and the lock.
BOUND_HELD_TRANSACTION = """
SELECT set_config('idle_in_transaction_session_timeout', $1, true),
       CASE WHEN coalesce(current_setting('transaction_timeout', true), '0') <> '0'
            THEN set_config(
                'transaction_timeout',
                $1 || left(set_config('transaction_timeout', '0', true), 0),
                true)
       END
"""

# each `serve` session's bound on a transaction (PostgreSQL 17 or later; db.py)
BOUND_TRANSACTION_TIME = "SELECT set_config('transaction_timeout', $1, false)"

# the two-key form: (a purpose, a number within it), e.g. a projector shard
TRY_SHARD_LOCK = "SELECT pg_try_advisory_xact_lock($1::int, $2::int)"

# Each input partition's newest applied event time; the log's event-time watermark
# (the sweep's clock) is their oldest. Partitions are read in order, so no event older
# than it is still to come on a partition that has delivered one; a partition without
# a row has applied nothing yet (`service.sweep` asks the log whether it holds records).
EVENT_TIME_FRONTIERS = """
SELECT topic, partition, max_event_time FROM consumer_offsets
WHERE consumer_group = $1 AND topic = ANY($2::text[])
"""

# the consumer groups with stored progress (`healthscore replay` resumes its own)
STORED_GROUPS = "SELECT DISTINCT consumer_group FROM consumer_offsets ORDER BY 1"

# the options a replay ran with (`healthscore replay`; migration 0072): recorded once, at
# its first start, and read by a resume
RECORD_REPLAY_RUN = """
INSERT INTO replay_runs (consumer_group, silence_sweep, publish_alerts) VALUES ($1, $2, $3)
ON CONFLICT (consumer_group) DO NOTHING
"""
REPLAY_RUN = "SELECT silence_sweep, publish_alerts FROM replay_runs WHERE consumer_group = $1"
# whether a database holds organizations (a replay needs an empty one, or resumes)
COUNT_ORGANIZATION_STATES = "SELECT count(*) FROM organization_state"
# what a replay rebuilt: events, organizations in the read model, alerts, and the
# organization-days whose last score is a silence rescoring
REPLAYED = """
SELECT (SELECT count(*) FROM processed_events) AS events,
       (SELECT count(*) FROM customer_health) AS organizations,
       (SELECT count(*) FROM alert_outbox) AS alerts,
       (SELECT count(*) FROM health_score_history WHERE cause = 'sweep') AS silence_days
"""

# one organization's stored state (`healthscore state`)
STATE_OF = """
SELECT state_msgpack AS state, health_version, last_event_at, rescore_due_at, updated_at
FROM organization_state
WHERE organization_id = $1
"""

# rescore_due_at is the organization's next silence grid point: due when it lies
# strictly below the watermark, unless a batch applied events to it in the last $3
# seconds (they are still arriving: migration 0120; stamped when the batch saved it,
# statement_timestamp(), not when its transaction began)
PICK_SILENT = """
SELECT organization_id, state_msgpack AS state, health_version
FROM organization_state
WHERE rescore_due_at < $1
  AND ($3 = 0 OR events_applied_at IS NULL
       OR events_applied_at < now() - make_interval(secs => $3))
ORDER BY rescore_due_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

COUNT_SILENT = """
SELECT count(*) FROM organization_state
WHERE rescore_due_at < $1
  AND ($2 = 0 OR events_applied_at IS NULL
       OR events_applied_at < now() - make_interval(secs => $2))
"""

# rows picked with nothing due after all (a due time stored under another step)
SET_RESCORE_DUE = """
UPDATE organization_state s
SET rescore_due_at = x.rescore_due_at
FROM unnest($1::uuid[], $2::timestamptz[]) AS x(organization_id, rescore_due_at)
WHERE s.organization_id = x.organization_id
"""

# --- dedupe retention ----------------------------------------------------------

# the oldest event id kept (the processed_at index's first live entry): how far behind
# the purge is
OLDEST_EVENT_ID = "SELECT min(processed_at) FROM processed_events"

# HISTORY_RETENTION_DAYS (migration 0118): the organizations a page at a time, by id,
# and their days before the cutoff
ORGANIZATIONS_AFTER = """
SELECT id FROM organizations WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2
"""
PURGE_SCORE_HISTORY = "SELECT purge_score_history($1, $2)"

PURGE_PROCESSED_EVENTS = """
DELETE FROM processed_events
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM processed_events WHERE processed_at < $1 LIMIT $2))
"""

# --- episodes left open by a rebuilt database ----------------------------------

# each organization's open risk episode: its newest alert (in the order decided) when
# that is not a recovery; $1 false: among the alerts published only (what the
# notification service was sent)
OPEN_EPISODES = """
SELECT organization_id, episode_id, kind, risk_level, scored_at
FROM (
    SELECT DISTINCT ON (organization_id)
           organization_id, (payload->>'episode_id')::uuid AS episode_id, kind,
           payload->>'risk_level' AS risk_level,
           (payload->>'scored_at')::timestamptz AS scored_at
    FROM alert_outbox
    WHERE $1 OR published_at IS NOT NULL
    ORDER BY organization_id, seq DESC
) newest
WHERE kind <> 'recovered'
ORDER BY organization_id
"""
