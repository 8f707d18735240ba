-- Score quality in the running service (issue 13): a candidate model scored beside
-- the live one (shadow_health, shadow_alerts), churn labels imported from a CRM
-- (churn_labels) and the outcome of every live alert decision (alert_outcomes).
--
-- All four are the service's own tables: healthscore_writer reads and writes them
-- with exactly the privileges of the statements in healthscore.store.quality;
-- the dashboard has no grant (no row-level security needed, as 0005's tables).
-- Nothing here is written by a consumer batch: the shadow scorer, the outcome
-- labeller and `healthscore import` write them in transactions of their own.

CREATE TABLE shadow_health (
    organization_id     uuid         NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    score_model_version text         NOT NULL,
    health_score        numeric(5,2) NOT NULL,
    churn_probability   numeric(5,4) NOT NULL,
    risk_level          text         NOT NULL,
    components          jsonb        NOT NULL,
    scored_at           timestamptz  NOT NULL,
    shadow_state        jsonb        NOT NULL,
    source_version      bigint       NOT NULL,
    started_at          timestamptz  NOT NULL,
    updated_at          timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, score_model_version),
    CONSTRAINT shadow_health_health_score_check CHECK (health_score BETWEEN 0 AND 100),
    CONSTRAINT shadow_health_churn_probability_check CHECK (churn_probability BETWEEN 0 AND 1),
    CONSTRAINT shadow_health_risk_level_check
        CHECK (risk_level IN ('low', 'medium', 'high', 'critical'))
);
ALTER TABLE shadow_health OWNER TO healthscore_owner;
COMMENT ON TABLE shadow_health IS
    'A candidate model''s latest score of each organization (SHADOW_MODEL_PATH), scored at the organization''s stored state by the shadow scorer; never published.';
COMMENT ON COLUMN shadow_health.score_model_version IS 'The candidate model''s version.';
COMMENT ON COLUMN shadow_health.scored_at IS 'Event time the score holds for (the live state''s last score time).';
COMMENT ON COLUMN shadow_health.shadow_state IS
    'What the candidate keeps of its own past (healthscore.core.quality.ShadowState): its daily scores, last score and alert episode state.';
COMMENT ON COLUMN shadow_health.source_version IS
    'organization_state.health_version the candidate last scored: the scorer takes organizations whose state changed since.';
COMMENT ON COLUMN shadow_health.started_at IS
    'Event time of the candidate''s first score of the organization: episodes are compared from here on.';

CREATE TABLE shadow_alerts (
    alert_id            uuid        NOT NULL,
    score_model_version text        NOT NULL,
    organization_id     uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    kind                text        NOT NULL,
    episode             integer     NOT NULL,
    trigger             text        NOT NULL,
    decided_at          timestamptz NOT NULL,
    health_score        numeric(5,2) NOT NULL,
    churn_probability   numeric(5,4) NOT NULL,
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (score_model_version, alert_id),
    CONSTRAINT shadow_alerts_kind_check CHECK (kind IN ('risk_raised', 'risk_escalated', 'recovered')),
    CONSTRAINT shadow_alerts_trigger_check
        CHECK (trigger IN ('probability_threshold', 'score_drop', 'escalation_step', 'recovery')),
    CONSTRAINT shadow_alerts_episode_check CHECK (episode >= 1)
);
ALTER TABLE shadow_alerts OWNER TO healthscore_owner;
COMMENT ON TABLE shadow_alerts IS
    'Alert decisions the candidate model would have made; kept for the comparison (healthscore shadow-report), never published.';
COMMENT ON COLUMN shadow_alerts.alert_id IS
    'Deterministic, as a live alert''s, and never a live alert''s id (healthscore.core.quality.shadow_alert_id).';
COMMENT ON COLUMN shadow_alerts.decided_at IS 'Event time of the decision (the score it was decided on).';
CREATE INDEX shadow_alerts_organization_idx ON shadow_alerts (organization_id);
COMMENT ON INDEX shadow_alerts_organization_idx IS 'Serves: ON DELETE CASCADE from organizations.';

CREATE TABLE churn_labels (
    organization_id uuid        PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    churned_at      timestamptz NULL,
    known_until     timestamptz NOT NULL,
    imported_at     timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE churn_labels OWNER TO healthscore_owner;
COMMENT ON TABLE churn_labels IS
    'Churn labels imported from a CRM (healthscore import --labels): when each organization churned, or NULL when it was retained up to known_until.';
COMMENT ON COLUMN churn_labels.churned_at IS 'When the organization churned; NULL: retained (as far as known_until).';
COMMENT ON COLUMN churn_labels.known_until IS 'The labels are complete up to this time (--labels-until, default the import time).';

CREATE TABLE alert_outcomes (
    alert_id        uuid        PRIMARY KEY,
    organization_id uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    kind            text        NOT NULL,
    episode         integer     NOT NULL,
    raised_at       timestamptz NULL,
    outcome         text        NULL,
    churned_at      timestamptz NULL,
    labelled_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_outcomes_kind_check CHECK (kind IN ('risk_raised', 'risk_escalated', 'recovered')),
    CONSTRAINT alert_outcomes_outcome_check CHECK (outcome IN ('retained', 'churned'))
);
ALTER TABLE alert_outcomes OWNER TO healthscore_owner;
COMMENT ON TABLE alert_outcomes IS
    'Every live alert decision (alert_outbox.alert_id) with the outcome of its episode, labelled by the service from the support stream and the imported churn labels (healthscore.service.outcomes).';
COMMENT ON COLUMN alert_outcomes.raised_at IS 'Event time of the episode''s risk_raised (NULL when the outbox has none).';
COMMENT ON COLUMN alert_outcomes.outcome IS
    'churned: the organization churned within 60 days after the raise; retained: it did not, and that is known (the log or the labels reach 60 days past the raise); NULL: not known yet.';
COMMENT ON COLUMN alert_outcomes.churned_at IS 'The churn that made the episode true.';
COMMENT ON COLUMN alert_outcomes.labelled_at IS 'Wall clock of the last change of the label.';
CREATE INDEX alert_outcomes_organization_idx ON alert_outcomes (organization_id);
COMMENT ON INDEX alert_outcomes_organization_idx IS 'Serves: ON DELETE CASCADE from organizations.';
CREATE INDEX alert_outcomes_kind_idx ON alert_outcomes (kind, outcome);
COMMENT ON INDEX alert_outcomes_kind_idx IS 'Serves: the outcome gauges (WHERE kind = ''risk_raised'' GROUP BY outcome).';

-- the churn signal of the support stream: few rows (an interaction closed as churned)
CREATE INDEX support_interactions_churned_idx ON support_interactions (organization_id)
    WHERE outcome = 'churned';
COMMENT ON INDEX support_interactions_churned_idx IS
    'Serves: the outcome labeller''s churn signals (WHERE outcome = ''churned'').';

-- SHADOW_PAGE, UPSERT_SHADOW_HEALTH, SHADOW_RAISES, SHADOW_COUNT
GRANT SELECT,
      INSERT (organization_id, score_model_version, health_score, churn_probability, risk_level,
              components, scored_at, shadow_state, source_version, started_at),
      UPDATE (health_score, churn_probability, risk_level, components, scored_at, shadow_state,
              source_version, updated_at)
    ON shadow_health TO healthscore_writer;
-- INSERT_SHADOW_ALERTS (ON CONFLICT DO NOTHING), SHADOW_RAISES
GRANT SELECT, INSERT (alert_id, score_model_version, organization_id, kind, episode, trigger,
                      decided_at, health_score, churn_probability)
    ON shadow_alerts TO healthscore_writer;
-- UPSERT_CHURN_LABELS; LABEL_ALERT_OUTCOMES reads them
GRANT SELECT, INSERT (organization_id, churned_at, known_until),
      UPDATE (churned_at, known_until, imported_at)
    ON churn_labels TO healthscore_writer;
-- LABEL_ALERT_OUTCOMES, OUTCOME_FIGURES
GRANT SELECT, INSERT (alert_id, organization_id, kind, episode, raised_at, outcome, churned_at),
      UPDATE (raised_at, outcome, churned_at, labelled_at)
    ON alert_outcomes TO healthscore_writer;
