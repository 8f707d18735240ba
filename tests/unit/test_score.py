"""The score function on hand-computed cases (numbers from the formulas in
healthscore.core.scoring.score, with the hand-set v1 model: its formulas are the
code v2 runs too, with other numbers)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from healthscore.contracts.enums import HealthStatus, MilestoneType, RiskLevel, UsageType
from healthscore.core.events import UsageEvent
from healthscore.core.scoring.aggregate import apply_usage, new_state
from healthscore.core.scoring.model import DAY, ScoreModel, v1_model
from healthscore.core.scoring.results import HealthScore, RiskFactor
from healthscore.core.scoring.score import churn_probability, record_score, score, score_changes
from healthscore.core.scoring.state import OpenInteraction, OrganizationState

ORG = "5b0c6a36-6f34-4d4e-9d57-0b3d6a1d2c11"
T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a day boundary
NOW = T0.timestamp()


@pytest.fixture(scope="module")
def model() -> ScoreModel:
    return v1_model()


def usage(
    kind: UsageType, at: datetime, *, user: UUID | None = None, quantity: int = 1
) -> UsageEvent:
    return UsageEvent(
        event_id=uuid4(),
        organization_id=UUID(ORG),
        user_id=user,
        type=kind,
        occurred_at=at,
        quantity=quantity,
        feature=None,
        properties=None,
    )


def factor_sum(health: HealthScore) -> float:
    return sum(f.impact for f in health.risk_factors)


def by_factor(health: HealthScore) -> dict[str, RiskFactor]:
    return {f.factor: f for f in health.risk_factors}


def test_brand_new_org_with_one_login_yesterday_is_excellent_and_low_risk(
    model: ScoreModel,
) -> None:
    state = new_state(ORG)
    apply_usage(state, usage(UsageType.LOGIN, T0, user=uuid4()), model)
    health = score(state, NOW + DAY, model)

    # tenure 1 day: segment "new"; keep = 1/30 (grace_days 30)
    # engagement: silent 1 day <= 2 -> no inactivity deficit
    #   activity = 2**(-1/7) = 0.905724 -> 25 * exp(-0.905724/20) / 30 = 0.796437
    #   logins   = 2**(-1/14) = 0.951695 -> 20 * exp(-0.951695/5) / 30 = 0.551119
    #   users    = 1                     -> 20 * exp(-1/2) / 30         = 0.404354
    #   engagement = 100 - 1.751910 = 98.248090
    # adoption: 50 * exp(0)/30 + 50 * exp(0)/30 = 3.333333 -> 96.666667
    # milestones: sum impact_m * min(1, 1/expected_m) over all 17 = 4.596673 -> 95.403327
    # support 100 (never any interaction); growth = baseline 60
    # composite (new weights .30 .20 .25 .15 .10):
    #   .3*98.248090 + .2*96.666667 + .25*95.403327 + .15*100 + .1*60 = 93.658592
    assert health.segment == "new"
    assert health.components == {
        "engagement": 98.25,
        "adoption": 96.67,
        "milestones": 95.4,
        "support": 100.0,
        "growth": 60.0,
    }
    assert health.score == 93.66
    assert health.status is HealthStatus.EXCELLENT
    # p = logistic(4.5 - 10 * 0.9366) = logistic(-4.866) = 0.0076
    assert health.churn_probability == 0.0076
    assert health.risk_level is RiskLevel.LOW
    assert health.active_users_30d == 1
    assert health.change_7d is None and health.change_30d is None


def test_new_org_lands_in_good_or_better_even_before_its_first_login_day_ends(
    model: ScoreModel,
) -> None:
    state = new_state(ORG)
    apply_usage(state, usage(UsageType.LOGIN, T0, user=uuid4()), model)
    for hours in (0, 1, 12, 24, 48):
        health = score(state, NOW + hours * 3600, model)
        assert health.status in (HealthStatus.GOOD, HealthStatus.EXCELLENT)
        assert health.risk_level is RiskLevel.LOW


def troubled_state() -> OrganizationState:
    """An established org with no usage for 16 days and a heavy support load.

    decay_ref == as_of (NOW), so every decayed value reads back as stored."""
    achieved = {
        m.value: NOW - 150 * DAY
        for m in MilestoneType
        if m not in (MilestoneType.WEDDINGS_COMPLETED_10, MilestoneType.FIRST_REFERRAL)
    }
    return OrganizationState(
        organization_id=ORG,
        first_event_at=NOW - 200 * DAY,
        last_event_at=NOW - 5 * DAY,
        last_usage_at=NOW - 16 * DAY,
        decay_ref=NOW,
        decayed={
            "negative_sentiment": 1.0,
            "complaints": 0.5,
            "cancellation_requests": 1.0,
            "escalations": 1.0,
            "negative_signals": 2.0,
        },
        open_interactions={
            "a": OpenInteraction(opened_at=NOW - 10 * DAY, escalated=True),
            "b": OpenInteraction(opened_at=NOW - 5 * DAY, priority="normal"),
        },
        milestones=achieved,
    )


def test_troubled_established_org_hand_computed(model: ScoreModel) -> None:
    health = score(troubled_state(), NOW, model)

    # tenure 200 days: "established" (weights .30 .25 .10 .20 .15), keep = 1
    # engagement: silent 16 days -> recency (30-16)/(30-2) = 0.5 -> inactivity 35*0.5 = 17.5
    #   activity 0 -> 25, logins 0 -> 20, users 0 -> 20; engagement = 100-82.5 = 17.5
    # adoption: 0 features -> 50, value actions 0 -> 50; adoption = 0
    # milestones: missing weddings_completed_10 (2, by 365d) and first_referral (1, by 365d)
    #   100 * (2*200/365 + 1*200/365) / 100 = 1.643836 -> 98.356164
    # support: open 2*3 = 6; open escalated 1*10 = 10; oldest open 10 days: (10-3)*1 = 7;
    #   sentiment 1*5 = 5; complaints .5*8 = 4; cancellation 1*40 = 40; escalations 1*5 = 5
    #   total 77 -> support 23
    # growth: 60 + 0 + 0 - min(60, 12*2) = 36
    # composite: .3*17.5 + .25*0 + .1*98.356164 + .2*23 + .15*36 = 25.085616
    assert health.segment == "established"
    assert health.components == {
        "engagement": 17.5,
        "adoption": 0.0,
        "milestones": 98.36,
        "support": 23.0,
        "growth": 36.0,
    }
    assert health.score == 25.09
    assert health.status is HealthStatus.CRITICAL
    # p = logistic(4.5 - 10*0.2509) = logistic(1.991) = 0.8798
    assert health.churn_probability == 0.8798
    assert health.risk_level is RiskLevel.CRITICAL

    impacts = {f.factor: f.impact for f in health.risk_factors}
    assert impacts == {
        "narrow_feature_adoption": -12.5,  # .25 * 50
        "shallow_usage": -12.5,  # .25 * 50
        "cancellation_request": -8.0,  # .20 * 40
        "low_activity": -7.5,  # .30 * 25
        "few_logins": -6.0,  # .30 * 20
        "few_active_users": -6.0,  # .30 * 20
        "inactivity": -5.25,  # .30 * 17.5
        "weak_commercial_momentum": -3.75,  # .15 * 25
        "contraction_signals": -3.6,  # .15 * 24
        "no_client_growth": -2.25,  # .15 * 15
        "open_escalations": -2.0,  # .20 * 10
        "unresolved_interaction_age": -1.4,  # .20 * 7
        "open_interactions": -1.2,  # .20 * 6
        "negative_sentiment": -1.0,  # .20 * 5
        "recent_escalations": -1.0,  # .20 * 5
        "complaints": -0.8,  # .20 * 4
        # missing_milestones: .10 * 1.643836 = 0.16 < 0.5, alone among the minor ones
        "minor_factors": -0.16,
    }
    assert by_factor(health)["minor_factors"].detail == (
        "1 smaller factor, under 0.5 points: missing_milestones."
    )
    ordered = [abs(f.impact) for f in health.risk_factors]
    assert ordered == sorted(ordered, reverse=True)
    # every factor is a shortfall from 100: the reported ones sum to score - 100 exactly
    assert round(factor_sum(health), 2) == round(health.score - 100, 2)
    by_name = {f.factor: f for f in health.risk_factors}
    assert by_name["inactivity"].value == 16.0
    assert by_name["open_interactions"].value == 2.0
    assert by_name["unresolved_interaction_age"].detail == (
        "The oldest open support interaction is 10.0 days old."
    )


def test_support_penalties_beyond_100_clamp_to_zero_and_factors_scale(model: ScoreModel) -> None:
    state = troubled_state()
    state.decayed["cancellation_requests"] = 2.0  # 80 -> capped at 60
    state.decayed["complaints"] = 3.0  # 24 (cap 24)
    state.open_interactions.update(
        {k: OpenInteraction(opened_at=NOW - 1 * DAY, priority="urgent") for k in "cdef"}
    )
    health = score(state, NOW, model)
    # penalties: open 6*3 = 18 -> cap 15; escalated/urgent 5*10 = 50 -> cap 30; age 7;
    # sentiment 5; complaints 24; cancellation 60; escalations 5: total 146 > 100
    # -> support 0 and each support factor scaled by 100/146 (cancellation: 60*100/146 = 41.096)
    assert health.components["support"] == 0.0
    impacts = {f.factor: f.impact for f in health.risk_factors}
    assert impacts["cancellation_request"] == round(-0.2 * 60 * 100 / 146, 2)  # -8.22
    assert impacts["open_escalations"] == round(-0.2 * 30 * 100 / 146, 2)  # -4.11
    assert factor_sum(health) == pytest.approx(health.score - 100, abs=1.0)


def test_no_support_interactions_give_full_support(model: ScoreModel) -> None:
    state = troubled_state()
    state.open_interactions.clear()
    for key in ("negative_sentiment", "complaints", "cancellation_requests", "escalations"):
        del state.decayed[key]
    assert score(state, NOW, model).components["support"] == 100.0


def test_a_cancellation_request_alone_costs_eight_points_for_an_established_org(
    model: ScoreModel,
) -> None:
    state = troubled_state()
    before = score(state, NOW, model).score
    state.decayed["cancellation_requests"] = 0.0
    after = score(state, NOW, model).score
    assert after - before == pytest.approx(8.0, abs=0.011)  # .20 weight * 40 points


def test_a_silent_org_drifts_down_as_as_of_advances(model: ScoreModel) -> None:
    state = new_state(ORG)
    for day in range(20):
        at = T0 + timedelta(days=day)
        apply_usage(state, usage(UsageType.LOGIN, at, user=UUID(int=day % 3)), model)
        apply_usage(state, usage(UsageType.CLIENT_ADDED, at), model)
    last = NOW + 19 * DAY
    scores = [score(state, last + d * DAY, model).score for d in (0, 3, 10, 20, 40, 60)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] - scores[-1] > 30


def test_churn_probability_hand_computed(model: ScoreModel) -> None:
    # a - b*s/100 - c*trend with a=4.5, b=10, c=3
    assert churn_probability(45.0, None, model) == pytest.approx(0.5)  # logistic(0)
    # logistic(4.5 - 4.5 + 3*0.2) = logistic(0.6) = 0.645656
    assert churn_probability(45.0, -20.0, model) == pytest.approx(0.645656, abs=1e-6)
    # logistic(4.5 - 9) = logistic(-4.5) = 0.010987
    assert churn_probability(90.0, 0.0, model) == pytest.approx(0.010987, abs=1e-6)


def test_changes_use_the_oldest_daily_score_within_each_window(model: ScoreModel) -> None:
    today = int(NOW // DAY)
    state = new_state(ORG)
    state.daily_scores = {
        str(today - 31): 99.0,  # outside both windows
        str(today - 30): 90.0,  # oldest within 30 days
        str(today - 8): 85.0,
        str(today - 7): 80.0,  # oldest within 7 days
        str(today - 1): 75.0,
        str(today): 74.0,  # today is not a reference
    }
    assert score_changes(state, NOW + 3600, 70.0) == (-10.0, -20.0)
    state.daily_scores = {str(today): 74.0}
    assert score_changes(state, NOW, 70.0) == (None, None)


def test_falling_trend_raises_churn_probability(model: ScoreModel) -> None:
    state = troubled_state()
    flat = score(state, NOW, model)
    today = int(NOW // DAY)
    state.daily_scores = {str(today - 20): 60.0}
    falling = score(state, NOW, model)
    assert falling.score == flat.score
    assert falling.change_30d == round(flat.score - 60.0, 2)
    # trend -0.3491: logistic(1.991 + 3*0.3491) = logistic(3.0383) = 0.9543
    assert falling.churn_probability == pytest.approx(
        1 / (1 + math.exp(-(4.5 - 10 * 0.2509 + 3 * 0.3491))), abs=1e-4
    )
    assert falling.churn_probability > flat.churn_probability


def test_record_score_keeps_31_days_and_last_score(model: ScoreModel) -> None:
    state = new_state(ORG)
    health = score(state, NOW, model)
    for day in range(40):
        record_score(state, health, NOW + day * DAY + 10)
    days = sorted(int(k) for k in state.daily_scores)
    newest = int((NOW + 39 * DAY) // DAY)
    assert days == list(range(newest - 30, newest + 1))
    assert state.last_score == health.score
    assert state.last_scored_at == NOW + 39 * DAY + 10


def test_score_is_pure(model: ScoreModel) -> None:
    from healthscore.core.scoring.state import encode_state

    state = troubled_state()
    raw = encode_state(state)
    first = score(state, NOW, model)
    assert encode_state(state) == raw
    assert score(state, NOW, model) == first


def test_minor_factors_are_folded_into_one_entry(model: ScoreModel) -> None:
    state = new_state(ORG)
    apply_usage(state, usage(UsageType.LOGIN, T0, user=uuid4()), model)
    health = score(state, NOW + DAY, model)
    names = [f.factor for f in health.risk_factors]
    # growth shortfalls (.10 * 25, .10 * 15) are big enough to name; the small
    # engagement/adoption shortfalls under grace are folded together
    assert names[:2] == ["weak_commercial_momentum", "no_client_growth"]
    assert names.count("minor_factors") == 1
    assert all(abs(f.impact) >= 0.5 for f in health.risk_factors if f.factor != "minor_factors")
    assert by_factor(health)["minor_factors"].detail.startswith(
        f"{by_factor(health)['minor_factors'].value:.0f} smaller factors together, each under 0.5"
    )
    assert round(factor_sum(health), 2) == round(health.score - 100, 2)
