-- The score history's key is (organization_id, day) since migration 0040: every
-- write is an upsert on it and every read asks for an organization's days. The
-- identity column (never read) and the (organization_id, scored_at DESC) index
-- (which that key now serves) only added two index entries to each row written,
-- nearly one per applied event. Both go: a history row costs about a fifth less of
-- PostgreSQL's CPU (README, Performance, "Seventeenth session") and the table's
-- indexes about two thirds less space.
--
-- Metadata only, apart from SET NOT NULL, which reads the table once under an
-- exclusive lock to check it (a generated column of a NOT NULL one is never NULL).
-- A replica of the previous release keeps working: its statements name neither.

ALTER TABLE health_score_history ALTER COLUMN day SET NOT NULL;
ALTER TABLE health_score_history
    REPLICA IDENTITY USING INDEX health_score_history_organization_day_key;
ALTER TABLE health_score_history DROP COLUMN id;  -- its primary key and sequence with it
DROP INDEX health_score_history_organization_scored_idx;

COMMENT ON INDEX health_score_history_organization_day_key IS
    'The table''s key, one row per organization per day: the arbiter of UPSERT_SCORE_HISTORY (ON CONFLICT (organization_id, day)); serves an organization''s trail (app_organization_history) and ON DELETE CASCADE.';

-- The same page as migration 0052's, read through the key: one row per day, so the
-- day's latest score is the day's row.
CREATE OR REPLACE FUNCTION app_organization_history(token text, organization uuid, days integer)
    RETURNS TABLE (page text)
    LANGUAGE plpgsql VOLATILE
    SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    PERFORM public.app_login(token);
    -- OrganizationHistory as JSON text: one point per UTC day (its last score) of the
    -- `days` ending with the day of the latest score, oldest first
    RETURN QUERY
    SELECT json_build_object(
               'organization_id', h.organization_id,
               'days', days,
               'points', coalesce((
                   SELECT json_agg(json_build_object(
                              'day', s.day, 'scored_at', s.scored_at,
                              'health_score', s.health_score::float8,
                              'churn_probability', s.churn_probability::float8,
                              'risk_level', s.risk_level, 'components', s.components)
                              ORDER BY s.day)
                   FROM health_score_history s
                   WHERE s.organization_id = h.organization_id
                     AND s.day >= (h.scored_at AT TIME ZONE 'UTC')::date - (days - 1)),
                   '[]'::json))::text AS page
    FROM customer_health h
    WHERE h.organization_id = organization;
    PERFORM public.app_logout();
END
$$;
