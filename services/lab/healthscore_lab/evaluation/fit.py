"""`healthscore fit`: fit the model's weights, scales and calibration from labelled history.

Only the training organizations (`split.is_held_out` false) are fitted on; the
held-out ones judge the result, beside the current model on the same ones.

1. **Measures.** The log is replayed under the current model (`replay`); each
   daily snapshot's raw measures (`scoring.measure`) do not depend on the
   weights, scales or calibration being fitted.
2. **Shape.** Every factor's shortfall is put on a 0..1 scale
   (`vector.normalized_shortfalls`: ``exp(-x/scale)``, ``min(1, x/saturation)``,
   the recency ramp, the activity ratio's ramp). A logistic regression of
   "churns within 30 days" on those shortfalls, with every coefficient
   constrained to be >= 0 (a shortfall never lowers the risk: more open
   escalations, more silence, fewer logins never raise the score) and an L2
   penalty, gives each factor's weight. Each scale or saturation is chosen from
   a grid by coordinate descent on the log loss of a 3-fold cross-validation
   grouped by organization (folds never split an organization).
3. **Weights.** The coefficients become the config exactly: a factor's points
   within its component are its share of the component's coefficients, a
   component's weight the component's share of all of them, so that
   ``100 - score`` is proportional to the fitted linear predictor (support and
   growth caps then sum to 100, so their clamps never bite; the ceilings are
   lifted to 100 for escalations, which count through their fitted factors; a
   cancellation request keeps a ceiling that fades with its decayed signal, not
   when the interaction closes).
4. **Cancellation ceiling.** The ceiling a fresh cancellation request holds the
   score at is policy first (a customer who asked to cancel is at risk), so the
   strongest of `CANCELLATION_CEILINGS` is kept unless the training data says it
   fits worse: the lowest ceiling whose cross-validated log loss (calibration
   refitted per fold, folds grouped by organization) is within
   `CEILING_TOLERANCE` of the best one's.
5. **Calibration.** ``p = logistic(a - b * score/100 - c * change_30d/100)`` is
   refitted (b, c >= 0) on the candidate's own scores.
6. **Alerts.** The candidate is replayed; from its path (`policy`), the enter
   probability (exit at half of it), how long it must persist and the drop rule
   are chosen on the training organizations: the most churners warned at least
   14 days ahead, with at most `max_false_alerts` false alerts per 100 healthy
   organizations per month (the target, with a margin for how much that rate
   varies between two samples of organizations); then the longest cooldown of
   `COOLDOWNS_HOURS` (the minimum time between an episode's recovery and the next
   raise) that warns as many churners that early.
7. **Judgement.** The candidate is replayed once more with its final settings
   and evaluated on the held-out organizations beside the current model;
   `fit` refuses to write a config whose held-out ROC AUC or Brier score (30
   days) is worse than the current model's.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import orjson
from numpy.typing import NDArray
from scipy.optimize import minimize

from healthscore.core.events import UsageEvent
from healthscore.core.scoring.model import COMPONENTS, Alerts, ScoreModel, parse_model
from healthscore_lab.evaluation.evaluate import evaluate
from healthscore_lab.evaluation.log import LabelledLog
from healthscore_lab.evaluation.metrics import DAY, AlertFigures, alert_figures, labels_at
from healthscore_lab.evaluation.policy import Prepared, prepare, simulate_alerts, with_alerts
from healthscore_lab.evaluation.replay import Backtest, run_backtest
from healthscore_lab.evaluation.split import is_held_out
from healthscore_lab.evaluation.vector import (
    FACTORS,
    factor_table,
    normalized_shortfalls,
    usage_volume,
)

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
Config = dict[str, Any]

# tunable shape parameters: (path in the config, candidate values). Support and
# contraction "saturations" are cap/penalty: the measured value at which the
# factor's full cap is lost.
SHAPES: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("engagement.recency_zero_days", (7.0, 10.0, 14.0, 21.0, 30.0)),
    ("engagement.activity_scale", (5.0, 10.0, 20.0, 40.0, 80.0)),
    ("engagement.login_scale", (2.0, 5.0, 10.0, 20.0, 40.0)),
    ("engagement.active_user_scale", (0.5, 1.0, 2.0, 4.0)),
    ("engagement.decline_full", (0.3, 0.45, 0.6, 0.75, 0.9, 1.0)),
    ("engagement.decline_prior_events", (0.0, 5.0, 10.0, 20.0, 40.0, 80.0)),
    ("engagement.login_per_user_scale", (1.0, 2.0, 4.0, 6.0, 10.0)),
    ("engagement.login_decline_full", (0.3, 0.45, 0.6, 0.75, 0.9, 1.0)),
    ("engagement.login_decline_prior", (0.0, 2.0, 5.0, 10.0, 20.0)),
    ("adoption.feature_share_full", (0.3, 0.45, 0.6, 0.75, 0.9, 1.0)),
    ("adoption.breadth_scale", (1.0, 2.0, 3.0, 5.0, 8.0)),
    ("adoption.depth_scale", (2.0, 5.0, 10.0, 20.0, 40.0)),
    ("growth.commercial_scale", (1.0, 3.0, 6.0, 12.0)),
    ("growth.client_scale", (1.0, 2.0, 5.0, 10.0)),
    ("sat.open_interaction", (1.0, 2.0, 3.0, 5.0)),
    ("sat.open_escalation", (1.0, 2.0, 3.0)),
    ("sat.unresolved", (3.0, 7.0, 14.0, 20.0)),
    ("sat.negative_sentiment", (1.0, 2.0, 3.0, 5.0, 8.0)),
    ("sat.complaint", (1.0, 2.0, 3.0)),
    ("sat.cancellation", (0.5, 1.0, 1.5, 2.5)),
    ("sat.escalation", (0.5, 1.0, 2.0, 3.0)),
    ("sat.negative", (1.0, 2.0, 5.0, 10.0)),
)
# saturation name -> (section, penalty field, cap field)
_SATURATIONS: dict[str, tuple[str, str, str]] = {
    "open_interaction": ("support", "open_interaction_penalty", "open_interaction_cap"),
    "open_escalation": ("support", "open_escalation_penalty", "open_escalation_cap"),
    "unresolved": ("support", "unresolved_penalty_per_day", "unresolved_cap"),
    "negative_sentiment": ("support", "negative_sentiment_penalty", "negative_sentiment_cap"),
    "complaint": ("support", "complaint_penalty", "complaint_cap"),
    "cancellation": ("support", "cancellation_penalty", "cancellation_cap"),
    "escalation": ("support", "escalation_penalty", "escalation_cap"),
    "negative": ("growth", "negative_penalty", "negative_cap"),
}
# the factor each support/growth saturation belongs to (FACTORS names)
_SATURATION_FACTOR = {
    "open_interaction": "open_interactions",
    "open_escalation": "open_escalations",
    "unresolved": "unresolved_interaction_age",
    "negative_sentiment": "negative_sentiment",
    "complaint": "complaints",
    "cancellation": "cancellation_request",
    "escalation": "recent_escalations",
    "negative": "contraction_signals",
}
_ENGAGEMENT_POINTS = {
    "inactivity": "recency_points",
    "low_activity": "activity_points",
    "few_logins": "login_points",
    "few_active_users": "active_user_points",
    "activity_decline": "decline_points",
    "few_logins_per_user": "login_per_user_points",
    "login_decline": "login_decline_points",
}
_ADOPTION_POINTS = {
    "narrow_feature_adoption": "breadth_points",
    "shallow_usage": "depth_points",
    "narrowing_feature_use": "feature_share_points",
}
_GROWTH_POINTS = {
    "weak_commercial_momentum": "commercial_points",
    "no_client_growth": "client_points",
}
CANCELLATION_CEILING = 40.0  # the strongest cancellation ceiling (apply_coefficients' own)
# the ceilings `fit` may choose from, strongest first (100: no ceiling at all)
CANCELLATION_CEILINGS = (CANCELLATION_CEILING, 55.0, 70.0, 85.0, 100.0)
CEILING_TOLERANCE = 1e-3  # relative log loss a stronger ceiling may cost
# the minimum times between a recovery and the next raise `fit` may choose from
COOLDOWNS_HOURS = (24.0, 168.0, 336.0)
IMMEDIATE_PROBABILITY = 0.75  # the edge of `critical`: raised at once, without persistence
# the fewest held-out organizations of each kind (churned, never churned) a judgement
# rests on: below them a held-out ROC AUC or Brier score is one or two organizations'
# luck, and "not worse than the current model" says nothing
MIN_HELD_OUT_CHURNERS = 10
MIN_HELD_OUT_HEALTHY = 10
# factors that are not fitted: the growth component's constant
_FIXED = ("growth_baseline",)
# factors that measure how big a customer is rather than how healthy: a vendor with
# one user and a handful of clients is not a churn risk for that. Left out of the fit
# by default (their weight is 0): fitted on one population they rank its churners a
# little better, but they judge another population's quieter customers as unhealthy
# (on the shifted simulator setting; the figures are in docs/score-quality.md).
# `few_logins` joined them in v4: it counts the whole team's logins, so a one-person
# team scored like a disengaged one; `few_logins_per_user` measures the same habit
# without the team's size. These choices were made looking at the shifted
# population's figures, which is why docs/score-quality.md reports fresh seeds too.
SIZE_FACTORS = (
    "few_logins",
    "low_activity",
    "few_active_users",
    "narrow_feature_adoption",
    "shallow_usage",
    "weak_commercial_momentum",
    "no_client_growth",
)


@dataclass
class FitSettings:
    horizon_days: int = 30
    l2: float = 1e-3
    folds: int = 3
    rounds: int = 2
    max_false_alerts: float = 3.5  # per 100 healthy organizations per month, on training
    min_median_lead_days: float = 14.0  # a churner counts as warned this long ahead
    warmup_days: float = 14.0
    exclude: tuple[str, ...] = SIZE_FACTORS
    # the alert settings tried (`tune_alerts`)
    enter_probabilities: tuple[float, ...] = (0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
    persist_hours: tuple[float, ...] = (24.0, 48.0, 72.0, 96.0, 144.0)
    drop_points: tuple[float, ...] = (25.0, 100.0)


@dataclass
class FitResult:
    config: Config
    model: ScoreModel
    candidate: dict[str, Any]  # evaluate() report on the held-out organizations
    current: dict[str, Any]
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    shapes: dict[str, float] = field(default_factory=dict)
    coefficients: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- config access


def _get(config: Config, path: str) -> float:
    section, name = path.split(".")
    if section == "sat":
        sec, penalty, cap = _SATURATIONS[name]
        if float(config[sec][penalty]) <= 0.0:  # the factor is off: any saturation will do
            return 1.0
        return float(config[sec][cap]) / float(config[sec][penalty])
    return float(config[section][name])


def _set(config: Config, path: str, value: float) -> None:
    section, name = path.split(".")
    if section == "sat":
        sec, penalty, cap = _SATURATIONS[name]
        if float(config[sec][cap]) <= 0.0:
            config[sec][cap] = 1.0
        config[sec][penalty] = float(config[sec][cap]) / value
        return
    config[section][name] = value


def _copy(config: Config) -> Config:
    copied: Config = orjson.loads(orjson.dumps(config))
    return copied


def _model(config: Config) -> ScoreModel:
    return parse_model(orjson.dumps(config))


# --------------------------------------------------------------------------- regression


def _fold_of(org: str, folds: int) -> int:
    return hashlib.sha256(b"healthscore-fit-fold:" + org.encode()).digest()[0] % folds


def constrained_logistic(x: FloatArray, y: FloatArray, l2: float, free: int = 0) -> FloatArray:
    """Intercept and coefficients of an L2-penalized logistic regression whose
    coefficients are >= 0 except the first `free` columns'. Returns [b0, b...]."""
    n, k = x.shape

    def loss(w: FloatArray) -> tuple[float, FloatArray]:
        z = w[0] + x @ w[1:]
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))
        eps = 1e-12
        value = -np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
        value += l2 * float(np.sum(w[1:] ** 2))
        g = p - y
        grad = np.concatenate([[g.mean()], x.T @ g / n + 2 * l2 * w[1:]])
        return float(value), grad

    rate = min(max(float(y.mean()), 1e-4), 1 - 1e-4)
    w0 = np.zeros(k + 1)
    w0[0] = math.log(rate / (1 - rate))
    bounds = [(None, None)] + [(None, None)] * free + [(0.0, None)] * (k - free)
    result = minimize(loss, w0, jac=True, method="L-BFGS-B", bounds=bounds)
    return np.asarray(result.x, dtype=float)


def _log_loss(y: FloatArray, z: FloatArray) -> float:
    p = 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))
    eps = 1e-12
    return float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))


def _fitted_columns(exclude: tuple[str, ...]) -> list[int]:
    return [i for i, (_c, name) in enumerate(FACTORS) if name not in _FIXED + exclude]


def _cv_loss(
    measures: FloatArray,
    y: FloatArray,
    folds: NDArray[np.int64],
    config: Config,
    settings: FitSettings,
) -> float:
    shortfalls = normalized_shortfalls(measures, _model(config))[
        :, _fitted_columns(settings.exclude)
    ]
    losses = []
    for fold in range(settings.folds):
        train, test = folds != fold, folds == fold
        w = constrained_logistic(shortfalls[train], y[train], settings.l2)
        losses.append(_log_loss(y[test], w[0] + shortfalls[test] @ w[1:]) * test.sum())
    return float(sum(losses) / len(y))


# ------------------------------------------------------------------ coefficients to a config


def apply_coefficients(config: Config, coefficients: dict[str, float]) -> Config:
    """The config whose score is 100 - 100 * (sum_f beta_f * shortfall_f) / sum(beta)."""
    out = _copy(config)
    by_component: dict[str, float] = {c: 0.0 for c in COMPONENTS}
    for component, name in FACTORS:
        by_component[component] += coefficients.get(name, 0.0)
    total = sum(by_component.values())
    if total <= 0.0:
        raise ValueError("every fitted coefficient is 0: nothing predicts churn")

    def shares(names: dict[str, str], component: str) -> dict[str, float]:
        mass = by_component[component]
        if mass <= 0.0:  # the component carries no weight; keep its points valid
            return {field_: 100.0 / len(names) for field_ in names.values()}
        return {field_: 100.0 * coefficients.get(f, 0.0) / mass for f, field_ in names.items()}

    out["engagement"].update(shares(_ENGAGEMENT_POINTS, "engagement"))
    out["adoption"].update(shares(_ADOPTION_POINTS, "adoption"))
    for sat, factor in _SATURATION_FACTOR.items():
        section, penalty_field, cap_field = _SATURATIONS[sat]
        saturation = _get(config, f"sat.{sat}")
        mass = by_component[section]
        cap = 100.0 * coefficients.get(factor, 0.0) / mass if mass > 0 else 0.0
        out[section][cap_field] = cap
        out[section][penalty_field] = cap / saturation if cap > 0 else 0.0
    growth = shares(_GROWTH_POINTS, "growth")
    out["growth"].update(growth)
    out["growth"]["baseline"] = max(
        0.0, 100.0 - growth["commercial_points"] - growth["client_points"]
    )
    weights = {c: by_component[c] / total for c in COMPONENTS}
    out["weights"] = {"new": dict(weights), "established": dict(weights)}
    # not fitted: a customer who asked to cancel is at risk, whatever else it does
    # (the fitted factors value the rare request little); the ceiling fades with the
    # request's decayed signal, so closing it does not lift the score at once
    out["ceilings"] = {
        "open_cancellation_request": CANCELLATION_CEILING,
        "open_escalation": 100.0,
        "follow_signals": True,
    }
    out["churn"] = {"intercept": 0.0, "score_coefficient": total, "trend_coefficient": 0.0}
    return out


# --------------------------------------------------------------------------- calibration


def snapshot_trend(bt: Backtest, scores: FloatArray) -> FloatArray:
    """change_30d per snapshot as the service computes it, approximated from the
    snapshots: the score minus the organization's score about 30 days before (the
    oldest within the window); 0 when there is none (as score() treats unknown)."""
    days = np.round(bt.snap_at / DAY).astype(np.int64)
    first: dict[int, int] = {}
    by_key: dict[tuple[int, int], int] = {}
    for index, (org, day) in enumerate(zip(bt.snap_org.tolist(), days.tolist(), strict=True)):
        by_key[(org, day)] = index
        first.setdefault(org, day)
    trend = np.zeros(len(scores))
    for index, (org, day) in enumerate(zip(bt.snap_org.tolist(), days.tolist(), strict=True)):
        start = max(day - 29, first[org])
        if start >= day:
            continue
        earlier = by_key.get((org, start))
        if earlier is not None:
            trend[index] = scores[index] - scores[earlier]
    return trend


def calibrate(scores: FloatArray, trend: FloatArray, y: FloatArray, l2: float) -> dict[str, float]:
    """a, b, c of p = logistic(a - b*score/100 - c*trend/100), b and c >= 0."""
    x = np.stack([-(scores / 100.0), -(trend / 100.0)], axis=1)
    w = constrained_logistic(x, y, l2 * 0.01)
    return {
        "intercept": float(w[0]),
        "score_coefficient": float(w[1]),
        "trend_coefficient": float(w[2]),
    }


def choose_cancellation_ceiling(
    bt: Backtest,
    fitted: Config,
    rows: BoolArray,
    y: FloatArray,
    folds: NDArray[np.int64],
    settings: FitSettings,
) -> tuple[float, dict[str, float]]:
    """The strongest of CANCELLATION_CEILINGS whose cross-validated log loss (the
    calibration refitted on the other folds) is within CEILING_TOLERANCE of the
    best; and each ceiling's loss."""
    losses: dict[str, float] = {}
    for ceiling in CANCELLATION_CEILINGS:
        trial = _copy(fitted)
        trial["ceilings"]["open_cancellation_request"] = ceiling
        _impacts, _components, scores = factor_table(bt.snap_measures, _model(trial))
        trend = snapshot_trend(bt, scores)
        s, t = scores[rows], trend[rows]
        total = 0.0
        for fold in range(settings.folds):
            train, test = folds != fold, folds == fold
            cal = calibrate(s[train], t[train], y[train], settings.l2)
            z = (
                cal["intercept"]
                - cal["score_coefficient"] * s[test] / 100.0
                - cal["trend_coefficient"] * t[test] / 100.0
            )
            total += _log_loss(y[test], z) * test.sum()
        losses[f"{ceiling:g}"] = float(total / len(y))
    best = min(losses.values())
    chosen = next(
        c for c in CANCELLATION_CEILINGS if losses[f"{c:g}"] <= best * (1 + CEILING_TOLERANCE)
    )
    return chosen, losses


# --------------------------------------------------------------------------- alert thresholds


def tune_alerts(
    bt: Backtest, model: ScoreModel, train_orgs: list[int], settings: FitSettings
) -> tuple[Alerts, dict[str, Any]]:
    """The alert settings that warn the most training churners at least
    `min_median_lead_days` ahead, with at most `max_false_alerts`; then the longest
    cooldown of COOLDOWNS_HOURS that warns as many of them as early."""
    best: tuple[tuple[float, float], Alerts, dict[str, Any]] | None = None
    base = model.alerts
    prepared = prepare(bt)

    def judged(alerts: Alerts) -> tuple[tuple[float, float], dict[str, Any]]:
        figures = _training_figures(bt, with_alerts(model, alerts), prepared, train_orgs)
        false_rate = figures.false_alerts_per_100_healthy_per_month or 0.0
        early = sum(1 for d in figures.lead_days if d >= settings.min_median_lead_days)
        key = (early / max(1, figures.churners), -false_rate)
        return key, {
            "recall": figures.recall,
            "warned_at_least_14_days_ahead": key[0],
            "median_lead_days": figures.median_lead_days,
            "false_alerts_per_100_healthy_per_month": false_rate,
            "precision": figures.precision,
            "alerts": {
                "enter_probability": alerts.enter_probability,
                "persist_hours": alerts.persist_hours,
                "drop_points": alerts.drop_points,
                "cooldown_hours": alerts.cooldown_hours,
            },
        }

    for enter in settings.enter_probabilities:
        for persist in settings.persist_hours:
            for drop in settings.drop_points:
                alerts = Alerts(
                    enter_probability=enter,
                    exit_probability=round(enter * 0.5, 4),
                    drop_points=drop,
                    recover_drop_points=min(base.recover_drop_points, drop / 2),
                    cooldown_hours=COOLDOWNS_HOURS[0],
                    immediate_probability=IMMEDIATE_PROBABILITY,
                    persist_hours=persist,
                )
                key, summary = judged(alerts)
                if -key[1] > settings.max_false_alerts:
                    continue
                if best is None or key > best[0]:
                    best = (key, alerts, summary)
    if best is None:
        return base, {"note": "no setting met the bounds; the current alert settings are kept"}
    # a longer pause after a recovery drops the re-raises of an organization that
    # hovers at the edge; kept when it warns as many training churners as early
    for cooldown in COOLDOWNS_HOURS[1:]:
        alerts = msgspec.structs.replace(best[1], cooldown_hours=cooldown)
        key, summary = judged(alerts)
        if key[0] >= best[0][0] and key[1] >= best[0][1]:
            best = (key, alerts, summary)
    return best[1], best[2]


def _training_figures(
    bt: Backtest, model: ScoreModel, prepared: Prepared, train_orgs: list[int]
) -> AlertFigures:
    raised = [
        (org, at)
        for org, at, kind, _trigger in simulate_alerts(bt, model, prepared)
        if kind.value == "risk_raised"
    ]
    return alert_figures(
        raised,
        bt.churn,
        bt.first_seen,
        train_orgs,
        float(bt.snap_at.min()),
        bt.end,
        bt.labels_until,
    )


# --------------------------------------------------------------------------- the whole fit


def search_shapes(
    measures: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    config: Config,
    settings: FitSettings,
) -> tuple[Config, float]:
    """The factor shapes (SHAPES) of `config` that minimize the grouped cross-validated
    log loss, by coordinate search over `settings.rounds` rounds; with that loss."""
    best_loss = _cv_loss(measures, y, folds, config, settings)
    for _round in range(settings.rounds):
        for path, candidates in SHAPES:
            for value in candidates:
                trial = _copy(config)
                _set(trial, path, value)
                if path == "engagement.recency_zero_days":
                    trial["engagement"]["recency_full_days"] = min(
                        float(trial["engagement"]["recency_full_days"]), value / 2
                    )
                loss = _cv_loss(measures, y, folds, trial, settings)
                if loss < best_loss - 1e-7:
                    best_loss, config = loss, trial
    return config, best_loss


def fit_coefficients(
    measures: np.ndarray, y: np.ndarray, config: Config, settings: FitSettings
) -> dict[str, float]:
    """Each fitted factor's coefficient (constrained logistic regression on the
    normalized shortfalls of `config`'s shapes; the excluded factors left out)."""
    columns = _fitted_columns(settings.exclude)
    shortfalls = normalized_shortfalls(measures, _model(config))[:, columns]
    w = constrained_logistic(shortfalls, y, settings.l2)
    return {FACTORS[c][1]: float(b) for c, b in zip(columns, w[1:], strict=True)}


def fit(
    log: LabelledLog,
    current: ScoreModel,
    current_config: Config,
    version: str,
    settings: FitSettings | None = None,
    progress: Callable[[str], None] = lambda _message: None,
) -> FitResult:
    settings = settings or FitSettings()
    base, held, rows, y = _replay_current(log, current, settings, progress)
    measures = base.snap_measures[rows]
    folds = np.array([_fold_of(base.orgs[o], settings.folds) for o in base.snap_org[rows]])
    _refuse_folds_without_churn(base, rows, y, folds, settings)

    progress("searching the factor shapes (grouped 3-fold cross-validation)")
    config, _loss = search_shapes(measures, y, folds, every_factor_on(current_config), settings)
    shapes = {path: _get(config, path) for path, _c in SHAPES}
    coefficients = fit_coefficients(measures, y, config, settings)
    progress("weights: " + ", ".join(f"{k} {v:.2f}" for k, v in coefficients.items() if v))
    fitted = apply_coefficients(config, coefficients)
    ceiling, ceiling_losses = choose_cancellation_ceiling(base, fitted, rows, y, folds, settings)
    fitted["ceilings"]["open_cancellation_request"] = ceiling
    # the volume the usage scales were fitted to, for `healthscore adapt`
    fitted["usage_reference"] = usage_volume(base.snap_measures[training_snapshots(base)[1]])
    progress(
        f"cancellation ceiling {ceiling:g} (cross-validated log loss by ceiling: "
        + ", ".join(f"{k} {v:.5f}" for k, v in ceiling_losses.items())
        + ")"
    )

    result = _calibrate_and_judge(
        log,
        base,
        current,
        fitted,
        version,
        settings,
        progress,
        (rows, y, held),
        {"cancellation_ceiling_log_loss": ceiling_losses},
    )
    result.shapes, result.coefficients = shapes, coefficients
    return result


def _refuse_folds_without_churn(
    bt: Backtest, rows: BoolArray, y: FloatArray, folds: NDArray[np.int64], settings: FitSettings
) -> None:
    """Every cross-validation fold needs a training organization that churns within the
    horizon: a fold without one has no log loss to choose a shape or a ceiling by (with
    a dozen organizations the choice crashed on the NaN)."""
    orgs = bt.snap_org[rows]
    churners = [len(np.unique(orgs[(folds == fold) & (y > 0)])) for fold in range(settings.folds)]
    if min(churners) == 0:
        training = len(np.unique(orgs))
        raise ValueError(
            f"too few labelled organizations to fit the weights: {training} training "
            f"organizations, {sum(churners)} of them churning within {settings.horizon_days} "
            f"days, and each of the {settings.folds} cross-validation folds needs one "
            f"(churners by fold: {', '.join(map(str, churners))}); give a longer or larger "
            "labelled log, or keep the current weights with --calibration-only"
        )


def recalibrate(
    log: LabelledLog,
    current: ScoreModel,
    current_config: Config,
    version: str,
    settings: FitSettings | None = None,
    progress: Callable[[str], None] = lambda _message: None,
) -> FitResult:
    """The current model with only its churn calibration and alert settings fitted
    on this log's training organizations: the weights, shapes and ceilings stay.

    For a population whose habits differ from the one the weights were fitted on
    (the same behaviour means another churn rate there), a deploying team's own
    labelled history recalibrates the probability, and so what the alert
    thresholds mean, with three parameters instead of every weight (and the alert
    settings, chosen by `fit`'s rule on the same organizations): a log with a few
    dozen churners among its training organizations is enough. Judged on the
    held-out organizations beside the current model, like `fit`."""
    settings = settings or FitSettings()
    base, held, rows, y = _replay_current(log, current, settings, progress)
    return _calibrate_and_judge(
        log,
        base,
        current,
        _copy(current_config),
        version,
        settings,
        progress,
        (rows, y, held),
        {"recalibrated_from": current.version},
    )


def training_snapshots(bt: Backtest) -> tuple[BoolArray, BoolArray]:
    """Per organization whether it is held out; the snapshots of the others."""
    held = np.array([is_held_out(org) for org in bt.orgs], dtype=bool)
    return held, ~held[bt.snap_org]


def _replay_current(
    log: LabelledLog,
    current: ScoreModel,
    settings: FitSettings,
    progress: Callable[[str], None],
) -> tuple[Backtest, BoolArray, BoolArray, FloatArray]:
    """The log replayed under the current model; per organization whether it is held
    out; the snapshots fitted on (training organizations, label known), their labels."""
    if not any(isinstance(event, UsageEvent) for event in log.events):
        # a support-only export (one topic forgotten) fits usage weights on nothing
        # and can still rank better than the current model on the same log
        raise ValueError(
            f"{log.source}: no product usage event: a model fitted on it learns nothing "
            "of usage; export every input topic (product.usage.v1 among them)"
        )
    if log.churned_at and all(at is not None for at in log.churned_at.values()):
        # a population that churns whole is a labels file that marks every organization
        # (a contract end date exported for all?): fitted on it, a model learns when
        # customers leave, not which, and is judged against no retained organization
        raise ValueError(
            f"{log.source}: every one of its {len(log.churned_at)} organizations churns in "
            "the labels: a model needs retained ones to tell the churners from (a retained "
            "organization's churned_at is left empty)"
        )
    progress(f"replaying {len(log.events)} events under {current.version}")
    bt = run_backtest(log, current, warmup_days=settings.warmup_days)
    held, training = training_snapshots(bt)
    usable, label = labels_at(
        bt.snap_org, bt.snap_at, bt.churn, settings.horizon_days, bt.labels_until
    )
    rows = usable & training
    if not label[rows].any():
        churners = sum(1 for at in log.churned_at.values() if at is not None)
        known = datetime.fromtimestamp(bt.labels_until, UTC).date().isoformat()
        raise ValueError(
            f"no training organization churns within {settings.horizon_days:g} days of an "
            f"as-of point: nothing to fit ({churners} of the log's organizations churn in "
            f"the labels, which are known until {known}; an as-of point needs "
            f"{settings.horizon_days:g} days of known labels after it and "
            f"{settings.warmup_days:g} days of events before it)"
        )
    return bt, held, rows, label[rows].astype(float)


def _calibrate_and_judge(
    log: LabelledLog,
    base: Backtest,
    current: ScoreModel,
    fitted: Config,
    version: str,
    settings: FitSettings,
    progress: Callable[[str], None],
    training: tuple[BoolArray, FloatArray, BoolArray],
    evaluation: dict[str, Any],
) -> FitResult:
    """The steps `fit` and `recalibrate` share, given the candidate's weights: the
    churn calibration on its own scores and 30-day changes (`training`: the snapshots
    fitted on, their labels, which organizations are held out), the alert settings on
    its replayed path, the judgement on the held-out organizations beside `current`;
    `evaluation` goes into the config's record of it, after where the log came from."""
    rows, y, held = training
    model = _model(fitted)
    _impacts, _components, scores = factor_table(base.snap_measures, model)
    trend = snapshot_trend(base, scores)
    fitted["churn"] = calibrate(scores[rows], trend[rows], y, settings.l2)
    fitted["version"] = version
    model = _model(fitted)
    progress("churn calibration: " + ", ".join(f"{k} {v:.3f}" for k, v in fitted["churn"].items()))

    progress(f"replaying under the candidate {version} to choose the alert settings")
    candidate_bt = run_backtest(log, model, warmup_days=settings.warmup_days)
    train_orgs = [i for i, h in enumerate(held) if not h]
    alerts, alert_summary = tune_alerts(candidate_bt, model, train_orgs, settings)
    fitted["alerts"] = {
        "enter_probability": alerts.enter_probability,
        "exit_probability": alerts.exit_probability,
        "drop_points": alerts.drop_points,
        "recover_drop_points": alerts.recover_drop_points,
        "cooldown_hours": alerts.cooldown_hours,
        "persist_hours": alerts.persist_hours,
        "immediate_probability": alerts.immediate_probability,
    }
    model = _model(fitted)
    progress(f"replaying under the final {version}; judging it on the held-out organizations")
    final_bt = run_backtest(log, model, warmup_days=settings.warmup_days)
    candidate_report = evaluate(final_bt, model, source=log.source)
    current_report = evaluate(base, current, source=log.source)
    reasons = _worse(candidate_report, current_report)
    fitted["evaluation"] = {
        "source": log.source,
        "held_out_organizations": candidate_report["organizations"]["judged"],
        **evaluation,
        "training_alert_settings": alert_summary,
        "held_out": _summary(candidate_report),
        "current_model_held_out": {current.version: _summary(current_report)},
    }
    return FitResult(
        config=fitted,
        model=_model(fitted),
        candidate=candidate_report,
        current=current_report,
        accepted=not reasons,
        reasons=reasons,
    )


def every_factor_on(current_config: Config) -> Config:
    """The current config with the fields of factors added since it was written, and
    every factor switched on: the shapes are searched with all of them (a factor whose
    points are 0 would have a shortfall of 0 and nothing to fit)."""
    config = _copy(current_config)
    engagement, adoption = config.setdefault("engagement", {}), config["adoption"]
    engagement.setdefault("decline_points", 0.0)
    engagement.setdefault("decline_full", 0.75)
    engagement.setdefault("decline_prior_events", 0.0)
    engagement.setdefault("login_per_user_points", 0.0)
    engagement.setdefault("login_per_user_scale", 5.0)
    engagement.setdefault("login_decline_points", 0.0)
    engagement.setdefault("login_decline_full", 0.75)
    engagement.setdefault("login_decline_prior", 0.0)
    adoption.setdefault("feature_share_points", 0.0)
    adoption.setdefault("feature_share_full", 0.6)
    engagement["decline_points"] = max(1.0, engagement["decline_points"])
    engagement["login_decline_points"] = max(1.0, engagement["login_decline_points"])
    for sat in _SATURATIONS:
        section, penalty, cap = _SATURATIONS[sat]
        if float(config[section][cap]) <= 0 or float(config[section][penalty]) <= 0:
            config[section][cap], config[section][penalty] = 10.0, 5.0
    _rebalance_engagement(config)
    return config


def _rebalance_engagement(config: Config) -> None:
    """Keep the engagement points summing to 100 after switching a factor on."""
    engagement = config["engagement"]
    total = sum(float(engagement[field_]) for field_ in _ENGAGEMENT_POINTS.values())
    for field_ in _ENGAGEMENT_POINTS.values():
        engagement[field_] = float(engagement[field_]) * 100.0 / total


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    model = report["results"]["model"]
    return {
        "auc_30d_churn_probability": model["auc"]["churn_probability"]["30"],
        "auc_30d_score": model["auc"]["score"]["30"],
        "brier_30d": model["brier_30d"],
        "brier_skill_vs_base_rate": model["brier_skill_vs_base_rate"],
        "recall": model["alerts"]["recall"],
        "median_lead_days": model["alerts"]["median_lead_days"],
        "false_alerts_per_100_healthy_per_month": model["alerts"][
            "false_alerts_per_100_healthy_per_month"
        ],
        "precision": model["alerts"]["precision"],
    }


def _worse(candidate: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Why the candidate must not replace the current model (empty: it may)."""
    new, old = _summary(candidate), _summary(current)
    reasons = []
    alerts = candidate["results"]["model"]["alerts"]
    churned, healthy = alerts["churners"], alerts["healthy_organizations"]
    if churned < MIN_HELD_OUT_CHURNERS or healthy < MIN_HELD_OUT_HEALTHY:
        # too few to judge by: the figures below are then noise, even when not worse
        reasons.append(
            f"too few held-out organizations to judge it by: {churned} churned and "
            f"{healthy} never did, of {candidate['organizations']['judged']} held out (at "
            f"least {MIN_HELD_OUT_CHURNERS} and {MIN_HELD_OUT_HEALTHY}: a larger or longer "
            "labelled log)"
        )
    if (new["auc_30d_churn_probability"] or 0) < (old["auc_30d_churn_probability"] or 0):
        reasons.append(
            f"held-out ROC AUC (30 days) {new['auc_30d_churn_probability']} < "
            f"{old['auc_30d_churn_probability']} of the current model"
        )
    if (new["brier_30d"] or 1) > (old["brier_30d"] or 1):
        reasons.append(
            f"held-out Brier score (30 days) {new['brier_30d']} > {old['brier_30d']} "
            "of the current model"
        )
    return reasons
