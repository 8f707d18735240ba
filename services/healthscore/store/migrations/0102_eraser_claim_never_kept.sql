-- The eraser's INSERT of an organization id (0098) is for its claim only.
--
-- The erasure inserts the id to wait for a writer creating the organization and
-- deletes it in the same transaction. The grant and its policy let any login holding
-- healthscore_eraser commit organizations of its choosing (placeholders the service
-- then scores): more than erasing needs. A deferred check at commit refuses an
-- organizations row the eraser inserted and did not delete.

CREATE FUNCTION organizations_eraser_claim_deleted() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.organizations o WHERE o.id = NEW.id) THEN
        RAISE EXCEPTION 'healthscore_eraser inserts an organization id only to erase it (%)',
            NEW.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END
$$;
ALTER FUNCTION organizations_eraser_claim_deleted() OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION organizations_eraser_claim_deleted() FROM PUBLIC;
COMMENT ON FUNCTION organizations_eraser_claim_deleted() IS
    'Refuses, at commit, an organizations row healthscore_eraser inserted and did not delete (its claim, 0098, is deleted by the erasure).';
CREATE CONSTRAINT TRIGGER organizations_eraser_claim_deleted
    AFTER INSERT ON organizations
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (current_user = 'healthscore_eraser')
    EXECUTE FUNCTION organizations_eraser_claim_deleted();
