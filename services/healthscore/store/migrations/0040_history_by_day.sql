-- The score history keeps one row per organization per event-time day (UTC).
--
-- Until now every batch appended each organization's last score, and every silence
-- rescoring (up to four a day) a row of its own: the rows depended on where the
-- batches were cut, and the dashboard's daily trail picked each day's last one
-- (DISTINCT ON). Now a day's row is its latest score: the service upserts on
-- (organization_id, day) and keeps the row with the latest as-of time
-- (healthscore.store.sql.UPSERT_SCORE_HISTORY), so a replay and the live run end
-- with the same rows.
--
-- Existing rows: each organization's day keeps its latest score (the latest
-- scored_at; of equal ones, the last written). The added stored column rewrites
-- the table under an ACCESS EXCLUSIVE lock, so batches and the dashboard's history
-- reads wait until it commits. Stop the previous release before applying it: its
-- plain INSERT would fail on the new key for an organization's second score of a
-- day (its batches would fail and be retried until it is replaced).

DELETE FROM health_score_history h
USING (
    SELECT id,
           row_number() OVER (
               PARTITION BY organization_id, (scored_at AT TIME ZONE 'UTC')::date
               ORDER BY scored_at DESC, id DESC) AS n
    FROM health_score_history
) AS ranked
WHERE h.id = ranked.id AND ranked.n > 1;

ALTER TABLE health_score_history
    ADD COLUMN day date GENERATED ALWAYS AS ((scored_at AT TIME ZONE 'UTC')::date) STORED;
COMMENT ON COLUMN health_score_history.day IS
    'Event-time day (UTC date of scored_at): an organization has one row per day, the day''s latest score.';

ALTER TABLE health_score_history
    ADD CONSTRAINT health_score_history_organization_day_key UNIQUE (organization_id, day);
COMMENT ON INDEX health_score_history_organization_day_key IS
    'One row per organization per day: the arbiter of UPSERT_SCORE_HISTORY (ON CONFLICT (organization_id, day)).';

COMMENT ON TABLE health_score_history IS
    'Each organization''s score trail: one row per event-time day (UTC), the day''s latest score (score_change_7d/30d come from organization_state.daily_scores).';
COMMENT ON COLUMN health_score_history.scored_at IS
    'Event time the score holds for: the latest score of its day.';
COMMENT ON COLUMN health_score_history.cause IS
    'What made the day''s latest score: events (a batch applied the organization''s events) or sweep (a silence rescoring).';
COMMENT ON COLUMN health_score_history.recorded_at IS
    'Wall clock when the row was last written.';

-- UPSERT_SCORE_HISTORY: ON CONFLICT (organization_id, day) needs SELECT on its
-- columns, and PostgreSQL checks SELECT on every column the DO UPDATE reads,
-- through EXCLUDED too (all the score columns; the stored scored_at). It replaces
-- the score columns and recorded_at: not the identity, the organization or the
-- day, and still no DELETE.
GRANT SELECT (organization_id, day, scored_at, health_score, churn_probability, risk_level,
              components, score_model_version, cause),
      UPDATE (scored_at, health_score, churn_probability, risk_level, components,
              score_model_version, cause, recorded_at)
    ON health_score_history TO healthscore_writer;

COMMENT ON POLICY health_score_history_writer_all ON health_score_history IS
    'The service upserts each organization''s daily score (its grants of 0022 and 0040: INSERT, UPDATE of the score columns).';
