-- What one read-API request costs PostgreSQL (issue 14, the latency targets).
--
-- 1. app_login() parsed its token with a regular expression whose counted
--    repetitions ({0,8}, {8}, {12}, {64}) PostgreSQL's regex engine expands into
--    large automata: the match alone was most of the function's time. The same
--    language is now checked with string functions: split at the dots, then each
--    field's length, its characters (translate() deletes the allowed ones, so
--    what is left must be nothing, or the uuid's four dashes) and the dash
--    positions. The tokens accepted, the errors and everything after the parse
--    are those of migration 0020.
-- 2. app_identity_prepare() creates the session's (empty) identity table, which
--    app_login creates on a session's first login. The API calls it once per new
--    connection, so that each request can log in inside its transaction and end
--    that transaction with ROLLBACK (a read-only request: the login is undone
--    with it, and no app_logout() is needed) without creating and dropping the
--    table every time. An empty table names nobody: app_user_id() stays NULL.
-- 3. The band filter with the churn sort ("at risk, most likely to churn first",
--    the dashboard's default view of a band) had no index: it walked the churn
--    indexes past the other bands. customer_health_status_churn_idx serves it,
--    one index scan per requested band merged in churn order.

-- The identity table ----------------------------------------------------------------

CREATE FUNCTION app_identity_prepare() RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF public.app_identity_table() IS NOT NULL THEN
        RETURN;
    END IF;
    IF pg_catalog.to_regclass('pg_temp.app_verified_identity') IS NOT NULL THEN
        RAISE EXCEPTION 'pg_temp.app_verified_identity exists but is not the table app_login creates'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Drop it (DISCARD TEMP) and log in again.';
    END IF;
    BEGIN
        CREATE TEMPORARY TABLE app_verified_identity (
            user_id      uuid        NOT NULL,
            key_id       integer     NOT NULL,
            expires_at   timestamptz NOT NULL,
            logged_in_at timestamptz NOT NULL
        );
    EXCEPTION WHEN read_only_sql_transaction THEN
        RAISE EXCEPTION 'app_login cannot start a session''s identity in a read-only transaction'
            USING ERRCODE = 'read_only_sql_transaction',
                  HINT = 'Log in once per session in a read-write transaction; later logins and reads may be read-only.';
    END;
    IF public.app_identity_table() IS NULL THEN
        -- e.g. default privileges granted it to someone: then it proves nothing
        RAISE EXCEPTION 'pg_temp.app_verified_identity was created with grants; refusing'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Remove default privileges of healthscore_owner on tables.';
    END IF;
END
$$;
ALTER FUNCTION app_identity_prepare() OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION app_identity_prepare() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_identity_prepare() TO cs_dashboard;
COMMENT ON FUNCTION app_identity_prepare() IS
    'Creates this session''s empty identity table (as app_login does on a first login) unless it exists; refuses a same-named table the session made itself. Lets a pooled connection log in inside transactions that roll back without creating the table each time. Grants no identity.';

-- app_login without a regular expression ------------------------------------------------

CREATE OR REPLACE FUNCTION app_login(token text) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- v1 . key id . user id . expiry . signature
    parts text[] := string_to_array(token, '.');
    signing_key bytea;
    expected text;
    expires_at timestamptz;
    verified uuid;
BEGIN
    -- the language of 0020's '^v1\.([1-9][0-9]{0,8})\.(<canonical lowercase uuid>)\.
    -- ([0-9]{1,12})\.([0-9a-f]{64})$'
    IF (cardinality(parts) = 5
        AND parts[1] = 'v1'
        AND length(parts[2]) BETWEEN 1 AND 9 AND left(parts[2], 1) <> '0'
        AND translate(parts[2], '0123456789', '') = ''
        AND length(parts[3]) = 36
        AND translate(parts[3], '0123456789abcdef', '') = '----'
        AND substr(parts[3], 9, 1) = '-' AND substr(parts[3], 14, 1) = '-'
        AND substr(parts[3], 19, 1) = '-' AND substr(parts[3], 24, 1) = '-'
        AND length(parts[4]) BETWEEN 1 AND 12
        AND translate(parts[4], '0123456789', '') = ''
        AND length(parts[5]) = 64
        AND translate(parts[5], '0123456789abcdef', '') = '') IS NOT TRUE
    THEN
        RAISE EXCEPTION 'identity token is malformed'
            USING ERRCODE = 'invalid_authorization_specification',
                  HINT = 'Expected v1.<key id>.<user id>.<expiry, unix seconds>.<hex HMAC-SHA256>.';
    END IF;

    SELECT k.secret INTO signing_key
    FROM public.app_signing_keys k
    WHERE k.key_id = parts[2]::integer
      AND (k.retired_at IS NULL OR k.retired_at > clock_timestamp());
    IF signing_key IS NULL THEN
        RAISE EXCEPTION 'identity token is signed with an unknown or retired key (%)', parts[2]
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;

    expected := encode(public.hmac_sha256(signing_key,
        convert_to(left(token, length(token) - 65), 'UTF8')), 'hex');
    -- compare digests, so the time taken says nothing about a common prefix
    IF sha256(convert_to(expected, 'UTF8')) <> sha256(convert_to(parts[5], 'UTF8')) THEN
        RAISE EXCEPTION 'identity token signature is invalid'
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;

    expires_at := to_timestamp(parts[4]::bigint);
    IF expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION 'identity token expired at %', expires_at
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;

    verified := parts[3]::uuid;
    IF NOT EXISTS (SELECT 1 FROM public.user_profiles u WHERE u.id = verified) THEN
        RAISE EXCEPTION 'identity token names an unknown user (%)', verified
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;

    IF public.app_identity_table() IS NULL THEN
        PERFORM public.app_identity_prepare();
    END IF;
    DELETE FROM pg_temp.app_verified_identity;
    INSERT INTO pg_temp.app_verified_identity (user_id, key_id, expires_at, logged_in_at)
    VALUES (verified, parts[2]::integer, expires_at, clock_timestamp());
    RETURN verified;
END
$$;

-- The band filter with the churn sort --------------------------------------------------------

CREATE INDEX customer_health_status_churn_idx
    ON customer_health (health_status, churn_probability DESC);
COMMENT ON INDEX customer_health_status_churn_idx IS
    'Serves: a band by churn probability (WHERE health_status = ... ORDER BY churn_probability DESC), the read API''s band filter with its default sort; one scan per band, merged.';
