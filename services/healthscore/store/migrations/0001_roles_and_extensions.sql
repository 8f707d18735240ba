-- Extensions and the three roles of the schema.
--
-- Roles are cluster-global while this file runs once per database, so role
-- creation is idempotent and tolerates a concurrent runner on another database
-- creating the same role first. An existing role that is a superuser or has
-- BYPASSRLS is refused: row-level security would not hold for it.

CREATE EXTENSION IF NOT EXISTS pg_trgm;  -- trigram index on support_interactions.subject

DO $roles$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['healthscore_owner', 'healthscore_writer', 'cs_dashboard']
    LOOP
        IF EXISTS (
            SELECT 1 FROM pg_catalog.pg_roles
            WHERE rolname = role_name AND (rolsuper OR rolbypassrls)
        ) THEN
            RAISE EXCEPTION 'role % exists as a superuser or with BYPASSRLS; refusing to use it',
                role_name;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format(
                    'CREATE ROLE %I NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE',
                    role_name
                );
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by a runner on another database
            END;
        END IF;
    END LOOP;
END
$roles$;

COMMENT ON ROLE healthscore_owner IS
    'Owns every healthscore table and function; NOLOGIN. Under FORCE ROW LEVEL SECURITY it sees no read-model rows.';
COMMENT ON ROLE healthscore_writer IS
    'The role the healthscore service switches to (SET ROLE): reads and writes every table.';
COMMENT ON ROLE cs_dashboard IS
    'Customer-success dashboard readers: row-level security by app.user_id and user_profiles.role.';

GRANT USAGE, CREATE ON SCHEMA public TO healthscore_owner;
GRANT USAGE ON SCHEMA public TO healthscore_writer, cs_dashboard;
