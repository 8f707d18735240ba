-- The eraser deletes an organization only once its erasure is recorded.
--
-- Its DELETE policy on organizations (0095) allowed any row: a login holding
-- healthscore_eraser could `DELETE FROM organizations` by hand, which cascaded the
-- organization's data away with no audit row (erased_organizations), no tombstone (its
-- next event created it again), its event ids and dead letters left behind and no
-- health-feed tombstone owed (review 37b, M2). `healthscore erase` records the
-- erasure first in the same transaction, then deletes; a delete without that record
-- now finds no row (DELETE 0).
ALTER POLICY organizations_eraser_delete ON organizations
    USING (EXISTS (
        SELECT 1 FROM erased_organizations z WHERE z.organization_id = organizations.id
    ));
