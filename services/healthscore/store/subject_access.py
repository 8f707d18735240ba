"""The statements of `healthscore export-organization` (a subject-access request, GDPR
art. 15): every row held of one organization, table by table.

One statement per table that keys rows to an organization, named by the table (the
tests keep this list equal to the catalog's tables with an `organization_id`, so a
table added later is not left out of the answer), and the dead letters that name it
by the erasure's own rule (`erase_dead_letters()`, migration 0099: the key in any
spelling the consumer reads as its id, or the id in the value). Run by the
administrator's login (superuser or BYPASSRLS): row-level security would hide rows
from any other, and an answer with rows missing is worse than none.
"""

from __future__ import annotations

# a login that reads past row-level security: the export refuses any other
READS_EVERY_ROW = """
SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user
"""

ORGANIZATION_TABLES: dict[str, str] = {
    "organizations": "SELECT * FROM organizations WHERE id = $1",
    "organization_state": "SELECT * FROM organization_state WHERE organization_id = $1",
    "customer_health": "SELECT * FROM customer_health WHERE organization_id = $1",
    "health_score_history": (
        "SELECT * FROM health_score_history WHERE organization_id = $1 ORDER BY day, scored_at"
    ),
    "support_interactions": (
        "SELECT * FROM support_interactions WHERE organization_id = $1 ORDER BY opened_at, id"
    ),
    "success_milestones": (
        "SELECT * FROM success_milestones WHERE organization_id = $1 ORDER BY achieved_at, id"
    ),
    "user_profiles": "SELECT * FROM user_profiles WHERE organization_id = $1 ORDER BY id",
    "alert_outbox": "SELECT * FROM alert_outbox WHERE organization_id = $1 ORDER BY seq",
    "alert_outcomes": (
        "SELECT * FROM alert_outcomes WHERE organization_id = $1 ORDER BY raised_at, alert_id"
    ),
    "churn_labels": "SELECT * FROM churn_labels WHERE organization_id = $1",
    "shadow_health": (
        "SELECT * FROM shadow_health WHERE organization_id = $1 ORDER BY score_model_version"
    ),
    "shadow_alerts": (
        "SELECT * FROM shadow_alerts WHERE organization_id = $1 ORDER BY decided_at, alert_id"
    ),
    "processed_events": (
        "SELECT * FROM processed_events WHERE organization_id = $1 ORDER BY occurred_at, event_id"
    ),
    "read_model_pending": "SELECT * FROM read_model_pending WHERE organization_id = $1",
    "health_feed_owed": "SELECT * FROM health_feed_owed WHERE organization_id = $1",
    "health_feed_tombstones_owed": (
        "SELECT * FROM health_feed_tombstones_owed WHERE organization_id = $1"
    ),
    "erased_organizations": "SELECT * FROM erased_organizations WHERE organization_id = $1",
}

# $1: the id without hyphens, $2 and $3: its canonical spelling in lower and upper case
DEAD_LETTERS: dict[str, str] = {
    "dead_letter_outbox": """
SELECT * FROM dead_letter_outbox
WHERE replace(btrim(replace(replace(
          lower(btrim(encode(record_key, 'escape'), E' \\t\\n\\r\\f\\x0b')),
          'urn:', ''), 'uuid:', ''), '{}'), '-', '') = $1
   OR position($2::bytea IN record_value) > 0 OR position($3::bytea IN record_value) > 0
ORDER BY id
""",
    "dead_letters_withheld": """
SELECT * FROM dead_letters_withheld
WHERE replace(btrim(replace(replace(
          lower(btrim(encode(record_key, 'escape'), E' \\t\\n\\r\\f\\x0b')),
          'urn:', ''), 'uuid:', ''), '{}'), '-', '') = $1
   OR position($2::bytea IN record_value) > 0 OR position($3::bytea IN record_value) > 0
ORDER BY id
""",
}

# the tables whose rows name an organization in an organization_id column: the
# tests compare them with ORGANIZATION_TABLES
TABLES_OF_ORGANIZATIONS = """
SELECT c.table_name::text
FROM information_schema.columns c
JOIN information_schema.tables t USING (table_schema, table_name)
WHERE c.table_schema = 'public' AND c.column_name = 'organization_id'
  AND t.table_type = 'BASE TABLE'
ORDER BY 1
"""
