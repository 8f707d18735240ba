-- Helper functions for health calculations and row-level security.
--
-- health_band() and risk_level_for() mirror services/healthscore/bands.py edge
-- for edge (a test checks both at and around every edge); they generate the
-- stored health_status and risk_level columns, so changing an edge is a new
-- migration that also rewrites the stored rows.

CREATE FUNCTION health_band(score numeric) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN score >= 80 THEN 'excellent'
        WHEN score >= 60 THEN 'good'
        WHEN score >= 40 THEN 'at_risk'
        ELSE 'critical'
    END
$$;
ALTER FUNCTION health_band(numeric) OWNER TO healthscore_owner;
COMMENT ON FUNCTION health_band(numeric) IS
    'Band of a 0-100 health score: >= 80 excellent, >= 60 good, >= 40 at_risk, else critical (mirrors healthscore.bands).';

CREATE FUNCTION risk_level_for(probability numeric) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN probability >= 0.75 THEN 'critical'
        WHEN probability >= 0.50 THEN 'high'
        WHEN probability >= 0.25 THEN 'medium'
        ELSE 'low'
    END
$$;
ALTER FUNCTION risk_level_for(numeric) OWNER TO healthscore_owner;
COMMENT ON FUNCTION risk_level_for(numeric) IS
    'Level of a 0-1 churn probability: >= 0.75 critical, >= 0.50 high, >= 0.25 medium, else low (mirrors healthscore.bands).';

CREATE FUNCTION score_trend(current_score numeric, previous_score numeric) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN current_score - previous_score > 2 THEN 'improving'
        WHEN current_score - previous_score < -2 THEN 'declining'
        ELSE 'stable'
    END
$$;
ALTER FUNCTION score_trend(numeric, numeric) OWNER TO healthscore_owner;
COMMENT ON FUNCTION score_trend(numeric, numeric) IS
    'Dashboard trend of a health score: improving / declining when it moved by more than 2 points, else stable; NULL when either score is unknown.';

CREATE FUNCTION app_user_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN s ~ '^[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}$'
        THEN s::uuid
    END
    FROM (SELECT pg_catalog.current_setting('app.user_id', true) AS s) AS setting
$$;
ALTER FUNCTION app_user_id() OWNER TO healthscore_owner;
COMMENT ON FUNCTION app_user_id() IS
    'The dashboard user of this session, from the app.user_id setting; NULL when unset, empty or not a uuid (never an error).';

CREATE FUNCTION app_user_role() RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER PARALLEL SAFE
    SET search_path = pg_catalog, public
AS $$
    SELECT role FROM public.user_profiles WHERE id = public.app_user_id()
$$;
ALTER FUNCTION app_user_role() OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION app_user_role() FROM PUBLIC;
COMMENT ON FUNCTION app_user_role() IS
    'user_profiles.role of app_user_id(), NULL when unknown. SECURITY DEFINER (owner healthscore_owner) so policies can read roles without granting user_profiles more widely.';
