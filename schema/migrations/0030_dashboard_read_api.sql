-- What the read API and dashboard (`healthscore api`) need from the schema.
--
-- 1. The organization page shows the daily score trail (health_score_history)
--    and the last alert (alert_outbox). Both were the writer's only, so the
--    dashboard role gets SELECT on them under the same rule as customer_health:
--    row-level security, FORCE'd, admins see every row, nobody else any. The
--    writer keeps exactly its grants of 0022, now through an explicit policy.
-- 2. The at-risk list sorts every organization by churn probability. The seed
--    indexes only the high and critical levels (customer_health_high_risk_idx);
--    its complement below covers low and medium, so the two together serve the
--    sort over all rows (a merge of two index scans) while each row sits in
--    exactly one of them: one index entry per written row, as a full index on
--    churn_probability would cost, and no second entry for high-risk rows.

-- health_score_history -------------------------------------------------------------

ALTER TABLE health_score_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE health_score_history FORCE ROW LEVEL SECURITY;
GRANT SELECT ON health_score_history TO cs_dashboard;

CREATE POLICY health_score_history_writer_all ON health_score_history
    FOR ALL TO healthscore_writer USING (true) WITH CHECK (true);
CREATE POLICY health_score_history_dashboard_admin_select ON health_score_history
    FOR SELECT TO cs_dashboard USING ((SELECT app_user_role()) = 'admin');
COMMENT ON POLICY health_score_history_writer_all ON health_score_history IS
    'The service appends every score (its grants of 0022 limit it to INSERT).';
COMMENT ON POLICY health_score_history_dashboard_admin_select ON health_score_history IS
    'Dashboard admins read every organization''s score trail (as customer_health).';

-- alert_outbox ---------------------------------------------------------------------

ALTER TABLE alert_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_outbox FORCE ROW LEVEL SECURITY;
-- not publish_attempts / last_error: the relay's bookkeeping is for operators
GRANT SELECT (alert_id, organization_id, kind, episode, payload, created_at, published_at, seq)
    ON alert_outbox TO cs_dashboard;

CREATE POLICY alert_outbox_writer_all ON alert_outbox
    FOR ALL TO healthscore_writer USING (true) WITH CHECK (true);
CREATE POLICY alert_outbox_dashboard_admin_select ON alert_outbox
    FOR SELECT TO cs_dashboard USING ((SELECT app_user_role()) = 'admin');
COMMENT ON POLICY alert_outbox_writer_all ON alert_outbox IS
    'The service writes alerts and the relay marks them (grants of 0022).';
COMMENT ON POLICY alert_outbox_dashboard_admin_select ON alert_outbox IS
    'Dashboard admins read every organization''s alerts (as customer_health).';

-- customer_health ------------------------------------------------------------------

CREATE INDEX customer_health_lower_risk_idx ON customer_health (churn_probability DESC)
    WHERE risk_level IN ('low', 'medium');
COMMENT ON INDEX customer_health_lower_risk_idx IS
    'Serves: with customer_health_high_risk_idx, every organization by churn probability (ORDER BY churn_probability DESC, merged from both); alone, low and medium risk levels (WHERE risk_level IN (''low'', ''medium'') ORDER BY churn_probability DESC).';
