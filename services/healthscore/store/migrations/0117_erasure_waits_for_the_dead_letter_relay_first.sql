-- The erasure's wait for the relays (0116), in the other order. 0116 took the alert
-- relay's lock first and then waited, holding it, for the dead-letter relay's: a
-- dead-letter topic slow to acknowledge (several topics a page, 75 s each at most) kept
-- every alert from being published while the erasure waited (review 34e, reproduced: the
-- alert relay's try failed 40 times of 40 over 20 s). The dead-letter relay's lock first:
-- while the erasure then waits for an alert page in flight (75 s at most) only dead
-- letters wait.
CREATE OR REPLACE FUNCTION erasure_waits_for_the_relays() RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    -- healthscore.store.locks.DEAD_LETTER_RELAY, then RELAY (a test keeps them equal)
    SELECT pg_advisory_xact_lock(29384866683709446);
    SELECT pg_advisory_xact_lock(29384866683709441);
$$;
COMMENT ON FUNCTION erasure_waits_for_the_relays() IS
    '`healthscore erase`, first in its transaction: takes the dead-letter relay''s, then the alert relay''s leader lock (transaction-level), so that the erasure waits for a page in flight and no page starts before it commits; in that order, so that alerts do not wait behind a slow dead-letter topic.';

DO $notice$
BEGIN
    -- 0116 granted the lock function to the owner only where a superuser ran it; where
    -- the operator revoked the lock functions from PUBLIC by hand (as 0109 advises when
    -- no superuser runs the migrations), the function cannot take its locks without it
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
       AND NOT has_function_privilege('healthscore_owner', 'pg_catalog.pg_advisory_xact_lock(bigint)', 'EXECUTE')
    THEN
        RAISE WARNING 'healthscore_owner may not execute pg_advisory_xact_lock(bigint): '
            'healthscore erase will fail until it may (GRANT EXECUTE ON FUNCTION '
            'pg_catalog.pg_advisory_xact_lock(bigint) TO healthscore_owner, as the owner '
            'of pg_catalog; docs/operations.md, "Roles and logins")';
    END IF;
END
$notice$;
