-- Change announcements that name the organizations changed (issue 14).
--
-- Migration 0050 announced each changed table by name, so the API's cache dropped
-- every organization's page whenever a consumer batch wrote any customer_health row
-- (about once a second under load). The tables whose rows belong to one organization
-- now announce which organizations a statement changed:
--
--     payload  <table>:<organization id>,<organization id>,...
--
-- at most ORGANIZATIONS_PER_PAYLOAD ids a notification (a payload holds 8000 bytes;
-- 200 ids and the longest table name take 7,420), so a statement that changed more
-- organizations sends several; one that changed more than MAX_ORGANIZATIONS (or a
-- row without an organization, or a TRUNCATE) announces the whole table as before
-- (payload: the table's name). Every announcement of a table still moves the table's
-- own version in the API (the lists read across organizations); an organization's
-- pages are kept until that organization, or its whole table, is announced.
--
-- The ids come from the statement's transition tables (the rows it inserted, the
-- rows before and after it updated them, the rows it deleted), so a statement that
-- changed no row (an upsert whose every row conflicted and was left alone) announces
-- nothing. PostgreSQL allows transition tables only on triggers for one kind of
-- statement: three triggers per table, one function reading whichever tables its
-- kind has. Notifications are sent, deduplicated, when the transaction commits.

CREATE FUNCTION read_model_organizations_changed() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    per_payload CONSTANT integer := 200;
    most CONSTANT integer := 1000;
    ids text[];
    without_organization boolean;
BEGIN
    IF TG_OP = 'INSERT' THEN
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
ALTER FUNCTION read_model_organizations_changed() OWNER TO healthscore_owner;
COMMENT ON FUNCTION read_model_organizations_changed() IS
    'Statement-level trigger with transition tables (new_rows, old_rows): announces on healthscore_read_model the organizations whose rows the statement changed (payload <table>:<id>,<id>,..., at most 200 ids each), or the whole table (payload: its name) past 1,000 organizations or for a row without one; nothing when no row changed.';

DO $triggers$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['customer_health', 'health_score_history', 'success_milestones',
                             'support_interactions', 'alert_outbox']
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %I', t || '_read_model_changed', t);
        EXECUTE format(
            'CREATE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS new_rows '
            'FOR EACH STATEMENT EXECUTE FUNCTION read_model_organizations_changed()',
            t || '_read_model_inserted', t);
        EXECUTE format(
            'CREATE TRIGGER %I AFTER UPDATE ON %I '
            'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
            'FOR EACH STATEMENT EXECUTE FUNCTION read_model_organizations_changed()',
            t || '_read_model_updated', t);
        EXECUTE format(
            'CREATE TRIGGER %I AFTER DELETE ON %I REFERENCING OLD TABLE AS old_rows '
            'FOR EACH STATEMENT EXECUTE FUNCTION read_model_organizations_changed()',
            t || '_read_model_deleted', t);
        EXECUTE format(
            'CREATE TRIGGER %I AFTER TRUNCATE ON %I '
            'FOR EACH STATEMENT EXECUTE FUNCTION read_model_changed()',
            t || '_read_model_truncated', t);
    END LOOP;
END
$triggers$;
