-- Advisory locks for the service's roles only (review 32b, F1). Every PostgreSQL login
-- could take any advisory lock: PUBLIC executes the lock functions by default. A
-- dashboard login held the service's leader and shard keys (store/locks.py) for as long
-- as its session lived, and each loop that found its lock taken idled as a follower,
-- saying nothing: no alert was published, no queued projection written, no silence
-- swept, no dead letter relayed, and `healthscore migrate` waited forever.
--
-- The lock-taking functions are revoked from PUBLIC and granted to the roles that take
-- them: healthscore_writer (the leaders' and the projector's shards' transaction
-- locks, and the migration lock: `serve` without MIGRATION_DATABASE_URL checks the
-- migrations under it as its own login) and healthscore_owner (the migration lock,
-- for a migration login that is a member of it; a superuser needs no grant). The unlock functions stay PUBLIC: they
-- release only the caller's own locks, and a pool's reset calls pg_advisory_unlock_all.
-- Only a superuser may change the functions' privileges; run by anyone else (a managed
-- database's admin role), the migration says so and the hole stays open there: revoke
-- it as the database's owner of pg_catalog (docs/operations.md, "Roles and logins").
DO $advisory$
DECLARE
    fn regprocedure;
BEGIN
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        FOREACH fn IN ARRAY ARRAY[
            'pg_catalog.pg_advisory_lock(bigint)',
            'pg_catalog.pg_advisory_lock(integer, integer)',
            'pg_catalog.pg_advisory_lock_shared(bigint)',
            'pg_catalog.pg_advisory_lock_shared(integer, integer)',
            'pg_catalog.pg_try_advisory_lock(bigint)',
            'pg_catalog.pg_try_advisory_lock(integer, integer)',
            'pg_catalog.pg_try_advisory_lock_shared(bigint)',
            'pg_catalog.pg_try_advisory_lock_shared(integer, integer)',
            'pg_catalog.pg_advisory_xact_lock(bigint)',
            'pg_catalog.pg_advisory_xact_lock(integer, integer)',
            'pg_catalog.pg_advisory_xact_lock_shared(bigint)',
            'pg_catalog.pg_advisory_xact_lock_shared(integer, integer)',
            'pg_catalog.pg_try_advisory_xact_lock(bigint)',
            'pg_catalog.pg_try_advisory_xact_lock(integer, integer)',
            'pg_catalog.pg_try_advisory_xact_lock_shared(bigint)',
            'pg_catalog.pg_try_advisory_xact_lock_shared(integer, integer)'
        ]::regprocedure[]
        LOOP
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
        END LOOP;
        -- TRY_LEADER_LOCK, TRY_SHARD_LOCK, PENDING_PROJECTION's shard lock
        GRANT EXECUTE ON FUNCTION pg_catalog.pg_try_advisory_xact_lock(bigint),
                                  pg_catalog.pg_try_advisory_xact_lock(integer, integer)
            TO healthscore_writer;
        -- store/migrate.py: the migration lock (a session lock, waited for)
        GRANT EXECUTE ON FUNCTION pg_catalog.pg_try_advisory_lock(bigint),
                                  pg_catalog.pg_advisory_lock(bigint)
            TO healthscore_owner, healthscore_writer;
    ELSE
        RAISE NOTICE 'not a superuser: every login may still take advisory locks, and so '
            'hold the service''s leader and shard locks (revoke EXECUTE on the '
            'pg_advisory_*lock* functions from PUBLIC as the owner of pg_catalog)';
    END IF;
END
$advisory$;
