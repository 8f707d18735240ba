-- A dashboard identity that a session cannot forge.
--
-- Until now app_user_id() read the custom setting app.user_id, which any session
-- can set with set_config(): a cs_dashboard session could name an admin's id and
-- see everything. Any GUC is writable by the session that owns it, so no setting
-- can carry a verified identity. The identity now lives in a session-local table
-- that only healthscore_owner can write, and the only way to fill it is
-- app_login(token): a token signed with HMAC-SHA256 under a key that only
-- healthscore_owner can read, naming the user and an expiry.
--
--   token = 'v1.' || key_id || '.' || user_id || '.' || expiry || '.' || signature
--   signature = hex(HMAC-SHA256(key, 'v1.' || key_id || '.' || user_id || '.' || expiry))
--   user_id: canonical lowercase uuid; expiry: unix seconds (UTC)
--
-- The session-local table is pg_temp.app_verified_identity, created by app_login
-- (a SECURITY DEFINER function of healthscore_owner), so:
--   * it is owned by healthscore_owner and has no grants: a cs_dashboard session
--     can neither write nor grant itself rights on it;
--   * a table of the same name that the session created itself is owned by the
--     session's role, and app_user_id() ignores any table it does not own;
--   * it dies with the session (and with DISCARD ALL / DISCARD TEMP), so a later
--     backend that reuses the process id inherits nothing;
--   * a login inside a transaction that rolls back never happened.
-- app_user_id() keeps its name and meaning (the dashboard user of this session),
-- so every existing policy now trusts only the verified identity.

-- HMAC-SHA256 (RFC 2104) over the built-in sha256(); pgcrypto is not assumed.
CREATE FUNCTION hmac_sha256(key bytea, message bytea) RETURNS bytea
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    block bytea := key;
    inner_pad bytea;
    outer_pad bytea;
BEGIN
    IF length(block) > 64 THEN
        block := sha256(block);
    END IF;
    block := block || decode(repeat('00', 64 - length(block)), 'hex');
    inner_pad := block;
    outer_pad := block;
    FOR i IN 0..63 LOOP
        inner_pad := set_byte(inner_pad, i, get_byte(block, i) # 54);  -- 0x36
        outer_pad := set_byte(outer_pad, i, get_byte(block, i) # 92);  -- 0x5c
    END LOOP;
    RETURN sha256(outer_pad || sha256(inner_pad || message));
END
$$;
ALTER FUNCTION hmac_sha256(bytea, bytea) OWNER TO healthscore_owner;
COMMENT ON FUNCTION hmac_sha256(bytea, bytea) IS
    'HMAC-SHA256 (RFC 2104, 64-byte blocks) built on sha256(); verifies identity tokens (app_login).';

-- Signing keys ---------------------------------------------------------------------

CREATE TABLE app_signing_keys (
    key_id     integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- 64 bytes from four version-4 uuids (gen_random_uuid() draws from the
    -- server's strong random source): 488 random bits
    secret     bytea       NOT NULL DEFAULT decode(replace(
                   gen_random_uuid()::text || gen_random_uuid()::text
                   || gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'),
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz NULL,
    CONSTRAINT app_signing_keys_secret_check CHECK (length(secret) >= 32)
);
ALTER TABLE app_signing_keys OWNER TO healthscore_owner;
REVOKE ALL ON app_signing_keys FROM PUBLIC;
COMMENT ON TABLE app_signing_keys IS
    'HMAC keys of the identity tokens app_login accepts. Readable only by healthscore_owner (and superusers): no grants. Rotate by inserting a row (DEFAULT VALUES draws a random key) and retiring the old one once its tokens have expired.';
COMMENT ON COLUMN app_signing_keys.key_id IS 'Named in every token (its second field), so several keys can be valid during a rotation.';
COMMENT ON COLUMN app_signing_keys.secret IS 'The HMAC-SHA256 key, at least 32 bytes; the trusted backend that mints tokens holds a copy.';
COMMENT ON COLUMN app_signing_keys.retired_at IS
    'From this time on tokens signed with the key are refused and sessions logged in with one lose their identity; NULL = in use.';

INSERT INTO app_signing_keys DEFAULT VALUES;

-- The session's verified identity ------------------------------------------------------

-- The session's identity table, if it exists and is the one app_login created:
-- owned by the calling function's owner (current_user inside SECURITY DEFINER)
-- and never granted to anyone. NULL otherwise.
CREATE FUNCTION app_identity_table() RETURNS oid
    LANGUAGE sql STABLE PARALLEL RESTRICTED
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid
    FROM pg_catalog.pg_class c
    WHERE c.relnamespace = pg_catalog.pg_my_temp_schema()
      AND c.relname = 'app_verified_identity'
      AND c.relkind = 'r'
      AND c.relowner = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
      AND c.relacl IS NULL
$$;
ALTER FUNCTION app_identity_table() OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION app_identity_table() FROM PUBLIC;
COMMENT ON FUNCTION app_identity_table() IS
    'Internal to app_login/app_logout/app_user_id: oid of this session''s pg_temp.app_verified_identity when healthscore_owner owns it and granted it to no one, else NULL.';

CREATE FUNCTION app_login(token text) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parts text[];
    signing_key bytea;
    expected text;
    expires_at timestamptz;
    verified uuid;
BEGIN
    parts := regexp_match(token,
        '^v1\.([1-9][0-9]{0,8})\.'
        '([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.'
        '([0-9]{1,12})\.([0-9a-f]{64})$');
    IF parts IS NULL THEN
        RAISE EXCEPTION 'identity token is malformed'
            USING ERRCODE = 'invalid_authorization_specification',
                  HINT = 'Expected v1.<key id>.<user id>.<expiry, unix seconds>.<hex HMAC-SHA256>.';
    END IF;

    SELECT k.secret INTO signing_key
    FROM public.app_signing_keys k
    WHERE k.key_id = parts[1]::integer
      AND (k.retired_at IS NULL OR k.retired_at > clock_timestamp());
    IF signing_key IS NULL THEN
        RAISE EXCEPTION 'identity token is signed with an unknown or retired key (%)', parts[1]
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;

    expected := encode(public.hmac_sha256(signing_key,
        convert_to(left(token, length(token) - 65), 'UTF8')), 'hex');
    -- compare digests, so the time taken says nothing about a common prefix
    IF sha256(convert_to(expected, 'UTF8')) <> sha256(convert_to(parts[4], 'UTF8')) THEN
        RAISE EXCEPTION 'identity token signature is invalid'
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;

    expires_at := to_timestamp(parts[3]::bigint);
    IF expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION 'identity token expired at %', expires_at
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;

    verified := parts[2]::uuid;
    IF NOT EXISTS (SELECT 1 FROM public.user_profiles u WHERE u.id = verified) THEN
        RAISE EXCEPTION 'identity token names an unknown user (%)', verified
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;

    IF public.app_identity_table() IS NULL THEN
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
    END IF;
    DELETE FROM pg_temp.app_verified_identity;
    INSERT INTO pg_temp.app_verified_identity (user_id, key_id, expires_at, logged_in_at)
    VALUES (verified, parts[1]::integer, expires_at, clock_timestamp());
    RETURN verified;
END
$$;
ALTER FUNCTION app_login(text) OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION app_login(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_login(text) TO cs_dashboard;
COMMENT ON FUNCTION app_login(text) IS
    'Verifies an identity token (key, HMAC-SHA256 signature, expiry, known user) and makes its user this session''s app_user_id() until the token expires, app_logout() or the session ends. Errors with SQLSTATE 28000 and a message naming what is wrong.';

CREATE FUNCTION app_logout() RETURNS void
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF public.app_identity_table() IS NOT NULL THEN
        DELETE FROM pg_temp.app_verified_identity;
    END IF;
END
$$;
ALTER FUNCTION app_logout() OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION app_logout() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_logout() TO cs_dashboard;
COMMENT ON FUNCTION app_logout() IS
    'Forgets this session''s verified identity (call it before a pooled connection is handed to another user).';

-- The same function the policies already call, now reading the verified identity.
CREATE OR REPLACE FUNCTION app_user_id() RETURNS uuid
    LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    verified uuid;
BEGIN
    IF public.app_identity_table() IS NULL THEN
        RETURN NULL;
    END IF;
    -- retiring a key also ends the sessions that logged in with it
    SELECT i.user_id INTO verified
    FROM pg_temp.app_verified_identity i
    JOIN public.app_signing_keys k ON k.key_id = i.key_id
    WHERE i.expires_at > statement_timestamp()
      AND (k.retired_at IS NULL OR k.retired_at > statement_timestamp());
    RETURN verified;
END
$$;
COMMENT ON FUNCTION app_user_id() IS
    'The dashboard user of this session as verified by app_login(), NULL when nobody logged in, the token expired or its key was retired. Never reads app.user_id or any other setting: those are writable by the session. SECURITY DEFINER (healthscore_owner) to read the session''s identity table.';
REVOKE ALL ON FUNCTION app_user_id() FROM PUBLIC;  -- 0006 granted it to both roles
-- it reads a temporary table, which parallel workers cannot
ALTER FUNCTION app_user_role() PARALLEL RESTRICTED;

-- Minting (for the owner and administrators) --------------------------------------

CREATE FUNCTION app_mint_token(for_user uuid, valid_for interval DEFAULT interval '15 minutes')
    RETURNS text
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    signing_key_id integer;
    signing_key bytea;
    message text;
BEGIN
    -- SECURITY INVOKER: only roles that can read app_signing_keys can mint
    SELECT k.key_id, k.secret INTO signing_key_id, signing_key
    FROM public.app_signing_keys k
    WHERE k.retired_at IS NULL
    ORDER BY k.key_id DESC
    LIMIT 1;
    IF signing_key IS NULL THEN
        RAISE EXCEPTION 'no signing key in use'
            USING HINT = 'INSERT INTO app_signing_keys DEFAULT VALUES';
    END IF;
    message := format('v1.%s.%s.%s', signing_key_id, for_user,
        floor(extract(epoch FROM clock_timestamp() + valid_for))::bigint);
    RETURN message || '.' || encode(public.hmac_sha256(signing_key, convert_to(message, 'UTF8')), 'hex');
END
$$;
ALTER FUNCTION app_mint_token(uuid, interval) OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION app_mint_token(uuid, interval) FROM PUBLIC;
COMMENT ON FUNCTION app_mint_token(uuid, interval) IS
    'An identity token for a user, valid for the given time, signed with the newest key in use. SECURITY INVOKER and not granted: only healthscore_owner members and superusers (who can read app_signing_keys) can mint. The trusted backend mints the same tokens in Python (healthscore.store.identity).';

COMMENT ON ROLE cs_dashboard IS
    'Customer-success dashboard readers: row-level security by the user the session proved with app_login(token) (app_user_id()) and user_profiles.role.';

-- app_login creates the identity table as healthscore_owner; make sure it may
-- create temporary tables here even where PUBLIC's TEMPORARY right was revoked
DO $temp$
BEGIN
    IF NOT pg_catalog.has_database_privilege('healthscore_owner', pg_catalog.current_database(), 'TEMPORARY') THEN
        EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO healthscore_owner', pg_catalog.current_database());
    END IF;
END
$temp$;
