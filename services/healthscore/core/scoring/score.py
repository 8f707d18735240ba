"""The score: (aggregate state, as_of, model) -> health score, pure and cheap.

Notation: all numbers below are model-config fields (`model/health_model.v4.json`);
``dec(s)`` is the decayed sum of signal s read at as_of; ``sat(x, k) = 1 - exp(-x/k)``
is a saturating curve (0 at x = 0, 63% at x = k); ``days(x)`` is x seconds in days.

Segment and grace
    tenure = days(as_of - origin), origin = the account's creation (state.created_at,
    from a profile) if known and earlier, else first_event_at; segment = "new" if tenure <
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
    activity_decline   = decline_points * clamp((1 - ratio) / decline_full, 0, 1) * keep,
        ratio = (dec(activity_recent) + k) / (expected + k), expected = the recent
        sum the baseline rate predicts: dec(activity_baseline) * W(recent) /
        W(baseline), W(h) = the weight half-life h gives a steady daily event over
        the organization's history, h/ln 2 * (1 - 2**(-age/h)), age = days since
        its first event; k = decline_prior_events. A steady organization has ratio
        1 whatever its size or age, and k keeps a small one's noise from looking
        like a decline; 1 when the baseline is 0. decline_points is 0 (the
        factor off) before v2. More activity at as_of never lowers the score;
        a late event (older than the newest) adds more to the baseline than to
        the recent sum and can lower it a little.
    few_logins_per_user = login_per_user_points * exp(-dec(logins) / max(1, users)
        / login_per_user_scale) * keep (v4; 0 before), users = the users the state
        knows (seen within about 90 days: pruned only as usage events arrive): logins
        per user, so that a one-person team is not judged for its size as few_logins
        judges it. The team is not counted over a window of as_of, so that a silent
        organization's score only drifts down (its users leaving a window would raise
        its logins per user). A login by a known user never lowers the score; a new
        user's first event adds a user and can lower it a little.
    login_decline      = login_decline_points * clamp((1 - login_ratio) / login_decline_full,
        0, 1) * keep (0 points in v1-v4), login_ratio = (dec(logins) + k) / (expected + k),
        expected = dec(logins_baseline) * W(logins) / W(logins_baseline) (W as for
        activity_decline), k = login_decline_prior: the team's recent logins against the
        organization's own usual login level (with the same team, logins per user
        against its own history), 1 when the baseline is 0 (a state written before
        the baseline existed: no decline until it rebuilds). A population that logs in
        less at the same health is not judged for it, as few_logins_per_user judges it;
        a login never lowers it while the ratio is at most 1.
    (the *_points sum to 100, enforced by the loader).
Adoption
    narrow_feature_adoption = breadth_points * exp(-features_30d/breadth_scale) * keep
    shallow_usage           = depth_points * exp(-dec(value_actions)/depth_scale) * keep
    narrowing_feature_use   = feature_share_points * clamp((1 - share) / feature_share_full,
        0, 1) * keep (v4; 0 before), share = features used within FEATURE_SHARE_WINDOW_DAYS
        / features the state remembers (1 when none): the organization's own features,
        not a count, so one that needs few of them is not judged for that.
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
    under the ceilings of critical signals (ceilings.*). With
    ceilings.follow_signals (v2) a ceiling fades with its decayed signal instead of
    holding while the interaction is open: the score is held at or below
    100 - (100 - ceiling) * min(1, dec(cancellation_requests)) (resp.
    dec(escalations)), so a cancellation request pulls the score down at once and
    closing it lets the score recover as the signal decays, not in one event.
    Without it (v1) the ceilings hold while the signal is open: an open
    cancellation request caps it at open_cancellation_request (critical band),
    an open escalated or urgent interaction at open_escalation. The points a
    ceiling removes are a risk factor of their own (`ceiling_<signal>`), so
    the impacts still sum to score - 100.

Risk factors and their impacts
    impact(f) = -(w_c / sum w) * deficit(f), in composite points, so the
    impacts of *all* factors sum exactly to score - 100 (the baseline is 100:
    every factor is a shortfall from the ideal; a clamped component's factors
    are scaled to its deficit, a ceiling's points are a factor). Factors with
    |impact| < 0.5 are folded into one `minor_factors` entry, reported unless
    it is 0 in hundredths; the reported impacts are in hundredths, apportioned
    by largest remainder (each rounded towards 0, the hundredths still missing
    to the largest remainders, ties to the larger impact), so the reported
    list sums to score - 100 exactly at the precision it is published in, each
    within 0.01 of its own impact. Largest |impact| first.

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
from bisect import bisect_left
from collections.abc import Callable

from healthscore.core.bands import health_band, risk_level_for
from healthscore.core.scoring.aggregate import decayed_values
from healthscore.core.scoring.model import COMPONENTS, DAY, ScoreModel
from healthscore.core.scoring.results import HealthScore, RiskFactor
from healthscore.core.scoring.state import OpenBeyond, OpenInteraction, OrganizationState

MIN_REPORTED_IMPACT = 0.5
FEATURE_SHARE_WINDOW_DAYS = 7.0  # the week narrowing_feature_use reads the features of

# One detail sentence per factor, from its measured value and extra text. Written
# as f-strings (same format specs as str.format): a factor's text is built for
# every reported factor, and a template's .format(**kwargs) costs twice as much.
_Detail = Callable[[float, str], str]


def _count(value: float, one: str, many: str) -> str:
    """`value` things, the noun agreeing (the detail goes verbatim into a CSM's message)."""
    return f"{value:.0f} {one if round(value) == 1 else many}"


def _are(value: float) -> str:
    return "is" if round(value) == 1 else "are"


_DETAILS: dict[str, _Detail] = {
    "inactivity": lambda value, _: f"No product activity for {value:.1f} days.",
    "low_activity": lambda value, _: (
        f"Little recent product activity (decayed event count {value:.1f})."
    ),
    "few_logins": lambda value, _: f"Few recent logins (decayed login count {value:.1f}).",
    "few_active_users": lambda value, _: f"{value:.0f} active users in the last 30 days.",
    "activity_decline": lambda value, _: (
        f"Recent activity is {value:.0%} of this organization's usual level."
    ),
    "few_logins_per_user": lambda value, _: (
        f"Few recent logins per active user (decayed logins per user {value:.1f})."
    ),
    "login_decline": lambda value, _: (
        f"Recent logins are {value:.0%} of this organization's usual level."
    ),
    "narrow_feature_adoption": lambda value, _: (
        f"{_count(value, 'distinct feature', 'distinct features')} used in the last 30 days."
    ),
    "shallow_usage": lambda value, _: (
        "Few recent value actions: clients, forms, journeys, emails, payments, contracts "
        f"(decayed {value:.1f})."
    ),
    "narrowing_feature_use": lambda value, _: (
        f"{value:.0%} of the features this organization uses were used in the last week."
    ),
    "missing_milestones": lambda value, extra: (
        f"{_count(value, 'success milestone', 'success milestones')} expected by now "
        f"{_are(value)} missing{extra}."
    ),
    "open_interactions": lambda value, _: (
        f"{_count(value, 'support interaction', 'support interactions')} {_are(value)} open."
    ),
    "open_escalations": lambda value, _: (
        f"{_count(value, 'open support interaction', 'open support interactions')} "
        f"{_are(value)} escalated or urgent."
    ),
    "unresolved_interaction_age": lambda value, _: (
        f"The oldest open support interaction is {value:.1f} days old."
    ),
    "negative_sentiment": lambda value, _: (
        f"Negative sentiment in recent support interactions (decayed weight {value:.2f})."
    ),
    "complaints": lambda value, _: f"Recent complaints (decayed count {value:.2f}).",
    "cancellation_request": lambda value, _: (
        f"The customer asked to cancel (decayed count {value:.2f})."
    ),
    "recent_escalations": lambda value, _: (
        f"Recent support escalations (decayed count {value:.2f})."
    ),
    "weak_commercial_momentum": lambda value, _: (
        f"Few recent payments, upgrades, referrals or reviews (decayed weight {value:.2f})."
    ),
    "no_client_growth": lambda value, _: f"Few clients added recently (decayed count {value:.1f}).",
    "contraction_signals": lambda value, _: (
        f"Downgrades, seat removals or data exports (decayed weight {value:.2f})."
    ),
    "growth_baseline": lambda value, _: (
        f"Growth headroom the model does not award (constant {value:.0f})."
    ),
    "minor_factors": lambda value, extra: (
        f"{value:.0f} smaller factors together, each under {MIN_REPORTED_IMPACT:g} points: {extra}."
        if value != 1
        else f"1 smaller factor, under {MIN_REPORTED_IMPACT:g} points: {extra}."
    ),
    "ceiling_open_cancellation_request": lambda value, extra: (
        f"{value:.0f} open cancellation request(s) hold the score at or below {extra}."
    ),
    "ceiling_cancellation_request": lambda value, extra: (
        f"A recent cancellation request (decayed weight {value:.2f}) holds the score at or "
        f"below {extra}."
    ),
    "ceiling_escalation": lambda value, extra: (
        f"A recent escalation (decayed weight {value:.2f}) holds the score at or below {extra}."
    ),
    "ceiling_open_escalation": lambda value, extra: (
        f"{value:.0f} open escalated or urgent interaction(s) hold the score at or below {extra}."
    ),
}

# every risk factor's name a score may report (the contract lists them for consumers)
RISK_FACTOR_NAMES: tuple[str, ...] = tuple(_DETAILS)


# Each component's deficits, named as risk factors, in COMPONENTS order and in
# the order score() lists them (and their measured values). The order is part of
# the result: a component sums its deficits in it (floating point), and equal
# impacts keep it through the (stable) sort of the risk factors.
_FACTORS: tuple[tuple[str, ...], ...] = (
    (
        "inactivity",
        "low_activity",
        "few_logins",
        "few_active_users",
        "activity_decline",
        "few_logins_per_user",
        "login_decline",
    ),
    ("narrow_feature_adoption", "shallow_usage", "narrowing_feature_use"),
    ("missing_milestones",),
    (
        "open_interactions",
        "open_escalations",
        "unresolved_interaction_age",
        "negative_sentiment",
        "complaints",
        "cancellation_request",
        "recent_escalations",
    ),
    ("growth_baseline", "weak_commercial_momentum", "no_client_growth", "contraction_signals"),
)

_NO_SUPPORT_DEFICITS = (0.0,) * len(_FACTORS[COMPONENTS.index("support")])

# (impact in composite points, factor, measured value, extra detail text)
_Impact = tuple[float, str, float, str]


def _scale_to(deficits: tuple[float, ...], total: float) -> tuple[float, ...]:
    """Scale deficits proportionally so they sum to `total` (a clamped component)."""
    raw = sum(deficits)
    if raw <= total or raw <= 0.0:
        return deficits
    ratio = total / raw
    return tuple(deficit * ratio for deficit in deficits)


def _percent(x: float) -> float:
    """min(100.0, max(0.0, x)) for every x (NaN gives 0.0 too), without the two builtin
    calls: they cost more than the rest of a component's arithmetic."""
    if not x > 0.0:
        return 0.0
    return x if x < 100.0 else 100.0


def _history_weight(half_life_days: float, age_days: float) -> float:
    """sum of 2**(-k/h) over a steady daily event stream of `age_days`, as an integral."""
    return half_life_days / math.log(2) * -math.expm1(-age_days / half_life_days * math.log(2))


def _expected_recent(
    baseline: float,
    state: OrganizationState,
    as_of: float,
    recent_half_life: float,
    baseline_half_life: float,
) -> float | None:
    """The recent sum (half-life `recent_half_life`) a baseline sum's rate predicts;
    None when there is no baseline yet."""
    first = state.first_event_at
    if first is None or baseline <= 0.0 or as_of <= first:
        return None
    age = (as_of - first) / DAY
    window = _history_weight(recent_half_life, age)
    return baseline / _history_weight(baseline_half_life, age) * window


def expected_recent_activity(
    baseline: float, state: OrganizationState, as_of: float, model: ScoreModel
) -> float | None:
    """The recent (activity_recent) sum the organization's baseline rate predicts;
    None when there is no baseline yet."""
    half_lives = model.half_life_days
    return _expected_recent(
        baseline, state, as_of, half_lives.activity_recent, half_lives.activity_baseline
    )


def expected_recent_logins(
    baseline: float, state: OrganizationState, as_of: float, model: ScoreModel
) -> float | None:
    """The recent (logins) sum the organization's login baseline predicts; None when
    there is no baseline yet (as in a state written before the signal existed)."""
    half_lives = model.half_life_days
    return _expected_recent(baseline, state, as_of, half_lives.logins, half_lives.logins_baseline)


def activity_ratio(recent: float, expected: float | None, prior: float) -> float:
    """Recent activity over what the baseline predicts, shrunk by `prior` events (1.0:
    as usual)."""
    if expected is None or expected + prior <= 0.0:
        return 1.0
    return (recent + prior) / (expected + prior)


def logins_per_user(logins: float, users: float) -> float:
    """Decayed logins per known user (the logins themselves where at most one is known):
    few_logins_per_user's measure, and the usage volume's (`volume.py`)."""
    return logins / users if users > 1 else logins


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
    daily = state.daily_scores
    days = sorted(map(int, daily))  # at most 31: sorting them beats scanning with comparisons
    return (
        _change_since(current, daily, days, today - 7, today),
        _change_since(current, daily, days, today - 30, today),
    )


def _change_since(
    current: float, daily: dict[str, float], days: list[int], start: int, today: int
) -> float | None:
    """`current` - the score of the oldest of the sorted `days` in [start, today), if any."""
    index = bisect_left(days, start)
    if index == len(days) or days[index] >= today:
        return None
    return round(current - daily[str(days[index])], 2)


def score(
    state: OrganizationState, as_of: float, model: ScoreModel, explain: bool = True
) -> HealthScore:
    """Score `state` as of event time `as_of`; pure (reads no clock, changes nothing).

    With `explain=False` the risk factors are left empty: the numbers are the
    same, and the per-event rescoring on the hot path skips building them.
    """
    return _score(state, as_of, model, explain)[0]


def score_with_impacts(
    state: OrganizationState, as_of: float, model: ScoreModel
) -> tuple[HealthScore, dict[str, float]]:
    """The explained score, and the impact of each of its risk factors on its own,
    unrounded: every factor with a shortfall, those folded into minor_factors too.
    What undoing one factor alone gives back (the path to healthy)."""
    health, impacts = _score(state, as_of, model, True)
    return health, {factor: impact for impact, factor, _value, _extra in impacts}


def _score(
    state: OrganizationState, as_of: float, model: ScoreModel, explain: bool
) -> tuple[HealthScore, list[_Impact]]:
    """score(), and (explained) every factor's impact in _FACTORS order, then the ceilings'."""
    first = state.first_event_at
    created = state.created_at  # from a profile: the account is older than its first event
    origin = created if created is not None and (first is None or created < first) else first
    tenure = max(0.0, (as_of - origin) / DAY) if origin is not None else 0.0
    segment = "new" if tenure < model.segments.new_max_tenure_days else "established"
    grace_days = model.segments.grace_days
    keep = min(1.0, tenure / grace_days) if grace_days > 0 else 1.0
    dec = decayed_values(state, as_of, model)
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
    active_users = len([seen for seen in state.users.values() if seen >= user_horizon])
    activity, logins = dec["activity"], dec["logins"]
    ratio = 1.0
    decline = 0.0
    if eng.decline_points > 0.0:
        expected = expected_recent_activity(dec["activity_baseline"], state, as_of, model)
        ratio = activity_ratio(dec["activity_recent"], expected, eng.decline_prior_events)
        decline = eng.decline_points * min(1.0, max(0.0, (1.0 - ratio) / eng.decline_full)) * keep
    per_user = logins_per_user(logins, len(state.users))
    few_per_user = 0.0
    if eng.login_per_user_points > 0.0:
        few_per_user = eng.login_per_user_points * exp(-per_user / eng.login_per_user_scale) * keep
    login_ratio = 1.0
    login_decline = 0.0
    if eng.login_decline_points > 0.0:
        expected_logins = expected_recent_logins(dec["logins_baseline"], state, as_of, model)
        login_ratio = activity_ratio(logins, expected_logins, eng.login_decline_prior)
        login_decline = (
            eng.login_decline_points
            * min(1.0, max(0.0, (1.0 - login_ratio) / eng.login_decline_full))
            * keep
        )
    engagement = (
        eng.recency_points * (1.0 - recency),
        eng.activity_points * exp(-activity / eng.activity_scale) * keep,
        eng.login_points * exp(-logins / eng.login_scale) * keep,
        eng.active_user_points * exp(-active_users / eng.active_user_scale) * keep,
        decline,
        few_per_user,
        login_decline,
    )

    # adoption
    ado = model.adoption
    feature_horizon = as_of - ado.breadth_window_days * DAY
    share = 1.0
    narrowing = 0.0
    if ado.feature_share_points > 0.0:  # both counts in the one pass over the features
        week = as_of - FEATURE_SHARE_WINDOW_DAYS * DAY
        features = used_this_week = 0
        for _count, used in state.features.values():
            if used >= feature_horizon:
                features += 1
            if used >= week:
                used_this_week += 1
        if state.features:
            share = used_this_week / len(state.features)
        narrowing = (
            ado.feature_share_points
            * min(1.0, max(0.0, (1.0 - share) / ado.feature_share_full))
            * keep
        )
    else:
        features = len(
            [used for _count, used in state.features.values() if used >= feature_horizon]
        )
    value_actions = dec["value_actions"]
    adoption = (
        ado.breadth_points * exp(-features / ado.breadth_scale) * keep,
        ado.depth_points * exp(-value_actions / ado.depth_scale) * keep,
        narrowing,
    )

    # milestones
    missing_points, missing = _missing_milestones(state.milestones, tenure, model)
    milestones = (100.0 * missing_points / model.milestone_weight_total,)

    # support
    sup = model.support
    open_count, escalated, open_cancellations, age = _open_support(
        state.open_interactions, as_of, state.open_beyond
    )
    sentiment, complaints = dec["negative_sentiment"], dec["complaints"]
    cancellations, escalations = dec["cancellation_requests"], dec["escalations"]
    if open_count or sentiment or complaints or cancellations or escalations:
        support = _scale_to(
            (
                min(sup.open_interaction_cap, sup.open_interaction_penalty * open_count),
                min(sup.open_escalation_cap, sup.open_escalation_penalty * escalated),
                min(
                    sup.unresolved_cap,
                    sup.unresolved_penalty_per_day * max(0.0, age - sup.unresolved_grace_days),
                ),
                min(sup.negative_sentiment_cap, sup.negative_sentiment_penalty * sentiment),
                min(sup.complaint_cap, sup.complaint_penalty * complaints),
                min(sup.cancellation_cap, sup.cancellation_penalty * cancellations),
                min(sup.escalation_cap, sup.escalation_penalty * escalations),
            ),
            100.0,
        )
    else:  # the common case: each penalty is a (finite) model number times 0
        support = _NO_SUPPORT_DEFICITS

    # growth
    gro = model.growth
    commercial, clients = dec["positive_commercial"], dec["clients_added"]
    negative = dec["negative_signals"]
    unawarded = 100.0 - gro.baseline - gro.commercial_points - gro.client_points
    growth = _scale_to(
        (
            max(0.0, unawarded),
            gro.commercial_points * exp(-commercial / gro.commercial_scale),
            gro.client_points * exp(-clients / gro.client_scale),
            min(gro.negative_cap, gro.negative_penalty * negative),
        ),
        100.0,
    )

    weights = (model.weights.new if segment == "new" else model.weights.established).as_tuple()
    total_weight = sum(weights)
    shares = [weight / total_weight for weight in weights]
    deficits = (engagement, adoption, milestones, support, growth)
    components: dict[str, float] = {}
    composite = 0.0
    for name, share, points in zip(COMPONENTS, shares, deficits, strict=True):
        value = _percent(100.0 - sum(points))
        components[name] = round(value, 2)
        composite += share * value
    composite = _percent(composite)
    ceiling_impacts: list[_Impact] = []
    if cancellations or escalations or open_cancellations or escalated:
        for factor, strength, held, text in _ceilings(
            model, cancellations, escalations, open_cancellations, escalated
        ):
            if composite > held:
                ceiling_impacts.append((held - composite, factor, strength, text))
                composite = held
    final = round(composite, 2)

    risk_factors: list[RiskFactor] = []
    impacts: list[_Impact] = []
    if explain:
        measured = (  # the values the factors report, in _FACTORS order
            (silent, activity, logins, active_users, ratio, per_user, login_ratio),
            (features, value_actions, share),
            (len(missing),),
            (open_count, escalated, age, sentiment, complaints, cancellations, escalations),
            (unawarded, commercial, clients, negative),
        )
        extras = ("", "", _milestone_extra(missing), "", "")
        impacts = _impacts(shares, deficits, measured, extras) + ceiling_impacts
        risk_factors = _risk_factors(list(impacts), final)

    change_7d, change_30d = score_changes(state, as_of, final)
    probability = round(churn_probability(final, change_30d, model), 4)
    health = HealthScore(
        score=final,
        status=health_band(final),
        components=components,
        churn_probability=probability,
        risk_level=risk_level_for(probability),
        risk_factors=risk_factors,
        segment=segment,
        change_7d=change_7d,
        change_30d=change_30d,
        active_users_30d=active_users,
    )
    return health, impacts


def _ceilings(
    model: ScoreModel,
    cancellations: float,
    escalations: float,
    open_cancellations: int,
    escalated: int,
) -> list[tuple[str, float, float, str]]:
    """(factor, strength, the level it holds the composite at, that level as text) of
    each ceiling the signals set, in the order applied."""
    ceilings = model.ceilings
    held: list[tuple[str, float, float, str]] = []
    if ceilings.follow_signals:  # v2: the ceilings fade with their signals, open or not
        for factor, strength, ceiling in (
            ("ceiling_cancellation_request", cancellations, ceilings.open_cancellation_request),
            ("ceiling_escalation", escalations, ceilings.open_escalation),
        ):
            if strength > 0.0:
                level = 100.0 - (100.0 - ceiling) * min(1.0, strength)
                held.append((factor, strength, level, f"{level:.0f}"))
    else:  # a ceiling holds only while its signal is open
        for factor, count, ceiling in (
            ("ceiling_open_cancellation_request", open_cancellations,
             ceilings.open_cancellation_request),
            ("ceiling_open_escalation", escalated, ceilings.open_escalation),
        ):  # fmt: skip
            if count:
                held.append((factor, count, ceiling, f"{ceiling:g}"))
    return held


def score_ceiling(state: OrganizationState, as_of: float, model: ScoreModel) -> float:
    """The highest score the ceilings let `state` have at `as_of` (100 when none holds):
    what raising the composite can reach (the path to healthy)."""
    dec = decayed_values(state, as_of, model)
    _count, escalated, open_cancellations, _age = _open_support(
        state.open_interactions, as_of, state.open_beyond
    )
    levels = _ceilings(
        model, dec["cancellation_requests"], dec["escalations"], open_cancellations, escalated
    )
    return min([100.0, *(level for _factor, _strength, level, _text in levels)])


def _missing_milestones(
    achieved: dict[str, float], tenure: float, model: ScoreModel
) -> tuple[float, list[tuple[float, str]]]:
    """The points of the milestones missing at `tenure`, and (points, name) of each."""
    total = 0.0
    missing: list[tuple[float, str]] = []
    if tenure > 0.0:
        for name, impact, expected_by_days in model.milestone_table:
            if name not in achieved:
                progress = tenure / expected_by_days
                # impact * min(1.0, progress), without a call in this hot loop
                points = impact * progress if progress < 1.0 else impact
                if points > 0.0:
                    total += points
                    missing.append((points, name))
    return total, missing


def _milestone_extra(missing: list[tuple[float, str]]) -> str:
    """The detail text's examples: the (up to) three costliest missing milestones."""
    if not missing:
        return ""
    costliest = sorted(missing, reverse=True)[:3]
    return ", e.g. " + ", ".join([name for _points, name in costliest])


def _open_support(
    open_interactions: dict[str, OpenInteraction], as_of: float, beyond: OpenBeyond | None
) -> tuple[int, int, int, float]:
    """(open, escalated or urgent, cancellation requests, age in days of the oldest)
    of the open interactions, itemized and counted beyond."""
    if beyond is not None and beyond.count:
        count, escalated, cancellations = beyond.count, beyond.escalated, beyond.cancellations
        oldest: float | None = beyond.since
    elif not open_interactions:
        return 0, 0, 0, 0.0
    else:
        count = escalated = cancellations = 0
        oldest = None
    for interaction in open_interactions.values():
        if interaction.cancellation:
            cancellations += 1
        if interaction.strong:
            escalated += 1
        if oldest is None or interaction.opened_at < oldest:
            oldest = interaction.opened_at
    assert oldest is not None
    age = max(0.0, (as_of - oldest) / DAY)
    return count + len(open_interactions), escalated, cancellations, age


def _impacts(
    shares: list[float],
    deficits: tuple[tuple[float, ...], ...],
    measured: tuple[tuple[float, ...], ...],
    extras: tuple[str, ...],
) -> list[_Impact]:
    """Every factor with a deficit, as its impact on the composite, in _FACTORS order
    (per component: its share, factors, measured values, deficits and extra text)."""
    impacts: list[_Impact] = []
    for share, factors, values, points, extra in zip(
        shares, _FACTORS, measured, deficits, extras, strict=True
    ):
        if share > 0.0:
            for index, deficit in enumerate(points):
                if deficit > 0.0:
                    impacts.append((-share * deficit, factors[index], values[index], extra))
    return impacts


def _risk_factors(impacts: list[_Impact], health_score: float) -> list[RiskFactor]:
    """Largest |impact| first; those under MIN_REPORTED_IMPACT folded into minor_factors;
    the impacts in hundredths, summing exactly to health_score - 100 (_apportion)."""
    impacts.sort(key=lambda item: -abs(item[0]))
    reported: list[_Impact] = []
    minor_impact = 0.0
    minor_names: list[str] = []
    for item in impacts:
        if abs(item[0]) < MIN_REPORTED_IMPACT:
            minor_impact += item[0]
            minor_names.append(item[1])
        else:
            reported.append(item)
    minor_count = len(minor_names)
    if minor_count:  # named in its text: which small ones, largest first
        reported.append((minor_impact, "minor_factors", minor_count, ", ".join(minor_names)))
    if not reported:
        return []
    shares = _apportion([item[0] for item in reported], round((health_score - 100.0) * 100.0))
    factors = [
        RiskFactor(
            factor=factor,
            # a count is an int, which rounds to itself: only a measured float needs round()
            value=float(value) if isinstance(value, int) else round(value, 4),
            impact=hundredths / 100.0,
            detail=_DETAILS[factor](value, extra),
        )
        for (_impact, factor, value, extra), hundredths in zip(reported, shares, strict=True)
        if hundredths  # only the fold can come to nothing at this precision
    ]
    if minor_count:  # it goes where its impact puts it (a stable sort: ties keep their order)
        factors.sort(key=lambda item: -abs(item.impact))
    return factors


def _apportion(impacts: list[float], total: int) -> list[int]:
    """`impacts` (all <= 0) in hundredths, summing to `total`: each rounded towards 0 and
    the hundredths still missing given to those with the largest remainders (ties to
    the larger impact), so that each is its own within a hundredth, their order stays
    and a reader adding them up gets the score's distance from 100 exactly."""
    scaled = [-impact * 100.0 for impact in impacts]
    units = [math.floor(points) for points in scaled]
    missing = -total - sum(units)  # 0 <= missing <= len(impacts) when the shortfalls add up
    by_remainder = sorted(range(len(units)), key=lambda i: units[i] - scaled[i])
    step = 1 if missing > 0 else -1
    if missing < 0:  # never while the shortfalls add up: still exact, taken from the smallest
        by_remainder.reverse()
    for k in range(abs(missing)):
        units[by_remainder[k % len(units)]] += step
    return [-points for points in units]


def record_score(state: OrganizationState, health: HealthScore, as_of: float) -> None:
    """Remember `health` as the latest score (and as its day's score; 31 days kept)."""
    day = int(as_of // DAY)
    daily = state.daily_scores
    daily[str(day)] = health.score
    days = [(int(key), key) for key in daily]  # each key parsed once (a score's hot path)
    oldest_kept = max(days)[0] - 30
    for number, key in days:
        if number < oldest_kept:
            del daily[key]
    state.last_score = health.score
    state.last_scored_at = as_of
    state.last_churn_probability = health.churn_probability
