"""The read API's response and request bodies: the contract front ends build on.

Exported as the OpenAPI document (schema/contracts/openapi.json) and as
TypeScript types (schema/contracts/healthscore-api.d.ts).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from healthscore.contracts._common import check_representable
from healthscore.contracts.enums import (
    AlertKind,
    Channel,
    HealthStatus,
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
    UserRole,
)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class RiskFactor(_Model):
    """One reason the score is what it is."""

    factor: str = Field(description="Stable machine name, e.g. `inactivity`.")
    value: float = Field(description="The measured input, in the factor's own unit.")
    impact: float = Field(description="Score points this factor moved (negative lowers it).")
    detail: str = Field(default="", description="One sentence for people.")


class Components(_Model):
    """The five component scores (0-100) behind the composite."""

    engagement: float | None = Field(default=None, description="Recent activity and logins.")
    adoption: float | None = Field(default=None, description="Breadth of features used.")
    milestones: float | None = Field(default=None, description="Success milestones achieved.")
    support: float | None = Field(default=None, description="Support experience.")
    growth: float | None = Field(default=None, description="Expansion versus contraction.")


class OrganizationSummary(_Model):
    """One row of the at-risk list."""

    organization_id: UUID
    organization_name: str | None = Field(description="NULL for organizations known by id only.")
    health_score: float = Field(ge=0, le=100)
    health_status: HealthStatus
    churn_probability: float = Field(ge=0, le=1)
    risk_level: RiskLevel
    score_change_7d: float | None = Field(description="NULL without 7 days of history.")
    score_change_30d: float | None = Field(description="NULL without 30 days of history.")
    top_risk_factors: list[RiskFactor] = Field(description="The three largest, largest first.")
    scored_at: AwareDatetime = Field(description="Event time the score holds for.")


class OrganizationPage(_Model):
    items: list[OrganizationSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; NULL: last.")


class Interaction(_Model):
    """A support or customer-success interaction."""

    id: UUID
    organization_id: UUID
    organization_name: str | None
    interaction_type: InteractionType | None = Field(description="NULL until it was opened.")
    channel: Channel | None
    status: InteractionStatus
    priority: Priority
    sentiment: Sentiment | None
    outcome: Outcome | None
    assigned_to: UUID | None
    subject: str | None
    follow_up_required: bool
    follow_up_at: AwareDatetime | None
    follow_up_completed_at: AwareDatetime | None
    opened_at: AwareDatetime | None
    resolved_at: AwareDatetime | None
    closed_at: AwareDatetime | None
    last_event_at: AwareDatetime
    overdue: bool = Field(description="A follow-up is due and not done.")
    rank: float | None = Field(description="Search similarity (0-1) with `q`, else NULL.")


class InteractionPage(_Model):
    items: list[Interaction]
    next_cursor: str | None


class MilestoneCounts(_Model):
    """achieved = acknowledged + unacknowledged + from_profile: the milestones with a
    row (GET .../milestones) and those known from the CRM profile only."""

    achieved: int = Field(
        description="Milestones achieved, of 17: the count the score and its "
        "missing_milestones factor use, those known from the profile included."
    )
    acknowledged: int = Field(description="Milestone rows acknowledged.")
    unacknowledged: int = Field(description="Milestone rows still to acknowledge.")
    from_profile: int = Field(
        description="Achieved milestones known only from the organization's CRM profile "
        "(organization.profile.v1 or `healthscore import`), reached before its events "
        "reached the service: counted in achieved, with no row to acknowledge or reward."
    )
    rewards_pending: int
    rewards_delivered: int


class AlertAction(_Model):
    """One step of the alert's path to healthy, valued by the scoring model."""

    action: str = Field(description="What to do, e.g. `get each active user logging in regularly`.")
    factor: str = Field(description="The risk factor it removes.")
    impact: float = Field(description="Score points it adds, according to the model.")
    interaction_id: UUID | None = Field(
        default=None,
        description="The support interaction the action is about (`close ...`), null for "
        "an action about no one interaction; absent in alerts from before the field (their "
        "text names the interaction).",
    )


class LastAlert(_Model):
    """The newest churn-risk alert raised for the organization."""

    alert_id: UUID
    kind: AlertKind
    episode: int
    health_score: float | None
    previous_score: float | None
    churn_probability: float | None
    risk_level: RiskLevel | None
    scored_at: AwareDatetime | None
    trigger: str | None = Field(
        default=None,
        description="Why it fired: `probability_threshold`, `score_drop`, `escalation_step`, "
        "`recovery`.",
    )
    path_to_healthy: list[AlertAction] = Field(
        default_factory=list,
        description="The fewest actions, largest first, that bring the organization out of "
        "risk, as the alert named them; empty for a recovery.",
    )
    no_path_reason: NoPathReason | None = Field(
        default=None,
        description="Why the path to healthy is empty, as the alert said: `out_of_risk`, "
        "`held_by_ceiling` or `time_heals_only`; null when it names actions and for alerts "
        "from before the field (migration 0090).",
    )
    created_at: AwareDatetime = Field(description="When it was decided (committed).")
    published_at: AwareDatetime | None = Field(description="When it was published; NULL: pending.")


class OrganizationDetail(_Model):
    """Everything the organization page shows."""

    organization_id: UUID
    organization_name: str | None
    plan: str | None
    health_score: float = Field(ge=0, le=100)
    health_status: HealthStatus
    churn_probability: float = Field(ge=0, le=1)
    risk_level: RiskLevel
    components: Components
    risk_factors: list[RiskFactor] = Field(description="All of them, largest impact first.")
    feature_usage: dict[str, float] = Field(description="Feature -> uses in the window.")
    previous_score: float | None
    score_change_7d: float | None
    score_change_30d: float | None
    trend: Literal["improving", "declining", "stable"] | None
    active_users_30d: int
    open_interactions_count: int
    overdue_follow_ups: int = Field(
        description="Follow-ups due and not done, whatever their interaction's status (a "
        "resolved interaction with a check-in scheduled counts once it is due)."
    )
    open_interactions: list[Interaction] = Field(
        description="The 20 newest open ones, and those with a follow-up pending."
    )
    milestones: MilestoneCounts
    last_activity_at: AwareDatetime | None
    last_login_at: AwareDatetime | None
    scored_at: AwareDatetime
    score_model_version: str
    updated_at: AwareDatetime = Field(description="Wall clock of the last write of the row.")
    last_alert: LastAlert | None


class HistoryPoint(_Model):
    """The last score of one day (UTC)."""

    day: dt.date
    scored_at: AwareDatetime
    health_score: float
    churn_probability: float
    risk_level: RiskLevel
    components: Components


class OrganizationHistory(_Model):
    organization_id: UUID
    days: int
    points: list[HistoryPoint] = Field(description="Oldest first; days without a score are absent.")


class Milestone(_Model):
    milestone_type: MilestoneType
    achieved_at: AwareDatetime
    triggering_event_id: UUID
    health_score_impact: float
    reward_type: RewardType | None
    reward_value: float | None
    reward_status: RewardStatus | None
    reward_delivered_at: AwareDatetime | None
    acknowledged_at: AwareDatetime | None
    acknowledged_by: UUID | None = Field(description="Set by the database from the caller.")
    acknowledged_by_name: str | None


class MilestoneList(_Model):
    items: list[Milestone] = Field(description="Newest first (at most 17).")


class RewardDelivery(_Model):
    """What happened to a milestone's pending reward."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    outcome: Literal["delivered", "declined"] = "delivered"
    # its UTC value within years 1-9999: PostgreSQL gets it in UTC (`0001-01-01T00:00+14:00`
    # parses, but no conversion takes it: the statement failed, a 500)
    delivered_at: Annotated[AwareDatetime, AfterValidator(check_representable)] | None = Field(
        default=None, description="When it was delivered (default: now); only with delivered."
    )


class Freshness(_Model):
    """How current the scores are: what "Updated" on the dashboard cannot say (that is
    when the browser fetched)."""

    read_model_staleness_seconds: float = Field(
        ge=0,
        description="Seconds since the oldest change of an organization's state not yet "
        "shown in its score was applied (0: every score is current). Large while the "
        "service catches up on a backlog: scores are then as old as the events applied.",
    )
    as_of: AwareDatetime = Field(description="When this was measured (the database's clock).")


class Me(_Model):
    user_id: UUID
    email: str | None
    full_name: str | None
    role: UserRole
    organization_id: UUID | None


class Backtest(_Model):
    """What the live model was accepted on: its figures on organizations held out of
    its fit (the model config's evaluation). NULL: the config does not say."""

    source: str | None = Field(
        description="Where the held-out organizations come from, e.g. a simulated population."
    )
    held_out_organizations: int | None
    roc_auc_30d: float | None = Field(
        description="How often an organization that churned within 30 days scored riskier "
        "than one that did not (0.5: a coin; 1: always)."
    )
    brier_skill: float | None = Field(
        description="How much better the churn probability forecast than the average churn "
        "rate for everyone (0: no better; 1: perfect)."
    )
    churners_alerted: float | None = Field(
        description="Share of the organizations that churned that were alerted first."
    )
    median_lead_days: float | None = Field(
        description="Median days from the first alert to the churn."
    )
    false_alerts_per_100_healthy_per_month: float | None
    alert_precision: float | None = Field(description="Share of alert episodes that churned.")


class LiveAlerts(_Model):
    """The live alerts' outcomes so far: each episode is churned when its organization
    churned within 60 days after the alert (the support stream's churn outcomes, or
    imported labels), retained when it is known not to have, pending until then."""

    episodes_churned: int
    episodes_retained: int
    episodes_pending: int
    precision: float | None = Field(description="churned / (churned + retained); NULL: none yet.")
    churned_organizations: int = Field(description="Scored organizations known to have churned.")
    churned_organizations_alerted: int = Field(
        description="Of those, the ones alerted in the 60 days before their churn."
    )
    lead_days: list[float] | None = Field(
        description="Days from their first alert to the churn: 25th, 50th and 75th "
        "percentiles; NULL: none alerted."
    )


class ScoreQuality(_Model):
    """How far to trust the scores: the live model's backtest beside its live record."""

    score_model_version: str
    backtest: Backtest
    live_alerts: LiveAlerts
    computed_at: AwareDatetime = Field(description="When the live figures were last computed.")


class Problem(_Model):
    """RFC 9457 problem details (application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
