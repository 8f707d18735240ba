-- The score history's retention (HISTORY_RETENTION_DAYS, off unless set): the sweep's
-- replicas delete the days before a cutoff, a page at a time, through
-- purge_score_history(). The history was kept until its organization was erased: a row
-- per organization per day, a silent organization's included, for as long as the
-- service ran (review 35a M1: 108 KB per organization a year).
--
-- The writer deletes no history row itself: the function runs as the owner, whose
-- policies (the table's row-level security is FORCE'd) let it see and delete only days
-- more than 31 before today, whatever cutoff it is given.

-- a day's rows are written around that day, so a summary of each range of pages finds
-- the old days without an index entry per row on the event path
CREATE INDEX health_score_history_day_brin ON health_score_history USING brin (day);
COMMENT ON INDEX health_score_history_day_brin IS
    'Serves: purge_score_history() (HISTORY_RETENTION_DAYS).';

CREATE POLICY health_score_history_owner_purge_select ON health_score_history
    FOR SELECT TO healthscore_owner USING (day < current_date - 31);
CREATE POLICY health_score_history_owner_purge_delete ON health_score_history
    FOR DELETE TO healthscore_owner USING (day < current_date - 31);
COMMENT ON POLICY health_score_history_owner_purge_select ON health_score_history IS
    'purge_score_history() (SECURITY DEFINER, the owner''s) finds only days past 31.';
COMMENT ON POLICY health_score_history_owner_purge_delete ON health_score_history IS
    'purge_score_history() deletes only days past 31, whatever cutoff it is given.';

CREATE FUNCTION purge_score_history(before date, page_rows integer) RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    WITH gone AS (
        DELETE FROM public.health_score_history
        WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM public.health_score_history WHERE day < before
            LIMIT page_rows))
        RETURNING 1
    )
    SELECT count(*) FROM gone
$$;
ALTER FUNCTION purge_score_history(date, integer) OWNER TO healthscore_owner;
COMMENT ON FUNCTION purge_score_history(date, integer) IS
    'HISTORY_RETENTION_DAYS: deletes at most page_rows score history rows of days before the cutoff (never of the last 31 days: the owner''s policies); how many.';
REVOKE ALL ON FUNCTION purge_score_history(date, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION purge_score_history(date, integer) TO healthscore_writer;
