-- The service's own tables: per-organization scoring state, event dedupe,
-- consumer offsets, score history and the alert outbox. Only the service
-- (healthscore_writer) reads them; dashboards do not (no grant, no RLS needed).
-- No updated_at triggers here: these are hot-path tables and the service sets
-- updated_at itself in its set-based upserts.

CREATE TABLE organization_state (
    organization_id          uuid        PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    state                    jsonb       NOT NULL,
    last_event_at            timestamptz NULL,
    health_version           bigint      NOT NULL DEFAULT 0,
    published_health_version bigint      NOT NULL DEFAULT 0,
    updated_at               timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE organization_state OWNER TO healthscore_owner;
COMMENT ON TABLE organization_state IS
    'Incremental scoring aggregates of each organization (healthscore.scoring.state), updated in O(1) per event.';
COMMENT ON COLUMN organization_state.state IS 'Serialized aggregates (windows, decayed activity, counters, last-seen times).';
COMMENT ON COLUMN organization_state.last_event_at IS 'Newest event time seen; the silence sweep rescores organizations whose newest event is old.';
COMMENT ON COLUMN organization_state.health_version IS 'Incremented whenever customer_health of the organization changes.';
COMMENT ON COLUMN organization_state.published_health_version IS
    'health_version last published to customer.health.v1; differs from health_version while a publish is due.';
CREATE INDEX organization_state_last_event_at_idx ON organization_state (last_event_at);
COMMENT ON INDEX organization_state_last_event_at_idx IS
    'Serves: the silence sweep (WHERE last_event_at < $1).';
CREATE INDEX organization_state_unpublished_idx ON organization_state (organization_id)
    WHERE health_version <> published_health_version;
COMMENT ON INDEX organization_state_unpublished_idx IS
    'Serves: the health-feed relay (WHERE health_version <> published_health_version).';

CREATE TABLE processed_events (
    event_id        uuid        PRIMARY KEY,
    organization_id uuid        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    processed_at    timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE processed_events OWNER TO healthscore_owner;
COMMENT ON TABLE processed_events IS
    'Event ids already applied, so an upstream duplicate counts once; purged after the retention window. No foreign key: hot path.';
COMMENT ON COLUMN processed_events.occurred_at IS 'Event time of the event (for diagnostics and replay checks).';
COMMENT ON COLUMN processed_events.processed_at IS 'When the service applied it; retention purges by this column.';
CREATE INDEX processed_events_processed_at_idx ON processed_events (processed_at);
COMMENT ON INDEX processed_events_processed_at_idx IS
    'Serves: the retention purge (DELETE ... WHERE processed_at < $1).';

CREATE TABLE consumer_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    max_event_time timestamptz NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition),
    CONSTRAINT consumer_offsets_partition_check CHECK (partition >= 0),
    CONSTRAINT consumer_offsets_next_offset_check CHECK (next_offset >= 0)
);
ALTER TABLE consumer_offsets OWNER TO healthscore_owner;
COMMENT ON TABLE consumer_offsets IS
    'Next Kafka offset to consume per (group, topic, partition), committed in the same transaction as the batch''s effects; consumers seek to it on assignment.';
COMMENT ON COLUMN consumer_offsets.next_offset IS 'Offset of the next record to consume (last applied + 1).';
COMMENT ON COLUMN consumer_offsets.max_event_time IS 'Largest occurred_at applied from the partition (event-time watermark).';

CREATE TABLE health_score_history (
    id                  bigint       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id     uuid         NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    scored_at           timestamptz  NOT NULL,
    health_score        numeric(5,2) NOT NULL,
    churn_probability   numeric(5,4) NOT NULL,
    risk_level          text         NOT NULL,
    components          jsonb        NOT NULL,
    score_model_version text         NOT NULL,
    cause               text         NOT NULL,
    recorded_at         timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT health_score_history_health_score_check CHECK (health_score BETWEEN 0 AND 100),
    CONSTRAINT health_score_history_churn_probability_check CHECK (churn_probability BETWEEN 0 AND 1),
    CONSTRAINT health_score_history_risk_level_check
        CHECK (risk_level IN ('low', 'medium', 'high', 'critical')),
    CONSTRAINT health_score_history_cause_check CHECK (cause IN ('events', 'sweep'))
);
ALTER TABLE health_score_history OWNER TO healthscore_owner;
COMMENT ON TABLE health_score_history IS
    'Every recomputed score of an organization (score_change_7d/30d and trends come from here).';
COMMENT ON COLUMN health_score_history.scored_at IS 'Event time the score holds for.';
COMMENT ON COLUMN health_score_history.components IS 'JSON object of the component scores (engagement, adoption, milestone, support, growth).';
COMMENT ON COLUMN health_score_history.cause IS 'events: a batch touched the organization; sweep: the silence sweep rescored it.';
COMMENT ON COLUMN health_score_history.recorded_at IS 'Wall clock when the row was written.';
CREATE INDEX health_score_history_organization_scored_idx
    ON health_score_history (organization_id, scored_at DESC);
COMMENT ON INDEX health_score_history_organization_scored_idx IS
    'Serves: an organization''s score at or before a time (WHERE organization_id = $1 AND scored_at <= $2 ORDER BY scored_at DESC LIMIT 1); also ON DELETE CASCADE.';

CREATE TABLE alert_outbox (
    alert_id         uuid        PRIMARY KEY,
    organization_id  uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    kind             text        NOT NULL,
    episode          integer     NOT NULL,
    payload          jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz NULL,
    publish_attempts integer     NOT NULL DEFAULT 0,
    last_error       text        NULL,
    CONSTRAINT alert_outbox_kind_check CHECK (kind IN ('risk_raised', 'risk_escalated', 'recovered')),
    CONSTRAINT alert_outbox_episode_check CHECK (episode >= 1),
    CONSTRAINT alert_outbox_publish_attempts_check CHECK (publish_attempts >= 0)
);
ALTER TABLE alert_outbox OWNER TO healthscore_owner;
COMMENT ON TABLE alert_outbox IS
    'Churn-risk alerts written in the batch transaction and published to customer.churn-risk.v1 by the relay.';
COMMENT ON COLUMN alert_outbox.alert_id IS 'Deterministic for (organization, episode, kind): a replay produces the same id.';
COMMENT ON COLUMN alert_outbox.episode IS 'Risk episode number of the organization (1, 2, ...).';
COMMENT ON COLUMN alert_outbox.payload IS 'The customer.churn-risk.v1 message body, as published.';
COMMENT ON COLUMN alert_outbox.published_at IS 'When the relay published it; NULL while pending.';
COMMENT ON COLUMN alert_outbox.last_error IS 'Error of the last failed publish attempt.';
CREATE INDEX alert_outbox_unpublished_idx ON alert_outbox (created_at) WHERE published_at IS NULL;
COMMENT ON INDEX alert_outbox_unpublished_idx IS
    'Serves: the relay (WHERE published_at IS NULL ORDER BY created_at).';
CREATE INDEX alert_outbox_organization_id_idx ON alert_outbox (organization_id);
COMMENT ON INDEX alert_outbox_organization_id_idx IS 'Serves: ON DELETE CASCADE from organizations.';
