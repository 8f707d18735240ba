-- erase_dead_letters() also refuses an organization whose state is still stored.
--
-- 0104 required a recorded erasure (a row in erased_organizations), but the eraser
-- role may insert that row itself: a login with its rights could record a tombstone
-- for an organization it does not erase and then delete that organization's
-- unpublished dead letters (the audit row naming the login, its counts the login's
-- own). The function now also refuses an organization whose state is still stored
-- (organization_state: every organization any event was applied to has one):
-- `healthscore erase` deletes the organization (and, by cascade, its state and every
-- row of it) before it calls the function in the same transaction, so the function
-- deletes the dead letters of an organization whose data is gone, or that never had
-- any applied (every record of it refused).
-- (0104's header says a deletion of dead letters is always in an erasure's audit
-- row: a run again of a finished erasure deletes what was dead-lettered since and
-- keeps the first audit row, as the erasure reports.)

CREATE OR REPLACE FUNCTION erase_dead_letters(organization uuid) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- the spellings the consumer reads as the id (store/erasure.py says which)
    hex_id    text  := replace(organization::text, '-', '');
    canonical bytea := convert_to(organization::text, 'UTF8');
    upper_id  bytea := convert_to(upper(organization::text), 'UTF8');
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM public.erased_organizations z WHERE z.organization_id = organization
    ) THEN
        RAISE EXCEPTION 'erase_dead_letters: no erasure of organization % is recorded', organization
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- organization_state, not organizations: the owner sees no organizations row
    -- (FORCE ROW LEVEL SECURITY), and a state row goes with the organization's
    IF EXISTS (SELECT 1 FROM public.organization_state s WHERE s.organization_id = organization) THEN
        RAISE EXCEPTION 'erase_dead_letters: organization % still has its state: erase the organization first', organization
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM public.dead_letter_outbox
    WHERE replace(btrim(replace(replace(
              lower(btrim(encode(record_key, 'escape'), E' \t\n\r\f\x0b')),
              'urn:', ''), 'uuid:', ''), '{}'), '-', '') = hex_id
       OR position(canonical IN record_value) > 0 OR position(upper_id IN record_value) > 0;
    DELETE FROM public.dead_letters_withheld
    WHERE replace(btrim(replace(replace(
              lower(btrim(encode(record_key, 'escape'), E' \t\n\r\f\x0b')),
              'urn:', ''), 'uuid:', ''), '{}'), '-', '') = hex_id
       OR position(canonical IN record_value) > 0 OR position(upper_id IN record_value) > 0;
END
$$;
COMMENT ON FUNCTION erase_dead_letters(uuid) IS
    '`healthscore erase`: deletes the dead letters not yet published of one organization whose erasure is recorded in erased_organizations and whose state is gone (by key in any spelling the consumer reads as its id, or by its id in the value); refuses any other id. SECURITY DEFINER so the eraser reads no dead letter.';
