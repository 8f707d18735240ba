-- An erasure waits for the transactions creating the organization's first rows.
--
-- A writer that creates a never-seen organization (an import page, a batch) holds its
-- new `organizations` row uncommitted until its transaction ends. An erasure committed
-- meanwhile did not see the row: it deleted nothing and recorded the tombstone, and the
-- writer then committed the rows of an erased organization. The erasure now inserts
-- the id itself first (CLAIM_ORGANIZATION, ON CONFLICT DO NOTHING): an uncommitted row
-- of the same id makes it wait for that transaction, whose rows it then deletes with
-- the rest. An id it inserted itself it deletes in the same statement sequence, and
-- does not count.

GRANT INSERT (id) ON organizations TO healthscore_eraser;
CREATE POLICY organizations_eraser_insert ON organizations
    FOR INSERT TO healthscore_eraser WITH CHECK (name IS NULL AND plan IS NULL);
COMMENT ON POLICY organizations_eraser_insert ON organizations IS
    '`healthscore erase` inserts the id (and deletes it in the same transaction) to wait for a writer creating it.';
