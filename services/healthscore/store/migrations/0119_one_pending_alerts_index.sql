-- alert_outbox had two partial indexes over its pending rows (WHERE published_at IS
-- NULL): alert_outbox_unpublished_idx on created_at (0005) and
-- alert_outbox_pending_seq_idx on seq (0011), which replaced it as the relay's order.
-- Each alert wrote both, and each publish's update took both (review 35a L1). The
-- outbox gauges' statement (OUTBOX_STATS: the count and the oldest created_at of the
-- pending rows) reads the pending rows through the seq index as well: they are few
-- while the broker takes alerts, and the ones a refusing broker leaves are read
-- whichever index holds them.
DROP INDEX IF EXISTS alert_outbox_unpublished_idx;

COMMENT ON INDEX alert_outbox_pending_seq_idx IS
    'Serves: the relay''s SELECT ... WHERE published_at IS NULL ORDER BY seq LIMIT n, '
    'and the outbox gauges'' count of pending alerts (OUTBOX_STATS).';
