"""What the database announces when the read model changes (migration 0050).

Every transaction that changes one of TABLES notifies CHANNEL once per table it
changed, with the table's name as the payload, when it commits. The read API's
response cache listens (healthscore.api.invalidation).
"""

from __future__ import annotations

from typing import Final

CHANNEL: Final = "healthscore_read_model"

# the announced tables, each the payload of its notifications
CUSTOMER_HEALTH: Final = "customer_health"
ORGANIZATIONS: Final = "organizations"
SCORE_HISTORY: Final = "health_score_history"
MILESTONES: Final = "success_milestones"
INTERACTIONS: Final = "support_interactions"
ALERTS: Final = "alert_outbox"
USERS: Final = "user_profiles"
SIGNING_KEYS: Final = "app_signing_keys"
TABLES: Final = (
    CUSTOMER_HEALTH,
    ORGANIZATIONS,
    SCORE_HISTORY,
    MILESTONES,
    INTERACTIONS,
    ALERTS,
    USERS,
    SIGNING_KEYS,
)

# $1 key_id: unix seconds from which app_login refuses it (+inf in use, -inf unknown)
SIGNING_KEY_RETIRES_AT: Final = "SELECT app_signing_key_retires_at($1)"

# a round trip on the listening connection: when it returns, PostgreSQL has sent
# every notification of the transactions committed before it was sent
ROUND_TRIP: Final = "SELECT 1"
