-- The same event id with another payload is a conflict, not a duplicate: keep
-- a digest of what was applied under each id. Rows from before this migration
-- have none and keep counting repeats as duplicates.
ALTER TABLE processed_events ADD COLUMN payload_digest bytea NULL;
COMMENT ON COLUMN processed_events.payload_digest IS
    'BLAKE2b-128 of the topic and the event as validated; a repeat with another digest is dead-lettered as event_id_conflict.';
