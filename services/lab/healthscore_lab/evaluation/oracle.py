"""The oracle: what the simulator's ground truth forecasts, the ceiling of any score.

Only for a simulated log (`evaluate --simulate ... --oracle`). The simulator knows
each organization's latent state at every as-of point: its health `h`, the level
`mu` it reverts to, and the drift of a decline it is in (`simulator.labelled`).
Per snapshot (the model's own as-of points, labels and organizations):

- `probability[H]`: the true probability of churn within H days given that state,
  P(churn in (t, t + H days] | h, drift, mu), from the simulator's own dynamics run
  forward `paths` times (Monte Carlo), the same paths for every snapshot (common
  random numbers: no snapshot-to-snapshot Monte Carlo noise). Each path contributes
  its exact survival, exp(-sum of its daily hazards), rather than a drawn churn
  (Rao-Blackwellized), so the only noise left is that of the path of `h`. Every
  signal a score sees is drawn from this state, so no score forecasts better on
  average: its ROC AUC and Brier score bound what the population allows.
- `latent`: the latent health `h` itself, as a ranking (risk = -h).

The state at an as-of point (00:00 UTC of stream day D) is the one after day D-1's
step: the events before it were drawn from that state, and day D's step (the first
whose churn falls within the horizon) has not been taken.

The alerts of the oracle (`choose_alerts`): its 30-day probability, sampled at the
daily as-of points, raises after holding at or above a threshold for some days and
recovers below half of it, with the live model's cooldown; the threshold and the
persistence are chosen on the training organizations as `fit` chooses a model's:
the most churners warned at least 14 days ahead with at most 3.5 false alerts per
100 healthy organizations per month.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from healthscore_lab.evaluation.metrics import (
    DAY,
    HORIZONS,
    AlertFigures,
    alert_figures,
    hysteresis_raises,
)
from healthscore_lab.evaluation.replay import Backtest
from healthscore_lab.simulator.labelled import Population, PopulationConfig

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

DEFAULT_PATHS = 256
_CHUNK = 2048  # snapshots forecast at once (memory: chunk * paths floats per array)

# the oracle's alert rule: thresholds on its 30-day probability, days held
ENTER_PROBABILITIES = (0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
PERSIST_DAYS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)
MAX_FALSE_ALERTS = 3.5  # fit's bound on the training organizations
WARNED_DAYS = 14.0


@dataclass(frozen=True)
class Oracle:
    probability: dict[int, FloatArray]  # horizon -> per snapshot
    latent: FloatArray  # per snapshot: the latent health h
    paths: int
    seed: int


def forward_churn_probability(
    config: PopulationConfig,
    h0: FloatArray,
    drift0: FloatArray,
    mu: FloatArray,
    horizons: Sequence[int],
    uniforms: FloatArray,
    normals: FloatArray,
) -> dict[int, FloatArray]:
    """P(churn within each horizon, in days) from each state (h0, drift0, mu), by
    the day steps of `simulator.labelled._Latent.step`, vectorized: `uniforms` and
    `normals` (days, paths) are the paths' draws, the same for every state."""
    n, paths = len(h0), uniforms.shape[1]
    h = np.repeat(h0[:, None], paths, axis=1)
    drift = np.repeat(drift0[:, None], paths, axis=1)
    level = mu[:, None]
    low, high = config.decline_drift
    cumulative = np.zeros((n, paths))
    out: dict[int, FloatArray] = {}
    for day in range(1, max(horizons) + 1):
        # one uniform decides the transition: a decline ends (recovery_rate) or, outside
        # one, begins (decline_rate); below decline_rate, u / decline_rate is uniform
        # and draws the new decline's drift
        u = uniforms[day - 1][None, :]
        drift = np.where(
            drift > 0.0,
            np.where(u < config.recovery_rate, 0.0, drift),
            np.where(u < config.decline_rate, low + (high - low) * u / config.decline_rate, 0.0),
        )
        noise = config.sigma * normals[day - 1][None, :]
        h = np.where(drift > 0.0, h - drift, h + (level - h) / config.tau_days) + noise
        cumulative += config.sudden_hazard + config.base_hazard * np.exp(-config.slope * h)
        if day in horizons:
            out[day] = 1.0 - np.exp(-cumulative).mean(axis=1)
    return out


def oracle_forecasts(
    bt: Backtest,
    population: Population,
    horizons: Sequence[int] = HORIZONS,
    paths: int = DEFAULT_PATHS,
    seed: int | None = None,
) -> Oracle:
    """The oracle's forecasts for every snapshot of `bt`, a backtest of `population`'s
    log. Deterministic for (population, paths, seed); seed defaults to the population's."""
    n = len(bt.snap_at)
    h0, drift0, mu = np.empty(n), np.empty(n), np.empty(n)
    for index in range(n):
        org = bt.orgs[int(bt.snap_org[index])]
        day = round((float(bt.snap_at[index]) - population.stream_start) / DAY)
        h = population.latent[org][day - 1] if day >= 1 else None
        drift = population.drift[org][day - 1] if day >= 1 else None
        if h is None or drift is None:
            raise ValueError(f"no latent state for {org} before stream day {day}")
        h0[index], drift0[index], mu[index] = h, drift, population.level[org]
    chosen = population.config.seed if seed is None else seed
    # common random numbers: every snapshot runs the same paths, so the forecast is a
    # smooth function of the state, with no snapshot-to-snapshot Monte Carlo noise
    rng = np.random.default_rng([chosen, paths])
    days = max(horizons)
    uniforms, normals = rng.random((days, paths)), rng.standard_normal((days, paths))
    probability: dict[int, FloatArray] = {h: np.empty(n) for h in horizons}
    for first in range(0, n, _CHUNK):
        rows = slice(first, min(n, first + _CHUNK))
        part = forward_churn_probability(
            population.config, h0[rows], drift0[rows], mu[rows], horizons, uniforms, normals
        )
        for horizon in horizons:
            probability[horizon][rows] = part[horizon]
    return Oracle(probability=probability, latent=h0, paths=paths, seed=chosen)


def _raises(
    bt: Backtest, probability: FloatArray, enter: float, persist_days: float, cooldown_days: float
) -> list[tuple[int, float]]:
    return hysteresis_raises(
        bt.snap_org, bt.snap_at, probability, enter, enter / 2, cooldown_days, persist_days
    )


def _figures(bt: Backtest, raised: list[tuple[int, float]], orgs: list[int]) -> AlertFigures:
    first_point = float(bt.snap_at.min()) if len(bt.snap_at) else bt.start
    return alert_figures(
        raised, bt.churn, bt.first_seen, orgs, first_point, bt.end, bt.labels_until
    )


def choose_alerts(
    bt: Backtest, probability: FloatArray, train_orgs: list[int], cooldown_days: float
) -> tuple[list[tuple[int, float]], dict[str, Any]]:
    """The raises of the best rule on the training organizations (the module
    docstring), over every organization, and the rule with its training figures."""
    best: tuple[tuple[float, float], float, float, AlertFigures] | None = None
    for enter in ENTER_PROBABILITIES:
        for persist in PERSIST_DAYS:
            figures = _figures(
                bt, _raises(bt, probability, enter, persist, cooldown_days), train_orgs
            )
            false_rate = figures.false_alerts_per_100_healthy_per_month or 0.0
            if false_rate > MAX_FALSE_ALERTS:
                continue
            warned = sum(1 for d in figures.lead_days if d >= WARNED_DAYS)
            key = (warned / max(1, figures.churners), -false_rate)
            if best is None or key > best[0]:
                best = (key, enter, persist, figures)
    if best is None:  # no rule within the bound: the strictest one
        enter, persist = ENTER_PROBABILITIES[-1], PERSIST_DAYS[-1]
        figures = _figures(bt, _raises(bt, probability, enter, persist, cooldown_days), train_orgs)
    else:
        _key, enter, persist, figures = best
    rule = {
        "enter_probability": enter,
        "exit_probability": enter / 2,
        "persist_days": persist,
        "cooldown_days": cooldown_days,
        "chosen_on": f"{len(train_orgs)} training organizations (not held out)",
        "within_false_alert_bound": best is not None,
        "training": {
            "churners": figures.churners,
            "churners_alerted": figures.churners_alerted,
            "warned_at_least_14_days_ahead": sum(1 for d in figures.lead_days if d >= WARNED_DAYS),
            "median_lead_days": figures.median_lead_days,
            "false_alerts_per_100_healthy_per_month": (
                figures.false_alerts_per_100_healthy_per_month
            ),
        },
    }
    return _raises(bt, probability, enter, persist, cooldown_days), rule
