-- A writer creating an organization that an erasure claimed meanwhile creates nothing.
--
-- `healthscore erase` inserts the organization's id first (0098) so that it waits for a
-- writer creating it. In the other order, a writer's INSERT INTO organizations of the
-- id waits on the erasure's uncommitted row; the erasure commits (its row deleted, the
-- tombstone recorded) and the insert goes on. Its statement's NOT EXISTS and the insert
-- policy (0099) had read erased_organizations before the erasure committed: the writer
-- committed the `organizations` row of an erased organization. This trigger runs after
-- the insert, so after any such wait, and reads erased_organizations anew (a VOLATILE
-- function's statements see what committed since its caller's statement began): an
-- erased id refuses the insert as a serialization failure, which the writers run again
-- (an import page, a batch), and their next attempt leaves the erased id out. Only
-- inserted rows fire it (new organizations): a primary-key lookup each. The erasure's
-- own claim of the id (deleted in its transaction) is let through.

CREATE FUNCTION organizations_never_erased() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_user <> 'healthscore_eraser' AND EXISTS (
        SELECT 1 FROM public.erased_organizations z WHERE z.organization_id = NEW.id
    ) THEN
        RAISE EXCEPTION 'organization % was erased while this transaction created it', NEW.id
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NULL;
END
$$;
ALTER FUNCTION organizations_never_erased() OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION organizations_never_erased() FROM PUBLIC;
COMMENT ON FUNCTION organizations_never_erased() IS
    'Refuses (serialization_failure) an organizations row whose id an erasure committed while the insert waited on its claim (0100).';
CREATE TRIGGER organizations_never_erased
    AFTER INSERT ON organizations
    FOR EACH ROW EXECUTE FUNCTION organizations_never_erased();
