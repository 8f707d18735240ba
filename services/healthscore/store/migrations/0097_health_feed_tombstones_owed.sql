-- An erased organization's health-feed tombstone, owed until a broker takes it.
--
-- `healthscore erase` publishes the tombstone after its transactions; when the broker
-- refused it (or the command was killed first), the compacted feed kept the erased
-- organization's last score until someone ran the erasure again. The erasure now
-- records the tombstone as owed in its first transaction; the command deletes the
-- entry once its own publish is acknowledged, and otherwise the running service's
-- projector publishes it and deletes it. The foreign key keeps the entries to erased
-- organizations: the service cannot owe (publish) a tombstone of a live one.
CREATE TABLE health_feed_tombstones_owed (
    organization_id uuid        PRIMARY KEY
                                REFERENCES erased_organizations (organization_id),
    owed_since      timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE health_feed_tombstones_owed OWNER TO healthscore_owner;
COMMENT ON TABLE health_feed_tombstones_owed IS
    'Erased organizations whose customer.health.v1 tombstone no broker has acknowledged yet: the projector publishes it (`healthscore erase` does first, when it can).';
COMMENT ON COLUMN health_feed_tombstones_owed.organization_id IS 'The erased organization whose tombstone is owed.';
COMMENT ON COLUMN health_feed_tombstones_owed.owed_since IS 'When its erasure (or a failed publish) owed it.';

-- the projector: OWED_FEED_TOMBSTONES reads, FEED_TOMBSTONES_PUBLISHED deletes; a late
-- feed record of an erased organization whose tombstone could not be published again
-- owes it (OWE_FEED_TOMBSTONES)
GRANT SELECT, DELETE ON health_feed_tombstones_owed TO healthscore_writer;
GRANT INSERT (organization_id) ON health_feed_tombstones_owed TO healthscore_writer;
-- the eraser: OWE_FEED_TOMBSTONE, and FEED_TOMBSTONES_PUBLISHED after its own publish
GRANT SELECT, DELETE ON health_feed_tombstones_owed TO healthscore_eraser;
GRANT INSERT (organization_id) ON health_feed_tombstones_owed TO healthscore_eraser;
