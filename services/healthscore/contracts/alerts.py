"""Outputs: `customer.churn-risk.v1` alerts and the `customer.health.v1` feed."""

from typing import Annotated
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from healthscore.contracts._common import date_time_schema, uuid_schema
from healthscore.contracts.enums import (
    AlertKind,
    AlertTrigger,
    HealthStatus,
    NoPathReason,
    RiskLevel,
)
from healthscore.core.scoring.score import RISK_FACTOR_NAMES

MAX_CAUSED_BY = 20

# the schema's patterns beside `format`, as on the input topics: a consumer whose
# validator takes `format` as a label (Ajv without ajv-formats, Go's) still checks them
Id = Annotated[UUID, Field(json_schema_extra=uuid_schema())]
Time = Annotated[AwareDatetime, Field(json_schema_extra=date_time_schema())]


RISK_FACTORS_SUM = (
    "The impacts sum exactly to the score minus 100, in hundredths: factors under 0.5 "
    "points are folded into one `minor_factors` entry (whenever not 0.00), and the "
    "rounding to hundredths is apportioned by largest remainder."
)


class RiskFactor(BaseModel):
    """One reason the score is what it is, with its effect in score points."""

    model_config = ConfigDict(frozen=True, title="RiskFactor")

    factor: str = Field(
        description="Stable machine name, e.g. `inactivity` or `open_escalations`; "
        "`minor_factors` for the factors under 0.5 points each, together; `ceiling_*` for "
        "what a ceiling (an open escalation, a cancellation request) removes. The names "
        "a release may report are listed in `x-known-values`; a later release may add "
        "one: show an unknown name as a generic reason (its `detail`).",
        json_schema_extra={"x-known-values": list(RISK_FACTOR_NAMES)},
    )
    value: float = Field(
        description="The measured input, in the factor's own unit (`minor_factors`: how "
        "many factors it holds)."
    )
    impact: float = Field(
        description="Points this factor moved the score (negative lowers it), in "
        "hundredths. The impacts of a score's risk factors sum exactly to the score minus "
        "100: each is its factor's own impact within 0.01, the rounding apportioned by "
        "largest remainder (each rounded towards 0, the hundredths still missing given to "
        "the largest remainders). Every factor but `minor_factors` is at least 0.5 points; "
        "`minor_factors` holds the smaller ones together and is listed whenever it is not "
        "0.00."
    )
    detail: str = Field(description="One human-readable sentence for the dashboard.")


class HealthAction(BaseModel):
    """One step of the way back out of risk, valued by the scoring model."""

    model_config = ConfigDict(frozen=True, title="HealthAction")

    action: str = Field(
        description="What to do, e.g. `close escalation <interaction id>` or "
        "`bring product activity back to its usual level`."
    )
    factor: str = Field(
        description="The risk factor it removes (see `risk_factors`).",
        json_schema_extra={"x-known-values": list(RISK_FACTOR_NAMES)},
    )
    impact: float = Field(
        description="Score points it adds, according to the model, taken in the path's "
        "order; actions worth more together than apart (closing the second of several "
        "escalations whose penalty is capped) share their points equally."
    )
    # added field (optional: consumers built before it keep working)
    interaction_id: Id | None = Field(
        default=None,
        description=(
            "The support interaction the action is about (`close ...`: the one to close), "
            "the same id the text names; null for an action about no one interaction. "
            "Added field."
        ),
    )


class ChurnRiskAlert(BaseModel):
    """A change in an organization's churn risk, for the notification service.

    Delivered at least once, keyed by the organization: its alerts share a partition
    and are published in the order decided (a resend carries the same `alert_id` and a
    new `emitted_at`; deduplicate on `alert_id`). One episode yields one `risk_raised`,
    at most one `risk_escalated` per level step and one `recovered`, each naming the
    raise by `episode_id`. An erased organization gets no further alert, and its alerts
    not yet sent are not sent after the erasure (but for a page whose publish had timed
    out just before it, which the producer may still deliver); no alert says so: its
    key's tombstone (a null value) on the health feed `customer.health.v1` is the signal
    to erase the copies you keep, and the ids it names to drop their later alerts (the
    two topics are not ordered against each other). An alert leaves without waiting for
    the dashboard's read model: for a moment (seconds live, up to
    READ_MODEL_CATCH_UP_WINDOW_SECONDS while the service catches up) the dashboard and
    the health feed may still show the score from before it; the alert's own figures
    are the new ones."""

    model_config = ConfigDict(frozen=True, title="ChurnRiskAlert")

    alert_id: Id = Field(
        description=(
            "Deterministic for (organization, episode, kind, the event-time day the "
            "episode was raised on), and for `risk_escalated` the level escalated to: a "
            "replay of the same events under the same model re-emits the same id, and an "
            "episode of a database rebuilt by a replay (whose episode numbers start again) "
            "reuses an earlier episode's only if raised on the same day with the same "
            "number. An episode may escalate twice (to `high`, then "
            "`critical`), each alert with its own id: deduplicate on alert_id, not on "
            "(organization, episode, kind). Delivery is at least once: a resend carries "
            "the same id (and a new `emitted_at`)."
        )
    )
    organization_id: Id = Field(description="The organization; also the message key.")
    kind: AlertKind = Field(description="`risk_raised`, `risk_escalated` or `recovered`.")
    health_score: float = Field(ge=0, le=100, description="0..100, after the change.")
    previous_score: float | None = Field(
        ge=0, le=100, description="The score before the change, if there was one."
    )
    health_status: HealthStatus = Field(description="The band after the change.")
    churn_probability: float = Field(ge=0, le=1, description="0..1.")
    risk_level: RiskLevel = Field(description="Risk level after the change.")
    risk_factors: list[RiskFactor] = Field(
        description=f"Why: largest impact first. {RISK_FACTORS_SUM}"
    )
    caused_by: list[Id] = Field(
        max_length=MAX_CAUSED_BY,
        description=(
            "The ids of the organization's newest events applied up to the alert (at most "
            "20, in the order applied; a usage and a support event of one instant may be "
            "applied in either order). An alert the passage of time raised (silence) "
            "names the events before the silence, not a cause in the stream."
        ),
    )
    scored_at: Time = Field(description="The event time the score holds for.")
    emitted_at: Time = Field(description="Wall clock at emission.")
    # added fields (optional: consumers built before them keep working)
    trigger: AlertTrigger | None = Field(
        default=None,
        description=(
            "Why it fired: `probability_threshold`, `score_drop`, `escalation_step` or "
            "`recovery`. Added field."
        ),
    )
    episode: int | None = Field(
        default=None, ge=1, description="The organization's risk episode number. Added field."
    )
    episode_id: Id | None = Field(
        default=None,
        description=(
            "The `alert_id` of this episode's `risk_raised`, carried by each alert of the "
            "episode: a `risk_escalated` or `recovered` is tied to its raise by it (one "
            "whose raise you never received was raised before you started consuming, or "
            "in a database the operator rebuilt). An organization has one open episode at "
            "a time: an alert naming another episode than the one you hold open for it "
            "supersedes yours (a database rebuilt by a replay under another model decides "
            "the episodes again; its operator lists those it leaves with no further "
            "alert, `healthscore episodes-left-open`). Absent from alerts of releases "
            "before it. Added field."
        ),
    )
    score_model_version: str | None = Field(
        default=None, description="The scoring model that scored it, e.g. `v2`. Added field."
    )
    path_to_healthy: list[HealthAction] = Field(
        default_factory=list,
        description=(
            "The fewest actions that would bring the organization out of risk according "
            "to the model (churn probability below the recovery threshold), largest "
            "first; empty for `recovered`. Added field."
        ),
    )
    no_path_reason: NoPathReason | None = Field(
        default=None,
        description=(
            "Why `path_to_healthy` is empty: `out_of_risk` (the churn probability is "
            "already below the recovery threshold: every `recovered`, and a raise by a "
            "sharp score drop alone), `held_by_ceiling` (a signal only time heals, e.g. a "
            "cancellation request, holds the score under its ceiling: no action lifts it "
            "until the signal fades) or `time_heals_only` (the risk is in signals no "
            "action undoes: recent complaints, sentiment, contraction). Null when the "
            "path names actions, and in alerts from before the field. Added field."
        ),
    )


class ComponentScores(BaseModel):
    """The five component scores (each 0..100) behind the composite."""

    model_config = ConfigDict(frozen=True, title="ComponentScores")

    engagement: float = Field(ge=0, le=100)
    adoption: float = Field(ge=0, le=100)
    milestones: float = Field(ge=0, le=100)
    support: float = Field(ge=0, le=100)
    growth: float = Field(ge=0, le=100)


class HealthUpdate(BaseModel):
    """The latest score of one organization (`customer.health.v1`, compacted)."""

    model_config = ConfigDict(frozen=True, title="HealthUpdate")

    organization_id: Id = Field(description="The organization; also the message key.")
    health_score: float = Field(ge=0, le=100, description="0..100.")
    previous_score: float | None = Field(default=None, ge=0, le=100)
    health_status: HealthStatus
    churn_probability: float = Field(ge=0, le=1)
    risk_level: RiskLevel
    components: ComponentScores
    risk_factors: list[RiskFactor] = Field(description=f"Largest impact first. {RISK_FACTORS_SUM}")
    score_model_version: str = Field(description="Version of the scoring model config.")
    scored_at: Time = Field(description="The event time the score holds for.")
    emitted_at: Time = Field(description="Wall clock at emission.")
