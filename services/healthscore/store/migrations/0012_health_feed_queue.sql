-- The health feed (customer.health.v1) gets a narrow queue of its own.
--
-- Marking "published" on organization_state rewrote a ~2 KB state row per
-- organization per batch a second time (measured: 1.5 organization_state row
-- writes per event). A batch now upserts (organization, version) here; the
-- relay publishes the latest customer_health row of each queued organization
-- and deletes the entry if the version is still the one it published.
CREATE TABLE IF NOT EXISTS health_feed_pending (
    organization_id uuid        PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    version         bigint      NOT NULL CHECK (version >= 1),
    queued_at       timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE health_feed_pending OWNER TO healthscore_owner;
GRANT SELECT, INSERT, UPDATE, DELETE ON health_feed_pending TO healthscore_writer;

COMMENT ON TABLE health_feed_pending IS
    'Organizations whose latest score is still to be published on customer.health.v1.';
COMMENT ON COLUMN health_feed_pending.version IS
    'organization_state.health_version when queued; the relay deletes the entry only if unchanged.';
COMMENT ON COLUMN health_feed_pending.queued_at IS
    'When the organization was first queued since its last publish (age of the backlog).';

-- the queue replaces the published_health_version bookkeeping and its index;
-- the silence sweep finds due organizations through rescore_due_at, so the
-- last_event_at index only cost a write per state update
DROP INDEX IF EXISTS organization_state_unpublished_idx;
DROP INDEX IF EXISTS organization_state_last_event_at_idx;
ALTER TABLE organization_state DROP COLUMN IF EXISTS published_health_version;
