-- The organization page and its history in one round trip each (issue 14).
--
-- A request of the read API took three round trips: BEGIN with the login, the
-- statement, ROLLBACK (migration 0031); on this machine a round trip over the local
-- socket costs the API 0.1-0.2 ms of CPU, most of a page's miss once the page is built
-- by one statement. These functions log the caller in, build the page and log out, in
-- the single statement's own transaction:
--
--     SELECT * FROM app_organization_page(<token>, <organization id>)
--
-- They run as their caller (SECURITY INVOKER, so as cs_dashboard: row-level security
-- sees the verified user of the token and nobody else), and the login is the
-- database's own check (app_login, migration 0031). A login that fails, or a page
-- that fails after it, aborts the statement and so its transaction: the login is
-- undone with it. A page that succeeds logs out before it returns, so a pooled
-- connection never carries the identity into the next request. Called inside an
-- open transaction the caller must end it the same way (the API never does).
--
-- The page's feature usage is each feature's count (OrganizationDetail.feature_usage,
-- the column's documented meaning); the projector stores each as an object with the
-- count and the last use, which the page's model refused (a 500 for every organization
-- the consumers had scored).
--
-- Each returns no row for an organization that does not exist or that row-level
-- security hides (the API answers 404 for both). Their statements are planned once
-- per connection (plan_cache_mode: the API's pool plans its list statements with the
-- values, which would re-plan these at every call).

CREATE FUNCTION app_organization_page(token text, organization uuid)
    RETURNS TABLE (page text, clock_changes_in double precision)
    LANGUAGE plpgsql VOLATILE
    SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    PERFORM public.app_login(token);
    -- OrganizationDetail as JSON text; clock_changes_in: seconds until the page changes
    -- by the clock alone (its next open follow-up falls due), NULL: never. Numbers are
    -- float8, timestamps in the session's time zone (the API's pool: UTC).
    RETURN QUERY
    SELECT json_build_object(
               'organization_id', h.organization_id,
               'organization_name', o.name,
               'plan', o.plan,
               'health_score', h.health_score::float8,
               'health_status', h.health_status,
               'churn_probability', h.churn_probability::float8,
               'risk_level', h.risk_level,
               'components', json_build_object(
                   'engagement', h.engagement_score::float8,
                   'adoption', h.adoption_score::float8,
                   'milestones', h.milestone_score::float8,
                   'support', h.support_score::float8,
                   'growth', h.growth_score::float8),
               'risk_factors', h.risk_factors,
               -- feature -> uses in the window: the projector stores each feature as
               -- {"count": n, "last_used_at": t} (older rows: the count alone)
               'feature_usage', (
                   SELECT coalesce(json_object_agg(u.key, CASE jsonb_typeof(u.value)
                              WHEN 'object' THEN (u.value ->> 'count')::float8
                              ELSE (u.value #>> '{}')::float8 END), '{}'::json)
                   FROM jsonb_each(h.feature_usage) AS u),
               'previous_score', h.previous_score::float8,
               'score_change_7d', h.score_change_7d::float8,
               'score_change_30d', h.score_change_30d::float8,
               'trend', score_trend(h.health_score, h.previous_score),
               'active_users_30d', h.active_users_30d,
               'open_interactions_count', h.open_interactions,
               'overdue_follow_ups', f.overdue,
               'open_interactions', coalesce(i.items, '[]'::json),
               'milestones', json_build_object(
                   'achieved', m.achieved,
                   'acknowledged', m.acknowledged,
                   'unacknowledged', greatest(0, m.achieved - m.acknowledged),
                   'rewards_pending', m.rewards_pending,
                   'rewards_delivered', m.rewards_delivered),
               'last_activity_at', h.last_activity_at,
               'last_login_at', h.last_login_at,
               'scored_at', h.scored_at,
               'score_model_version', h.score_model_version,
               'updated_at', h.updated_at,
               'last_alert', a.last_alert)::text AS page,
           extract(epoch FROM f.next_due - now())::float8 AS clock_changes_in
    FROM customer_health h
    LEFT JOIN organizations o ON o.id = h.organization_id
    CROSS JOIN LATERAL (
        SELECT count(*) AS achieved,
               count(*) FILTER (WHERE acknowledged_at IS NOT NULL) AS acknowledged,
               count(*) FILTER (WHERE reward_status = 'pending') AS rewards_pending,
               count(*) FILTER (WHERE reward_status = 'delivered') AS rewards_delivered
        FROM success_milestones WHERE organization_id = h.organization_id
    ) AS m
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE follow_up_at <= now()) AS overdue,
               min(follow_up_at) FILTER (WHERE follow_up_at > now()) AS next_due
        FROM support_interactions
        WHERE organization_id = h.organization_id AND status = 'open'
          AND follow_up_required AND follow_up_completed_at IS NULL
    ) AS f
    LEFT JOIN LATERAL (
        SELECT json_agg(json_build_object(
                   'id', n.id, 'organization_id', n.organization_id,
                   'organization_name', o.name, 'interaction_type', n.interaction_type,
                   'channel', n.channel, 'status', n.status, 'priority', n.priority,
                   'sentiment', n.sentiment, 'outcome', n.outcome, 'assigned_to', n.assigned_to,
                   'subject', n.subject, 'follow_up_required', n.follow_up_required,
                   'follow_up_at', n.follow_up_at, 'follow_up_completed_at', n.follow_up_completed_at,
                   'opened_at', n.opened_at, 'resolved_at', n.resolved_at, 'closed_at', n.closed_at,
                   'last_event_at', n.last_event_at, 'overdue', n.overdue, 'rank', NULL)
                   ORDER BY n.opened_at DESC NULLS FIRST, n.id) AS items
        FROM (
            SELECT i.*,
                   coalesce(i.follow_up_required AND i.follow_up_completed_at IS NULL
                            AND i.follow_up_at <= now(), false) AS overdue
            FROM support_interactions i
            WHERE i.organization_id = h.organization_id AND i.status = 'open'
            ORDER BY i.opened_at DESC NULLS FIRST, i.id
            LIMIT 20
        ) AS n
    ) AS i ON true
    LEFT JOIN LATERAL (
        SELECT json_build_object(
                   'alert_id', alert_id, 'kind', kind, 'episode', episode,
                   'health_score', (payload ->> 'health_score')::float8,
                   'previous_score', (payload ->> 'previous_score')::float8,
                   'churn_probability', (payload ->> 'churn_probability')::float8,
                   'risk_level', payload ->> 'risk_level',
                   'scored_at', (payload ->> 'scored_at')::timestamptz,
                   'created_at', created_at, 'published_at', published_at) AS last_alert
        FROM alert_outbox WHERE organization_id = h.organization_id
        ORDER BY seq DESC LIMIT 1
    ) AS a ON true
    WHERE h.organization_id = organization;
    PERFORM public.app_logout();
END
$$;
ALTER FUNCTION app_organization_page(text, uuid) OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION app_organization_page(text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_organization_page(text, uuid) TO cs_dashboard;
COMMENT ON FUNCTION app_organization_page(text, uuid) IS
    'The read API''s organization page in one statement: logs in with the token (app_login), returns the page as OrganizationDetail JSON text and the seconds until it changes by the clock alone, logs out. Runs as the caller, under row-level security: no row when the organization is missing or hidden.';

CREATE FUNCTION app_organization_history(token text, organization uuid, days integer)
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
                              'day', day, 'scored_at', scored_at,
                              'health_score', health_score::float8,
                              'churn_probability', churn_probability::float8,
                              'risk_level', risk_level, 'components', components)
                              ORDER BY day)
                   FROM (
                       SELECT DISTINCT ON (day) day, scored_at, health_score, churn_probability,
                              risk_level, components
                       FROM (
                           SELECT (s.scored_at AT TIME ZONE 'UTC')::date AS day, s.scored_at,
                                  s.health_score, s.churn_probability, s.risk_level, s.components
                           FROM health_score_history s
                           WHERE s.organization_id = h.organization_id
                             AND s.scored_at >= (date_trunc('day', h.scored_at AT TIME ZONE 'UTC')
                                                 - make_interval(days => days - 1))
                                                AT TIME ZONE 'UTC'
                       ) AS trail
                       ORDER BY day, scored_at DESC
                   ) AS daily), '[]'::json))::text AS page
    FROM customer_health h
    WHERE h.organization_id = organization;
    PERFORM public.app_logout();
END
$$;
ALTER FUNCTION app_organization_history(text, uuid, integer) OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION app_organization_history(text, uuid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app_organization_history(text, uuid, integer) TO cs_dashboard;
COMMENT ON FUNCTION app_organization_history(text, uuid, integer) IS
    'The read API''s score history of an organization in one statement: logs in with the token (app_login), returns OrganizationHistory JSON text, logs out. Runs as the caller, under row-level security: no row when the organization is missing or hidden.';
