"""Names of the schema's roles, tables and indexes, and the dashboard queries.

The migrations in schema/migrations are the truth; this module names what
other code and the tests refer to, and keeps the dashboard queries (the ones
the read-model indexes exist for) next to the index each one should use.
tests/integration/test_indexes.py checks every query's plan against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

OWNER_ROLE: Final = "healthscore_owner"
WRITER_ROLE: Final = "healthscore_writer"
DASHBOARD_ROLE: Final = "cs_dashboard"
# `healthscore erase` (migration 0095)
ERASER_ROLE: Final = "healthscore_eraser"
ROLES: Final = (OWNER_ROLE, WRITER_ROLE, DASHBOARD_ROLE, ERASER_ROLE)

MIGRATIONS_TABLE: Final = "schema_migrations"

# the seed's read model: row-level security, readable by cs_dashboard
READ_MODEL_TABLES: Final = ("customer_health", "success_milestones", "support_interactions")
# stand-ins for the product's existing tables
CORE_TABLES: Final = ("organizations", "user_profiles")
# the service's own tables: healthscore_writer only
SERVICE_TABLES: Final = (
    "organization_state",
    "processed_events",
    "consumer_offsets",
    "health_score_history",
    "alert_outbox",
    "read_model_pending",
    # customer_health rows whose health-feed record the broker did not take (0093)
    "health_feed_owed",
    # score quality (0060): the shadow model, churn labels, live alert outcomes
    "shadow_health",
    "shadow_alerts",
    "churn_labels",
    "alert_outcomes",
    # the model versions served, with their aggregate settings (0067)
    "score_models",
    # the options of each replay, for a resume (0072)
    "replay_runs",
    # dead letters on their way to <topic>.dlq (0077)
    "dead_letter_outbox",
    # dead letters their topic refused for their content alone (0091)
    "dead_letters_withheld",
    # the dashboard's score quality figures (0089)
    "score_quality_summary",
    # erased organizations: the tombstone and the audit trail of `healthscore erase` (0095)
    "erased_organizations",
    # erased organizations' health-feed tombstones no broker has taken yet (0097)
    "health_feed_tombstones_owed",
    # each shadow candidate version's scoring settings (0108)
    "shadow_models",
)
TABLES: Final = CORE_TABLES + READ_MODEL_TABLES + SERVICE_TABLES
# service tables the dashboard reads too: the score trail and the alerts (0030), the
# score quality figures (0089)
DASHBOARD_SERVICE_TABLES: Final = ("health_score_history", "alert_outbox", "score_quality_summary")
DASHBOARD_READABLE_TABLES: Final = CORE_TABLES + READ_MODEL_TABLES + DASHBOARD_SERVICE_TABLES
# row-level security, FORCE'd: what cs_dashboard reads, bound by its verified user
ROW_SECURITY_TABLES: Final = CORE_TABLES + READ_MODEL_TABLES + DASHBOARD_SERVICE_TABLES
# the identity tokens' HMAC keys (0020): healthscore_owner only, no grants
IDENTITY_TABLES: Final = ("app_signing_keys",)
# columns a dashboard admin may change (acknowledgment workflow)
DASHBOARD_MILESTONE_COLUMNS: Final = (
    "acknowledged_at",
    "acknowledged_by",
    "reward_status",
    "reward_delivered_at",
)

# minimum index counts of the seed's design report (WS-168)
SEED_INDEX_MINIMUMS: Final = {
    "customer_health": 9,
    "success_milestones": 4,
    "support_interactions": 8,
}

# The dashboard user of a session is what it proved with app_login(token)
# (healthscore.store.identity); the app.user_id setting is ignored, since any
# session can set any setting.


@dataclass(frozen=True)
class DashboardQuery:
    """A dashboard query, its parameters' meaning, and the index it should use."""

    name: str
    sql: str
    index: str


DASHBOARD_QUERIES: Final = (
    DashboardQuery(
        "at_risk_organizations",
        """SELECT organization_id, health_score, health_status, risk_level
           FROM customer_health
           WHERE health_status IN ('at_risk', 'critical')
           ORDER BY health_score
           LIMIT $1""",
        "customer_health_at_risk_idx",
    ),
    DashboardQuery(
        "organizations_by_band",  # $1 band, $2 limit
        """SELECT organization_id, health_score
           FROM customer_health
           WHERE health_status = $1
           ORDER BY health_score DESC
           LIMIT $2""",
        "customer_health_status_score_idx",
    ),
    DashboardQuery(
        "likely_to_churn",
        """SELECT organization_id, churn_probability, risk_factors
           FROM customer_health
           WHERE risk_level IN ('high', 'critical')
           ORDER BY churn_probability DESC
           LIMIT $1""",
        "customer_health_high_risk_idx",
    ),
    DashboardQuery(
        "stale_scores",  # $1 cutoff, $2 limit
        """SELECT organization_id, scored_at
           FROM customer_health
           WHERE scored_at < $1
           ORDER BY scored_at
           LIMIT $2""",
        "customer_health_scored_at_idx",
    ),
    DashboardQuery(
        "inactive_organizations",  # $1 cutoff, $2 limit
        """SELECT organization_id, last_activity_at
           FROM customer_health
           WHERE last_activity_at < $1
           ORDER BY last_activity_at
           LIMIT $2""",
        "customer_health_last_activity_at_idx",
    ),
    DashboardQuery(
        "biggest_weekly_drops",
        """SELECT organization_id, score_change_7d
           FROM customer_health
           ORDER BY score_change_7d
           LIMIT $1""",
        "customer_health_score_change_7d_idx",
    ),
    DashboardQuery(
        "organizations_with_risk_factor",  # $1 jsonb such as '[{"factor": "no_logins"}]'
        """SELECT organization_id, health_score
           FROM customer_health
           WHERE risk_factors @> $1::jsonb""",
        "customer_health_risk_factors_idx",
    ),
    DashboardQuery(
        "support_user_open_interactions",  # $1 user id, $2 limit
        """SELECT id, organization_id, subject, priority, opened_at
           FROM support_interactions
           WHERE assigned_to = $1 AND status = 'open'
           ORDER BY opened_at
           LIMIT $2""",
        "support_interactions_assigned_open_idx",
    ),
    DashboardQuery(
        "unassigned_open_interactions",
        """SELECT id, organization_id, subject, priority, opened_at
           FROM support_interactions
           WHERE status = 'open' AND assigned_to IS NULL
           ORDER BY opened_at
           LIMIT $1""",
        "support_interactions_unassigned_open_idx",
    ),
    DashboardQuery(
        "organization_interactions",  # $1 organization id, $2 limit
        """SELECT id, interaction_type, status, subject, opened_at
           FROM support_interactions
           WHERE organization_id = $1
           ORDER BY opened_at DESC
           LIMIT $2""",
        "support_interactions_organization_opened_idx",
    ),
    DashboardQuery(
        "subject_search",  # $1 search word
        """SELECT id, organization_id, subject
           FROM support_interactions
           WHERE subject ILIKE '%' || $1::text || '%'""",
        "support_interactions_subject_trgm_idx",
    ),
    DashboardQuery(
        "follow_ups_due",
        """SELECT id, organization_id, assigned_to, follow_up_at
           FROM support_interactions
           WHERE follow_up_required AND follow_up_completed_at IS NULL
             AND follow_up_at <= now()
           ORDER BY follow_up_at
           LIMIT $1""",
        "support_interactions_follow_up_due_idx",
    ),
    DashboardQuery(
        "interactions_of_type",  # $1 interaction type, $2 limit
        """SELECT id, organization_id, opened_at
           FROM support_interactions
           WHERE interaction_type = $1
           ORDER BY opened_at DESC
           LIMIT $2""",
        "support_interactions_type_opened_idx",
    ),
    DashboardQuery(
        "unhappy_interactions",
        """SELECT id, organization_id, sentiment, opened_at
           FROM support_interactions
           WHERE sentiment IN ('negative', 'very_negative')
           ORDER BY opened_at DESC
           LIMIT $1""",
        "support_interactions_negative_sentiment_idx",
    ),
    DashboardQuery(
        "unacknowledged_milestones",
        """SELECT id, organization_id, milestone_type, achieved_at
           FROM success_milestones
           WHERE acknowledged_at IS NULL
           ORDER BY achieved_at DESC
           LIMIT $1""",
        "success_milestones_unacknowledged_idx",
    ),
    DashboardQuery(
        "organization_milestones",  # $1 organization id
        """SELECT milestone_type, achieved_at, reward_type, reward_status, acknowledged_at
           FROM success_milestones
           WHERE organization_id = $1
           ORDER BY achieved_at DESC""",
        "success_milestones_organization_achieved_idx",
    ),
    DashboardQuery(
        "milestone_achievers",  # $1 milestone type, $2 limit
        """SELECT organization_id, achieved_at
           FROM success_milestones
           WHERE milestone_type = $1
           ORDER BY achieved_at DESC
           LIMIT $2""",
        "success_milestones_type_achieved_idx",
    ),
    DashboardQuery(
        "rewards_to_deliver",
        """SELECT id, organization_id, reward_type, reward_value
           FROM success_milestones
           WHERE reward_status = 'pending'
           ORDER BY achieved_at
           LIMIT $1""",
        "success_milestones_reward_pending_idx",
    ),
)
