"""The score: (aggregate state, as_of, model) -> health score, pure and cheap.

Notation: all numbers below are model-config fields (`model/health_model.v1.json`);
``dec(s)`` is the decayed sum of signal s read at as_of; ``sat(x, k) = 1 - exp(-x/k)``
is a saturating curve (0 at x = 0, 63% at x = k); ``days(x)`` is x seconds in days.

Segment and grace
    tenure = days(as_of - first_event_at); segment = "new" if tenure <
    segments.new_max_tenure_days else "established". New organizations get a
    grace on *volume* expectations (missing data is not bad data):
    grace = max(0, 1 - tenure / segments.grace_days), keep = 1 - grace; a
    volume shortfall costs only `keep` of its points.

Every component is 100 minus named deficits (each deficit is a risk factor):

Engagement
    silent = days(as_of - last_usage_at) (last_usage_at falls back to
    first_event_at); recency = 1 within recency_full_days, falling linearly
    to 0 at recency_zero_days (so a silent organization drifts down as as_of
    advances).
    inactivity         = recency_points * (1 - recency)           (no grace)
    low_activity       = activity_points * exp(-dec(activity)/activity_scale) * keep
    few_logins         = login_points * exp(-dec(logins)/login_scale) * keep
    few_active_users   = active_user_points * exp(-users_30d/active_user_scale) * keep
    (the four *_points sum to 100, enforced by the loader).
Adoption
    narrow_feature_adoption = breadth_points * exp(-features_30d/breadth_scale) * keep
    shallow_usage           = depth_points * exp(-dec(value_actions)/depth_scale) * keep
Milestones
    missing_milestones = 100 * sum over missing m of impact_m * min(1, tenure /
    expected_by_days_m) / sum of all impacts. A milestone's absence costs
    nothing at tenure 0 and its full weight from expected_by_days on.
Support (100 when there were never any interactions)
    open_interactions          = min(cap, penalty * open count)
    open_escalations           = min(cap, penalty * open escalated-or-urgent count)
    unresolved_interaction_age = min(cap, per_day * max(0, age of oldest open - grace_days))
    negative_sentiment / complaints / cancellation_request / recent_escalations
                               = min(cap, penalty * dec(signal))
    If the penalties exceed 100 the component is 0 and the factors are scaled
    down proportionally so that they still sum to the component's deficit.
Growth
    growth = clamp(baseline + commercial_points * sat(dec(positive_commercial),
    commercial_scale) + client_points * sat(dec(clients_added), client_scale)
    - min(negative_cap, negative_penalty * dec(negative_signals)), 0, 100); the
    deficits are weak_commercial_momentum = commercial_points * exp(...),
    no_client_growth = client_points * exp(...), contraction_signals = the
    penalty, growth_baseline = 100 - baseline - commercial_points - client_points
    (0 in v1), scaled like support's when clamped at 0.

Composite
    score = sum_c w_c * C_c / sum_c w_c with the segment's weights, then held
    under the ceilings of critical open signals (ceilings.*): an open
    cancellation request caps it at open_cancellation_request (critical band),
    an open escalated or urgent interaction at open_escalation. The points a
    ceiling removes are a risk factor of their own (`ceiling_<signal>`), so
    the impacts still sum to score - 100.

Risk factors and their impacts
    impact(f) = -(w_c / sum w) * deficit(f), in composite points, so the
    impacts of *all* factors sum exactly to score - 100 (the baseline is 100:
    every factor is a shortfall from the ideal). Factors with |impact| < 0.5
    are folded into one `minor_factors` entry (reported only if that sum
    reaches 0.5 too), so the reported list sums to score - 100 within 0.5
    plus rounding. Largest |impact| first.

Churn probability
    p = logistic(churn.intercept - churn.score_coefficient * score/100
                 - churn.trend_coefficient * change_30d/100),
    change_30d = 0 when unknown. p is strictly decreasing in the score (for a
    given 30-day-old reference score, raising the score also raises the
    trend) and rises when the 30-day trend falls.

Changes
    change_Nd = score - the daily score (state.daily_scores) of the oldest day
    within [today - N, today - 1], None if there is none.
"""

from __future__ import annotations

import math

import msgspec

from healthscore.bands import health_band, risk_level_for
from healthscore.contracts.alerts import RiskFactor
from healthscore.contracts.enums import HealthStatus, Priority, RiskLevel
from healthscore.scoring.aggregate import decayed_value
from healthscore.scoring.model import COMPONENTS, DAY, ScoreModel
from healthscore.scoring.state import OrganizationState

MIN_REPORTED_IMPACT = 0.5
_URGENT = Priority.URGENT.value
_ESCALATION = "escalation"
_CANCELLATION = "cancellation_request"

_DETAILS: dict[str, str] = {
    "inactivity": "No product activity for {value:.1f} days.",
    "low_activity": "Little recent product activity (decayed event count {value:.1f}).",
    "few_logins": "Few recent logins (decayed login count {value:.1f}).",
    "few_active_users": "{value:.0f} active users in the last 30 days.",
    "narrow_feature_adoption": "{value:.0f} distinct features used in the last 30 days.",
    "shallow_usage": (
        "Few recent value actions: clients, forms, journeys, emails, payments, contracts "
        "(decayed {value:.1f})."
    ),
    "missing_milestones": "{value:.0f} success milestones expected by now are missing{extra}.",
    "open_interactions": "{value:.0f} support interactions are open.",
    "open_escalations": "{value:.0f} open support interactions are escalated or urgent.",
    "unresolved_interaction_age": "The oldest open support interaction is {value:.1f} days old.",
    "negative_sentiment": "Negative sentiment in recent support interactions "
    "(decayed weight {value:.2f}).",
    "complaints": "Recent complaints (decayed count {value:.2f}).",
    "cancellation_request": "The customer asked to cancel (decayed count {value:.2f}).",
    "recent_escalations": "Recent support escalations (decayed count {value:.2f}).",
    "weak_commercial_momentum": "Few recent payments, upgrades, referrals or reviews "
    "(decayed weight {value:.2f}).",
    "no_client_growth": "Few clients added recently (decayed count {value:.1f}).",
    "contraction_signals": "Downgrades, seat removals or data exports "
    "(decayed weight {value:.2f}).",
    "growth_baseline": "Growth headroom the model does not award (constant {value:.0f}).",
    "minor_factors": "{value:.0f} smaller factors together.",
    "ceiling_open_cancellation_request": "{value:.0f} open cancellation request(s) hold the "
    "score at or below {extra}.",
    "ceiling_open_escalation": "{value:.0f} open escalated or urgent interaction(s) hold the "
    "score at or below {extra}.",
}


class HealthScore(msgspec.Struct, frozen=True):
    score: float  # 0..100, 2 decimals
    status: HealthStatus
    components: dict[str, float]  # engagement, adoption, milestones, support, growth
    churn_probability: float  # 0..1, 4 decimals
    risk_level: RiskLevel
    risk_factors: list[RiskFactor]  # largest |impact| first, each |impact| >= 0.5
    segment: str
    change_7d: float | None
    change_30d: float | None
    active_users_30d: int


# (factor, value, deficit in component points, extra detail text)
_Deficit = tuple[str, float, float, str]


def _scale_to(deficits: list[_Deficit], total: float) -> list[_Deficit]:
    """Scale deficits proportionally so they sum to `total` (a clamped component)."""
    raw = sum(d[2] for d in deficits)
    if raw <= total or raw <= 0.0:
        return deficits
    ratio = total / raw
    return [(name, value, deficit * ratio, extra) for name, value, deficit, extra in deficits]


def churn_probability(score: float, change_30d: float | None, model: ScoreModel) -> float:
    """logistic(a - b*score/100 - c*change_30d/100), unrounded."""
    churn = model.churn
    trend = (change_30d or 0.0) / 100.0
    x = churn.intercept - churn.score_coefficient * score / 100.0 - churn.trend_coefficient * trend
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def score_changes(
    state: OrganizationState, as_of: float, current: float
) -> tuple[float | None, float | None]:
    """(change_7d, change_30d) of `current` against state.daily_scores."""
    today = int(as_of // DAY)
    oldest7: int | None = None
    oldest30: int | None = None
    for key in state.daily_scores:
        day = int(key)
        if today - 30 <= day < today and (oldest30 is None or day < oldest30):
            oldest30 = day
        if today - 7 <= day < today and (oldest7 is None or day < oldest7):
            oldest7 = day
    daily = state.daily_scores
    change7 = round(current - daily[str(oldest7)], 2) if oldest7 is not None else None
    change30 = round(current - daily[str(oldest30)], 2) if oldest30 is not None else None
    return change7, change30


def score(
    state: OrganizationState, as_of: float, model: ScoreModel, explain: bool = True
) -> HealthScore:
    """Score `state` as of event time `as_of`; pure (reads no clock, changes nothing).

    With `explain=False` the risk factors are left empty: the numbers are the
    same, and the per-event rescoring on the hot path skips building them.
    """
    first = state.first_event_at
    tenure = max(0.0, (as_of - first) / DAY) if first is not None else 0.0
    segment = "new" if tenure < model.segments.new_max_tenure_days else "established"
    grace_days = model.segments.grace_days
    keep = min(1.0, tenure / grace_days) if grace_days > 0 else 1.0

    def dec(signal: str) -> float:
        return decayed_value(state, signal, as_of, model)

    exp = math.exp

    # engagement
    eng = model.engagement
    last_usage = state.last_usage_at if state.last_usage_at is not None else first
    silent = max(0.0, (as_of - last_usage) / DAY) if last_usage is not None else 0.0
    if silent <= eng.recency_full_days:
        recency = 1.0
    elif silent >= eng.recency_zero_days:
        recency = 0.0
    else:
        recency = (eng.recency_zero_days - silent) / (eng.recency_zero_days - eng.recency_full_days)
    user_horizon = as_of - eng.active_user_window_days * DAY
    active_users = sum(1 for seen in state.users.values() if seen >= user_horizon)
    activity, logins = dec("activity"), dec("logins")
    engagement: list[_Deficit] = [
        ("inactivity", silent, eng.recency_points * (1.0 - recency), ""),
        (
            "low_activity",
            activity,
            eng.activity_points * exp(-activity / eng.activity_scale) * keep,
            "",
        ),
        ("few_logins", logins, eng.login_points * exp(-logins / eng.login_scale) * keep, ""),
        (
            "few_active_users",
            active_users,
            eng.active_user_points * exp(-active_users / eng.active_user_scale) * keep,
            "",
        ),
    ]

    # adoption
    ado = model.adoption
    feature_horizon = as_of - ado.breadth_window_days * DAY
    features = sum(1 for _count, used in state.features.values() if used >= feature_horizon)
    value_actions = dec("value_actions")
    adoption: list[_Deficit] = [
        (
            "narrow_feature_adoption",
            features,
            ado.breadth_points * exp(-features / ado.breadth_scale) * keep,
            "",
        ),
        (
            "shallow_usage",
            value_actions,
            ado.depth_points * exp(-value_actions / ado.depth_scale) * keep,
            "",
        ),
    ]

    # milestones
    achieved = state.milestones
    missing_points = 0.0
    missing: list[tuple[float, str]] = []
    if tenure > 0.0:
        for name, impact, expected_by_days in model.milestone_table:
            if name not in achieved:
                points = impact * min(1.0, tenure / expected_by_days)
                if points > 0.0:
                    missing_points += points
                    missing.append((points, name))
    missing.sort(reverse=True)
    milestones: list[_Deficit] = [
        (
            "missing_milestones",
            len(missing),
            100.0 * missing_points / model.milestone_weight_total,
            ", e.g. " + ", ".join(name for _p, name in missing[:3]) if missing else "",
        )
    ]

    # support
    sup = model.support
    open_count = len(state.open_interactions)
    escalated = 0
    open_cancellations = 0
    oldest: float | None = None
    for interaction in state.open_interactions.values():
        if interaction.interaction_type == _CANCELLATION:
            open_cancellations += 1
        if (
            interaction.escalated
            or interaction.priority == _URGENT
            or interaction.interaction_type == _ESCALATION
        ):
            escalated += 1
        if oldest is None or interaction.opened_at < oldest:
            oldest = interaction.opened_at
    age = max(0.0, (as_of - oldest) / DAY) if oldest is not None else 0.0
    sentiment, complaints = dec("negative_sentiment"), dec("complaints")
    cancellations, escalations = dec("cancellation_requests"), dec("escalations")
    support: list[_Deficit] = [
        ("open_interactions", open_count,
         min(sup.open_interaction_cap, sup.open_interaction_penalty * open_count), ""),
        ("open_escalations", escalated,
         min(sup.open_escalation_cap, sup.open_escalation_penalty * escalated), ""),
        ("unresolved_interaction_age", age,
         min(sup.unresolved_cap,
             sup.unresolved_penalty_per_day * max(0.0, age - sup.unresolved_grace_days)), ""),
        ("negative_sentiment", sentiment,
         min(sup.negative_sentiment_cap, sup.negative_sentiment_penalty * sentiment), ""),
        ("complaints", complaints, min(sup.complaint_cap, sup.complaint_penalty * complaints), ""),
        ("cancellation_request", cancellations,
         min(sup.cancellation_cap, sup.cancellation_penalty * cancellations), ""),
        ("recent_escalations", escalations,
         min(sup.escalation_cap, sup.escalation_penalty * escalations), ""),
    ]  # fmt: skip
    support = _scale_to(support, 100.0)

    # growth
    gro = model.growth
    commercial, clients = dec("positive_commercial"), dec("clients_added")
    negative = dec("negative_signals")
    growth: list[_Deficit] = [
        ("growth_baseline", 100.0 - gro.baseline - gro.commercial_points - gro.client_points,
         max(0.0, 100.0 - gro.baseline - gro.commercial_points - gro.client_points), ""),
        ("weak_commercial_momentum", commercial,
         gro.commercial_points * exp(-commercial / gro.commercial_scale), ""),
        ("no_client_growth", clients, gro.client_points * exp(-clients / gro.client_scale), ""),
        ("contraction_signals", negative,
         min(gro.negative_cap, gro.negative_penalty * negative), ""),
    ]  # fmt: skip
    growth = _scale_to(growth, 100.0)

    weights = (model.weights.new if segment == "new" else model.weights.established).as_tuple()
    total_weight = sum(weights)
    components: dict[str, float] = {}
    composite = 0.0
    impacts: list[tuple[float, str, float, str]] = []  # (impact, factor, value, extra)
    for name, weight, deficits in zip(
        COMPONENTS, weights, (engagement, adoption, milestones, support, growth), strict=True
    ):
        value = min(100.0, max(0.0, 100.0 - sum(d[2] for d in deficits)))
        components[name] = round(value, 2)
        share = weight / total_weight
        composite += share * value
        for factor, measured, deficit, extra in deficits:
            if deficit > 0.0 and share > 0.0:
                impacts.append((-share * deficit, factor, measured, extra))
    composite = min(100.0, max(0.0, composite))
    ceilings = model.ceilings
    for factor, count, ceiling in (
        ("ceiling_open_cancellation_request", open_cancellations,
         ceilings.open_cancellation_request),
        ("ceiling_open_escalation", escalated, ceilings.open_escalation),
    ):  # fmt: skip
        if count and composite > ceiling:
            impacts.append((ceiling - composite, factor, count, f"{ceiling:g}"))
            composite = ceiling
    final = round(composite, 2)

    change_7d, change_30d = score_changes(state, as_of, final)
    probability = round(churn_probability(final, change_30d, model), 4)
    return HealthScore(
        score=final,
        status=health_band(final),
        components=components,
        churn_probability=probability,
        risk_level=risk_level_for(probability),
        risk_factors=_risk_factors(impacts) if explain else [],
        segment=segment,
        change_7d=change_7d,
        change_30d=change_30d,
        active_users_30d=active_users,
    )


def _risk_factors(impacts: list[tuple[float, str, float, str]]) -> list[RiskFactor]:
    impacts.sort(key=lambda item: -abs(item[0]))
    factors: list[RiskFactor] = []
    minor_impact, minor_count = 0.0, 0
    for impact, factor, value, extra in impacts:
        if abs(impact) < MIN_REPORTED_IMPACT:
            minor_impact += impact
            minor_count += 1
            continue
        factors.append(_factor(factor, value, impact, extra))
    if abs(minor_impact) >= MIN_REPORTED_IMPACT:
        factors.append(_factor("minor_factors", minor_count, minor_impact, ""))
        factors.sort(key=lambda item: -abs(item.impact))
    return factors


def _factor(factor: str, value: float, impact: float, extra: str) -> RiskFactor:
    # plain construction: pydantic-core validates four scalars faster than model_construct
    return RiskFactor(
        factor=factor,
        value=round(float(value), 4),
        impact=round(impact, 2),
        detail=_DETAILS[factor].format(value=value, extra=extra),
    )


def record_score(state: OrganizationState, health: HealthScore, as_of: float) -> None:
    """Remember `health` as the latest score (and as its day's score; 31 days kept)."""
    day = int(as_of // DAY)
    daily = state.daily_scores
    daily[str(day)] = health.score
    newest = max(int(key) for key in daily)
    for key in [key for key in daily if int(key) < newest - 30]:
        del daily[key]
    state.last_score = health.score
    state.last_scored_at = as_of
