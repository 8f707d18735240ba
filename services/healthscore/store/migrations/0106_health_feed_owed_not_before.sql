-- Health-feed records a stop cut off are republished once they can no longer be
-- overtaken.
--
-- On a stop, the projector waits 5 s for the follow-ups of feed records sent by
-- transactions that did not commit, or given up on (their sends may still land, after
-- a newer score another replica published). A stop during a broker outage cut them:
-- the compacted feed could end on an older score until the organization changed
-- again. The stop now owes them instead, due only after a bound
-- (HEALTH_FEED_REPUBLISH_AFTER_STOP_SECONDS) past which nothing the stopped process
-- sent can still land: a later pass of any replica republishes their customer_health
-- rows, the newest scores, after whatever did.
ALTER TABLE health_feed_owed ADD COLUMN not_before timestamptz;
COMMENT ON COLUMN health_feed_owed.not_before IS
    'Not published before this time (null: at once): set by a stop for records it could not follow up, which may still land until then.';

-- OWE_HEALTH_FEED_LATER (the projector, on a stop): ON CONFLICT DO UPDATE SET not_before
GRANT INSERT (not_before), UPDATE (not_before) ON health_feed_owed TO healthscore_writer;
