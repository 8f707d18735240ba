-- Announcements name up to 5,000 organizations a statement (issue 14).
--
-- Past 1,000 organizations a statement announced its whole table (migrations 0051,
-- 0063), and the API's cache dropped every organization's page, history and
-- milestones. A consumer batch holds up to BATCH_MAX_RECORDS (3,000) records, so
-- whenever the consumer fell a second or more behind (starting up, or starved of CPU
-- by a burst of readers) its batches crossed 1,000 organizations and every page
-- went: the read-side benchmark's uniform page scenario kept 2.7% of its answers. Up
-- to 5,000 (a batch's worth, and the projector's pages of 500) the ids are named, 200
-- a payload, at most 25 notifications a statement; TRUNCATE, a row without an
-- organization and larger statements still announce the whole table.

CREATE OR REPLACE FUNCTION read_model_organizations_changed() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    per_payload CONSTANT integer := 200;
    most CONSTANT integer := 5000;
    ids text[];
    without_organization boolean;
BEGIN
    IF TG_TABLE_NAME = 'organizations' THEN  -- inserts only: each row is an organization
        SELECT array_agg(id::text), false INTO ids, without_organization FROM new_rows;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT organization_id::text), bool_or(organization_id IS NULL)
        INTO ids, without_organization FROM new_rows;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(DISTINCT id::text), bool_or(id IS NULL)
        INTO ids, without_organization
        FROM (SELECT organization_id FROM old_rows
              UNION ALL SELECT organization_id FROM new_rows) AS changed (id);
    ELSE
        SELECT array_agg(DISTINCT organization_id::text), bool_or(organization_id IS NULL)
        INTO ids, without_organization FROM old_rows;
    END IF;
    IF ids IS NULL THEN  -- no row changed
        RETURN NULL;
    END IF;
    IF without_organization OR cardinality(ids) > most THEN
        PERFORM pg_catalog.pg_notify('healthscore_read_model', TG_TABLE_NAME);
        RETURN NULL;
    END IF;
    FOR i IN 1 .. cardinality(ids) BY per_payload LOOP
        PERFORM pg_catalog.pg_notify(
            'healthscore_read_model',
            TG_TABLE_NAME || ':' || array_to_string(ids[i:i + per_payload - 1], ','));
    END LOOP;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION read_model_organizations_changed() IS
    'Statement-level trigger with transition tables (new_rows, old_rows): announces on healthscore_read_model the organizations whose rows the statement changed (payload <table>:<id>,<id>,..., at most 200 ids each; for organizations, the ids it inserted), or the whole table (payload: its name) past 5,000 organizations or for a row without one; nothing when no row changed.';
