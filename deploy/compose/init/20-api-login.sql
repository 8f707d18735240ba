-- The read API's LOGIN role (API_DATABASE_URL) and its database signing key.
--
-- Run AFTER `healthscore migrate`, as an admin, with psql 15 or newer:
--   HEALTHSCORE_API_DB_LOGIN=healthscore_api HEALTHSCORE_API_DB_PASSWORD=... \
--   API_DB_SIGNING_KEY_ID=1000 API_DB_SIGNING_KEY=<64+ hex digits> \
--     psql "$MIGRATION_DATABASE_URL" -f 20-api-login.sql
--
-- The API connects as this role and its sessions run as cs_dashboard (startup
-- `role` setting, API_DATABASE_ROLE), under row-level security; it refuses to run
-- as a superuser or BYPASSRLS role. For each request it proves who the caller is
-- with app_login(token), a token it signs with its copy of a key of
-- app_signing_keys (migration 0020). Here the key travels the other way: the
-- secret store holds it (API_DB_SIGNING_KEY, hex, at least 32 bytes), the API reads
-- it from its environment, and this file registers it under API_DB_SIGNING_KEY_ID
-- (ids from 1000 up stay clear of the ones `INSERT ... DEFAULT VALUES` draws).
-- Idempotent: re-running resets the password, re-registers (or rotates) the key.

\set ON_ERROR_STOP 1
\if :{?login}
\else
  \getenv login HEALTHSCORE_API_DB_LOGIN
\endif
\if :{?password}
\else
  \getenv password HEALTHSCORE_API_DB_PASSWORD
\endif
\if :{?key_id}
\else
  \getenv key_id API_DB_SIGNING_KEY_ID
\endif
\if :{?key}
\else
  \getenv key API_DB_SIGNING_KEY
\endif
\if :{?login}
\else
  DO $$ BEGIN RAISE EXCEPTION 'set HEALTHSCORE_API_DB_LOGIN (or -v login=...)'; END $$;
\endif
\if :{?password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'set HEALTHSCORE_API_DB_PASSWORD (or -v password=...)'; END $$;
\endif
\if :{?key_id}
\else
  DO $$ BEGIN RAISE EXCEPTION 'set API_DB_SIGNING_KEY_ID (or -v key_id=...)'; END $$;
\endif
\if :{?key}
\else
  DO $$ BEGIN RAISE EXCEPTION 'set API_DB_SIGNING_KEY (or -v key=...)'; END $$;
\endif

SELECT format(
    'CREATE ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION',
    :'login')
WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = :'login')
\gexec

SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD %L', :'login', :'password')
\gexec

GRANT cs_dashboard TO :"login";
-- even a client that forgets API_DATABASE_ROLE runs as cs_dashboard
ALTER ROLE :"login" SET role = 'cs_dashboard';

INSERT INTO app_signing_keys (key_id, secret) OVERRIDING SYSTEM VALUE
VALUES (:'key_id'::integer, decode(:'key', 'hex'))
ON CONFLICT (key_id) DO UPDATE SET secret = EXCLUDED.secret, retired_at = NULL;

SELECT r.rolname AS login_role,
       pg_catalog.pg_has_role(r.rolname, 'cs_dashboard', 'MEMBER') AS member_of_cs_dashboard,
       r.rolsuper AS superuser,
       r.rolbypassrls AS bypass_rls,
       (SELECT count(*) FROM app_signing_keys k
        WHERE k.key_id = :'key_id'::integer AND k.retired_at IS NULL) AS signing_key_in_use
FROM pg_catalog.pg_roles r
WHERE r.rolname = :'login';
