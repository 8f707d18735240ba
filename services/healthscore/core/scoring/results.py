"""What scoring produces: a health score with its risk factors, the actions back out
of risk, an alert decision.

Plain msgspec structs, defined apart from the modules that compute them: those are
compiled with mypyc (pyproject.toml, `compile`), which rewrites the annotations of
classes defined in a compiled module, and msgspec reads these structs' annotations
to decode and describe them.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from healthscore.core.enums import AlertKind, AlertTrigger, HealthStatus, NoPathReason, RiskLevel


class RiskFactor(msgspec.Struct, frozen=True, gc=False):
    """One reason the score is what it is, with its effect in score points.

    The service publishes it as the contract's `RiskFactor` (same fields)."""

    factor: str  # stable machine name, e.g. `inactivity` or `open_escalations`
    value: float  # the measured input, in the factor's own unit
    # points this factor moved the score (negative lowers it), 2 decimals: a score's
    # impacts sum to score - 100 exactly (the rounding apportioned: scoring.score)
    impact: float
    detail: str  # one human-readable sentence for the dashboard


class HealthScore(msgspec.Struct, frozen=True):
    score: float  # 0..100, 2 decimals
    status: HealthStatus
    components: dict[str, float]  # engagement, adoption, milestones, support, growth
    churn_probability: float  # 0..1, 4 decimals
    risk_level: RiskLevel
    # largest |impact| first, each |impact| >= 0.5 but minor_factors (the smaller ones)
    risk_factors: list[RiskFactor]
    segment: str
    change_7d: float | None
    change_30d: float | None
    active_users_30d: int


class HealthAction(msgspec.Struct, frozen=True):
    action: str  # what to do, for a person
    factor: str  # the risk factor it removes
    impact: float  # score points it adds (2 decimals)
    # the open interaction a `close` action is about (its id): what a task system needs
    # of the action, which the text names only for a person
    interaction_id: str | None = None


class AlertDecision(msgspec.Struct, frozen=True):
    kind: AlertKind
    episode: int
    alert_id: UUID
    previous_score: float | None
    trigger: AlertTrigger
    score_model_version: str = ""
    # for raises and escalations: the fewest actions out of risk (scoring.path)
    path_to_healthy: tuple[HealthAction, ...] = ()
    # why path_to_healthy is empty (None when it names actions): scoring.path
    no_path_reason: NoPathReason | None = None
    # the alert_id of the episode's risk_raised: every alert of the episode carries it
    episode_id: UUID | None = None
