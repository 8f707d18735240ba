"""Milestones derived from usage: each once, thresholds on running totals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from healthscore.contracts.enums import MilestoneType, RewardType, UsageType
from healthscore.core.events import UsageEvent
from healthscore.core.milestones import THRESHOLDS, MilestoneCrossing, crossed
from healthscore.core.scoring.aggregate import apply_usage, new_state
from healthscore.core.scoring.model import ScoreModel, default_model
from healthscore.core.scoring.state import OrganizationState, encode_state

ORG = UUID("0f6f3c1e-8a8e-4c55-9a3e-6c4a1b2d3e4f")
T0 = datetime(2026, 5, 1, 9, tzinfo=UTC)
M = MilestoneType


@pytest.fixture(scope="module")
def model() -> ScoreModel:
    return default_model()


def usage(kind: UsageType, *, quantity: int = 1, minutes: int = 0) -> UsageEvent:
    return UsageEvent(
        event_id=uuid4(),
        organization_id=ORG,
        type=kind,
        occurred_at=T0 + timedelta(minutes=minutes),
        quantity=quantity,
    )


def kinds(crossings: list[MilestoneCrossing]) -> list[MilestoneType]:
    return [c.milestone_type for c in crossings]


FIRST_OF_TYPE = [
    (UsageType.ONBOARDING_COMPLETED, M.ONBOARDING_COMPLETED),
    (UsageType.PROFILE_COMPLETED, M.PROFILE_COMPLETED),
    (UsageType.INTEGRATION_CONNECTED, M.INTEGRATION_CONNECTED),
    (UsageType.TEAM_MEMBER_INVITED, M.TEAM_MEMBER_INVITED),
    (UsageType.SUBSCRIPTION_UPGRADED, M.SUBSCRIPTION_UPGRADED),
    (UsageType.CLIENT_ADDED, M.FIRST_CLIENT_ADDED),
    (UsageType.FORM_CREATED, M.FIRST_FORM_CREATED),
    (UsageType.FORM_SUBMITTED, M.FIRST_FORM_SUBMITTED),
    (UsageType.JOURNEY_LAUNCHED, M.FIRST_JOURNEY_LAUNCHED),
    (UsageType.EMAIL_SENT, M.FIRST_EMAIL_SENT),
    (UsageType.PAYMENT_RECEIVED, M.FIRST_PAYMENT_RECEIVED),
    (UsageType.CONTRACT_SIGNED, M.FIRST_CONTRACT_SIGNED),
    (UsageType.REVIEW_RECEIVED, M.FIRST_REVIEW_RECEIVED),
    (UsageType.REFERRAL_MADE, M.FIRST_REFERRAL),
]


def test_every_contract_milestone_has_a_rule() -> None:
    ruled = {m for rules in THRESHOLDS.values() for m, _threshold in rules}
    assert ruled == set(MilestoneType)
    assert len(ruled) == 17


@pytest.mark.parametrize(("kind", "milestone"), FIRST_OF_TYPE)
def test_first_event_of_a_type_crosses_its_milestone_once(
    model: ScoreModel, kind: UsageType, milestone: MilestoneType
) -> None:
    state = new_state(str(ORG))
    event = usage(kind)
    first = apply_usage(state, event, model)
    assert kinds(first) == [milestone]
    assert first[0].achieved_at == event.occurred_at.timestamp()
    assert first[0].event_id == str(event.event_id)
    assert state.milestones == {milestone.value: event.occurred_at.timestamp()}
    assert apply_usage(state, usage(kind, minutes=5), model) == []


def test_rewards_and_impacts_come_from_the_config(model: ScoreModel) -> None:
    state = new_state(str(ORG))
    (referral,) = apply_usage(state, usage(UsageType.REFERRAL_MADE), model)
    assert referral.reward_type is RewardType.ACCOUNT_CREDIT
    assert referral.reward_value == 50.0
    assert referral.health_score_impact == model.milestone_rules[M.FIRST_REFERRAL].impact
    (profile,) = apply_usage(state, usage(UsageType.PROFILE_COMPLETED), model)
    assert profile.reward_type is None and profile.reward_value is None


def test_one_big_quantity_crosses_all_client_thresholds_at_once(model: ScoreModel) -> None:
    state = new_state(str(ORG))
    crossings = apply_usage(state, usage(UsageType.CLIENT_ADDED, quantity=60), model)
    assert kinds(crossings) == [M.FIRST_CLIENT_ADDED, M.CLIENTS_10, M.CLIENTS_50]
    assert crossings[2].reward_type is RewardType.BADGE
    assert apply_usage(state, usage(UsageType.CLIENT_ADDED, quantity=60), model) == []


def test_client_thresholds_follow_the_running_total(model: ScoreModel) -> None:
    state = new_state(str(ORG))
    assert kinds(apply_usage(state, usage(UsageType.CLIENT_ADDED, quantity=4), model)) == [
        M.FIRST_CLIENT_ADDED
    ]
    assert apply_usage(state, usage(UsageType.CLIENT_ADDED, quantity=5), model) == []  # 9
    assert kinds(apply_usage(state, usage(UsageType.CLIENT_ADDED), model)) == [M.CLIENTS_10]
    assert apply_usage(state, usage(UsageType.CLIENT_ADDED, quantity=39), model) == []  # 49
    assert kinds(apply_usage(state, usage(UsageType.CLIENT_ADDED, quantity=2), model)) == [
        M.CLIENTS_50
    ]


def test_ten_weddings_complete_the_wedding_milestone(model: ScoreModel) -> None:
    state = new_state(str(ORG))
    for minute in range(9):
        assert apply_usage(state, usage(UsageType.WEDDING_COMPLETED, minutes=minute), model) == []
    tenth = apply_usage(state, usage(UsageType.WEDDING_COMPLETED, minutes=9), model)
    assert kinds(tenth) == [M.WEDDINGS_COMPLETED_10]


def test_events_without_milestones_cross_nothing(model: ScoreModel) -> None:
    state = new_state(str(ORG))
    for kind in (UsageType.LOGIN, UsageType.FEATURE_USED, UsageType.SEAT_REMOVED,
                 UsageType.SUBSCRIPTION_DOWNGRADED, UsageType.DATA_EXPORT_REQUESTED):  # fmt: skip
        assert apply_usage(state, usage(kind), model) == []
    assert state.milestones == {}


def test_achieved_milestones_are_never_reported_again(model: ScoreModel) -> None:
    state = OrganizationState(
        organization_id=str(ORG),
        totals={"client_added": 12},
        milestones={M.FIRST_CLIENT_ADDED.value: 1.0, M.CLIENTS_10.value: 2.0},
    )
    event = usage(UsageType.CLIENT_ADDED, quantity=40)
    state.totals["client_added"] += 40  # crossed() reads totals after the event's quantity
    assert kinds(crossed(state, event, model)) == [M.CLIENTS_50]


def test_crossed_is_pure(model: ScoreModel) -> None:
    state = OrganizationState(organization_id=str(ORG), totals={"email_sent": 1})
    raw = encode_state(state)
    assert kinds(crossed(state, usage(UsageType.EMAIL_SENT), model)) == [M.FIRST_EMAIL_SENT]
    assert encode_state(state) == raw
