-- healthscore_eraser and healthscore_writer around erased_organizations, narrowed.
--
-- 1. The eraser could read every organization's dead letters (SELECT on record_key and
--    record_value of dead_letter_outbox and dead_letters_withheld, granted for the
--    WHERE clauses of its deletes): payloads of other organizations, personal data
--    among them, and delete any of them. The deletes now run in erase_dead_letters()
--    (SECURITY DEFINER, the table owner's), which deletes only the dead letters of the
--    organization given; the eraser keeps EXECUTE on it and nothing on those tables.
-- 2. The eraser could rewrite the audit trail of any erasure (UPDATE of rows_removed
--    and completed_at, granted for the erasure's second step). A finished erasure's
--    row is now refused any change (a trigger); an unfinished one is finished once.
-- 3. The service's role could insert an erased organization's id into organizations
--    directly (its statements leave erased ones out, the policy did not): its insert
--    policy now refuses erased ids too.

CREATE FUNCTION erase_dead_letters(organization uuid) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- the spellings the consumer reads as the id (store/erasure.py says which)
    hex_id    text  := replace(organization::text, '-', '');
    canonical bytea := convert_to(organization::text, 'UTF8');
    upper_id  bytea := convert_to(upper(organization::text), 'UTF8');
BEGIN
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
ALTER FUNCTION erase_dead_letters(uuid) OWNER TO healthscore_owner;
COMMENT ON FUNCTION erase_dead_letters(uuid) IS
    '`healthscore erase`: deletes the dead letters not yet published of one organization (by key in any spelling the consumer reads as its id, or by its id in the value). SECURITY DEFINER so the eraser reads no dead letter.';
REVOKE ALL ON FUNCTION erase_dead_letters(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION erase_dead_letters(uuid) TO healthscore_eraser;

REVOKE SELECT (record_key, record_value), DELETE ON dead_letter_outbox FROM healthscore_eraser;
REVOKE SELECT (record_key, record_value), DELETE ON dead_letters_withheld FROM healthscore_eraser;

CREATE FUNCTION erased_organizations_finished_unchanged() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF OLD.completed_at IS NOT NULL THEN
        RAISE EXCEPTION 'erased_organizations: the audit row of a finished erasure (%) is not changed',
            OLD.organization_id;
    END IF;
    RETURN NEW;
END
$$;
ALTER FUNCTION erased_organizations_finished_unchanged() OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION erased_organizations_finished_unchanged() FROM PUBLIC;
COMMENT ON FUNCTION erased_organizations_finished_unchanged() IS
    'Refuses any change to a finished erasure''s audit row (erased_organizations.completed_at set).';
CREATE TRIGGER erased_organizations_finished_unchanged
    BEFORE UPDATE ON erased_organizations
    FOR EACH ROW EXECUTE FUNCTION erased_organizations_finished_unchanged();

ALTER POLICY organizations_writer_insert ON organizations
    WITH CHECK (
        name IS NULL AND plan IS NULL
        AND NOT EXISTS (SELECT 1 FROM erased_organizations z WHERE z.organization_id = id)
    );
COMMENT ON POLICY organizations_writer_insert ON organizations IS
    'The service inserts placeholder organizations (id only) for ids it first sees in events; never an erased one (0099).';
