"""Named SQL of a model promotion: re-project organizations scored by another version.

`customer_health.score_model_version` says which organizations the read model
still shows under another model than the live one ($1). The promotion queues a
page of them ($2) for the projector, which scores each at its stored state
with the live model; it queues only while the projector's queue is shorter
than a page, so a promotion never makes the read model look stale to the
organizations that changed meanwhile (the queue is oldest first).
"""

QUEUE_OTHER_VERSION = """
INSERT INTO read_model_pending (organization_id, version)
SELECT s.organization_id, s.health_version
FROM organization_state s
WHERE s.organization_id IN (
    SELECT h.organization_id FROM customer_health h
    WHERE h.score_model_version <> $1
      AND NOT EXISTS (SELECT 1 FROM read_model_pending q
                      WHERE q.organization_id = h.organization_id)
    ORDER BY h.organization_id
    LIMIT $2)
  AND (SELECT count(*) FROM read_model_pending) < $2
ORDER BY s.organization_id
ON CONFLICT (organization_id) DO NOTHING
"""

COUNT_OTHER_VERSION = """
SELECT count(*) FROM customer_health WHERE score_model_version <> $1
"""

# The live model ($1) and its aggregate settings ($2), recorded at a service's start
# once per version; then what is recorded for that version (another process's, when
# the same version was served with other settings).
RECORD_MODEL = """
INSERT INTO score_models (version, aggregates) VALUES ($1, $2::jsonb)
ON CONFLICT (version) DO NOTHING
"""

RECORDED_MODEL = "SELECT aggregates::text FROM score_models WHERE version = $1"

# every version recorded, with its aggregate settings (`healthscore replay --resume`
# checks that it goes on with the model the interrupted replay scored with)
SERVED_MODELS = "SELECT version, aggregates::text AS aggregates FROM score_models ORDER BY 1"

# The versions the read model still shows besides the live one ($1), with the
# aggregate settings each was served with (NULL: served before migration 0067).
# Reads all of customer_health, as COUNT_OTHER_VERSION does: once per promotion.
PROMOTED_FROM = """
SELECT v.version, m.aggregates::text AS aggregates
FROM (SELECT DISTINCT score_model_version AS version FROM customer_health
      WHERE score_model_version <> $1) AS v
LEFT JOIN score_models m ON m.version = v.version
ORDER BY v.version
"""
