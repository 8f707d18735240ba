-- Identity tokens the read API sends are good in the session they were minted for only.
--
-- The read API logs each request in with `BEGIN; SELECT app_login('<token>')`, one
-- simple-protocol message (healthscore.api.session), so the token is the statement's
-- text: pg_stat_activity.query shows it to members of pg_read_all_stats (pg_monitor:
-- the monitoring agents) until the session's next statement, and log_statement =
-- 'all', log_min_duration_statement, auto_explain or pgaudit write it to the server's
-- log. Anyone holding a cs_dashboard login (a person's direct SQL access, which the
-- threat model does not trust) who could read either could log in as that request's
-- user, an admin, for the rest of the token's minute.
--
-- A v2 token names the backend it was minted for (pg_backend_pid(); the API knows its
-- connection's without a round trip), signed with the rest:
--
--     v2.<key id>.<user id>.<expiry, unix seconds>.<backend pid>.<hex HMAC-SHA256>
--
-- and app_login refuses it in any other session, after checking the signature (a
-- forged token learns nothing from the order of the checks). A leaked v2 token is
-- worth nothing elsewhere; the backend's pid comes back only once the API's
-- connection has ended, and another session would have to get it within the token's
-- lifetime. v1 tokens (`app_mint_token()`, an operator minting a person's direct SQL
-- access) are accepted as before: nothing sends them in statements others read.
--
-- Replaced in place (CREATE OR REPLACE keeps the owner, grants and settings; stated
-- again so that this file alone says what the function is).

CREATE OR REPLACE FUNCTION app_login(token text) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- v1 . key id . user id . expiry . signature, or
    -- v2 . key id . user id . expiry . backend pid . signature
    parts text[] := string_to_array(token, '.');
    signed text;
    signing_key bytea;
    expected text;
    expires_at timestamptz;
    verified uuid;
BEGIN
    -- 0031's language for v1, and v2 with the pid (digits, no leading zero) before the
    -- signature
    IF ((   (cardinality(parts) = 5 AND parts[1] = 'v1')
         OR (cardinality(parts) = 6 AND parts[1] = 'v2'
             AND length(parts[5]) BETWEEN 1 AND 10 AND left(parts[5], 1) <> '0'
             AND translate(parts[5], '0123456789', '') = ''))
        AND length(parts[2]) BETWEEN 1 AND 9 AND left(parts[2], 1) <> '0'
        AND translate(parts[2], '0123456789', '') = ''
        AND length(parts[3]) = 36
        AND translate(parts[3], '0123456789abcdef', '') = '----'
        AND substr(parts[3], 9, 1) = '-' AND substr(parts[3], 14, 1) = '-'
        AND substr(parts[3], 19, 1) = '-' AND substr(parts[3], 24, 1) = '-'
        AND length(parts[4]) BETWEEN 1 AND 12
        AND translate(parts[4], '0123456789', '') = ''
        AND length(parts[cardinality(parts)]) = 64
        AND translate(parts[cardinality(parts)], '0123456789abcdef', '') = '') IS NOT TRUE
    THEN
        RAISE EXCEPTION 'identity token is malformed'
            USING ERRCODE = 'invalid_authorization_specification',
                  HINT = 'Expected v1.<key id>.<user id>.<expiry, unix seconds>.<hex HMAC-SHA256>'
                         ' or v2.<key id>.<user id>.<expiry>.<backend pid>.<hex HMAC-SHA256>.';
    END IF;

    SELECT k.secret INTO signing_key
    FROM public.app_signing_keys k
    WHERE k.key_id = parts[2]::integer
      AND (k.retired_at IS NULL OR k.retired_at > clock_timestamp());
    IF signing_key IS NULL THEN
        RAISE EXCEPTION 'identity token is signed with an unknown or retired key (%)', parts[2]
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;

    signed := left(token, length(token) - 65);
    expected := encode(public.hmac_sha256(signing_key, convert_to(signed, 'UTF8')), 'hex');
    -- compare digests, so the time taken says nothing about a common prefix
    IF sha256(convert_to(expected, 'UTF8'))
       <> sha256(convert_to(parts[cardinality(parts)], 'UTF8')) THEN
        RAISE EXCEPTION 'identity token signature is invalid'
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;

    IF parts[1] = 'v2' AND parts[5] <> pg_backend_pid()::text THEN
        RAISE EXCEPTION 'identity token was minted for another session'
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
ALTER FUNCTION app_login(text) OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION app_login(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_login(text) TO cs_dashboard;
COMMENT ON FUNCTION app_login(text) IS
    'Verifies an identity token (key, HMAC-SHA256 signature, for a v2 token the backend it was minted for, expiry, known user) and makes its user this session''s app_user_id() until the token expires, app_logout() or the session ends. Errors with SQLSTATE 28000 and a message naming what is wrong.';
