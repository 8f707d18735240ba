"""The raw inputs of every risk factor, read from a state as of a time; pure.

`score()` turns these into deficits with the model's points, scales, caps and
weights. Evaluation and fitting need the inputs themselves: to fit those
numbers (`healthscore_lab.evaluation.fit`), to recompute a candidate model's
score for many states at once (`healthscore_lab.evaluation.vector`), and as the
raw aggregates of the logistic-regression baseline. The reading is exactly
the one `score()` makes (the same tenure, grace, windows and decayed sums; a
unit test rebuilds `score()`'s output from these numbers), and depends on the
model only through what is not fitted: half-lives, the active-user and feature
windows, the grace and segment edges, and the milestone table.
"""

from __future__ import annotations

from typing import NamedTuple

from healthscore.core.scoring.aggregate import decayed_values
from healthscore.core.scoring.model import DAY, ScoreModel
from healthscore.core.scoring.score import (
    FEATURE_SHARE_WINDOW_DAYS,
    _open_support,
    expected_recent_activity,
    expected_recent_logins,
)
from healthscore.core.scoring.state import OrganizationState


class Measures(NamedTuple):
    tenure_days: float
    new_segment: float  # 1.0 in the "new" segment, else 0.0
    keep: float  # 1 - grace: the share of a volume shortfall that counts
    silent_days: float  # since the newest usage event
    activity: float  # decayed sums ...
    logins: float
    active_users: float  # users seen within the active-user window
    features: float  # features used within the breadth window
    value_actions: float
    missing_milestones: float  # 0..1: the share of milestone weight missing by now
    open_interactions: float
    open_escalations: float  # open and escalated or urgent
    open_cancellations: float  # open cancellation requests
    oldest_open_days: float
    negative_sentiment: float
    complaints: float
    cancellation_requests: float
    escalations: float
    positive_commercial: float
    clients_added: float
    negative_signals: float
    days_since_last_event: float  # any event, usage or support
    activity_recent: float  # the decayed sum activity_decline compares ...
    activity_expected: float  # ... with what the baseline rate predicts (-1: no baseline)
    users_7d: float  # users seen within 7 days
    known_users: float  # users seen within 90 days (the state keeps no older ones)
    features_7d: float  # features used within FEATURE_SHARE_WINDOW_DAYS (7)
    known_features: float  # every feature the state remembers
    logins_expected: float  # the logins sum the login baseline predicts (-1: no baseline)


MEASURES: tuple[str, ...] = Measures._fields


def measure(state: OrganizationState, as_of: float, model: ScoreModel) -> Measures:
    """What `score(state, as_of, model)` reads, before any point, scale or weight."""
    first = state.first_event_at
    created = state.created_at
    origin = created if created is not None and (first is None or created < first) else first
    tenure = max(0.0, (as_of - origin) / DAY) if origin is not None else 0.0
    new = tenure < model.segments.new_max_tenure_days
    grace_days = model.segments.grace_days
    keep = min(1.0, tenure / grace_days) if grace_days > 0 else 1.0
    dec = decayed_values(state, as_of, model)
    last_usage = state.last_usage_at if state.last_usage_at is not None else first
    silent = max(0.0, (as_of - last_usage) / DAY) if last_usage is not None else 0.0
    user_horizon = as_of - model.engagement.active_user_window_days * DAY
    active_users = sum(1 for seen in state.users.values() if seen >= user_horizon)
    feature_horizon = as_of - model.adoption.breadth_window_days * DAY
    features = sum(1 for _count, used in state.features.values() if used >= feature_horizon)
    missing = 0.0
    if tenure > 0.0:
        for name, impact, expected_by_days in model.milestone_table:
            if name not in state.milestones:
                missing += impact * min(1.0, tenure / expected_by_days)
    open_count, escalated, cancellations, age = _open_support(
        state.open_interactions, as_of, state.open_beyond
    )
    last_event = state.last_event_at
    expected = expected_recent_activity(dec["activity_baseline"], state, as_of, model)
    expected_logins = expected_recent_logins(dec["logins_baseline"], state, as_of, model)
    week = as_of - FEATURE_SHARE_WINDOW_DAYS * DAY
    return Measures(
        tenure_days=tenure,
        new_segment=1.0 if new else 0.0,
        keep=keep,
        silent_days=silent,
        activity=dec["activity"],
        logins=dec["logins"],
        active_users=float(active_users),
        features=float(features),
        value_actions=dec["value_actions"],
        missing_milestones=missing / model.milestone_weight_total,
        open_interactions=float(open_count),
        open_escalations=float(escalated),
        open_cancellations=float(cancellations),
        oldest_open_days=age,
        negative_sentiment=dec["negative_sentiment"],
        complaints=dec["complaints"],
        cancellation_requests=dec["cancellation_requests"],
        escalations=dec["escalations"],
        positive_commercial=dec["positive_commercial"],
        clients_added=dec["clients_added"],
        negative_signals=dec["negative_signals"],
        days_since_last_event=max(0.0, (as_of - last_event) / DAY) if last_event else 0.0,
        activity_recent=dec["activity_recent"],
        activity_expected=-1.0 if expected is None else expected,
        users_7d=float(sum(1 for seen in state.users.values() if seen >= as_of - 7 * DAY)),
        known_users=float(len(state.users)),
        features_7d=float(sum(1 for _count, used in state.features.values() if used >= week)),
        known_features=float(len(state.features)),
        logins_expected=-1.0 if expected_logins is None else expected_logins,
    )
