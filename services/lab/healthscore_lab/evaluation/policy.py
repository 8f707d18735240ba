"""Alerts under other alert settings, from a backtest's recorded path; exact.

The alert state machine reads only the scores it is fed (score, probability,
risk level and time of every rescoring) and its own state; it never feeds back
into a score. So the alerts a model would raise under other `alerts` settings
follow from one replay's path: `simulate_alerts` runs `evaluate_alert` (the
service's own function) over it. A unit test checks that, with the replay's own
settings, it gives exactly the replay's alerts.
"""

from __future__ import annotations

import msgspec
import numpy as np

from healthscore.contracts.enums import AlertKind
from healthscore.core.bands import health_band, risk_level_for
from healthscore.core.scoring.aggregate import new_state
from healthscore.core.scoring.alerts import evaluate_alert
from healthscore.core.scoring.model import Alerts, ScoreModel
from healthscore.core.scoring.results import HealthScore
from healthscore.core.scoring.score import record_score, score_changes
from healthscore_lab.evaluation.replay import Backtest


def with_alerts(model: ScoreModel, alerts: Alerts) -> ScoreModel:
    return msgspec.structs.replace(model, alerts=alerts)


Prepared = list[tuple[int, float, HealthScore]]


def prepare(bt: Backtest) -> Prepared:
    """The path as the state machine reads it, per organization in order (reusable
    across alert settings)."""
    out: Prepared = []
    order = np.lexsort((np.arange(len(bt.path_org)), bt.path_org))  # stable per organization
    for index in order:
        value = float(bt.path_score[index])
        probability = float(bt.path_probability[index])
        health = HealthScore(
            score=value,
            status=health_band(value),
            components={},
            churn_probability=probability,
            risk_level=risk_level_for(probability),
            risk_factors=[],
            segment="",
            change_7d=None,
            change_30d=None,
            active_users_30d=0,
        )
        out.append((int(bt.path_org[index]), float(bt.path_at[index]), health))
    return out


def simulate_alerts(
    bt: Backtest, model: ScoreModel, prepared: Prepared | None = None
) -> list[tuple[int, float, AlertKind, str]]:
    """(organization index, time, kind, trigger) of every alert over the path."""
    out: list[tuple[int, float, AlertKind, str]] = []
    current = -1
    state = new_state("")
    # a decline gate reads the 30-day change, which the prepared path leaves out (the
    # other rules read none): computed here from the daily scores, as score() does
    changes = model.alerts.decline_points is not None
    for org, at, health in prepared if prepared is not None else prepare(bt):
        if org != current:
            current = org
            state = new_state(bt.orgs[org])
        if changes:
            change_7d, change_30d = score_changes(state, at, health.score)
            health = msgspec.structs.replace(health, change_7d=change_7d, change_30d=change_30d)
        decision = evaluate_alert(state, state.last_score, health, at, model)
        record_score(state, health, at)
        if decision is not None:
            out.append((org, at, decision.kind, decision.trigger.value))
    return out
