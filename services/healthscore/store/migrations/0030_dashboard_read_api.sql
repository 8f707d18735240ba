-- What the read API and dashboard (`healthscore api`) need from the schema.
--
-- 1. The organization page shows the daily score trail (health_score_history)
--    and the last alert (alert_outbox). Both were the writer's only, so the
--    dashboard role gets SELECT on them under the same rule as customer_health:
--    row-level security, FORCE'd, admins see every row, nobody else any. The
--    writer keeps exactly its grants of 0022, now through an explicit policy.
-- 2. The dashboard's policies are rewritten in a form the planner estimates
--    (below), without changing which rows they let through.
-- 3. The at-risk list sorts every organization by churn probability. The seed
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
    FOR SELECT TO cs_dashboard USING ((SELECT app_user_role() = 'admin'));
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
    FOR SELECT TO cs_dashboard USING ((SELECT app_user_role() = 'admin'));
COMMENT ON POLICY alert_outbox_writer_all ON alert_outbox IS
    'The service writes alerts and the relay marks them (grants of 0022).';
COMMENT ON POLICY alert_outbox_dashboard_admin_select ON alert_outbox IS
    'Dashboard admins read every organization''s alerts (as customer_health).';

-- customer_health ------------------------------------------------------------------

CREATE INDEX customer_health_lower_risk_idx ON customer_health (churn_probability DESC)
    WHERE risk_level IN ('low', 'medium');
COMMENT ON INDEX customer_health_lower_risk_idx IS
    'Serves: with customer_health_high_risk_idx, every organization by churn probability (ORDER BY churn_probability DESC, merged from both); alone, low and medium risk levels (WHERE risk_level IN (''low'', ''medium'') ORDER BY churn_probability DESC).';

-- Dashboard policies the planner can estimate ----------------------------------------------

-- Written `(SELECT app_user_role()) = 'admin'`, a policy is a per-row filter that
-- compares an InitPlan's value with a constant, which PostgreSQL estimates to keep
-- 0.5% of the rows (its default for "= unknown"). Under row-level security every
-- dashboard query then looked 200 times smaller than it is, and a sorted, limited
-- list chose to read and sort every row of its band over reading 50 in index
-- order (measured: 52 ms against 1 ms for a page of 5k organizations). The same
-- test as one boolean InitPlan, `(SELECT app_user_role() = 'admin')`, is
-- estimated at one half, and the index paths win. Same rows visible: a NULL role
-- (nobody logged in) is NULL either way, which a policy treats as false.
ALTER POLICY customer_health_dashboard_admin_select ON customer_health
    USING ((SELECT app_user_role() = 'admin'));
ALTER POLICY success_milestones_dashboard_admin_select ON success_milestones
    USING ((SELECT app_user_role() = 'admin'));
ALTER POLICY success_milestones_dashboard_admin_update ON success_milestones
    USING ((SELECT app_user_role() = 'admin'))
    WITH CHECK ((SELECT app_user_role() = 'admin'));
ALTER POLICY support_interactions_dashboard_admin_select ON support_interactions
    USING ((SELECT app_user_role() = 'admin'));
ALTER POLICY support_interactions_dashboard_support_select ON support_interactions
    USING ((SELECT app_user_role() = 'support') AND assigned_to = (SELECT app_user_id()));
ALTER POLICY organizations_dashboard_admin_select ON organizations
    USING ((SELECT app_user_role() = 'admin'));
ALTER POLICY user_profiles_dashboard_select ON user_profiles
    USING (id = (SELECT app_user_id()) OR (SELECT app_user_role() = 'admin'));

-- Filters that indexes can serve under row-level security ----------------------------------

-- Under row-level security PostgreSQL evaluates the policies before any condition
-- of the query that is not LEAKPROOF, so such a condition can never be an index
-- condition, and its column's statistics are not consulted either (the planner then
-- guesses, and under a LIMIT guesses low): the list's factor filter
-- (`risk_factors @> ...`, GIN), the subject search (`... <% subject`, trigram GIN),
-- and every range on a numeric column (the keyset conditions of the score, churn and
-- 7-day-change sorts, the churn range of a risk level) read past their indexes.
-- These functions are pure and raise no error that depends on their arguments'
-- values (a jsonb containment test; a trigram similarity; numeric comparisons, NaN
-- included, as the integer and float ones PostgreSQL already marks), so marking them
-- LEAKPROOF reveals nothing a policy hides and lets the indexes and statistics work.
-- Only a superuser may do this; run by anyone else (a managed database's admin
-- role), the migration says so and the filters stay correct, only slower.
-- pg_dump does not carry these marks (system and extension functions): re-apply
-- them after restoring a dump (docs/operations.md).
DO $leakproof$
DECLARE
    fn regprocedure;
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        FOREACH fn IN ARRAY ARRAY[
            'pg_catalog.jsonb_contains(jsonb, jsonb)',
            'pg_catalog.numeric_eq(numeric, numeric)',
            'pg_catalog.numeric_ne(numeric, numeric)',
            'pg_catalog.numeric_lt(numeric, numeric)',
            'pg_catalog.numeric_le(numeric, numeric)',
            'pg_catalog.numeric_gt(numeric, numeric)',
            'pg_catalog.numeric_ge(numeric, numeric)',
            pg_catalog.to_regprocedure('word_similarity_op(text, text)')::text
        ]::regprocedure[]
        LOOP
            EXECUTE format('ALTER FUNCTION %s LEAKPROOF', fn);
        END LOOP;
    ELSE
        RAISE NOTICE 'not a superuser: jsonb_contains, the numeric comparisons and '
            'word_similarity_op stay non-LEAKPROOF, so the dashboard''s filters and '
            'pages read past their indexes under row-level security';
    END IF;
END
$leakproof$;
