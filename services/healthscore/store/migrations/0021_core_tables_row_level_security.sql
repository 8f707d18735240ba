-- Row-level security on organizations and user_profiles.
--
-- Both were plain reference data for cs_dashboard: any dashboard session could
-- list every user's email and role and every customer. Now:
--   * user_profiles: a dashboard user sees their own profile, an admin every one;
--   * organizations: the rule of customer_health, whose rows name them: admins
--     see every organization, anyone else none (the schema assigns no
--     organizations to support staff or members; support staff are assigned
--     interactions, which carry the organization id);
--   * healthscore_writer inserts placeholders (id only: the column grants are in
--     0022) and reads ids back for ON CONFLICT (id), which needs a SELECT policy;
--   * healthscore_owner reads user_profiles, because app_user_role() and
--     app_login(), SECURITY DEFINER functions it owns, look users up; it reads no
--     organizations and writes neither table.
-- Foreign-key checks and ON DELETE actions bypass row-level security, so the
-- read model's references to both tables work as before.

ALTER TABLE organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE organizations FORCE ROW LEVEL SECURITY;
ALTER TABLE user_profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_profiles FORCE ROW LEVEL SECURITY;

CREATE POLICY organizations_writer_insert ON organizations
    FOR INSERT TO healthscore_writer WITH CHECK (name IS NULL AND plan IS NULL);
CREATE POLICY organizations_writer_select ON organizations
    FOR SELECT TO healthscore_writer USING (true);
CREATE POLICY organizations_dashboard_admin_select ON organizations
    FOR SELECT TO cs_dashboard USING ((SELECT app_user_role()) = 'admin');

CREATE POLICY user_profiles_writer_insert ON user_profiles
    FOR INSERT TO healthscore_writer
    WITH CHECK (role = 'member' AND organization_id IS NULL AND email IS NULL);
CREATE POLICY user_profiles_writer_select ON user_profiles
    FOR SELECT TO healthscore_writer USING (true);
CREATE POLICY user_profiles_owner_select ON user_profiles
    FOR SELECT TO healthscore_owner USING (true);
CREATE POLICY user_profiles_dashboard_select ON user_profiles
    FOR SELECT TO cs_dashboard
    USING (id = (SELECT app_user_id()) OR (SELECT app_user_role()) = 'admin');

COMMENT ON POLICY organizations_writer_insert ON organizations IS
    'The service inserts placeholder organizations (id only) for ids it first sees in events.';
COMMENT ON POLICY organizations_writer_select ON organizations IS
    'INSERT ... ON CONFLICT (id) reads the id back (the column grant limits it to the id).';
COMMENT ON POLICY organizations_dashboard_admin_select ON organizations IS
    'Dashboard admins read every organization (as for customer_health); nobody else reads any.';
COMMENT ON POLICY user_profiles_writer_insert ON user_profiles IS
    'The service inserts placeholder users (id only, role member) for assignees it first sees in events.';
COMMENT ON POLICY user_profiles_writer_select ON user_profiles IS
    'INSERT ... ON CONFLICT (id) reads the id back (the column grant limits it to the id).';
COMMENT ON POLICY user_profiles_owner_select ON user_profiles IS
    'app_user_role() and app_login() (SECURITY DEFINER, owned by healthscore_owner) look users up.';
COMMENT ON POLICY user_profiles_dashboard_select ON user_profiles IS
    'A dashboard user reads their own profile (app_user_id()), an admin every profile.';

COMMENT ON TABLE user_profiles IS
    'People who use the product or the dashboard (stand-in for the product''s table). Row-level security: a dashboard user sees their own profile, an admin all of them.';
COMMENT ON TABLE organizations IS
    'Customer organizations (stand-in for the product''s table). The service inserts a placeholder row (id only) for an organization it first sees in events. Row-level security: dashboard admins see them all, nobody else any.';
