-- cs_dashboard loses its UPDATE privilege on success_milestones.acknowledged_by.
--
-- Granted with the other acknowledgment columns (0006), it has meant nothing since
-- 0023: a trigger sets acknowledged_by from the verified identity whatever a
-- statement gives, and the API's statements set only acknowledged_at and the reward
-- columns. Least privilege: a dashboard session that names an acknowledger is now
-- refused outright instead of silently overridden.
--
-- Withdrawing an acknowledgment (acknowledged_at set to NULL) needed the column too,
-- to clear acknowledged_by with it (the table's CHECK refuses an acknowledger without
-- an acknowledgment): the trigger now clears it. Everything else the trigger does is
-- unchanged (0023); the function is replaced in place, its owner, grants and settings
-- stated again so that this file alone says what it is.

CREATE OR REPLACE FUNCTION success_milestones_acknowledged_by_from_identity() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.acknowledged_at IS NULL THEN
        IF TG_OP = 'UPDATE' AND OLD.acknowledged_at IS NOT NULL THEN
            NEW.acknowledged_by := NULL;  -- withdrawn: nobody acknowledged it
        END IF;
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
    'BEFORE INSERT OR UPDATE trigger of success_milestones: an acknowledgment set or changed is attributed to app_user_id() (NULL without a verified identity), whatever acknowledged_by the statement gave; a withdrawn one (acknowledged_at set to NULL) clears acknowledged_by. SECURITY DEFINER (healthscore_owner) to see whether a cleared acknowledger still exists.';

REVOKE UPDATE (acknowledged_by) ON success_milestones FROM cs_dashboard;
