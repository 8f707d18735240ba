-- The read model becomes a projection (issue: hot path). Consumer batches no
-- longer write customer_health; they queue the organizations they changed, and
-- the projector writes each queued organization's row once per pass and
-- publishes the health feed from what it projected. The health feed's queue
-- already was exactly that queue: it is renamed for what it now drives.
ALTER TABLE health_feed_pending RENAME TO read_model_pending;
ALTER TABLE read_model_pending RENAME CONSTRAINT health_feed_pending_pkey TO read_model_pending_pkey;
COMMENT ON TABLE read_model_pending IS
    'Organizations whose state changed since the projector last wrote their customer_health row (and published it on customer.health.v1).';
COMMENT ON COLUMN read_model_pending.version IS
    'organization_state.health_version when queued; the projector deletes the entry only if unchanged.';
COMMENT ON COLUMN read_model_pending.queued_at IS
    'When the organization was first queued since its last projection: the age of the oldest is the read model''s staleness.';

-- oldest first: the projector's order and the staleness gauge (only the first
-- queueing writes it; a re-queue updates version alone and stays a HOT update)
CREATE INDEX read_model_pending_queued_at_idx ON read_model_pending (queued_at, organization_id);
COMMENT ON INDEX read_model_pending_queued_at_idx IS
    'Serves: the projector''s ORDER BY queued_at LIMIT n, and min(queued_at) for the staleness gauge.';
ALTER TABLE read_model_pending
    RENAME CONSTRAINT health_feed_pending_organization_id_fkey TO read_model_pending_organization_id_fkey;
ALTER TABLE read_model_pending
    RENAME CONSTRAINT health_feed_pending_version_check TO read_model_pending_version_check;
