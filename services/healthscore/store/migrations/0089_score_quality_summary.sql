-- How far to trust the scores, for the people who act on them: the live model's
-- backtest (the held-out figures its config was accepted on) beside the live alerts'
-- outcomes so far (healthscore.service.outcomes), one row the outcome labeller
-- rewrites after each labelling. The dashboard shows it to admins, who see the scores
-- (customer_health's rule: row-level security, FORCE'd, admins only); the figures are
-- aggregates over every organization, so nobody who sees no score sees them.

CREATE TABLE score_quality_summary (
    singleton            boolean     PRIMARY KEY DEFAULT true,
    score_model_version  text        NOT NULL,
    backtest             jsonb       NOT NULL,
    episodes_churned     integer     NOT NULL,
    episodes_retained    integer     NOT NULL,
    episodes_pending     integer     NOT NULL,
    churners             integer     NOT NULL,
    churners_alerted     integer     NOT NULL,
    lead_days_quartiles  float8[]    NULL,
    computed_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT score_quality_summary_singleton_check CHECK (singleton),
    CONSTRAINT score_quality_summary_counts_check CHECK (
        episodes_churned >= 0 AND episodes_retained >= 0 AND episodes_pending >= 0
        AND churners >= 0 AND churners_alerted BETWEEN 0 AND churners),
    CONSTRAINT score_quality_summary_quartiles_check
        CHECK (lead_days_quartiles IS NULL OR cardinality(lead_days_quartiles) = 3)
);
ALTER TABLE score_quality_summary OWNER TO healthscore_owner;
COMMENT ON TABLE score_quality_summary IS
    'One row: the live model''s backtest and the live alerts'' outcomes so far, written by the outcome labeller (healthscore.service.outcomes) for the dashboard''s "How far to trust these scores".';
COMMENT ON COLUMN score_quality_summary.singleton IS 'Always true: the table holds one row.';
COMMENT ON COLUMN score_quality_summary.score_model_version IS
    'The model of the service that wrote the row (during a rolling promotion, the labeller''s).';
COMMENT ON COLUMN score_quality_summary.backtest IS
    'The model config''s evaluation on held-out organizations (healthscore.core.quality.backtest): what it was accepted on.';
COMMENT ON COLUMN score_quality_summary.episodes_churned IS
    'Live alert episodes whose organization churned within 60 days after the raise.';
COMMENT ON COLUMN score_quality_summary.episodes_retained IS
    'Live alert episodes known not to have churned within 60 days after the raise.';
COMMENT ON COLUMN score_quality_summary.episodes_pending IS
    'Live alert episodes whose 60 days have not yet passed in what the service knows.';
COMMENT ON COLUMN score_quality_summary.churners IS
    'Organizations the service scored that churned (support stream or imported labels).';
COMMENT ON COLUMN score_quality_summary.churners_alerted IS
    'Of those, the ones with a risk_raised in the 60 days before their churn.';
COMMENT ON COLUMN score_quality_summary.lead_days_quartiles IS
    'Days from the first such raise to the churn: 25th, 50th and 75th percentiles (NULL: none alerted).';
COMMENT ON COLUMN score_quality_summary.computed_at IS 'Wall clock of the labelling it summarizes.';

ALTER TABLE score_quality_summary ENABLE ROW LEVEL SECURITY;
ALTER TABLE score_quality_summary FORCE ROW LEVEL SECURITY;

-- SAVE_SCORE_QUALITY_SUMMARY (INSERT ... ON CONFLICT (singleton) DO UPDATE)
GRANT SELECT, INSERT (score_model_version, backtest, episodes_churned, episodes_retained,
                      episodes_pending, churners, churners_alerted, lead_days_quartiles),
      UPDATE (score_model_version, backtest, episodes_churned, episodes_retained,
              episodes_pending, churners, churners_alerted, lead_days_quartiles, computed_at)
    ON score_quality_summary TO healthscore_writer;
-- the read API's SCORE_QUALITY
GRANT SELECT ON score_quality_summary TO cs_dashboard;

CREATE POLICY score_quality_summary_writer_all ON score_quality_summary
    FOR ALL TO healthscore_writer USING (true) WITH CHECK (true);
CREATE POLICY score_quality_summary_dashboard_admin_select ON score_quality_summary
    FOR SELECT TO cs_dashboard USING ((SELECT app_user_role() = 'admin'));
COMMENT ON POLICY score_quality_summary_writer_all ON score_quality_summary IS
    'The outcome labeller writes the one row (its grants limit it to those columns).';
COMMENT ON POLICY score_quality_summary_dashboard_admin_select ON score_quality_summary IS
    'Dashboard admins read it (as customer_health: who sees no score sees no figures about them).';

-- announced as the read model's tables are (0050, 0070), so that the read API's cache
-- keeps an answer only until the labeller rewrites the row
CREATE TRIGGER score_quality_summary_read_model_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON score_quality_summary
    FOR EACH STATEMENT EXECUTE FUNCTION read_model_changed();
