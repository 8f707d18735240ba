-- The silence sweep rescores organizations whose score has not been refreshed
-- for one decay step. Every write of a score pushes rescore_due_at forward by
-- that step, so the sweep's work is an index range scan over due rows, not a
-- scan of every organization.
ALTER TABLE organization_state
    ADD COLUMN IF NOT EXISTS rescore_due_at timestamptz NULL;

COMMENT ON COLUMN organization_state.rescore_due_at IS
    'Event time after which the silence sweep rescores this organization (score time + decay step).';

CREATE INDEX IF NOT EXISTS organization_state_rescore_due_idx
    ON organization_state (rescore_due_at)
    WHERE rescore_due_at IS NOT NULL;

COMMENT ON INDEX organization_state_rescore_due_idx IS
    'Silence sweep: SELECT ... WHERE rescore_due_at <= $1 ORDER BY rescore_due_at LIMIT n.';
