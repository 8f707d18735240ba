-- The eraser deletes an organization only once its erasure is recorded.
--
-- Its DELETE policy on organizations (0095) allowed any row: a login holding
-- healthscore_eraser could `DELETE FROM organizations` by hand, which cascaded the
-- organization's data away with no audit row (erased_organizations), no tombstone (its
-- next event created it again), its event ids and dead letters left behind and no
-- health-feed tombstone owed (review 37b, M2). `healthscore erase` records the
-- erasure first in the same transaction, then deletes; a delete without that record
-- is refused with an error. An error, not a policy that hides the row: an older
-- release's erase (which deletes first) would have deleted nothing, recorded the
-- erasure and marked it finished, the data left in place (review 37c). The session
-- is told apart as in 0103: the eraser's privileges and not the service's (a
-- superuser, or the owner, deletes as before).

CREATE FUNCTION organizations_erasure_recorded() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM public.erased_organizations z WHERE z.organization_id = OLD.id
    ) THEN
        RAISE EXCEPTION 'organization % has no recorded erasure: erase it with `healthscore erase` (of this release), which records the erasure before it deletes', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END
$$;
ALTER FUNCTION organizations_erasure_recorded() OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION organizations_erasure_recorded() FROM PUBLIC;
COMMENT ON FUNCTION organizations_erasure_recorded() IS
    'Refuses a delete of an organizations row by healthscore_eraser whose erasure is not recorded in erased_organizations (`healthscore erase` records it first).';

CREATE TRIGGER organizations_erasure_recorded
    BEFORE DELETE ON organizations
    FOR EACH ROW
    WHEN (pg_has_role(current_user, 'healthscore_eraser', 'USAGE')
          AND NOT pg_has_role(current_user, 'healthscore_writer', 'USAGE'))
    EXECUTE FUNCTION organizations_erasure_recorded();
