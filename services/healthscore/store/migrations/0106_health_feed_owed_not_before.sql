-- Health-feed records that may still land are republished once they no longer can.
--
-- A projector pass (or live batch) whose feed the broker did not acknowledge within its
-- wait commits the read model and owes the feed; the records it sent may still land,
-- after a newer score another replica published. Its follow-up queued the
-- organizations again once they landed, but the debt was due at once: a pass of
-- another replica published the newer score and cleared it, and if the replica that
-- sent them died first (SIGKILL) or stopped during the broker outage (the follow-ups
-- cut), the compacted feed ended on the older score until the organization changed.
-- Such a debt is now due only after a bound (HEALTH_FEED_LATE_RECORD_SECONDS) past
-- which the records can no longer land: no pass publishes it or clears it before (a
-- pass projecting the organization meanwhile publishes its newer score and leaves the
-- entry), a pass of any replica republishes the newest score after.
ALTER TABLE health_feed_owed ADD COLUMN not_before timestamptz;
COMMENT ON COLUMN health_feed_owed.not_before IS
    'Not published before this time (null: at once): records of the organization were sent and not answered (given up on, or their transaction did not commit), and may land until then; renewed while the sender waits for them.';

-- OWE_HEALTH_FEED_LATER (the projector: a pass's or live batch's give-up, a follow-up's
-- renewal, a stop's cut follow-ups): ON CONFLICT DO UPDATE SET not_before
GRANT INSERT (not_before), UPDATE (not_before) ON health_feed_owed TO healthscore_writer;
