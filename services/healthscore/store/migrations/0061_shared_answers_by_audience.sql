-- Answers that every member of an audience may share (issue 14).
--
-- The read API keeps each GET answer for the verified user it was computed for
-- (services/healthscore/api/cache.py): row-level security decided what that user saw,
-- and nothing outside the database may assume another user would see the same. So a
-- team of customer-success managers looking at the same at-risk organizations paid one
-- computation per person per page.
--
-- The database can say when two users see the same: every dashboard policy admits an
-- admin by the role alone (migrations 0006 and 0021, rewritten by 0030 as
-- `(SELECT app_user_role() = 'admin')`; user_profiles: `id = app_user_id() OR` that
-- test), so every admin sees every row of every table the API reads, the same rows
-- for each. app_audience() names that audience: 'admin' for an admin, NULL for
-- anybody else (support staff see the interactions assigned to each of them, members
-- their own profile: their answers stay their own). It is defined here, beside the
-- policies, and tests/integration/test_api_audience.py pins every dashboard policy:
-- a change of who sees what fails that test until this function is checked against it.
--
-- Like the organization page (0052) it logs the token's user in and out within the
-- one statement, as its caller (SECURITY INVOKER: cs_dashboard), so the role it reads
-- is the verified user's and nobody else's.

CREATE FUNCTION app_audience(token text) RETURNS text
    LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    audience text;
BEGIN
    PERFORM public.app_login(token);
    audience := CASE WHEN public.app_user_role() = 'admin' THEN 'admin' END;
    PERFORM public.app_logout();
    RETURN audience;
END
$$;
ALTER FUNCTION app_audience(text) OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION app_audience(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_audience(text) TO cs_dashboard;
COMMENT ON FUNCTION app_audience(text) IS
    'The audience whose members see the same rows under row-level security: ''admin'' for an admin, NULL for anyone else (per-user answers). Logs in with the token and out again, as the caller.';
