"""The alert episode state machine: one raise, escalations per level, one recovery."""

from __future__ import annotations

from uuid import UUID, uuid5

import pytest

from healthscore.contracts.enums import AlertKind, RiskLevel
from healthscore.core.bands import health_band, risk_level_for
from healthscore.core.scoring.aggregate import new_state
from healthscore.core.scoring.alerts import ALERT_NAMESPACE, alert_id_for, evaluate_alert
from healthscore.core.scoring.model import DAY, ScoreModel, v1_model
from healthscore.core.scoring.results import AlertDecision, HealthScore
from healthscore.core.scoring.score import record_score
from healthscore.core.scoring.state import OrganizationState

ORG = "1e2d3c4b-5a69-4788-8796-a5b4c3d2e1f0"
HOUR = 3600.0
T0 = 1_780_000_000.0 // DAY * DAY  # a day boundary


@pytest.fixture(scope="module")
def model() -> ScoreModel:
    return v1_model()


def health(
    probability: float,
    score: float = 50.0,
    change_7d: float | None = None,
    change_30d: float | None = None,
) -> HealthScore:
    return HealthScore(
        score=score,
        status=health_band(score),
        components={},
        churn_probability=probability,
        risk_level=risk_level_for(probability),
        risk_factors=[],
        segment="established",
        change_7d=change_7d,
        change_30d=change_30d,
        active_users_30d=0,
    )


class Run:
    """Feeds scores through evaluate_alert and record_score, as the pipeline does."""

    def __init__(self, model: ScoreModel, state: OrganizationState | None = None) -> None:
        self.model = model
        self.state = state or new_state(ORG)

    def step(self, at: float, probability: float, score: float = 50.0) -> AlertDecision | None:
        current = health(probability, score)
        decision = evaluate_alert(self.state, self.state.last_score, current, at, self.model)
        record_score(self.state, current, at)
        return decision


def kinds(decisions: list[AlertDecision | None]) -> list[AlertKind | None]:
    return [d.kind if d else None for d in decisions]


def test_alert_ids_are_uuid5_of_org_episode_kind_level_and_raise_day() -> None:
    day = int(T0 // DAY)
    raised = alert_id_for(ORG, 1, AlertKind.RISK_RAISED, raised_day=day)
    assert raised == uuid5(ALERT_NAMESPACE, f"{ORG}:1:risk_raised::{day}")
    escalated = alert_id_for(ORG, 1, AlertKind.RISK_ESCALATED, RiskLevel.CRITICAL, raised_day=day)
    assert escalated == uuid5(ALERT_NAMESPACE, f"{ORG}:1:risk_escalated:critical:{day}")
    # the level counts only for escalations
    assert alert_id_for(ORG, 1, AlertKind.RISK_RAISED, RiskLevel.HIGH, raised_day=day) == raised
    again = alert_id_for(ORG, 2, AlertKind.RISK_RAISED, raised_day=day)
    # the same number raised on another day (a database rebuilt by a replay under
    # another model numbers episodes from 1 again): another id
    renumbered = alert_id_for(ORG, 1, AlertKind.RISK_RAISED, raised_day=day + 1)
    # an episode raised before ids carried the day: the id of its own scheme
    undated = alert_id_for(ORG, 1, AlertKind.RISK_RAISED, raised_day=None)
    assert undated == uuid5(ALERT_NAMESPACE, f"{ORG}:1:risk_raised:")
    assert len({raised, escalated, again, renumbered, undated}) == 5
    assert UUID("6f1c2b8e-3d4a-5e6f-9a0b-1c2d3e4f5a6b") == ALERT_NAMESPACE  # never change it


def test_an_episode_open_at_the_upgrade_keeps_the_ids_of_its_raise() -> None:
    """A state whose episode the previous release raised (ids without the day): its
    escalation and recovery carry that scheme's ids, and episode_id the raise's id the
    consumer did receive; the next episode carries the day."""
    run = Run(v1_model())
    raised = run.step(T0 + HOUR, 0.55)
    assert raised is not None and run.state.alert.dated_ids
    run.state.alert.dated_ids = False  # as the previous release stored it
    escalated = run.step(T0 + 2 * HOUR, 0.80)
    recovered = run.step(T0 + 3 * HOUR, 0.30)
    assert escalated is not None and recovered is not None
    old_raise = uuid5(ALERT_NAMESPACE, f"{ORG}:1:risk_raised:")
    assert escalated.alert_id == uuid5(ALERT_NAMESPACE, f"{ORG}:1:risk_escalated:critical")
    assert recovered.alert_id == uuid5(ALERT_NAMESPACE, f"{ORG}:1:recovered:")
    assert escalated.episode_id == recovered.episode_id == old_raise
    again = run.step(T0 + 40 * HOUR, 0.60)
    assert again is not None and again.episode == 2 and run.state.alert.dated_ids
    day = int((T0 + 40 * HOUR) // DAY)
    assert (
        again.alert_id
        == again.episode_id
        == alert_id_for(ORG, 2, AlertKind.RISK_RAISED, raised_day=day)
    )


def full_episode(model: ScoreModel) -> list[AlertDecision | None]:
    run = Run(model)
    return [
        run.step(T0, 0.30),  # 0 medium: nothing
        run.step(T0 + 1 * HOUR, 0.55),  # 1 high: raised, episode 1
        run.step(T0 + 2 * HOUR, 0.49),  # 2 hover below enter, above exit: nothing
        run.step(T0 + 3 * HOUR, 0.51),  # 3 hover above enter again: nothing
        run.step(T0 + 4 * HOUR, 0.80),  # 4 critical: escalated
        run.step(T0 + 5 * HOUR, 0.74),  # 5 back to high: nothing
        run.step(T0 + 6 * HOUR, 0.76),  # 6 critical again: never twice
        run.step(T0 + 7 * HOUR, 0.36),  # 7 above exit: nothing
        run.step(T0 + 8 * HOUR, 0.34),  # 8 below exit 0.35: recovered
        run.step(T0 + 9 * HOUR, 0.60),  # 9 within the 24 h cooldown: nothing
        run.step(T0 + 20 * HOUR, 0.20),  # 10 nothing
        run.step(T0 + 33 * HOUR, 0.60),  # 11 cooldown over: raised, episode 2
    ]


def test_raise_escalate_hover_recover_cooldown_new_episode(model: ScoreModel) -> None:
    decisions = full_episode(model)
    assert kinds(decisions) == [
        None, AlertKind.RISK_RAISED, None, None, AlertKind.RISK_ESCALATED, None, None, None,
        AlertKind.RECOVERED, None, None, AlertKind.RISK_RAISED,
    ]  # fmt: skip
    raised, escalated, recovered, raised_again = (d for d in decisions if d is not None)
    assert raised.episode == escalated.episode == recovered.episode == 1
    assert raised_again.episode == 2
    # the days the episodes were raised on
    first, second = int((T0 + 1 * HOUR) // DAY), int((T0 + 33 * HOUR) // DAY)
    assert raised.alert_id == alert_id_for(ORG, 1, AlertKind.RISK_RAISED, raised_day=first)
    assert escalated.alert_id == alert_id_for(
        ORG, 1, AlertKind.RISK_ESCALATED, RiskLevel.CRITICAL, raised_day=first
    )
    assert recovered.alert_id == alert_id_for(ORG, 1, AlertKind.RECOVERED, raised_day=first)
    assert raised_again.alert_id == alert_id_for(ORG, 2, AlertKind.RISK_RAISED, raised_day=second)
    assert raised_again.alert_id != raised.alert_id
    # each alert names its episode's raise
    assert raised.episode_id == escalated.episode_id == recovered.episode_id == raised.alert_id
    assert raised_again.episode_id == raised_again.alert_id
    assert raised.previous_score == 50.0


def test_same_inputs_give_identical_decisions_and_ids(model: ScoreModel) -> None:
    assert full_episode(model) == full_episode(model)


def test_hovering_at_the_enter_threshold_raises_once(model: ScoreModel) -> None:
    run = Run(model)
    decisions = [run.step(T0 + i * HOUR, 0.49 if i % 2 else 0.51) for i in range(200)]
    assert kinds(decisions).count(AlertKind.RISK_RAISED) == 1
    assert [k for k in kinds(decisions) if k is not None] == [AlertKind.RISK_RAISED]


def test_hovering_at_the_exit_threshold_recovers_once_and_does_not_re_raise(
    model: ScoreModel,
) -> None:
    run = Run(model)
    assert run.step(T0, 0.6) is not None
    decisions = [run.step(T0 + i * HOUR, 0.34 if i % 2 else 0.36) for i in range(1, 200)]
    assert [k for k in kinds(decisions) if k is not None] == [AlertKind.RECOVERED]


def test_raise_straight_to_critical_does_not_escalate_to_critical_again(
    model: ScoreModel,
) -> None:
    run = Run(model)
    first = run.step(T0, 0.9)
    assert first is not None and first.kind is AlertKind.RISK_RAISED
    assert run.state.alert.level == "critical"
    assert [run.step(T0 + i * HOUR, p) for i, p in enumerate((0.6, 0.8, 0.95), 1)] == [None] * 3


def test_a_sharp_drop_raises_even_at_low_probability(model: ScoreModel) -> None:
    run = Run(model)
    assert run.step(T0, 0.02, score=92.0) is None
    # 92 -> 74 within a day: drop 18 > drop_points 15
    decision = run.step(T0 + DAY + HOUR, 0.08, score=74.0)
    assert decision is not None and decision.kind is AlertKind.RISK_RAISED
    assert decision.previous_score == 92.0
    assert run.state.alert.drop_peak == 92.0
    # still well below the peak: no recovery on the next event although p < exit
    assert run.step(T0 + DAY + 2 * HOUR, 0.08, score=75.0) is None
    # climbs high enough to be alert-worthy: an escalation to "high" within the episode
    escalated = run.step(T0 + DAY + 3 * HOUR, 0.55, score=48.0)
    assert escalated is not None and escalated.kind is AlertKind.RISK_ESCALATED
    assert escalated.alert_id == alert_id_for(
        ORG, 1, AlertKind.RISK_ESCALATED, RiskLevel.HIGH, raised_day=int((T0 + DAY + HOUR) // DAY)
    )
    # back within recover_drop_points (7.5) of the peak: 85 >= 92 - 7.5 -> recovered
    assert run.step(T0 + DAY + 4 * HOUR, 0.05, score=80.0) is None
    recovered = run.step(T0 + DAY + 5 * HOUR, 0.03, score=85.0)
    assert recovered is not None and recovered.kind is AlertKind.RECOVERED


def test_a_drop_episode_recovers_after_the_drop_window_if_the_score_stays_flat(
    model: ScoreModel,
) -> None:
    run = Run(model)
    run.step(T0, 0.02, score=92.0)
    assert run.step(T0 + HOUR, 0.08, score=74.0) is not None
    for day in range(1, 7):
        assert run.step(T0 + day * DAY, 0.08, score=74.0) is None
    recovered = run.step(T0 + 7 * DAY + HOUR, 0.08, score=74.0)
    assert recovered is not None and recovered.kind is AlertKind.RECOVERED
    # the pre-drop peak is older than the recovery: no new episode from the same drop
    assert [run.step(T0 + 9 * DAY + h * HOUR, 0.08, score=74.0) for h in range(5)] == [None] * 5


def test_slow_drift_below_the_drop_threshold_does_not_raise(model: ScoreModel) -> None:
    run = Run(model)
    decisions = [run.step(T0 + d * DAY, 0.1, score=90.0 - d * 1.5) for d in range(10)]
    # 1.5 points a day: at most 10.5 within 7 days
    assert decisions == [None] * 10


def test_a_drop_against_an_old_previous_score_does_not_count(model: ScoreModel) -> None:
    state = new_state(ORG)
    state.last_score, state.last_scored_at = 95.0, T0 - 20 * DAY
    assert evaluate_alert(state, 95.0, health(0.1, 70.0), T0, model) is None
