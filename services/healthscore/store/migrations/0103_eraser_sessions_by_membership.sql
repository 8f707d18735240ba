-- The eraser's sessions told apart by what the session may do, not by its role's name.
--
-- 0100 (an organization created while its erasure committed is refused) lets the
-- erasure's own claim through, and 0102 (the eraser's claim is never kept) checks only
-- the eraser's inserts; both recognised the eraser by `current_user =
-- 'healthscore_eraser'`, which holds when the session took the role (`healthscore
-- erase` does) but not for a login that uses the privileges it inherits as a member:
-- such a login could commit organizations of its choosing, and its re-run of an
-- erasure was refused as a writer racing one. A session acts as the eraser when it has
-- the eraser's privileges and not the service's (a superuser has both and is checked
-- as a writer, as before). Built-in pg_has_role() only: no function of ours for
-- PUBLIC to execute.

CREATE OR REPLACE FUNCTION organizations_never_erased() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT (pg_has_role(current_user, 'healthscore_eraser', 'USAGE')
            AND NOT pg_has_role(current_user, 'healthscore_writer', 'USAGE'))
       AND EXISTS (
        SELECT 1 FROM public.erased_organizations z WHERE z.organization_id = NEW.id
    ) THEN
        RAISE EXCEPTION 'organization % was erased while this transaction created it', NEW.id
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER organizations_eraser_claim_deleted ON organizations;
CREATE CONSTRAINT TRIGGER organizations_eraser_claim_deleted
    AFTER INSERT ON organizations
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (pg_has_role(current_user, 'healthscore_eraser', 'USAGE')
          AND NOT pg_has_role(current_user, 'healthscore_writer', 'USAGE'))
    EXECUTE FUNCTION organizations_eraser_claim_deleted();
