"""The scoring model config: every tunable number of the score, loaded from JSON.

The file is versioned (`model/health_model.v4.json`, `"version": "v4"`, the
default; v1, v2 and v3 are kept beside it, loadable); the
version travels with every published score (`score_model_version`). Decoding is
strict: unknown keys, missing keys and wrong types are rejected, and so are
values that would make the score meaningless (negative weights, half-lives
<= 0, an alert exit threshold at or above its enter threshold). Every error is a
`ModelConfigError` whose message starts with the path of the offending field,
e.g. ``weights.established.engagement: must be >= 0``.

The meaning of each section is documented with the formulas in
`healthscore.core.scoring.score`.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Annotated, Any

import msgspec

from healthscore.core.enums import MilestoneType, RewardType
from healthscore.errors import ModelConfigError
from healthscore.json_keys import repeated_key

NonNeg = Annotated[float, msgspec.Meta(ge=0)]
Pos = Annotated[float, msgspec.Meta(gt=0)]
Probability = Annotated[float, msgspec.Meta(gt=0, lt=1)]

DAY = 86400.0

# The decayed signals of OrganizationState.decayed (one half-life each).
SIGNALS: tuple[str, ...] = (
    "activity",
    "logins",
    "value_actions",
    "clients_added",
    "negative_signals",
    "positive_commercial",
    "negative_sentiment",
    "complaints",
    "cancellation_requests",
    "escalations",
    "activity_baseline",
    "activity_recent",
    "logins_baseline",
)
COMPONENTS: tuple[str, ...] = ("engagement", "adoption", "milestones", "support", "growth")


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class Segments(_Section, frozen=True):
    new_max_tenure_days: Pos  # tenure < this -> segment "new", else "established"
    grace_days: NonNeg  # volume expectations ramp in linearly over the first grace_days


class ComponentWeights(_Section, frozen=True):
    engagement: NonNeg
    adoption: NonNeg
    milestones: NonNeg
    support: NonNeg
    growth: NonNeg

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        return (self.engagement, self.adoption, self.milestones, self.support, self.growth)


class SegmentWeights(_Section, frozen=True):
    new: ComponentWeights
    established: ComponentWeights


class HalfLives(_Section, frozen=True):
    activity: Pos
    logins: Pos
    value_actions: Pos
    clients_added: Pos
    negative_signals: Pos
    positive_commercial: Pos
    negative_sentiment: Pos
    complaints: Pos
    cancellation_requests: Pos
    escalations: Pos
    # the same usage events as `activity`, over a longer memory: an organization's own
    # usual level, against which `activity_decline` measures its recent activity
    # (accumulated under every model, so that a model using it can be switched to
    # without a replay)
    activity_baseline: Pos = 60.0
    # and over a shorter memory: the recent rate activity_decline compares (the same
    # events as `activity`; a separate sum so that its memory can differ: 14 days
    # was tried and ranked churn worse on held-out organizations, 0.919 against 0.928)
    activity_recent: Pos = 7.0
    # the same logins as `logins`, over a longer memory: the organization's own usual
    # login level, against which `login_decline` measures its recent logins
    # (accumulated under every model, as activity_baseline is)
    logins_baseline: Pos = 60.0


class NegativeSignalWeights(_Section, frozen=True):
    subscription_downgraded: NonNeg
    seat_removed: NonNeg
    data_export_requested: NonNeg


class PositiveCommercialWeights(_Section, frozen=True):
    payment_received: NonNeg
    subscription_upgraded: NonNeg
    referral_made: NonNeg
    review_received: NonNeg


class SentimentWeights(_Section, frozen=True):
    negative: NonNeg
    very_negative: NonNeg


class SignalWeights(_Section, frozen=True):
    value_action_quantity_cap: Pos
    client_quantity_cap: Pos
    negative_signal_quantity_cap: Pos
    negative_signal_weights: NegativeSignalWeights
    positive_commercial_weights: PositiveCommercialWeights
    sentiment_weights: SentimentWeights


class Engagement(_Section, frozen=True):
    recency_points: NonNeg
    recency_full_days: NonNeg
    recency_zero_days: Pos
    activity_points: NonNeg
    activity_scale: Pos
    login_points: NonNeg
    login_scale: Pos
    active_user_points: NonNeg
    active_user_scale: Pos
    active_user_window_days: Pos
    # activity_decline: the recent activity rate against the organization's own
    # baseline rate (both per day over the history they cover); the full points are
    # lost when the recent rate is `decline_full` (a share) below the baseline
    decline_points: NonNeg = 0.0
    decline_full: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.75
    # events added to both sides of the ratio: a few events more or less in a small
    # organization's fortnight are noise, not a decline (the ratio shrinks towards 1)
    decline_prior_events: NonNeg = 0.0
    # few_logins_per_user (v4): decayed logins per user active within the active-user
    # window; unlike few_logins, a small team is not judged for its size
    login_per_user_points: NonNeg = 0.0
    login_per_user_scale: Pos = 5.0
    # login_decline (0 points in every shipped model: `fit` gives it no weight,
    # docs/score-quality.md): the recent logins (`logins`) against what the organization's
    # own login baseline predicts; the full points are lost when they are
    # `login_decline_full` (a share) below it. Measured against the organization
    # itself, so a population that logs in less at the same health is not judged for it
    login_decline_points: NonNeg = 0.0
    login_decline_full: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.75
    # logins added to both sides of the ratio (as decline_prior_events)
    login_decline_prior: NonNeg = 0.0


class Adoption(_Section, frozen=True):
    breadth_points: NonNeg
    breadth_scale: Pos
    breadth_window_days: Pos
    depth_points: NonNeg
    depth_scale: Pos
    # narrowing_feature_use (v4): the share of the features the organization has used
    # that it used within the last week; the full points are lost when the share is
    # `feature_share_full` below 1 (a share of its own features, not a count: an
    # organization that needs few features is not judged for that)
    feature_share_points: NonNeg = 0.0
    feature_share_full: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.6


class Support(_Section, frozen=True):
    open_interaction_penalty: NonNeg
    open_interaction_cap: NonNeg
    open_escalation_penalty: NonNeg
    open_escalation_cap: NonNeg
    unresolved_grace_days: NonNeg
    unresolved_penalty_per_day: NonNeg
    unresolved_cap: NonNeg
    negative_sentiment_penalty: NonNeg
    negative_sentiment_cap: NonNeg
    complaint_penalty: NonNeg
    complaint_cap: NonNeg
    cancellation_penalty: NonNeg
    cancellation_cap: NonNeg
    escalation_penalty: NonNeg
    escalation_cap: NonNeg


class Growth(_Section, frozen=True):
    baseline: NonNeg
    commercial_points: NonNeg
    commercial_scale: Pos
    client_points: NonNeg
    client_scale: Pos
    negative_penalty: NonNeg
    negative_cap: NonNeg


class Churn(_Section, frozen=True):
    """p = logistic(intercept - score_coefficient * score/100 - trend_coefficient * trend),
    trend = change_30d / 100."""

    intercept: float
    score_coefficient: NonNeg
    trend_coefficient: NonNeg


class Alerts(_Section, frozen=True):
    enter_probability: Probability
    exit_probability: Probability
    drop_points: Pos
    recover_drop_points: NonNeg
    cooldown_hours: NonNeg
    # how long the probability must stay at or above enter_probability before a raise
    persist_hours: NonNeg = 0.0
    # ... unless it reaches this (None: no exception): a critical risk is raised at once
    immediate_probability: Probability | None = None
    # a raise by the probability threshold also needs the score to have fallen by at
    # least this many points over 30 days (change_30d <= -decline_points; unknown counts
    # as no decline), the raise at once from immediate_probability excepted. None (every
    # shipped model): no such need. Tried for the shifted setting's false alerts and
    # not adopted (docs/score-quality.md, "Tried after v4: alerts that need a decline")
    decline_points: NonNeg | None = None


ScoreCeiling = Annotated[float, msgspec.Meta(ge=0, le=100)]


class Ceilings(_Section, frozen=True):
    """Highest score an organization can have while a critical signal is open.

    A weighted mean dilutes the strongest churn signals: an open cancellation
    request moves the support component a lot but the composite little. A
    ceiling says what customer success means: while it is open, the
    organization is at risk, whatever else looks fine.
    """

    open_cancellation_request: ScoreCeiling
    open_escalation: ScoreCeiling
    # False (v1): each ceiling holds while its interaction is open, and lifts at once
    # when it closes. True: each holds in proportion to its decayed signal
    # (cancellation_requests, escalations), open or closed: see scoring/score.py
    follow_signals: bool = False


class Reward(_Section, frozen=True):
    type: RewardType
    value: NonNeg | None = None


class MilestoneRule(_Section, frozen=True):
    impact: NonNeg  # points of the milestones component (the weights are normalized)
    expected_by_days: Pos  # tenure at which its absence costs the full impact
    reward: Reward | None


class MilestoneRules(_Section, frozen=True):
    """One rule per milestone of the contract (field names = MilestoneType values)."""

    onboarding_completed: MilestoneRule
    profile_completed: MilestoneRule
    first_client_added: MilestoneRule
    clients_10: MilestoneRule
    clients_50: MilestoneRule
    first_form_created: MilestoneRule
    first_form_submitted: MilestoneRule
    first_journey_launched: MilestoneRule
    first_email_sent: MilestoneRule
    first_payment_received: MilestoneRule
    first_contract_signed: MilestoneRule
    integration_connected: MilestoneRule
    team_member_invited: MilestoneRule
    weddings_completed_10: MilestoneRule
    first_review_received: MilestoneRule
    first_referral: MilestoneRule
    subscription_upgraded: MilestoneRule


class UsageVolume(_Section, frozen=True):
    """A population's usage volume: for each decayed measure an absolute usage factor
    reads (`exp(-measure / scale)`), its median over the population's daily as-of
    points where it is positive and the organization used the product within the
    week (0: never positive). Documentation for the score
    itself; `healthscore adapt` compares a deploying population's volume with the one
    the scales were fitted to and scales them by the ratio (docs/score-quality.md)."""

    activity: NonNeg
    logins: NonNeg
    logins_per_user: NonNeg
    value_actions: NonNeg
    positive_commercial: NonNeg
    clients_added: NonNeg


class _ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: Annotated[str, msgspec.Meta(min_length=1)]
    segments: Segments
    weights: SegmentWeights
    half_life_days: HalfLives
    signals: SignalWeights
    engagement: Engagement
    adoption: Adoption
    support: Support
    growth: Growth
    churn: Churn
    alerts: Alerts
    ceilings: Ceilings
    milestones: MilestoneRules
    # what changed from the version before and why (newest first), and the figures
    # `healthscore fit` measured for it (held-out organizations): documentation only
    changelog: list[str] = msgspec.field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    # the usage volume of the population the usage scales fit (the training
    # organizations `fit` fitted them on, or the population `adapt` adapted them to)
    usage_reference: UsageVolume | None = None


class ScoreModel(_ModelConfig, frozen=True, dict=True):
    """The validated model: the config's sections plus lookup tables derived once."""

    @functools.cached_property
    def milestone_rules(self) -> dict[MilestoneType, MilestoneRule]:
        return {m: getattr(self.milestones, m.value) for m in MilestoneType}

    @functools.cached_property
    def half_life_seconds(self) -> dict[str, float]:
        return {name: getattr(self.half_life_days, name) * DAY for name in SIGNALS}

    @functools.cached_property
    def negative_signal_weights(self) -> dict[str, float]:
        return msgspec.structs.asdict(self.signals.negative_signal_weights)

    @functools.cached_property
    def positive_commercial_weights(self) -> dict[str, float]:
        return msgspec.structs.asdict(self.signals.positive_commercial_weights)

    @functools.cached_property
    def milestone_table(self) -> tuple[tuple[str, float, float], ...]:
        """(milestone name, impact, expected_by_days) rows, for the score's inner loop."""
        rules = self.milestone_rules.items()
        return tuple((m.value, rule.impact, rule.expected_by_days) for m, rule in rules)

    @functools.cached_property
    def milestone_weight_total(self) -> float:
        return sum(rule.impact for rule in self.milestone_rules.values())


_ERROR_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_EXPECTED_BOUND = re.compile(r"^Expected `\w+` (?P<op>>=|>|<=|<) (?P<bound>\S+)$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _reformat(error: msgspec.ValidationError) -> str:
    """msgspec's "Expected `float` >= 0.0 - at `$.a.b`" -> "a.b: must be >= 0"."""
    match = _ERROR_AT.match(str(error))
    if match is None:  # pragma: no cover - the pattern matches any text
        return str(error)
    msg, path = match["msg"], (match["path"] or "").lstrip(".")
    if bound := _EXPECTED_BOUND.match(msg):
        value = bound["bound"].removesuffix(".0")
        return f"{path or '<root>'}: must be {bound['op']} {value}"
    if missing := _MISSING.match(msg):
        return f"{_join(path, missing['field'])}: missing required field"
    if unknown := _UNKNOWN.match(msg):
        return f"{_join(path, unknown['field'])}: unknown field"
    return f"{path or '<root>'}: {msg}"


# A version names the model in every published score, in a metric label, in database
# keys (B-tree entries: a few kilobytes at most) and in alert ids: a short token, never
# whitespace, a line break or a page of text
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def check_version(version: str) -> None:
    """Refuse a version that is not a short token; the message names the field."""
    if not VERSION.fullmatch(version):
        shown = version if len(version) <= 40 else f"{version[:40]}... ({len(version)} characters)"
        raise ModelConfigError(
            "version: must be 1 to 64 letters, digits, '.', '_', '+' or '-', starting with a "
            f"letter or digit, not {shown!r}"
        )


def _check(config: _ModelConfig) -> None:
    """Rules that span fields; each failure names the path of the field to fix."""
    check_version(config.version)
    for segment in ("new", "established"):
        weights: ComponentWeights = getattr(config.weights, segment)
        total_weight = sum(weights.as_tuple())
        if not (0 < total_weight < math.inf):  # each finite, their sum may overflow
            raise ModelConfigError(
                f"weights.{segment}: the component weights must sum to a finite number > 0"
            )
    eng = config.engagement
    total = (
        eng.recency_points
        + eng.activity_points
        + eng.login_points
        + eng.active_user_points
        + eng.decline_points
        + eng.login_per_user_points
        + eng.login_decline_points
    )
    if abs(total - 100.0) > 1e-9:
        raise ModelConfigError(f"engagement: the *_points must sum to 100, not {total:g}")
    if eng.recency_zero_days <= eng.recency_full_days:
        raise ModelConfigError("engagement.recency_zero_days: must be > recency_full_days")
    ado = config.adoption
    if abs(ado.breadth_points + ado.depth_points + ado.feature_share_points - 100.0) > 1e-9:
        raise ModelConfigError(
            "adoption: breadth_points + depth_points + feature_share_points must sum to 100"
        )
    gro = config.growth
    if gro.baseline + gro.commercial_points + gro.client_points > 100.0 + 1e-9:
        raise ModelConfigError(
            "growth: baseline + commercial_points + client_points must be <= 100"
        )
    alerts = config.alerts
    if alerts.exit_probability >= alerts.enter_probability:
        raise ModelConfigError("alerts.exit_probability: must be < enter_probability")
    if alerts.recover_drop_points >= alerts.drop_points:
        raise ModelConfigError("alerts.recover_drop_points: must be < drop_points")
    impacts = (getattr(config.milestones, m.value).impact for m in MilestoneType)
    if sum(impacts) <= 0:
        raise ModelConfigError("milestones: the impacts must sum to > 0")


def parse_model(raw: bytes | str) -> ScoreModel:
    """Decode and validate a model config document (JSON text)."""
    # a key named twice in one object: the decoder would keep the last silently, and a
    # hand-edited file may then serve another setting than its author read
    shown = repeated_key(raw)
    if shown is not None:
        raise ModelConfigError(f"<root>: names the key {shown} twice in one object")
    try:
        config = msgspec.json.decode(raw, type=_ModelConfig)
    except msgspec.ValidationError as exc:
        raise ModelConfigError(_reformat(exc)) from None
    except msgspec.DecodeError as exc:
        raise ModelConfigError(f"<root>: not valid JSON ({exc})") from None
    _check(config)
    return ScoreModel(**msgspec.structs.asdict(config))  # shallow: sections are shared


def load_model(path: Path) -> ScoreModel:
    """Load and validate the model config at `path`; raises ModelConfigError."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ModelConfigError(f"<file>: cannot read {path}: {exc.strerror}") from None
    return parse_model(raw)


MODEL_DIR = Path(__file__).resolve().parents[2] / "model"
DEFAULT_MODEL_PATH = MODEL_DIR / "health_model.v4.json"
V1_MODEL_PATH = MODEL_DIR / "health_model.v1.json"  # the hand-set model, kept for reference
V2_MODEL_PATH = MODEL_DIR / "health_model.v2.json"  # the first fitted model, kept for reference
V3_MODEL_PATH = MODEL_DIR / "health_model.v3.json"  # the live model before v4


@functools.cache
def shipped_models() -> dict[str, ScoreModel]:
    """The models shipped in the package, by version."""
    models = (load_model(path) for path in sorted(MODEL_DIR.glob("health_model.*.json")))
    return {model.version: model for model in models}


@functools.cache
def default_model() -> ScoreModel:
    """The shipped model, v4 (loaded once per process)."""
    return load_model(DEFAULT_MODEL_PATH)


@functools.cache
def v3_model() -> ScoreModel:
    """The live model before v4 (what tests pinned on its numbers use; loaded once)."""
    return load_model(V3_MODEL_PATH)


@functools.cache
def v2_model() -> ScoreModel:
    """The first fitted model, v2 (what tests pinned on its numbers use; loaded once)."""
    return load_model(V2_MODEL_PATH)


@functools.cache
def v1_model() -> ScoreModel:
    """The hand-set v1 model (what tests of the v1 formulas pin; loaded once)."""
    return load_model(V1_MODEL_PATH)
