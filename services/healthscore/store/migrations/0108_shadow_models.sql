-- The settings each shadow candidate version scored by (review 32): a candidate
-- restarted under the same version with other settings inherited the first one's
-- rows (scores, episode states, alerts), so organizations that had not changed kept
-- the first candidate's scores and `shadow-report` presented the mix as the second's.
-- The shadow scorer records its candidate's settings under the version the first
-- time it scores and refuses to score a version recorded with other settings.

CREATE TABLE shadow_models (
    score_model_version text        PRIMARY KEY,
    scoring             jsonb       NOT NULL,
    recorded_at         timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE shadow_models OWNER TO healthscore_owner;
COMMENT ON TABLE shadow_models IS
    'Each shadow candidate version''s scoring settings (healthscore.core.quality.scoring_settings), recorded by the first shadow scorer that scored it.';

-- RECORD_SHADOW_MODEL (ON CONFLICT DO NOTHING), RECORDED_SHADOW_MODEL
GRANT SELECT, INSERT (score_model_version, scoring) ON shadow_models TO healthscore_writer;
