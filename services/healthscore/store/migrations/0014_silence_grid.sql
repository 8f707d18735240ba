-- The silence sweep rescores on an event-time grid below the log's watermark
-- (issue 10: live and replay must make the same silence rescorings). Only the
-- meaning of two existing columns and of the sweep's index changes; a due time
-- stored before (score time + step) is corrected by the first sweep that takes it.
COMMENT ON COLUMN organization_state.rescore_due_at IS
    'Event time of the next silence rescoring: the next point of the organization''s grid (every silence step, at a phase set by its id) at least one step after its newest event and after its last score. The sweep takes it once the watermark is past it.';

COMMENT ON INDEX organization_state_rescore_due_idx IS
    'Silence sweep: SELECT ... WHERE rescore_due_at < $1 (the watermark) ORDER BY rescore_due_at LIMIT n.';

COMMENT ON COLUMN consumer_offsets.max_event_time IS
    'Largest occurred_at applied from the partition. The smallest of these over the input partitions is the watermark the silence sweep rescores up to.';
