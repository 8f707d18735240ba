-- Alerts must leave in the order they were decided: one batch can raise and
-- escalate (or escalate twice) for the same organization, and those rows share
-- created_at (the transaction's start). The identity follows insertion order.
ALTER TABLE alert_outbox
    ADD COLUMN IF NOT EXISTS seq bigint GENERATED ALWAYS AS IDENTITY;

COMMENT ON COLUMN alert_outbox.seq IS
    'Insertion order of alerts; the relay publishes pending alerts in this order.';

CREATE INDEX IF NOT EXISTS alert_outbox_pending_seq_idx
    ON alert_outbox (seq)
    WHERE published_at IS NULL;

COMMENT ON INDEX alert_outbox_pending_seq_idx IS
    'Serves: the relay''s SELECT ... WHERE published_at IS NULL ORDER BY seq LIMIT n.';
