-- Change announcements on channels only the holders of a signing key can name.
--
-- LISTEN takes no privilege: any session that can connect to the database hears every
-- notification on a channel it names. Migrations 0050-0065 announced on the fixed
-- channel healthscore_read_model, naming the organizations changed, so a person's
-- direct SQL login in cs_dashboard (docs/operations.md, "Direct SQL access for a
-- person"), logged in as support staff or a member, or not at all, heard
-- `alert_outbox:<id>` for every churn-risk alert, `customer_health:<id>` for every
-- score and `organizations:<id>` for every new organization, though row-level security
-- shows them none of these rows.
--
-- Each signing key now names a channel of its own, derived from its secret:
--
--     'healthscore_read_model_' || the first 32 hex digits of
--         HMAC-SHA256(secret, 'healthscore read model channel')
--
-- (app_signing_keys.read_model_channel, readable only by healthscore_owner like the
-- secret). The read API holds a copy of its key (API_DB_SIGNING_KEY), derives the same
-- name (healthscore.store.read_model_changes.channel_of) and listens there; a session
-- that cannot read the key cannot name the channel (128 bits). The payloads are those
-- of migration 0065, sent by read_model_announce() on the channel of every key in use
-- or retired within the last day (an API still on a key retired longer ago serves
-- nothing from its cache: the retirement stopped it). The trigger functions run as
-- healthscore_owner (SECURITY DEFINER, search path pinned) to read the channels;
-- neither they nor read_model_announce are granted to anybody: a trigger fires without
-- its function's EXECUTE right, which only CREATE TRIGGER asks for (with PUBLIC's, any
-- session could attach them to a temporary table of its own and send payloads of its
-- choosing on the API's channel, clearing its cache at will).

ALTER TABLE app_signing_keys
    ADD COLUMN read_model_channel text NOT NULL GENERATED ALWAYS AS (
        'healthscore_read_model_'
        || left(encode(hmac_sha256(secret, 'healthscore read model channel'::bytea), 'hex'), 32)
    ) STORED;
COMMENT ON COLUMN app_signing_keys.read_model_channel IS
    'The channel the read model''s change announcements are sent on for the API holding this key (migration 0070): derived from the secret, so only its holders can LISTEN to it.';

CREATE FUNCTION read_model_announce(payloads text[]) RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify(k.read_model_channel, p.payload)
    FROM public.app_signing_keys k, unnest(payloads) AS p (payload)
    WHERE k.retired_at IS NULL OR k.retired_at > now() - interval '1 day';
END
$$;
ALTER FUNCTION read_model_announce(text[]) OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION read_model_announce(text[]) FROM PUBLIC;
COMMENT ON FUNCTION read_model_announce(text[]) IS
    'Sends each payload on the read-model channel of every signing key in use or retired within the last day (app_signing_keys.read_model_channel). Called by the read model''s triggers only (granted to nobody).';

CREATE OR REPLACE FUNCTION read_model_changed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM public.read_model_announce(ARRAY[TG_TABLE_NAME::text]);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION read_model_changed() IS
    'Statement-level trigger: announces that the table changed (payload: its name) on the read-model channel of each signing key (read_model_announce), for the read API''s response cache.';

CREATE OR REPLACE FUNCTION read_model_rows_inserted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT FROM inserted) THEN
        PERFORM public.read_model_announce(ARRAY[TG_TABLE_NAME::text]);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION read_model_rows_inserted() IS
    'Statement-level AFTER INSERT trigger (REFERENCING NEW TABLE AS inserted): announces the table (read_model_announce) when the statement inserted at least one row.';

CREATE OR REPLACE FUNCTION read_model_organizations_changed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    per_payload CONSTANT integer := 200;
    most CONSTANT integer := 5000;
    ids text[];
    without_organization boolean;
    payloads text[] := ARRAY[]::text[];
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
        PERFORM public.read_model_announce(ARRAY[TG_TABLE_NAME::text]);
        RETURN NULL;
    END IF;
    FOR i IN 1 .. cardinality(ids) BY per_payload LOOP
        payloads := payloads
            || (TG_TABLE_NAME || ':' || array_to_string(ids[i:i + per_payload - 1], ','));
    END LOOP;
    PERFORM public.read_model_announce(payloads);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION read_model_organizations_changed() IS
    'Statement-level trigger with transition tables (new_rows, old_rows): announces (read_model_announce) the organizations whose rows the statement changed (payload <table>:<id>,<id>,..., at most 200 ids each; for organizations, the ids it inserted), or the whole table (payload: its name) past 5,000 organizations or for a row without one; nothing when no row changed.';

REVOKE ALL ON FUNCTION read_model_changed(), read_model_rows_inserted(),
    read_model_organizations_changed() FROM PUBLIC;
