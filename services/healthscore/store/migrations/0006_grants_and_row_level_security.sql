-- Privileges and row-level security.
--
-- healthscore_writer (the service) reads and writes everything. cs_dashboard
-- reads the read model under row-level security: admins see all of it, support
-- staff see the interactions assigned to them, anyone else sees nothing. The
-- owner has no policy, so under FORCE ROW LEVEL SECURITY it sees nothing either.
-- app_user_role() / app_user_id() are wrapped in scalar subqueries so that they
-- run once per query (an InitPlan), not once per row.

GRANT SELECT, INSERT, UPDATE, DELETE ON
    organizations, user_profiles, customer_health, success_milestones, support_interactions,
    organization_state, processed_events, consumer_offsets, health_score_history, alert_outbox
    TO healthscore_writer;
GRANT USAGE, SELECT ON SEQUENCE health_score_history_id_seq TO healthscore_writer;
GRANT EXECUTE ON FUNCTION
    set_updated_at(), health_band(numeric), risk_level_for(numeric),
    score_trend(numeric, numeric), app_user_id(), app_user_role()
    TO healthscore_writer;
DO $grant$
BEGIN
    -- lets the service check the schema version (the runner creates the table)
    IF pg_catalog.to_regclass('schema_migrations') IS NOT NULL THEN
        GRANT SELECT ON schema_migrations TO healthscore_writer;
    END IF;
END
$grant$;

GRANT SELECT ON customer_health, success_milestones, support_interactions, organizations, user_profiles
    TO cs_dashboard;
GRANT UPDATE (acknowledged_at, acknowledged_by, reward_status, reward_delivered_at)
    ON success_milestones TO cs_dashboard;
GRANT EXECUTE ON FUNCTION app_user_id(), app_user_role(), score_trend(numeric, numeric),
    health_band(numeric), risk_level_for(numeric)
    TO cs_dashboard;

ALTER TABLE customer_health ENABLE ROW LEVEL SECURITY;
ALTER TABLE customer_health FORCE ROW LEVEL SECURITY;
ALTER TABLE success_milestones ENABLE ROW LEVEL SECURITY;
ALTER TABLE success_milestones FORCE ROW LEVEL SECURITY;
ALTER TABLE support_interactions ENABLE ROW LEVEL SECURITY;
ALTER TABLE support_interactions FORCE ROW LEVEL SECURITY;

CREATE POLICY customer_health_writer_all ON customer_health
    FOR ALL TO healthscore_writer USING (true) WITH CHECK (true);
CREATE POLICY customer_health_dashboard_admin_select ON customer_health
    FOR SELECT TO cs_dashboard USING ((SELECT app_user_role()) = 'admin');

CREATE POLICY success_milestones_writer_all ON success_milestones
    FOR ALL TO healthscore_writer USING (true) WITH CHECK (true);
CREATE POLICY success_milestones_dashboard_admin_select ON success_milestones
    FOR SELECT TO cs_dashboard USING ((SELECT app_user_role()) = 'admin');
CREATE POLICY success_milestones_dashboard_admin_update ON success_milestones
    FOR UPDATE TO cs_dashboard
    USING ((SELECT app_user_role()) = 'admin')
    WITH CHECK ((SELECT app_user_role()) = 'admin');

CREATE POLICY support_interactions_writer_all ON support_interactions
    FOR ALL TO healthscore_writer USING (true) WITH CHECK (true);
CREATE POLICY support_interactions_dashboard_admin_select ON support_interactions
    FOR SELECT TO cs_dashboard USING ((SELECT app_user_role()) = 'admin');
CREATE POLICY support_interactions_dashboard_support_select ON support_interactions
    FOR SELECT TO cs_dashboard
    USING ((SELECT app_user_role()) = 'support' AND assigned_to = (SELECT app_user_id()));

COMMENT ON POLICY customer_health_writer_all ON customer_health IS 'The service reads and writes every row.';
COMMENT ON POLICY customer_health_dashboard_admin_select ON customer_health IS 'Dashboard admins read every row.';
COMMENT ON POLICY success_milestones_writer_all ON success_milestones IS 'The service reads and writes every row.';
COMMENT ON POLICY success_milestones_dashboard_admin_select ON success_milestones IS 'Dashboard admins read every row.';
COMMENT ON POLICY success_milestones_dashboard_admin_update ON success_milestones IS
    'Dashboard admins acknowledge milestones and track rewards (column grants limit what they can change).';
COMMENT ON POLICY support_interactions_writer_all ON support_interactions IS 'The service reads and writes every row.';
COMMENT ON POLICY support_interactions_dashboard_admin_select ON support_interactions IS 'Dashboard admins read every row.';
COMMENT ON POLICY support_interactions_dashboard_support_select ON support_interactions IS
    'Support staff read the interactions assigned to them.';
