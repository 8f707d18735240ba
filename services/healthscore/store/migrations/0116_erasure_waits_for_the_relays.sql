-- An erasure waits for the relays' pages in flight before it takes anything else. A
-- relay reads a page of alerts (or of dead letters: a rejected record as sent) and
-- publishes it before it marks or deletes the rows; an erasure that committed in between
-- let the erased organization's alert or payload out after it. The relays' leader locks
-- are transaction-level: taking both in the erasure's transaction waits for the page in
-- flight, and keeps the next page from starting until the erasure commits. First, before
-- the erasure takes the stored offsets (which every batch waits for): a broker slow to
-- acknowledge holds only the erasure, not the consumers. The eraser may not take advisory
-- locks itself (migration 0109): this function takes these two, and no other.
DO $grant$
BEGIN
    -- the function's owner waits for the two keys (0109 left pg_advisory_xact_lock to
    -- nobody; without a superuser it is still PUBLIC's, as 0109 says)
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        GRANT EXECUTE ON FUNCTION pg_catalog.pg_advisory_xact_lock(bigint) TO healthscore_owner;
    END IF;
END
$grant$;

CREATE FUNCTION erasure_waits_for_the_relays() RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    -- healthscore.store.locks.RELAY and DEAD_LETTER_RELAY (a test keeps them equal)
    SELECT pg_advisory_xact_lock(29384866683709441);
    SELECT pg_advisory_xact_lock(29384866683709446);
$$;
ALTER FUNCTION erasure_waits_for_the_relays() OWNER TO healthscore_owner;
COMMENT ON FUNCTION erasure_waits_for_the_relays() IS
    '`healthscore erase`, first in its transaction: takes the alert relay''s and the dead-letter relay''s leader locks (transaction-level), so that the erasure waits for a page in flight and no page starts before it commits.';
REVOKE ALL ON FUNCTION erasure_waits_for_the_relays() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION erasure_waits_for_the_relays() TO healthscore_eraser;
