-- An erasure runs in two transactions (`healthscore erase`): the first deletes the
-- organization and records its tombstone, the second its event ids. A process killed
-- between them left a tombstone that looked like any other: nothing told the operator
-- that the erasure was unfinished. completed_at is set by the second transaction (of
-- the first run, or of the run that finishes it); NULL is an erasure to run again.
-- Erasures recorded before this migration are not known to be finished: they show as
-- unfinished, and running them again is harmless.

ALTER TABLE erased_organizations ADD COLUMN completed_at timestamptz NULL;
COMMENT ON COLUMN erased_organizations.completed_at IS
    'When the erasure''s last step (its event ids) committed; NULL: unfinished (the command was interrupted), run it again.';

-- FINISH_ERASURE
GRANT UPDATE (completed_at) ON erased_organizations TO healthscore_eraser;
