-- A state document was JSON text (migration 0013), validated by PostgreSQL's json
-- parser on every save and formatted float by float by the service: it is now
-- MessagePack bytes (`pack_state`), which neither side parses on the way in.
--
-- The column is renamed, not only retyped, so that a replica of an earlier
-- release still running during a rolling deploy fails every statement on it with
-- "column state does not exist" (an infrastructure error: its batch is rewound and
-- retried until the replica is replaced) instead of reading bytes it would take
-- for a bad document. The JSON already stored stays readable (`unpack_state`
-- tells them apart by the first byte) until the organization's next save. An
-- empty row (an organization locked before its first state) is NULL instead of
-- JSON null. The ALTER rewrites the table under an exclusive lock: see
-- docs/operations.md, "Migration 0066".
ALTER TABLE organization_state RENAME COLUMN state TO state_msgpack;
ALTER TABLE organization_state
    ALTER COLUMN state_msgpack DROP NOT NULL,
    ALTER COLUMN state_msgpack TYPE bytea
        USING CASE WHEN state_msgpack::text = 'null' THEN NULL
                   ELSE convert_to(state_msgpack::text, 'UTF8') END;
COMMENT ON COLUMN organization_state.state_msgpack IS
    'Serialized aggregates (healthscore.core.scoring.state, msgspec MessagePack; JSON bytes '
    'when last saved before migration 0066; NULL before the first state): windows, decayed '
    'activity, counters, last-seen times. `healthscore state ORGANIZATION_ID` prints one as JSON.';
