-- The score history's retention (HISTORY_RETENTION_DAYS, off unless set): once a UTC day
-- the sweep's replicas delete the days before a cutoff, organization by organization
-- through the history's own key, with purge_score_history(). The history was kept until
-- its organization was erased: a row per organization per day, a silent organization's
-- included, for as long as the service ran (review 35a M1: 108 KB per organization a
-- year).
--
-- The writer deletes no history row itself: the function runs as the owner, whose
-- policies (the table's row-level security is FORCE'd) let it see and delete only days
-- more than 31 before today (UTC), so that a wrong cutoff cannot take the last month.
-- (The writer may still move a row's scored_at, and with it its day: it writes the
-- scores, and this bound is not meant against it.)

CREATE POLICY health_score_history_owner_purge_select ON health_score_history
    FOR SELECT TO healthscore_owner
    USING (day < (pg_catalog.now() AT TIME ZONE 'UTC')::date - 31);
CREATE POLICY health_score_history_owner_purge_delete ON health_score_history
    FOR DELETE TO healthscore_owner
    USING (day < (pg_catalog.now() AT TIME ZONE 'UTC')::date - 31);
COMMENT ON POLICY health_score_history_owner_purge_select ON health_score_history IS
    'purge_score_history() (SECURITY DEFINER, the owner''s) finds only days past 31 (UTC).';
COMMENT ON POLICY health_score_history_owner_purge_delete ON health_score_history IS
    'purge_score_history() deletes only days past 31 (UTC), whatever cutoff it is given.';

-- at most 1,000 organizations a call: each found through the key (organization_id, day)
CREATE FUNCTION purge_score_history(before date, organization_ids uuid[]) RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (
        DELETE FROM public.health_score_history
        WHERE organization_id = ANY(organization_ids[1:1000]) AND day < before
        RETURNING 1
    )
    SELECT count(*) FROM gone
$$;
ALTER FUNCTION purge_score_history(date, uuid[]) OWNER TO healthscore_owner;
COMMENT ON FUNCTION purge_score_history(date, uuid[]) IS
    'HISTORY_RETENTION_DAYS: deletes the score history of the given organizations (the first 1,000) for the days before the cutoff, never of the last 31 days (the owner''s policies); how many rows.';
REVOKE ALL ON FUNCTION purge_score_history(date, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION purge_score_history(date, uuid[]) TO healthscore_writer;
