-- An erased organization's tombstone follows a record of it that may still land.
--
-- A health-feed record sent and not answered (a pass gave up on it, a stop cut its
-- follow-up) may land after a newer record: its organization's feed is owed for later
-- (0106). Erasing the organization removed that debt with it (ON DELETE CASCADE) and
-- published the tombstone at once; should the sending replica then die, the record
-- landing after the tombstone left the erased organization's score last on the
-- compacted feed. The erasure now carries the debt's due time over to the tombstone it
-- owes, a sender's renewed debt of an erased organization extends it, and the
-- tombstone is published again once due (the erasure's own publish goes out at once).
ALTER TABLE health_feed_tombstones_owed ADD COLUMN not_before timestamptz;
COMMENT ON COLUMN health_feed_tombstones_owed.not_before IS
    'Published (again) once this time has passed (null: at once): a record of the organization sent before its erasure may land until then.';

-- OWE_FEED_TOMBSTONE (the eraser) and OWE_HEALTH_FEED_LATER (the projector): the due
-- time, and ON CONFLICT DO UPDATE SET not_before
GRANT INSERT (not_before), UPDATE (not_before) ON health_feed_tombstones_owed TO healthscore_writer;
GRANT INSERT (not_before), UPDATE (not_before) ON health_feed_tombstones_owed TO healthscore_eraser;
-- The eraser reads the organization's feed debt before the delete cascades it away,
-- and that organization's only (it reads no other organization's rows): a function
-- running as the owner, which also locks the debt, so that a sender's renewal waits for
-- the erasure (and, failing on the foreign key after it, owes the tombstone instead)
-- rather than committing between this read and the delete.
CREATE FUNCTION erased_feed_debt_due(organization uuid) RETURNS timestamptz
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT o.not_before FROM public.health_feed_owed o
    WHERE o.organization_id = organization AND o.not_before > now()
    FOR UPDATE
$$;
ALTER FUNCTION erased_feed_debt_due(uuid) OWNER TO healthscore_owner;
COMMENT ON FUNCTION erased_feed_debt_due(uuid) IS
    'For `healthscore erase`: when a health-feed record of the organization sent and not answered may still land (its feed debt, locked until the erasure commits), so that its tombstone is owed again then; no other organization''s debt is readable to the eraser.';
REVOKE ALL ON FUNCTION erased_feed_debt_due(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION erased_feed_debt_due(uuid) TO healthscore_eraser;
