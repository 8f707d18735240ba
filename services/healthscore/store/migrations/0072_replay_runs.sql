-- The options each replay runs with, so that `replay --resume` goes on with the same.
--
-- A resumed replay that scored without the silence sweep what the interrupted one scored
-- with it would leave the organizations' history made under two rules (silence rescored
-- before each event in one part, not in the other), and one that published alerts after
-- an interrupted one that did not would leave the first part's alerts unpublished (or
-- the reverse): neither ends where an uninterrupted replay ends. The replay records its
-- options before its service starts; a resume with other options is refused.

CREATE TABLE replay_runs (
    consumer_group  text        PRIMARY KEY,
    silence_sweep   boolean     NOT NULL,
    publish_alerts  boolean     NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE replay_runs OWNER TO healthscore_owner;
COMMENT ON TABLE replay_runs IS
    'The options of each replay (`healthscore replay`), recorded before it starts, keyed by its consumer group: `replay --resume` refuses other options than the interrupted replay ran with.';
COMMENT ON COLUMN replay_runs.consumer_group IS 'The replay''s consumer group (CONSUMER_GROUP-replay-<8 hex digits>, or the group it was given).';
COMMENT ON COLUMN replay_runs.silence_sweep IS 'Whether it rescored silence (false: --no-sweep).';
COMMENT ON COLUMN replay_runs.publish_alerts IS 'Whether it published alerts and the health feed (--publish-alerts).';
COMMENT ON COLUMN replay_runs.started_at IS 'When it started (a resume keeps the first start).';

-- a replay may run as the service's role on a migrated database (its migrations then
-- apply nothing): it records its options and a resume reads them
GRANT SELECT, INSERT (consumer_group, silence_sweep, publish_alerts) ON replay_runs TO healthscore_writer;
