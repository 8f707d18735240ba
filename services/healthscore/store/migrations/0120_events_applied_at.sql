-- When a batch last applied events to the organization (processing time), so that
-- the silence sweep leaves alone an organization whose events are still arriving.
--
-- The sweep judges an organization silent from the log's watermark, the oldest of the
-- input partitions' newest event times, which assumes a partition's events come in
-- event-time order. A producer backfilling one organization's history sends its events
-- weeks behind the others' on the same partition: between two of its batches the
-- sweep took the organization for weeks silent, rescored it in silence up to the
-- watermark and raised, escalated and then recovered alerts that a replay of the same
-- log does not make (review 36a). Deferring a sweep rescoring changes no result (a
-- batch makes the same rescorings before the organization's next event), so the sweep
-- skips organizations a batch applied events to within SILENCE_SETTLE_SECONDS.
--
-- Written by the batches' saves only (SAVE_STATES_CHECKED, INSERT_STATES with their
-- last parameter true), not by the sweep's, imports' or promotion's; NULL for rows no
-- batch has written since this release. No index: PICK_SILENT filters the rows its
-- rescore_due_at index finds.
ALTER TABLE organization_state ADD COLUMN events_applied_at timestamptz;
COMMENT ON COLUMN organization_state.events_applied_at IS
    'When a batch last applied events to it (processing time): the silence sweep skips '
    'organizations whose events are still arriving (SILENCE_SETTLE_SECONDS).';

-- SAVE_STATES_CHECKED, INSERT_STATES
GRANT INSERT (events_applied_at), UPDATE (events_applied_at)
    ON organization_state TO healthscore_writer;
