-- The read model no longer waits for the broker.
--
-- A projector pass wrote customer_health and published customer.health.v1 in one
-- transaction, and rolled back when the feed was not acknowledged: during a broker
-- outage the queue (read_model_pending) stayed queued and the dashboard froze,
-- though PostgreSQL was up. A pass now commits customer_health (and dequeues) either
-- way; the organizations whose feed record the broker did not take are kept here,
-- for the feed alone, and published from their customer_health row (the newest
-- projected score) once the broker takes them.
CREATE TABLE health_feed_owed (
    organization_id uuid        PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    owed_since      timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE health_feed_owed OWNER TO healthscore_owner;
COMMENT ON TABLE health_feed_owed IS
    'Organizations whose customer_health row was written but whose customer.health.v1 record the broker did not acknowledge: the projector publishes their customer_health row (the newest projected score) once it can.';
COMMENT ON COLUMN health_feed_owed.organization_id IS 'The organization whose customer_health row is still to be published.';
COMMENT ON COLUMN health_feed_owed.owed_since IS
    'When the first unpublished projection since the last publish was committed: the age of the oldest is how long the feed has lagged the read model.';

-- oldest first: the projector's order and the owed-feed gauge
CREATE INDEX health_feed_owed_owed_since_idx ON health_feed_owed (owed_since, organization_id);
COMMENT ON INDEX health_feed_owed_owed_since_idx IS
    'Serves: the projector''s ORDER BY owed_since LIMIT n, and min(owed_since) for the gauge.';

-- the projector: OWED_HEALTH_FEED, OLDEST_OWED_HEALTH_FEED, TAKE_OWN_PENDING read it;
-- OWE_HEALTH_FEED inserts, FEED_PUBLISHED deletes. No UPDATE: an entry is never
-- changed, and the rows it publishes are locked in customer_health, not here.
GRANT SELECT, DELETE ON health_feed_owed TO healthscore_writer;
GRANT INSERT (organization_id) ON health_feed_owed TO healthscore_writer;
