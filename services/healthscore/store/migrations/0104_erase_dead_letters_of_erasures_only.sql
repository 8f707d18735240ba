-- erase_dead_letters() deletes the dead letters of an organization whose erasure is recorded.
--
-- 0099 moved the eraser's dead-letter deletes into erase_dead_letters() so that it
-- reads none of them, but the function deleted the dead letters of whatever id it was
-- given: a login with the eraser's rights could delete any organization's unpublished
-- dead letters, without an erasure and without a trace in the audit trail. The
-- erasure now records its tombstone (erased_organizations) before it calls the
-- function in the same transaction, and the function refuses an id that has none: a
-- deletion of dead letters is always an erasure's, in its audit row. A run again of
-- an erasure (recorded, finished or not) still deletes what was dead-lettered since.

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
    '`healthscore erase`: deletes the dead letters not yet published of one organization whose erasure is recorded in erased_organizations (by key in any spelling the consumer reads as its id, or by its id in the value); refuses any other id. SECURITY DEFINER so the eraser reads no dead letter.';
