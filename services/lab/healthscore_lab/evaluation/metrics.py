"""The figures of a backtest: discrimination, calibration, alert quality.

Definitions (all on the organizations selected, normally the held-out ones):

- **Label at horizon H** of a snapshot (organization, as-of t): the organization
  churns within (t, t + H days]. Only snapshots with t + H <= labels_until
  count (the label must be known), and none after the organization churned.
- **ROC AUC** of a risk figure over those snapshots (the score counts as risk
  when negated), ties counted half.
- **Brier score** of a probability: mean (p - label)^2; the **base rate**
  forecast is a constant rate cross-fitted like the baselines: each snapshot is
  forecast the rate of the other four folds of organizations (`evaluate`); the rate
  the report prints beside it is that of every organization's usable snapshots.
- **Reliability table**: snapshots binned by forecast (tenths), mean forecast
  against the observed rate in each bin.
- **Alerts** (`risk_raised` only: one per episode): an episode is *true* when
  the organization churns within `alert_horizon_days` (60) after it was raised
  (and by labels_until: a churn after it is not known, here as below).
  *Precision*: true episodes over episodes whose outcome is known (true, or raised
  at least that long before labels_until). *Recall*: the share of churners (churn
  between the first as-of point and the last event + 30 days, or labels_until if
  earlier) with an episode
  raised in the `alert_horizon_days` before their churn; *lead time*: churn
  minus the first such raise. *False alerts per 100 healthy organizations per
  month*: episodes of organizations that never churn (up to labels_until),
  per 100 such organizations and 30 days they were observed (from their first
  event to the last event of the log).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from healthscore.core.quality import ALERT_HORIZON_DAYS

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]
DAY = 86_400.0
HORIZONS = (30, 60, 90)
RECALL_WINDOW_DAYS = 30.0


def labels_at(
    org: IntArray, at: FloatArray, churn: FloatArray, horizon_days: float, labels_until: float
) -> tuple[BoolArray, BoolArray]:
    """(usable, label) per snapshot for "churns within horizon_days"."""
    end = at + horizon_days * DAY
    churn_at = churn[org]
    alive = ~(churn_at <= at)
    usable = alive & (end <= labels_until + 1e-6)
    label = churn_at <= end  # NaN compares False: retained
    return usable, label & usable


def auc(label: BoolArray, risk: FloatArray) -> float | None:
    if label.all() or not label.any():
        return None
    return float(roc_auc_score(label, risk))


def brier(label: BoolArray, probability: FloatArray) -> float:
    return float(np.mean((probability - label.astype(float)) ** 2))


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    count: int
    mean_forecast: float | None
    observed_rate: float | None


def reliability(label: BoolArray, probability: FloatArray, bins: int = 10) -> list[ReliabilityBin]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, probability, side="right") - 1, 0, bins - 1)
    table: list[ReliabilityBin] = []
    for index in range(bins):
        members = which == index
        count = int(members.sum())
        table.append(
            ReliabilityBin(
                low=float(edges[index]),
                high=float(edges[index + 1]),
                count=count,
                mean_forecast=float(probability[members].mean()) if count else None,
                observed_rate=float(label[members].mean()) if count else None,
            )
        )
    return table


@dataclass(frozen=True)
class AlertFigures:
    episodes: int
    episodes_known: int  # outcome observable
    true_episodes: int
    precision: float | None
    churners: int
    churners_alerted: int
    recall: float | None
    lead_days: list[float]
    median_lead_days: float | None
    healthy_organizations: int
    healthy_months: float
    false_alerts_on_healthy: int
    false_alerts_per_100_healthy_per_month: float | None


def alert_figures(
    raised: Iterable[tuple[int, float]],
    churn: FloatArray,
    first_seen: FloatArray,
    selected: Sequence[int],
    first_point: float,
    end: float,
    labels_until: float,
    horizon_days: float = ALERT_HORIZON_DAYS,
) -> AlertFigures:
    """Alert quality of `raised` (organization, time of a risk_raised) on the
    `selected` organizations (see the module docstring)."""
    chosen = set(selected)
    by_org: dict[int, list[float]] = {}
    for org, at in raised:
        if org in chosen:
            by_org.setdefault(org, []).append(at)
    horizon = horizon_days * DAY
    episodes = known = true = 0
    for org, times in by_org.items():
        for at in times:
            episodes += 1
            # a churn after labels_until is not known: the episode's outcome is not
            # either (and its organization is counted healthy below, as far as known)
            hit = bool(at < churn[org] <= min(at + horizon, labels_until))
            if hit or at + horizon <= labels_until:
                known += 1
                true += hit
    churners = alerted = 0
    leads: list[float] = []
    recall_end = min(end + RECALL_WINDOW_DAYS * DAY, labels_until)
    for org in chosen:
        at = churn[org]
        if not (first_point <= at <= recall_end):
            continue
        churners += 1
        before = [t for t in by_org.get(org, []) if at - horizon <= t < at]
        if before:
            alerted += 1
            leads.append(float(at - min(before)) / DAY)
    healthy = [org for org in chosen if np.isnan(churn[org]) or churn[org] > labels_until]
    observed = [end - first_seen[org] for org in healthy if not np.isnan(first_seen[org])]
    months = float(sum(max(0.0, float(seconds)) for seconds in observed)) / (30 * DAY)
    false_healthy = sum(len(by_org.get(org, [])) for org in healthy)
    return AlertFigures(
        episodes=episodes,
        episodes_known=known,
        true_episodes=true,
        precision=true / known if known else None,
        churners=churners,
        churners_alerted=alerted,
        recall=alerted / churners if churners else None,
        lead_days=sorted(leads),
        median_lead_days=float(np.median(leads)) if leads else None,
        healthy_organizations=len(healthy),
        healthy_months=months,
        false_alerts_on_healthy=false_healthy,
        false_alerts_per_100_healthy_per_month=100 * false_healthy / months if months else None,
    )


def hysteresis_raises(
    org: IntArray,
    at: FloatArray,
    probability: FloatArray,
    enter: float,
    exit_: float,
    cooldown_days: float = 1.0,
    persist_days: float = 0.0,
    immediate: float | None = None,
) -> list[tuple[int, float]]:
    """Episodes of a forecast sampled daily: raise once it has stayed >= enter for
    persist_days (0: at once) or at once from `immediate`, recover below exit_ (the
    rule the service applies to its own probability, without the drop rule)."""
    order = np.lexsort((at, org))
    raised: list[tuple[int, float]] = []
    current = -1
    in_episode = False
    recovered_at = -np.inf
    above_since: float | None = None
    for index in order:
        o, t, p = int(org[index]), float(at[index]), float(probability[index])
        if o != current:
            current, in_episode, recovered_at, above_since = o, False, -np.inf, None
        if in_episode:
            if p < exit_:
                in_episode, recovered_at = False, t
            continue
        if p < enter:
            above_since = None
            continue
        if above_since is None:
            above_since = t
        held = t - above_since >= persist_days * DAY or (immediate is not None and p >= immediate)
        if held and t - recovered_at >= cooldown_days * DAY:
            in_episode, above_since = True, None
            raised.append((o, t))
    return raised


def bootstrap_auc(
    org: IntArray,
    label: BoolArray,
    risks: dict[str, FloatArray],
    replicates: int = 200,
    seed: int = 0,
) -> dict[str, FloatArray]:
    """ROC AUC of each risk over `replicates` resamples of the organizations (with
    replacement, every snapshot of a drawn organization: the snapshots of one
    organization are not independent); the same resamples for every risk, so
    differences are paired. NaN where a resample has one class only."""
    orgs, inverse = np.unique(org, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(inverse, minlength=len(orgs)))))
    groups = [order[bounds[i] : bounds[i + 1]] for i in range(len(orgs))]
    rng = np.random.default_rng(seed)
    out = {name: np.full(replicates, np.nan) for name in risks}
    for replicate in range(replicates):
        rows = np.concatenate([groups[i] for i in rng.integers(0, len(orgs), len(orgs))])
        y = label[rows]
        for name, risk in risks.items():
            value = auc(y, risk[rows])
            if value is not None:
                out[name][replicate] = value
    return out
