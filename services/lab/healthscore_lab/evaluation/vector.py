"""`score()` for many measured states at once (numpy), for fitting and attribution.

Given the rows of `scoring.measure.Measures` and a model, `factor_table`
returns every factor's impact in composite points (`impact = -(w_c / sum w) *
deficit`, the ceilings' own rows included) and the score they add up to, the
same formulas as `healthscore.core.scoring.score` (a unit test checks them against
`score()` on a simulated population). `normalized_shortfalls` gives each
factor's shortfall on a 0..1 scale (its deficit over its maximum), the
features `fit` regresses churn on.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from healthscore.core.scoring import volume
from healthscore.core.scoring.measure import MEASURES, Measures
from healthscore.core.scoring.model import COMPONENTS, ScoreModel

FloatArray = NDArray[np.float64]

# (component, factor) in the order score() sums and lists them
FACTORS: tuple[tuple[str, str], ...] = (
    ("engagement", "inactivity"),
    ("engagement", "low_activity"),
    ("engagement", "few_logins"),
    ("engagement", "few_active_users"),
    ("engagement", "activity_decline"),
    ("engagement", "few_logins_per_user"),
    ("engagement", "login_decline"),
    ("adoption", "narrow_feature_adoption"),
    ("adoption", "shallow_usage"),
    ("adoption", "narrowing_feature_use"),
    ("milestones", "missing_milestones"),
    ("support", "open_interactions"),
    ("support", "open_escalations"),
    ("support", "unresolved_interaction_age"),
    ("support", "negative_sentiment"),
    ("support", "complaints"),
    ("support", "cancellation_request"),
    ("support", "recent_escalations"),
    ("growth", "growth_baseline"),
    ("growth", "weak_commercial_momentum"),
    ("growth", "no_client_growth"),
    ("growth", "contraction_signals"),
)
CEILINGS = ("ceiling_cancellation_request", "ceiling_escalation")  # v1: ceiling_open_*
FACTOR_NAMES: tuple[str, ...] = tuple(name for _c, name in FACTORS) + CEILINGS


def _col(m: FloatArray, name: str) -> FloatArray:
    return m[:, MEASURES.index(name)]


def activity_ratio(
    m: FloatArray,
    prior: float,
    recent: str = "activity_recent",
    expected: str = "activity_expected",
) -> FloatArray:
    """`scoring.score.activity_ratio` per row (1 where there is no baseline yet); with
    recent="logins", expected="logins_expected", login_decline's ratio."""
    predicted = _col(m, expected)
    known = (predicted >= 0.0) & (predicted + prior > 0.0)
    ratio = (_col(m, recent) + prior) / np.where(known, predicted + prior, 1.0)
    return np.where(known, ratio, 1.0)


def logins_per_user(m: FloatArray) -> FloatArray:
    """`scoring.score.logins_per_user` per row (logins / max(users, 1) is the same number)."""
    users = _col(m, "known_users")
    return _col(m, "logins") / np.where(users > 1, users, 1.0)


def feature_share(m: FloatArray) -> FloatArray:
    """`score()`'s share of the remembered features used within the week (1: none known)."""
    known = _col(m, "known_features")
    return np.where(known > 0, _col(m, "features_7d") / np.maximum(known, 1.0), 1.0)


def usage_volume(m: FloatArray) -> dict[str, float]:
    """`volume.usage_volume` of measure rows (the `usage_reference` of a model fitted or
    adapted on these snapshots)."""
    return volume.usage_volume(Measures(*row) for row in m.tolist())


def normalized_shortfalls(m: FloatArray, model: ScoreModel) -> FloatArray:
    """(n, len(FACTORS)): each factor's deficit over its largest possible value
    (before the clamping of support and growth), in FACTORS order."""
    keep = _col(m, "keep")
    exp = np.exp
    eng, ado, sup, gro = model.engagement, model.adoption, model.support, model.growth
    silent = _col(m, "silent_days")
    recency = np.clip(
        (eng.recency_zero_days - silent) / (eng.recency_zero_days - eng.recency_full_days), 0, 1
    )

    def capped(name: str, penalty: float, cap: float) -> FloatArray:
        x = age if name == "age" else _col(m, name)
        if cap <= 0.0:
            return np.zeros_like(x)
        return np.minimum(1.0, penalty * x / cap)

    age = np.maximum(0.0, _col(m, "oldest_open_days") - sup.unresolved_grace_days)
    columns = [
        1.0 - recency,
        exp(-_col(m, "activity") / eng.activity_scale) * keep,
        exp(-_col(m, "logins") / eng.login_scale) * keep,
        exp(-_col(m, "active_users") / eng.active_user_scale) * keep,
        np.clip((1.0 - activity_ratio(m, eng.decline_prior_events)) / eng.decline_full, 0, 1)
        * keep,
        exp(-logins_per_user(m) / eng.login_per_user_scale) * keep,
        np.clip(
            (1.0 - activity_ratio(m, eng.login_decline_prior, "logins", "logins_expected"))
            / eng.login_decline_full,
            0,
            1,
        )
        * keep,
        exp(-_col(m, "features") / ado.breadth_scale) * keep,
        exp(-_col(m, "value_actions") / ado.depth_scale) * keep,
        np.clip((1.0 - feature_share(m)) / ado.feature_share_full, 0, 1) * keep,
        _col(m, "missing_milestones") * (_col(m, "tenure_days") > 0),
        capped("open_interactions", sup.open_interaction_penalty, sup.open_interaction_cap),
        capped("open_escalations", sup.open_escalation_penalty, sup.open_escalation_cap),
        capped("age", sup.unresolved_penalty_per_day, sup.unresolved_cap),
        capped("negative_sentiment", sup.negative_sentiment_penalty, sup.negative_sentiment_cap),
        capped("complaints", sup.complaint_penalty, sup.complaint_cap),
        capped("cancellation_requests", sup.cancellation_penalty, sup.cancellation_cap),
        capped("escalations", sup.escalation_penalty, sup.escalation_cap),
        np.ones(len(m)),
        exp(-_col(m, "positive_commercial") / gro.commercial_scale),
        exp(-_col(m, "clients_added") / gro.client_scale),
        capped("negative_signals", gro.negative_penalty, gro.negative_cap),
    ]
    return np.stack(columns, axis=1)


def factor_maxima(model: ScoreModel) -> FloatArray:
    """Each factor's largest deficit in component points (FACTORS order)."""
    eng, ado, sup, gro = model.engagement, model.adoption, model.support, model.growth
    unawarded = max(0.0, 100.0 - gro.baseline - gro.commercial_points - gro.client_points)
    return np.array(
        [
            eng.recency_points,
            eng.activity_points,
            eng.login_points,
            eng.active_user_points,
            eng.decline_points,
            eng.login_per_user_points,
            eng.login_decline_points,
            ado.breadth_points,
            ado.depth_points,
            ado.feature_share_points,
            100.0,
            sup.open_interaction_cap,
            sup.open_escalation_cap,
            sup.unresolved_cap,
            sup.negative_sentiment_cap,
            sup.complaint_cap,
            sup.cancellation_cap,
            sup.escalation_cap,
            unawarded,
            gro.commercial_points,
            gro.client_points,
            gro.negative_cap,
        ]
    )


def factor_table(m: FloatArray, model: ScoreModel) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(impacts (n, len(FACTOR_NAMES)), components (n, 5), score (n,)), as score() computes
    them: impacts in composite points (<= 0), summing to score - 100."""
    deficits = normalized_shortfalls(m, model) * factor_maxima(model)
    n = len(m)
    component_of = np.array([COMPONENTS.index(c) for c, _f in FACTORS])
    # support and growth: penalties beyond 100 scale down to sum to 100
    for name in ("support", "growth"):
        cols = component_of == COMPONENTS.index(name)
        raw = deficits[:, cols].sum(axis=1)
        ratio = np.where(raw > 100.0, 100.0 / np.maximum(raw, 1e-300), 1.0)
        deficits[:, cols] *= ratio[:, None]
    new = _col(m, "new_segment") > 0.5
    weights = np.where(
        new[:, None],
        np.array(model.weights.new.as_tuple()),
        np.array(model.weights.established.as_tuple()),
    )
    shares = weights / weights.sum(axis=1, keepdims=True)
    components = np.zeros((n, len(COMPONENTS)))
    for index in range(len(COMPONENTS)):
        cols = component_of == index
        components[:, index] = np.clip(100.0 - deficits[:, cols].sum(axis=1), 0.0, 100.0)
    composite = np.clip((shares * components).sum(axis=1), 0.0, 100.0)
    impacts = np.zeros((n, len(FACTOR_NAMES)))
    impacts[:, : len(FACTORS)] = -shares[:, component_of] * deficits
    ceilings = model.ceilings
    for offset, (open_name, signal_name, ceiling) in enumerate(
        (
            ("open_cancellations", "cancellation_requests", ceilings.open_cancellation_request),
            ("open_escalations", "escalations", ceilings.open_escalation),
        )
    ):
        if ceilings.follow_signals:
            strength = _col(m, signal_name)
            level = 100.0 - (100.0 - ceiling) * np.minimum(1.0, strength)
            held = (strength > 0) & (composite > level)
        else:
            level = np.full(len(m), ceiling)
            held = (_col(m, open_name) > 0) & (composite > level)
        impacts[:, len(FACTORS) + offset] = np.where(held, level - composite, 0.0)
        composite = np.where(held, level, composite)
    return impacts, components, np.round(composite, 2)
