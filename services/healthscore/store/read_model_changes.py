"""What the database announces when the read model changes (migrations 0050, 0051, 0089).

Every transaction that changes one of TABLES notifies, when it commits, the channel
of each signing key in use (`channel_of`, migration 0070): a name derived from the
key's secret, so that only a holder of the key can LISTEN to the announcements (a
channel anyone could name told any session which organizations changed).
The payload is the table's name (the whole table may have changed), or, for
the tables whose rows each belong to one organization (BY_ORGANIZATION) and the
inserts into organizations (NAMES_ORGANIZATIONS), the
table's name, a colon and the ids of the organizations whose rows changed,
comma-separated (`organizations_changed`). The read API's response cache
listens (healthscore.api.invalidation).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

# app_signing_keys.read_model_channel (migration 0070): this prefix, then the first 32
# hex digits of HMAC-SHA256(the key's secret, CHANNEL_MESSAGE)
CHANNEL_PREFIX: Final = "healthscore_read_model_"
CHANNEL_MESSAGE: Final = b"healthscore read model channel"

# the announced tables, each the payload of its notifications
CUSTOMER_HEALTH: Final = "customer_health"
ORGANIZATIONS: Final = "organizations"
SCORE_HISTORY: Final = "health_score_history"
MILESTONES: Final = "success_milestones"
INTERACTIONS: Final = "support_interactions"
ALERTS: Final = "alert_outbox"
SCORE_QUALITY: Final = "score_quality_summary"
USERS: Final = "user_profiles"
SIGNING_KEYS: Final = "app_signing_keys"
# the read model proper
READ_MODEL: Final = (
    CUSTOMER_HEALTH,
    ORGANIZATIONS,
    SCORE_HISTORY,
    MILESTONES,
    INTERACTIONS,
    ALERTS,
    SCORE_QUALITY,
)
# and what decides who may see what
TABLES: Final = (*READ_MODEL, USERS, SIGNING_KEYS)

# their rows each belong to one organization: announced by organization (0051)
BY_ORGANIZATION: Final = (CUSTOMER_HEALTH, SCORE_HISTORY, MILESTONES, INTERACTIONS, ALERTS)
# and organizations, whose inserts name the organizations inserted (0063; its updates
# and deletes announce the whole table)
NAMES_ORGANIZATIONS: Final = (*BY_ORGANIZATION, ORGANIZATIONS)
ORGANIZATIONS_SEPARATOR: Final = ":"


def channel_of(secret: bytes) -> str:
    """The channel the database announces changes on for the holders of this signing key
    (app_signing_keys.read_model_channel)."""
    digest = hmac.new(secret, CHANNEL_MESSAGE, hashlib.sha256).hexdigest()
    return CHANNEL_PREFIX + digest[:32]


def organizations_changed(payload: str) -> tuple[str, list[str]]:
    """The table and the organization ids (as PostgreSQL prints uuids) a payload
    names; no ids: the whole table changed."""
    table, _, ids = payload.partition(ORGANIZATIONS_SEPARATOR)
    return table, ids.split(",") if ids else []


# $1 key_id: unix seconds from which app_login refuses it (+inf in use, -inf unknown)
SIGNING_KEY_RETIRES_AT: Final = "SELECT app_signing_key_retires_at($1)"

# a round trip on the listening connection: when it returns, PostgreSQL has sent
# every notification of the transactions committed before it was sent
ROUND_TRIP: Final = "SELECT 1"
