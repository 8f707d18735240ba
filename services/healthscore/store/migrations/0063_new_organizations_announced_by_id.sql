-- New organizations announced by id (issue 14).
--
-- The service inserts a placeholder row into organizations for every organization it
-- sees for the first time (ON CONFLICT DO NOTHING; migration 0050 announces only the
-- statements that inserted a row). Announced as the whole table, each such insert made
-- the API's cache drop every organization's page, history and milestones (they read
-- the organization's name and plan): under a stream of new organizations, every
-- consumer batch. An inserted organization changes no other organization's page, so
-- inserts now name the organizations they inserted, as migration 0051's tables do
-- (payload organizations:<id>,<id>,...; the whole table past 1,000). Updates and
-- deletes (a product's rename or plan change, which this service never makes) still
-- announce the whole table; the lists, which read every organization, move with every
-- announcement as before.

CREATE OR REPLACE FUNCTION read_model_organizations_changed() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    per_payload CONSTANT integer := 200;
    most CONSTANT integer := 1000;
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
    'Statement-level trigger with transition tables (new_rows, old_rows): announces on healthscore_read_model the organizations whose rows the statement changed (payload <table>:<id>,<id>,..., at most 200 ids each; for organizations, the ids it inserted), or the whole table (payload: its name) past 1,000 organizations or for a row without one; nothing when no row changed.';

DROP TRIGGER organizations_read_model_rows_inserted ON organizations;
CREATE TRIGGER organizations_read_model_inserted AFTER INSERT ON organizations
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION read_model_organizations_changed();
