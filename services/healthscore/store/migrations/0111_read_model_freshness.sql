-- How far the dashboard's scores are behind the events applied (review 32b, F7): the
-- dashboard said "Updated 10:42:13", the time the browser fetched, while the read model
-- itself may be minutes behind (a catch-up, a projector backlog) and nothing said so.
-- The age of the oldest change not yet projected (READ_MODEL_STALENESS, the service's
-- healthscore_read_model_staleness_seconds), for the API, which has no grant on the
-- service's queue: one number, no organization's.

CREATE FUNCTION app_read_model_staleness() RETURNS double precision
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(extract(epoch FROM now() - min(q.queued_at)), 0)::float8
    FROM public.read_model_pending q
$$;
ALTER FUNCTION app_read_model_staleness() OWNER TO healthscore_owner;
COMMENT ON FUNCTION app_read_model_staleness() IS
    'For the read API: seconds since the oldest change not yet written to customer_health was queued (0: none), how far the dashboard''s scores are behind the events applied; reveals no organization.';
REVOKE ALL ON FUNCTION app_read_model_staleness() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_read_model_staleness() TO cs_dashboard;
