-- success_milestones.acknowledged_by is whoever acknowledged, never a value the
-- client chose: an admin could record a milestone as acknowledged by someone else.
--
-- A BEFORE INSERT OR UPDATE trigger sets acknowledged_by to the verified identity
-- (app_user_id(), see 0020) whenever a statement sets or changes the
-- acknowledgment (acknowledged_at or acknowledged_by). A session without a
-- verified identity (a superuser's data fix) records NULL, never a chosen id.
-- Left alone: rows whose acknowledgment the statement does not touch (a reward
-- status change keeps the original acknowledger), rows without acknowledged_at
-- (the table's CHECK still refuses an acknowledged_by without it), and the
-- ON DELETE SET NULL of a deleted acknowledging user.

CREATE FUNCTION success_milestones_acknowledged_by_from_identity() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.acknowledged_at IS NULL THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE'
       AND NEW.acknowledged_at IS NOT DISTINCT FROM OLD.acknowledged_at
       AND NEW.acknowledged_by IS NOT DISTINCT FROM OLD.acknowledged_by THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE'
       AND NEW.acknowledged_at IS NOT DISTINCT FROM OLD.acknowledged_at
       AND NEW.acknowledged_by IS NULL
       AND NOT EXISTS (SELECT 1 FROM public.user_profiles u WHERE u.id = OLD.acknowledged_by) THEN
        RETURN NEW;  -- ON DELETE SET NULL: the acknowledging user is gone
    END IF;
    NEW.acknowledged_by := public.app_user_id();
    RETURN NEW;
END
$$;
ALTER FUNCTION success_milestones_acknowledged_by_from_identity() OWNER TO healthscore_owner;
REVOKE ALL ON FUNCTION success_milestones_acknowledged_by_from_identity() FROM PUBLIC;
COMMENT ON FUNCTION success_milestones_acknowledged_by_from_identity() IS
    'BEFORE INSERT OR UPDATE trigger of success_milestones: an acknowledgment set or changed is attributed to app_user_id() (NULL without a verified identity), whatever acknowledged_by the statement gave. SECURITY DEFINER (healthscore_owner) to see whether a cleared acknowledger still exists.';

CREATE TRIGGER success_milestones_acknowledged_by_from_identity
    BEFORE INSERT OR UPDATE ON success_milestones
    FOR EACH ROW EXECUTE FUNCTION success_milestones_acknowledged_by_from_identity();
COMMENT ON TRIGGER success_milestones_acknowledged_by_from_identity ON success_milestones IS
    'acknowledged_by comes from the verified identity, not from the client.';

COMMENT ON COLUMN success_milestones.acknowledged_by IS
    'user_profiles id of the admin who acknowledged it, set by the database from the verified identity (app_user_id()); requires acknowledged_at.';
