-- The organization page counts an overdue follow-up whatever its interaction's status
-- (review 32b, F2). "Resolve the ticket, then schedule a check-in" leaves an interaction
-- resolved with a follow-up pending (core/interactions.py: follow_up_scheduled keeps the
-- status); once due, the page said "Overdue follow-ups: 0" and did not list it, while the
-- interaction list of the same page flagged it overdue. overdue_follow_ups and the next
-- due time (clock_changes_in) now count every follow-up required and not done, and
-- open_interactions lists, after the open ones, those with a follow-up pending.
--
-- Replaced in place (CREATE OR REPLACE keeps the function's owner, grants and plan
-- settings; they are stated again so that this file alone says what the function is).

CREATE OR REPLACE FUNCTION app_organization_page(token text, organization uuid)
    RETURNS TABLE (page text, clock_changes_in double precision)
    LANGUAGE plpgsql VOLATILE
    SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    PERFORM public.app_login(token);
    -- OrganizationDetail as JSON text; clock_changes_in: seconds until the page changes
    -- by the clock alone (its next pending follow-up falls due), NULL: never. Numbers are
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
               -- achieved: the score's count (the state's milestones, projected into
               -- customer_health), rows or not; a milestone only the profile knows has
               -- no row. While the projector is a moment behind a batch's new row, the
               -- rows: never fewer achieved than recorded, so the parts add up.
               'milestones', json_build_object(
                   'achieved', greatest(h.milestones_achieved, m.recorded),
                   'acknowledged', m.acknowledged,
                   'unacknowledged', m.recorded - m.acknowledged,
                   'from_profile', greatest(0, h.milestones_achieved - m.recorded),
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
        SELECT count(*) AS recorded,
               count(*) FILTER (WHERE acknowledged_at IS NOT NULL) AS acknowledged,
               count(*) FILTER (WHERE reward_status = 'pending') AS rewards_pending,
               count(*) FILTER (WHERE reward_status = 'delivered') AS rewards_delivered
        FROM success_milestones WHERE organization_id = h.organization_id
    ) AS m
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE follow_up_at <= now()) AS overdue,
               min(follow_up_at) FILTER (WHERE follow_up_at > now()) AS next_due
        FROM support_interactions
        WHERE organization_id = h.organization_id
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
                   ORDER BY n.status <> 'open', n.opened_at DESC NULLS FIRST, n.id) AS items
        FROM (
            SELECT i.*,
                   coalesce(i.follow_up_required AND i.follow_up_completed_at IS NULL
                            AND i.follow_up_at <= now(), false) AS overdue
            FROM support_interactions i
            WHERE i.organization_id = h.organization_id
              AND (i.status = 'open'
                   OR (i.follow_up_required AND i.follow_up_completed_at IS NULL))
            -- the open ones first: a follow-up pending never crowds an open one out of
            -- the 20 (the dashboard compares the list with open_interactions_count)
            ORDER BY i.status <> 'open', i.opened_at DESC NULLS FIRST, i.id
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
                   'trigger', payload ->> 'trigger',
                   -- the smallest set of actions out of risk, as the alert named it
                   -- ({action, factor, impact}; [] for a recovery or an older alert)
                   'path_to_healthy', coalesce(payload -> 'path_to_healthy', '[]'::jsonb),
                   -- why that is empty (NULL: it names actions, or an older alert)
                   'no_path_reason', payload ->> 'no_path_reason',
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
    'The read API''s organization page in one statement: logs in with the token (app_login), returns the page as OrganizationDetail JSON text and the seconds until it changes by the clock alone, logs out. Its milestones.achieved is the score''s count (customer_health.milestones_achieved), from_profile those of them without a success_milestones row (known from the CRM profile only). Its last_alert carries the alert''s trigger, path_to_healthy (the actions out of risk it named) and no_path_reason (why it named none). Its overdue_follow_ups counts every follow-up due and not done, whatever the interaction''s status, and open_interactions lists the open interactions and those with a follow-up pending. Runs as the caller, under row-level security: no row when the organization is missing or hidden.';
