-- healthscore_writer gets exactly what the service's statements use.
--
-- 0006 and 0012 granted SELECT, INSERT, UPDATE and DELETE on every table, so a
-- writer session could make any user an admin (UPDATE user_profiles SET role)
-- or delete organizations and, through ON DELETE CASCADE, the whole read model.
-- The grants below follow the statements in healthscore.store.sql and
-- healthscore.outbox (the only SQL the service runs as the writer; tests/
-- integration/test_rls.py runs each of them as the writer); a new statement
-- needs its grant here or in a later migration. ON CONFLICT (columns) needs
-- SELECT on those columns; SELECT ... FOR UPDATE needs UPDATE on some column.

REVOKE ALL ON
    organizations, user_profiles, customer_health, success_milestones, support_interactions,
    organization_state, processed_events, consumer_offsets, health_score_history, alert_outbox,
    health_feed_pending
    FROM healthscore_writer;

-- placeholders for ids first seen in events (ENSURE_ORGANIZATIONS, ENSURE_USER_PROFILES)
GRANT INSERT (id), SELECT (id) ON organizations, user_profiles TO healthscore_writer;

-- UPSERT_CUSTOMER_HEALTH; read by the health-feed relay and the gauges
GRANT SELECT ON customer_health TO healthscore_writer;
GRANT INSERT (organization_id, health_score, engagement_score, adoption_score, milestone_score,
              support_score, growth_score, churn_probability, risk_factors, feature_usage,
              previous_score, score_change_7d, score_change_30d, active_users_30d,
              open_interactions, milestones_achieved, last_activity_at, last_login_at,
              scored_at, score_model_version),
      UPDATE (health_score, engagement_score, adoption_score, milestone_score,
              support_score, growth_score, churn_probability, risk_factors, feature_usage,
              previous_score, score_change_7d, score_change_30d, active_users_30d,
              open_interactions, milestones_achieved, last_activity_at, last_login_at,
              scored_at, score_model_version)
    ON customer_health TO healthscore_writer;

-- INSERT_MILESTONES (ON CONFLICT (organization_id, milestone_type) DO NOTHING);
-- acknowledgments and rewards are the dashboard's
GRANT INSERT (organization_id, milestone_type, achieved_at, triggering_event_id,
              health_score_impact, reward_type, reward_value, reward_status),
      SELECT (organization_id, milestone_type)
    ON success_milestones TO healthscore_writer;

-- READ_INTERACTIONS, UPSERT_INTERACTIONS
GRANT SELECT ON support_interactions TO healthscore_writer;
GRANT INSERT (id, organization_id, interaction_type, channel, status, priority, sentiment,
              outcome, assigned_to, subject, follow_up_required, follow_up_at,
              follow_up_completed_at, opened_at, resolved_at, closed_at, first_event_at,
              last_event_at, field_event_times, event_count),
      UPDATE (interaction_type, channel, status, priority, sentiment,
              outcome, assigned_to, subject, follow_up_required, follow_up_at,
              follow_up_completed_at, opened_at, resolved_at, closed_at, first_event_at,
              last_event_at, field_event_times, event_count)
    ON support_interactions TO healthscore_writer;

-- LOCK_STATES, ENSURE_STATE_ROWS, SAVE_STATES, PICK_SILENT
GRANT SELECT, INSERT (organization_id, state),
      UPDATE (state, last_event_at, rescore_due_at, health_version, updated_at)
    ON organization_state TO healthscore_writer;

-- CLAIM_EVENT_IDS, UNCLAIM_EVENT_IDS, PURGE_PROCESSED_EVENTS
GRANT SELECT, INSERT (event_id, organization_id, occurred_at), DELETE
    ON processed_events TO healthscore_writer;

-- ENSURE_OFFSET_ROWS, LOCK_OFFSETS, READ_OFFSETS, SAVE_OFFSETS, EVENT_TIME_WATERMARK
GRANT SELECT, INSERT (consumer_group, topic, partition, next_offset),
      UPDATE (next_offset, max_event_time, updated_at)
    ON consumer_offsets TO healthscore_writer;

-- INSERT_SCORE_HISTORY (append only)
GRANT INSERT (organization_id, scored_at, health_score, churn_probability, risk_level,
              components, score_model_version, cause)
    ON health_score_history TO healthscore_writer;

-- INSERT_ALERTS; the relay's PENDING_ALERTS, MARK_ALERTS_SENT, RECORD_ALERT_FAILURE
GRANT SELECT, INSERT (alert_id, organization_id, kind, episode, payload),
      UPDATE (published_at, publish_attempts, last_error)
    ON alert_outbox TO healthscore_writer;

-- SAVE_STATES queues; the relay's PENDING_HEALTH and MARK_HEALTH_SENT
GRANT SELECT, INSERT (organization_id, version), UPDATE (version), DELETE
    ON health_feed_pending TO healthscore_writer;

COMMENT ON ROLE healthscore_writer IS
    'The role the healthscore service switches to (SET ROLE): exactly the reads and writes of its statements (0022); it cannot change user roles, organizations or acknowledgments, nor delete anything but dedupe ids and health-feed queue entries.';
