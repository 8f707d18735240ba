-- Change announcements for the read API's response cache (issue 14).
--
-- The API keeps answers it computed for a verified user, valid while nothing they
-- read has changed (healthscore.api.cache). Every transaction that changes a table
-- an endpoint reads, or what a user may see, announces which table on the channel
-- healthscore_read_model (payload: the table's name); the API listens on a
-- connection of its own and drops the answers that depended on it.
--
-- One statement-level trigger per table and kind of statement: a batch that
-- upserts 500 rows fires it once, not 500 times, and PostgreSQL delivers one
-- notification per distinct payload and transaction however often it is raised,
-- only once the transaction commits (a rolled-back write announces nothing).
--
-- Inserts into organizations and user_profiles announce only when they inserted a
-- row: the service inserts placeholders with ON CONFLICT DO NOTHING in every batch,
-- nearly always inserting none, and announcing each of those would drop every
-- cached answer at every batch. Their transition tables hold only the rows inserted.
--
-- A signing key's retirement ends the identity of every session minted with it,
-- which the API's cache must honour even when the retirement is dated in the
-- future: app_signing_key_retires_at(key_id) tells the API (as cs_dashboard,
-- without a login) when its key stops being accepted, without revealing the key.

CREATE FUNCTION read_model_changed() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('healthscore_read_model', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
ALTER FUNCTION read_model_changed() OWNER TO healthscore_owner;
COMMENT ON FUNCTION read_model_changed() IS
    'Statement-level trigger: announces on channel healthscore_read_model that the table changed (payload: its name), for the read API''s response cache.';

-- for AFTER INSERT triggers declared REFERENCING NEW TABLE AS inserted
CREATE FUNCTION read_model_rows_inserted() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF EXISTS (SELECT FROM inserted) THEN
        PERFORM pg_catalog.pg_notify('healthscore_read_model', TG_TABLE_NAME);
    END IF;
    RETURN NULL;
END
$$;
ALTER FUNCTION read_model_rows_inserted() OWNER TO healthscore_owner;
COMMENT ON FUNCTION read_model_rows_inserted() IS
    'Statement-level AFTER INSERT trigger (REFERENCING NEW TABLE AS inserted): announces the table on healthscore_read_model when the statement inserted at least one row.';

DO $triggers$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['customer_health', 'health_score_history', 'success_milestones',
                             'support_interactions', 'alert_outbox', 'app_signing_keys']
    LOOP
        EXECUTE format(
            'CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I '
            'FOR EACH STATEMENT EXECUTE FUNCTION read_model_changed()',
            t || '_read_model_changed', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['organizations', 'user_profiles']
    LOOP
        EXECUTE format(
            'CREATE TRIGGER %I AFTER UPDATE OR DELETE OR TRUNCATE ON %I '
            'FOR EACH STATEMENT EXECUTE FUNCTION read_model_changed()',
            t || '_read_model_changed', t);
        EXECUTE format(
            'CREATE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS inserted '
            'FOR EACH STATEMENT EXECUTE FUNCTION read_model_rows_inserted()',
            t || '_read_model_rows_inserted', t);
    END LOOP;
END
$triggers$;

-- unix seconds, a float8 so that "never" and "no such key" are numbers too
CREATE FUNCTION app_signing_key_retires_at(signing_key_id integer) RETURNS double precision
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        (SELECT coalesce(extract(epoch FROM k.retired_at)::float8, 'Infinity'::float8)
         FROM public.app_signing_keys k WHERE k.key_id = signing_key_id),
        '-Infinity'::float8)
$$;
ALTER FUNCTION app_signing_key_retires_at(integer) OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION app_signing_key_retires_at(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_signing_key_retires_at(integer) TO cs_dashboard;
COMMENT ON FUNCTION app_signing_key_retires_at(integer) IS
    'Unix time from which app_login refuses the signing key: +Infinity while it is in use, -Infinity when there is no such key. For the read API''s response cache, which must stop serving answers once its key is retired; the key itself stays unreadable.';
