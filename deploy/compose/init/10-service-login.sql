-- The LOGIN role the healthscore service connects as (DATABASE_URL).
--
-- Run AFTER `healthscore migrate`, as an admin, with psql 15 or newer:
--   HEALTHSCORE_DB_LOGIN=healthscore_svc HEALTHSCORE_DB_PASSWORD=... \
--     psql "$MIGRATION_DATABASE_URL" -f 10-service-login.sql
-- (or pass -v login=... -v password=...)
--
-- Why a separate LOGIN role: the migrations create the schema's roles NOLOGIN
-- (healthscore_owner owns the tables, healthscore_writer is what the service
-- runs as, cs_dashboard is for dashboards). The service logs in as this role
-- and its sessions switch to healthscore_writer at connection start
-- (DATABASE_ROLE, sent as the startup `role` setting), so row-level security
-- binds it; the service refuses to run as a superuser or BYPASSRLS role.
-- This file is idempotent: re-running it resets the password and the grant.
-- It is not a docker-entrypoint-initdb.d script: healthscore_writer does not
-- exist before the first migration.

\set ON_ERROR_STOP 1
-- values may also come from the environment (psql 15+), which keeps the
-- password out of the command line
\if :{?login}
\else
  \getenv login HEALTHSCORE_DB_LOGIN
\endif
\if :{?password}
\else
  \getenv password HEALTHSCORE_DB_PASSWORD
\endif
\if :{?login}
\else
  \echo 'set HEALTHSCORE_DB_LOGIN and HEALTHSCORE_DB_PASSWORD (or -v login=... -v password=...)'
  DO $$ BEGIN RAISE EXCEPTION 'psql variable "login" is not set'; END $$;
\endif
\if :{?password}
\else
  \echo 'set HEALTHSCORE_DB_LOGIN and HEALTHSCORE_DB_PASSWORD (or -v login=... -v password=...)'
  DO $$ BEGIN RAISE EXCEPTION 'psql variable "password" is not set'; END $$;
\endif

SELECT format(
    'CREATE ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION',
    :'login')
WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = :'login')
\gexec

-- refuse a pre-existing role that would skip row-level security
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD %L', :'login', :'password')
\gexec

GRANT healthscore_writer TO :"login";

-- Defence in depth: even a client that forgets DATABASE_ROLE runs as the writer.
ALTER ROLE :"login" SET role = 'healthscore_writer';

SELECT r.rolname AS login_role,
       pg_catalog.pg_has_role(r.rolname, 'healthscore_writer', 'MEMBER') AS member_of_writer,
       r.rolsuper AS superuser,
       r.rolbypassrls AS bypass_rls
FROM pg_catalog.pg_roles r
WHERE r.rolname = :'login';
