-- The read-model queue holds an organization from its first change not yet
-- projected: later saves find the entry and write nothing (ON CONFLICT DO
-- NOTHING) instead of rewriting it with each new version, and the projector
-- removes an entry only while the organization's state still has the version it
-- projected (healthscore.store.sql.MARK_PROJECTED, which locks the state rows
-- FOR SHARE, SKIP LOCKED). The column keeps the version that queued the entry.
COMMENT ON COLUMN read_model_pending.version IS
    'organization_state.health_version of the change that queued the entry (its first change not yet projected).';
