"""Bands of a health score and levels of a churn probability.

These mirror the SQL helper functions `health_band()` and `risk_level_for()`
(schema/migrations), which generate the read model's `health_status` and
`risk_level` columns; a test evaluates both at and around every edge, so the
Python side and the dashboard's SQL always agree. Changing an edge is a
migration, not a config change, because stored rows carry the band.
"""

from healthscore.core.enums import HealthStatus, RiskLevel

# lower edges, highest band first: score >= edge -> band
HEALTH_BAND_EDGES: tuple[tuple[float, HealthStatus], ...] = (
    (80.0, HealthStatus.EXCELLENT),
    (60.0, HealthStatus.GOOD),
    (40.0, HealthStatus.AT_RISK),
)
# churn probability >= edge -> level
RISK_LEVEL_EDGES: tuple[tuple[float, RiskLevel], ...] = (
    (0.75, RiskLevel.CRITICAL),
    (0.50, RiskLevel.HIGH),
    (0.25, RiskLevel.MEDIUM),
)


def health_band(score: float) -> HealthStatus:
    for edge, band in HEALTH_BAND_EDGES:
        if score >= edge:
            return band
    return HealthStatus.CRITICAL


def risk_level_for(churn_probability: float) -> RiskLevel:
    for edge, level in RISK_LEVEL_EDGES:
        if churn_probability >= edge:
            return level
    return RiskLevel.LOW
