-- The model versions the service has served with, and how each accumulates the
-- organization state's aggregates (its signal half-lives and weights, the settings
-- healthscore.core.quality.aggregate_settings names). A promotion rescores every
-- organization at its stored state: when the model it promotes from accumulated the
-- aggregates otherwise, the new model reads sums built under the old settings until
-- `healthscore replay` recomputes them, and the service says so
-- (`promotion_aggregates_differ`). Written once per version by the service at start.

CREATE TABLE score_models (
    version          text        PRIMARY KEY,
    aggregates       jsonb       NOT NULL,
    first_served_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE score_models OWNER TO healthscore_owner;
COMMENT ON TABLE score_models IS
    'Each model version the service has served with and its aggregate settings (half-lives, signal weights): what a promotion compares the live model with.';
COMMENT ON COLUMN score_models.aggregates IS
    'healthscore.core.quality.aggregate_settings of the model: the settings under which it accumulates organization_state''s decayed sums.';
COMMENT ON COLUMN score_models.first_served_at IS 'When a service first started with this version.';

GRANT SELECT, INSERT (version, aggregates) ON score_models TO healthscore_writer;
