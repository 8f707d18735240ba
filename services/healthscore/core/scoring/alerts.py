"""Churn-risk alert episodes: when to emit risk_raised / risk_escalated / recovered.

One episode yields one `risk_raised`, at most one `risk_escalated` per level
step, and one `recovered` (the contract: no storms from an organization that
hovers at a threshold). The state machine lives in `state.alert`:

    idle --raise--> in episode --(level steps up)--> in episode --recover--> idle

- raise (idle only, and only once `alerts.cooldown_hours` have passed since the
  last recovery): churn_probability >= alerts.enter_probability (0.5 in v1,
  the edge of risk level "high"), at every rescoring for `alerts.persist_hours`
  (0 in v1: at once; `state.alert.above_since` remembers since when) unless it
  reaches `alerts.immediate_probability` (a critical risk is raised at once), or a
  sharp drop: the peak score of the last
  7 days (state.daily_scores, plus `previous` if it was scored within 7 days;
  only days since the last recovery count) minus the current score exceeds
  alerts.drop_points.
- escalate (in episode): the risk level reached a higher alert-worthy level
  (high, critical) than any alerted in this episode; the highest level is
  remembered, so hovering across the critical edge escalates once.
- recover (in episode): churn_probability < alerts.exit_probability, which is
  strictly below the enter threshold (hysteresis: a score hovering at the
  enter edge neither recovers nor re-raises). An episode raised by a drop
  alone also waits until the score is back within recover_drop_points of the
  pre-drop peak, or 7 days have passed since the raise (the drop then no
  longer counts), so that it does not recover on the very next event.
- with `alerts.decline_points` set (no shipped model sets it), a raise by the
  probability threshold also needs change_30d <= -decline_points (the raise at
  once from immediate_probability excepted); until then the time above the
  threshold keeps counting.

Alert ids are uuid5(ALERT_NAMESPACE, "{organization}:{episode}:{kind}:{level}:{day}")
with the level only for risk_escalated (empty otherwise) and `day` the event-time day
(days since the epoch) the episode was raised on: a replay of the same events under the
same model re-emits the same ids (a raise the replay makes an event earlier or later
the same day too), and a new episode gets new ones, also in a database rebuilt by a
replay under another model, whose episode numbers start again at 1 (an id of the number
alone repeated an earlier episode's, and consumers deduplicating on it dropped the new
alert). An episode raised before the day was in the ids (`AlertState.dated_ids` False)
keeps the ids of its raise's scheme, without it, to its end.
"""

from __future__ import annotations

from uuid import UUID, uuid5

from healthscore.core.enums import (
    RISK_LEVEL_ORDER,
    AlertKind,
    AlertTrigger,
    NoPathReason,
    RiskLevel,
)
from healthscore.core.scoring.model import DAY, Alerts, ScoreModel
from healthscore.core.scoring.path import no_path_reason, path_to_healthy
from healthscore.core.scoring.results import AlertDecision, HealthScore
from healthscore.core.scoring.state import OrganizationState

# Fixed forever: changing it changes every alert id and breaks consumers' dedupe.
ALERT_NAMESPACE = UUID("6f1c2b8e-3d4a-5e6f-9a0b-1c2d3e4f5a6b")
DROP_WINDOW_DAYS = 7
_ALERTABLE = (RiskLevel.HIGH, RiskLevel.CRITICAL)
_RANK = {level.value: rank for rank, level in enumerate(RISK_LEVEL_ORDER)}


def alert_id_for(
    organization_id: str,
    episode: int,
    kind: AlertKind,
    level: RiskLevel | None = None,
    *,
    raised_day: int | None,
) -> UUID:
    """The deterministic id; `level` counts only for risk_escalated; `raised_day`, the
    event-time day the episode was raised on (the same for each of its alerts; None for
    an episode raised before ids carried it)."""
    suffix = level.value if kind is AlertKind.RISK_ESCALATED and level is not None else ""
    name = f"{organization_id}:{episode}:{kind.value}:{suffix}"
    return uuid5(ALERT_NAMESPACE, name if raised_day is None else f"{name}:{raised_day}")


def recent_peak(state: OrganizationState, previous: float | None, as_of: float) -> float | None:
    """Highest score of the last 7 days (days since the last recovery only)."""
    today = int(as_of // DAY)
    first_day = today - DROP_WINDOW_DAYS
    recovered_at = state.alert.recovered_at
    if recovered_at is not None:
        first_day = max(first_day, int(recovered_at // DAY))
    peak: float | None = None
    for key, value in state.daily_scores.items():
        if first_day <= int(key) <= today and (peak is None or value > peak):
            peak = value
    scored_at = state.last_scored_at
    if (
        previous is not None
        and scored_at is not None
        and as_of - scored_at <= DROP_WINDOW_DAYS * DAY
        and (recovered_at is None or scored_at >= recovered_at)
        and (peak is None or previous > peak)
    ):
        peak = previous
    return peak


def _decision(
    state: OrganizationState,
    kind: AlertKind,
    previous: float | None,
    level: RiskLevel | None,
    trigger: AlertTrigger,
    as_of: float,
    model: ScoreModel,
) -> AlertDecision:
    episode = state.alert.episode
    # every raise sets them before its decision, so each alert of an episode reads its own
    alert = state.alert
    raised_day = int((alert.raised_at or 0.0) // DAY) if alert.dated_ids else None
    path = () if kind is AlertKind.RECOVERED else tuple(path_to_healthy(state, as_of, model))
    reason: NoPathReason | None = None
    if kind is AlertKind.RECOVERED:
        reason = NoPathReason.OUT_OF_RISK
    elif not path:
        reason = no_path_reason(state, as_of, model)
    return AlertDecision(
        kind=kind,
        episode=episode,
        alert_id=alert_id_for(state.organization_id, episode, kind, level, raised_day=raised_day),
        episode_id=alert_id_for(
            state.organization_id, episode, AlertKind.RISK_RAISED, raised_day=raised_day
        ),
        previous_score=previous,
        trigger=trigger,
        score_model_version=model.version,
        path_to_healthy=path,
        no_path_reason=reason,
    )


def _declined(current: HealthScore, config: Alerts) -> bool:
    """Whether a raise by the probability threshold has the decline it needs: the
    score fell by decline_points over 30 days, or the probability is critical."""
    immediate = config.immediate_probability
    if immediate is not None and current.churn_probability >= immediate:
        return True
    change = current.change_30d
    return (
        change is not None
        and config.decline_points is not None
        and change <= -config.decline_points
    )


def evaluate_alert(
    state: OrganizationState,
    previous: float | None,
    current: HealthScore,
    as_of: float,
    model: ScoreModel,
) -> AlertDecision | None:
    """Advance the episode state machine (mutates state.alert); the alert to emit, if any."""
    alert = state.alert
    config = model.alerts
    probability = current.churn_probability
    level = current.risk_level

    if alert.in_episode:
        if probability < config.exit_probability and (
            alert.drop_peak is None
            or current.score >= alert.drop_peak - config.recover_drop_points
            or (alert.raised_at is not None and as_of - alert.raised_at >= DROP_WINDOW_DAYS * DAY)
        ):
            decision = _decision(
                state, AlertKind.RECOVERED, previous, None, AlertTrigger.RECOVERY, as_of, model
            )
            alert.in_episode = False
            alert.recovered_at = as_of
            alert.level = None
            alert.drop_peak = None
            return decision
        alerted_rank = _RANK.get(alert.level, -1) if alert.level is not None else -1
        if level in _ALERTABLE and _RANK[level.value] > alerted_rank:
            alert.level = level.value
            return _decision(
                state,
                AlertKind.RISK_ESCALATED,
                previous,
                level,
                AlertTrigger.ESCALATION_STEP,
                as_of,
                model,
            )
        return None

    high = probability >= config.enter_probability
    if config.persist_hours > 0.0:  # the probability must hold in the range for a while
        if not high:
            alert.above_since = None
        else:
            if alert.above_since is None:
                alert.above_since = as_of
            immediate = config.immediate_probability
            high = as_of - alert.above_since >= config.persist_hours * 3600 or (
                immediate is not None and probability >= immediate
            )
    if alert.recovered_at is not None and as_of - alert.recovered_at < config.cooldown_hours * 3600:
        return None
    if high and config.decline_points is not None and not _declined(current, config):
        # the time above the threshold keeps counting (above_since stays)
        high = False
    peak = None if high else recent_peak(state, previous, as_of)
    dropped = peak is not None and peak - current.score > config.drop_points
    if not (high or dropped):
        return None
    alert.episode += 1
    alert.in_episode = True
    alert.level = level.value
    alert.raised_at = as_of
    alert.dated_ids = True
    alert.drop_peak = None if high else peak
    alert.above_since = None
    trigger = AlertTrigger.PROBABILITY_THRESHOLD if high else AlertTrigger.SCORE_DROP
    return _decision(state, AlertKind.RISK_RAISED, previous, None, trigger, as_of, model)
