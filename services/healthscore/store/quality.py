"""Named SQL of score quality: shadow scoring, churn labels, the outcome of live alerts.

None of these runs in a consumer batch's transaction: the shadow scorer, the
outcome labeller and `healthscore import` run them in transactions of their own.
"""

# --- shadow scoring ---------------------------------------------------------------

# One page of organizations in id order from the cursor ($1, the previous page's last
# id, or the nil UUID; a plain range, so that a generic plan walks the primary key):
# every id of the page (to move the cursor), the state only of those the candidate
# ($2) has not scored at their current version, looked up by key per row (a join
# could hash all of the candidate's rows for every page). The page is read without
# row locks: a batch never waits for the shadow scorer.
SHADOW_PAGE = """
SELECT p.organization_id,
       CASE WHEN h.source_version IS DISTINCT FROM p.health_version
            THEN p.state_msgpack END AS state,
       p.health_version,
       h.shadow_state::text AS shadow_state,
       h.started_at
FROM (SELECT organization_id, health_version, state_msgpack
      FROM organization_state
      WHERE organization_id >= $1
      ORDER BY organization_id
      LIMIT $3) AS p
LEFT JOIN LATERAL (
    SELECT source_version, shadow_state, started_at FROM shadow_health
    WHERE organization_id = p.organization_id AND score_model_version = $2) AS h ON true
ORDER BY p.organization_id
"""

UPSERT_SHADOW_HEALTH = """
INSERT INTO shadow_health AS h (
    organization_id, score_model_version, health_score, churn_probability, risk_level,
    components, scored_at, shadow_state, source_version, started_at)
SELECT organization_id, $1, health_score, churn_probability, risk_level, components::jsonb,
       scored_at, shadow_state::jsonb, source_version, started_at
FROM unnest($2::uuid[], $3::float8[], $4::float8[], $5::text[], $6::text[],
            $7::timestamptz[], $8::text[], $9::bigint[], $10::timestamptz[])
     AS x(organization_id, health_score, churn_probability, risk_level, components,
          scored_at, shadow_state, source_version, started_at)
ORDER BY organization_id
ON CONFLICT (organization_id, score_model_version) DO UPDATE SET
    health_score = EXCLUDED.health_score,
    churn_probability = EXCLUDED.churn_probability,
    risk_level = EXCLUDED.risk_level,
    components = EXCLUDED.components,
    scored_at = EXCLUDED.scored_at,
    shadow_state = EXCLUDED.shadow_state,
    source_version = EXCLUDED.source_version,
    updated_at = now()
"""

INSERT_SHADOW_ALERTS = """
INSERT INTO shadow_alerts (
    alert_id, score_model_version, organization_id, kind, episode, trigger, decided_at,
    health_score, churn_probability)
SELECT alert_id, $1, organization_id, kind, episode, trigger, decided_at, health_score,
       churn_probability
FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::int[], $6::text[], $7::timestamptz[],
            $8::float8[], $9::float8[])
     AS x(alert_id, organization_id, kind, episode, trigger, decided_at, health_score,
          churn_probability)
ON CONFLICT (score_model_version, alert_id) DO NOTHING
"""

# Every raise to compare, per organization the candidate ($1) has scored, after the
# candidate's first score of it (which took over the live episode state, a live
# raise at that very score included): the live model's (the outbox; `scored_at` of
# the alert is the event time it was decided at) and the candidate's. $2: one
# organization, or NULL for all.
SHADOW_RAISES = """
SELECT h.organization_id, 'live' AS model,
       extract(epoch FROM (a.payload->>'scored_at')::timestamptz)::float8 AS raised_at
FROM shadow_health h
JOIN alert_outbox a ON a.organization_id = h.organization_id AND a.kind = 'risk_raised'
WHERE h.score_model_version = $1 AND ($2::uuid IS NULL OR h.organization_id = $2::uuid)
  AND (a.payload->>'scored_at')::timestamptz > h.started_at
UNION ALL
SELECT s.organization_id, 'candidate', extract(epoch FROM s.decided_at)::float8
FROM shadow_alerts s
WHERE s.score_model_version = $1 AND s.kind = 'risk_raised'
  AND ($2::uuid IS NULL OR s.organization_id = $2::uuid)
ORDER BY 1, 2, 3
"""

# The candidate's scoring settings under its version, the first time it scores
RECORD_SHADOW_MODEL = """
INSERT INTO shadow_models (score_model_version, scoring) VALUES ($1, $2::jsonb)
ON CONFLICT (score_model_version) DO NOTHING
"""

RECORDED_SHADOW_MODEL = "SELECT scoring::text FROM shadow_models WHERE score_model_version = $1"

SHADOW_COUNT = """
SELECT count(*) AS organizations, min(started_at) AS since, max(scored_at) AS scored_until
FROM shadow_health WHERE score_model_version = $1
"""

# --- churn labels and the outcome of live alerts -------------------------------------

# A label import replaces what an earlier import said of the same organization.
UPSERT_CHURN_LABELS = """
INSERT INTO churn_labels AS l (organization_id, churned_at, known_until)
SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[])
ON CONFLICT (organization_id) DO UPDATE SET
    churned_at = EXCLUDED.churned_at,
    known_until = EXCLUDED.known_until,
    imported_at = now()
"""

# Every churn known: the imported labels, and the support stream's interactions
# whose outcome is `churned` (at the event time that set the outcome).
_CHURNS = """
churns AS (
    SELECT organization_id, churned_at FROM churn_labels WHERE churned_at IS NOT NULL
    UNION ALL
    SELECT organization_id, to_timestamp((field_event_times->'outcome'->>0)::float8)
    FROM support_interactions WHERE outcome = 'churned'
)"""

# Label every alert decision with its episode's outcome (healthscore.core.quality):
# churned when a churn falls within ($2 seconds] after the episode's raise;
# retained when none does and the raise lies at least that long before what is
# known: the log's event-time watermark ($1, NULL while unknown: the support
# stream has been read that far, `sweep.event_time_watermark`) or the
# organization's imported labels. New decisions are inserted unlabelled (NULL)
# and labelled once known; a label that changes (a late import) is updated. While
# the watermark is not known, a label it gave stays (a churn read meanwhile still
# relabels): an input partition not read yet must not flip retained episodes back.
# Set-based, over the outbox's raises. Only new and changed labels reach the INSERT:
# ON CONFLICT locks the row it conflicts with before its WHERE is weighed, so a run
# that passed every alert locked (and wrote to the WAL) every row, every minute.
LABEL_ALERT_OUTCOMES = f"""
WITH watermark AS (SELECT $1::timestamptz AS at),
{_CHURNS},
raised AS (
    SELECT organization_id, episode, min((payload->>'scored_at')::timestamptz) AS raised_at
    FROM alert_outbox WHERE kind = 'risk_raised'
    GROUP BY organization_id, episode
),
judged AS (
    SELECT r.organization_id, r.episode, r.raised_at,
           (SELECT min(c.churned_at) FROM churns c
            WHERE c.organization_id = r.organization_id
              AND c.churned_at > r.raised_at
              AND c.churned_at <= r.raised_at + make_interval(secs => $2)) AS churned_at,
           greatest((SELECT at FROM watermark),
                    (SELECT known_until FROM churn_labels l
                     WHERE l.organization_id = r.organization_id)) AS known_until
    FROM raised r
),
labelled AS (
    SELECT a.alert_id, a.organization_id, a.kind, a.episode, j.raised_at, j.churned_at,
           CASE WHEN j.churned_at IS NOT NULL THEN 'churned'
                WHEN j.raised_at + make_interval(secs => $2) <= j.known_until THEN 'retained'
                -- the watermark unknown: what it labelled before stays
                WHEN (SELECT at FROM watermark) IS NULL THEN prev.outcome
           END AS outcome,
           prev.alert_id IS NULL AS new,
           prev.raised_at AS was_raised_at, prev.outcome AS was_outcome,
           prev.churned_at AS was_churned_at
    FROM alert_outbox a
    LEFT JOIN judged j ON j.organization_id = a.organization_id AND j.episode = a.episode
    LEFT JOIN alert_outcomes prev ON prev.alert_id = a.alert_id
)
INSERT INTO alert_outcomes AS o (
    alert_id, organization_id, kind, episode, raised_at, outcome, churned_at)
SELECT alert_id, organization_id, kind, episode, raised_at, outcome, churned_at
FROM labelled
WHERE new
   OR (raised_at, outcome, churned_at)
      IS DISTINCT FROM (was_raised_at, was_outcome, was_churned_at)
ORDER BY alert_id
ON CONFLICT (alert_id) DO UPDATE SET
    raised_at = EXCLUDED.raised_at,
    outcome = EXCLUDED.outcome,
    churned_at = EXCLUDED.churned_at,
    labelled_at = now()
WHERE (o.raised_at, o.outcome, o.churned_at)
      IS DISTINCT FROM (EXCLUDED.raised_at, EXCLUDED.outcome, EXCLUDED.churned_at)
"""  # noqa: S608 (fixed text: the churns CTE, no input)

# The live alerts' figures, as the offline evaluation defines them
# (healthscore_lab.evaluation.metrics): episodes by outcome (precision = churned /
# labelled); of the organizations the service scored that churned (first churn),
# those with a raise in the ($1 seconds) before it, and the lead time from the
# first such raise to the churn, in days (quartiles).
OUTCOME_FIGURES = f"""
WITH {_CHURNS},
first_churn AS (
    SELECT c.organization_id, min(c.churned_at) AS churned_at
    FROM churns c
    WHERE EXISTS (SELECT 1 FROM organization_state s WHERE s.organization_id = c.organization_id)
    GROUP BY c.organization_id
),
leads AS (
    SELECT f.organization_id,
           extract(epoch FROM f.churned_at - min((a.payload->>'scored_at')::timestamptz))
               / 86400.0 AS lead_days
    FROM first_churn f
    JOIN alert_outbox a ON a.organization_id = f.organization_id AND a.kind = 'risk_raised'
    WHERE (a.payload->>'scored_at')::timestamptz < f.churned_at
      AND (a.payload->>'scored_at')::timestamptz >= f.churned_at - make_interval(secs => $1)
    GROUP BY f.organization_id, f.churned_at
),
episodes AS (
    SELECT count(*) FILTER (WHERE outcome = 'churned') AS churned,
           count(*) FILTER (WHERE outcome = 'retained') AS retained,
           count(*) FILTER (WHERE outcome IS NULL) AS pending
    FROM alert_outcomes WHERE kind = 'risk_raised'
)
SELECT e.churned, e.retained, e.pending,
       (SELECT count(*) FROM first_churn) AS churners,
       (SELECT count(*) FROM leads) AS churners_alerted,
       (SELECT percentile_cont(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY lead_days)
        FROM leads)::float8[] AS lead_days_quartiles
FROM episodes e
"""  # noqa: S608 (fixed text: the churns CTE, no input)

# The dashboard's summary (migration 0089): the live model's backtest beside the
# figures OUTCOME_FIGURES just gave, one row, rewritten by the labeller that labelled.
SAVE_SCORE_QUALITY_SUMMARY = """
INSERT INTO score_quality_summary AS q (
    score_model_version, backtest, episodes_churned, episodes_retained, episodes_pending,
    churners, churners_alerted, lead_days_quartiles)
VALUES ($1, $2::jsonb, $3, $4, $5, $6, $7, $8::float8[])
ON CONFLICT (singleton) DO UPDATE SET
    score_model_version = EXCLUDED.score_model_version,
    backtest = EXCLUDED.backtest,
    episodes_churned = EXCLUDED.episodes_churned,
    episodes_retained = EXCLUDED.episodes_retained,
    episodes_pending = EXCLUDED.episodes_pending,
    churners = EXCLUDED.churners,
    churners_alerted = EXCLUDED.churners_alerted,
    lead_days_quartiles = EXCLUDED.lead_days_quartiles,
    computed_at = now()
"""

# Each alert decision with its label (tests, and operators reading the table)
ALERT_OUTCOMES = """
SELECT alert_id, organization_id, kind, episode, raised_at, outcome, churned_at
FROM alert_outcomes
ORDER BY organization_id, episode, kind
"""


# --- usage volume drift ----------------------------------------------------------------

# A sample of organization states: up to $2 from a random id ($1) on, in id order; the
# caller takes the rest, when the key space ends first, from its start
# (SAMPLE_STATES_BEFORE). A run of the primary key is a random sample of organizations
# as long as their ids are random (v4 UUIDs; time-ordered ids would make it a cohort).
# Range scans of the primary key, read without row locks.
SAMPLE_STATES = """
SELECT state_msgpack AS state FROM organization_state
WHERE organization_id >= $1 ORDER BY organization_id LIMIT $2
"""

SAMPLE_STATES_BEFORE = """
SELECT state_msgpack AS state FROM organization_state
WHERE organization_id < $1 ORDER BY organization_id LIMIT $2
"""
