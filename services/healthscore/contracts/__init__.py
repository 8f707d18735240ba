"""The wire contract (shared/contract.md) as pydantic models."""

from healthscore.contracts.alerts import (
    ChurnRiskAlert,
    ComponentScores,
    HealthAction,
    HealthUpdate,
    RiskFactor,
)
from healthscore.contracts.profile import OrganizationProfile
from healthscore.contracts.support import SupportEvent
from healthscore.contracts.usage import UsageEvent

__all__ = [
    "ChurnRiskAlert",
    "ComponentScores",
    "HealthAction",
    "HealthUpdate",
    "OrganizationProfile",
    "RiskFactor",
    "SupportEvent",
    "UsageEvent",
]
