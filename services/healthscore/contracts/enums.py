"""The enumerations of the wire contract, defined in the core (`healthscore.core.enums`).

The contract models and the JSON Schemas use them from here; the scoring core
owns them because it computes with them and imports nothing of the wire.
"""

from healthscore.core.enums import (
    RISK_LEVEL_ORDER,
    AlertKind,
    AlertOutcome,
    AlertTrigger,
    Channel,
    HealthStatus,
    HistoryCause,
    InteractionStatus,
    InteractionType,
    MilestoneType,
    NoPathReason,
    Outcome,
    Priority,
    RewardStatus,
    RewardType,
    RiskLevel,
    Sentiment,
    SupportAction,
    UsageType,
    UserRole,
)

__all__ = [
    "RISK_LEVEL_ORDER",
    "AlertKind",
    "AlertOutcome",
    "AlertTrigger",
    "Channel",
    "HealthStatus",
    "HistoryCause",
    "InteractionStatus",
    "InteractionType",
    "MilestoneType",
    "NoPathReason",
    "Outcome",
    "Priority",
    "RewardStatus",
    "RewardType",
    "RiskLevel",
    "Sentiment",
    "SupportAction",
    "UsageType",
    "UserRole",
]
