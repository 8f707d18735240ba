-- Minimal stand-ins for the seed's existing organizations and user_profiles
-- tables, and the trigger function that keeps updated_at current.

CREATE FUNCTION set_updated_at() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
ALTER FUNCTION set_updated_at() OWNER TO healthscore_owner;
COMMENT ON FUNCTION set_updated_at() IS
    'BEFORE UPDATE trigger: sets updated_at to the transaction time.';

CREATE TABLE organizations (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text        NULL,
    plan       text        NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE organizations OWNER TO healthscore_owner;
COMMENT ON TABLE organizations IS
    'Customer organizations (stand-in for the product''s table). The service inserts a placeholder row (id only) for an organization it first sees in events.';
COMMENT ON COLUMN organizations.plan IS 'Subscription plan name, when known; NULL for placeholders.';
CREATE TRIGGER organizations_set_updated_at BEFORE UPDATE ON organizations
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE user_profiles (
    id              uuid        PRIMARY KEY,
    organization_id uuid        NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email           text        NULL,
    full_name       text        NULL,
    role            text        NOT NULL DEFAULT 'member',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_profiles_role_check CHECK (role IN ('admin', 'support', 'member'))
);
ALTER TABLE user_profiles OWNER TO healthscore_owner;
COMMENT ON TABLE user_profiles IS
    'People who use the product or the dashboard (stand-in for the product''s table). No row-level security: app_user_role() reads it.';
COMMENT ON COLUMN user_profiles.organization_id IS
    'Organization the user belongs to; NULL for internal staff (admins, support).';
COMMENT ON COLUMN user_profiles.role IS
    'Dashboard role: admin sees all health data, support sees interactions assigned to them, member sees nothing.';
CREATE INDEX user_profiles_organization_id_idx ON user_profiles (organization_id);
COMMENT ON INDEX user_profiles_organization_id_idx IS
    'Serves: ON DELETE CASCADE from organizations and "users of an organization".';
CREATE TRIGGER user_profiles_set_updated_at BEFORE UPDATE ON user_profiles
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
