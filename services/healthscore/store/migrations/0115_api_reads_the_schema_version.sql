-- The read API's readiness names the migrations its release needs and the database
-- lacks: during a deploy whose migrate job has not run (or ran the old image), a new
-- API pod on the old schema answered ready, completed its rollout and failed the
-- requests whose functions a migration adds (`/api/v1/freshness` before 0111). The
-- request-scoped role reads no table row-level security does not guard, so it gets the
-- applied versions through a function: version numbers, nothing of any customer.

-- the table is the migration runner's (the administrator's): the function's owner reads it
GRANT SELECT ON schema_migrations TO healthscore_owner;

CREATE FUNCTION app_applied_migrations() RETURNS SETOF text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.version FROM public.schema_migrations m ORDER BY m.version
$$;
ALTER FUNCTION app_applied_migrations() OWNER TO healthscore_owner;
COMMENT ON FUNCTION app_applied_migrations() IS
    'For the read API''s readiness: the versions of the migrations applied (schema_migrations.version), so that a release whose migrations the database lacks stays unready.';
REVOKE ALL ON FUNCTION app_applied_migrations() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_applied_migrations() TO cs_dashboard;
