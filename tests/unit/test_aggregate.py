"""O(1) aggregate updates: times, decayed sums (in order and out of order), bounded maps."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TypedDict, Unpack
from uuid import UUID, uuid4

import msgspec
import pytest

from healthscore.contracts.enums import (
    Channel,
    InteractionType,
    Outcome,
    Priority,
    Sentiment,
    SupportAction,
    UsageType,
)
from healthscore.core.events import SupportEvent, UsageEvent
from healthscore.core.interactions import InteractionRecord, merge_interaction
from healthscore.core.scoring.aggregate import (
    MAX_FEATURES,
    MAX_RECENT_EVENT_IDS,
    MAX_USERS,
    apply_interaction,
    apply_usage,
    decayed_value,
    new_state,
)
from healthscore.core.scoring.model import DAY, ScoreModel, default_model
from healthscore.core.scoring.state import OrganizationState

ORG = UUID("7c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e")
T0 = datetime(2026, 6, 1, tzinfo=UTC)
S0 = T0.timestamp()


@pytest.fixture(scope="module")
def model() -> ScoreModel:
    return default_model()


def usage(
    kind: UsageType,
    days: float = 0.0,
    *,
    quantity: int = 1,
    user: UUID | None = None,
    feature: str | None = None,
) -> UsageEvent:
    return UsageEvent(
        event_id=uuid4(),
        organization_id=ORG,
        user_id=user,
        type=kind,
        occurred_at=T0 + timedelta(days=days),
        quantity=quantity,
        feature=feature,
    )


def test_new_state_is_empty() -> None:
    state = new_state("org-1")
    assert state.organization_id == "org-1"
    assert state.event_count == 0 and state.decayed == {} and state.decay_ref is None


def test_two_logins_a_week_apart_hand_computed(model: ScoreModel) -> None:
    state = new_state(str(ORG))
    apply_usage(state, usage(UsageType.LOGIN, 0), model)
    apply_usage(state, usage(UsageType.LOGIN, 7), model)
    # activity (half-life 7 d): 1 * 2**(-7/7) + 1 = 1.5
    # logins  (half-life 14 d): 1 * 2**(-7/14) + 1 = 1.707107
    assert state.decay_ref == S0 + 7 * DAY
    assert state.decayed["activity"] == pytest.approx(1.5)
    assert state.decayed["logins"] == pytest.approx(1 + 2**-0.5)
    # read 14 days after the ref: activity 1.5 * 2**(-2) = 0.375
    assert decayed_value(state, "activity", S0 + 21 * DAY, model) == pytest.approx(0.375)
    # reading before the ref never amplifies
    assert decayed_value(state, "activity", S0, model) == pytest.approx(1.5)
    assert state.first_event_at == S0 and state.last_event_at == S0 + 7 * DAY
    assert state.last_login_at == S0 + 7 * DAY and state.last_usage_at == S0 + 7 * DAY
    assert state.event_count == 2
    assert state.totals == {"login": 2}


def test_a_late_event_is_decayed_to_the_ref_without_moving_it(model: ScoreModel) -> None:
    in_order = new_state(str(ORG))
    late = new_state(str(ORG))
    events = [usage(UsageType.LOGIN, 0), usage(UsageType.FORM_CREATED, 3, quantity=4),
              usage(UsageType.LOGIN, 10)]  # fmt: skip
    for event in events:
        apply_usage(in_order, event, model)
    for event in (events[2], events[0], events[1]):
        apply_usage(late, event, model)
    assert late.decay_ref == in_order.decay_ref == S0 + 10 * DAY
    assert late.decayed.keys() == in_order.decayed.keys()
    for signal, value in in_order.decayed.items():
        assert late.decayed[signal] == pytest.approx(value)
    # value_actions (half-life 21 d): 4 * 2**(-7/21) = 3.174802
    assert late.decayed["value_actions"] == pytest.approx(4 * 2 ** (-7 / 21))
    assert late.first_event_at == S0 and late.last_event_at == S0 + 10 * DAY
    assert late.last_usage_at == S0 + 10 * DAY  # monotone


def test_signal_weights_follow_the_config(model: ScoreModel) -> None:
    state = new_state(str(ORG))
    apply_usage(state, usage(UsageType.CLIENT_ADDED, quantity=500), model)  # caps 20 / 50
    apply_usage(state, usage(UsageType.SEAT_REMOVED, quantity=3), model)  # 1 * 3
    apply_usage(state, usage(UsageType.DATA_EXPORT_REQUESTED), model)  # 2 (a churn signal)
    apply_usage(state, usage(UsageType.SUBSCRIPTION_DOWNGRADED, quantity=50), model)  # 3 * 10
    apply_usage(state, usage(UsageType.PAYMENT_RECEIVED, quantity=9), model)  # 1, not quantity
    apply_usage(state, usage(UsageType.SUBSCRIPTION_UPGRADED), model)  # 3
    assert state.decayed == {
        "activity": 6.0,  # one per event, not per quantity
        "activity_baseline": 6.0,  # the same events, for activity_decline
        "activity_recent": 6.0,
        "value_actions": 20.0 + 9.0,  # min(500, 20) + min(9, 20)
        "clients_added": 50.0,
        "negative_signals": 3.0 + 2.0 + 30.0,
        "positive_commercial": 1.0 + 3.0,
    }


def test_recent_event_ids_ring_keeps_the_newest_20(model: ScoreModel) -> None:
    state = new_state(str(ORG))
    events = [usage(UsageType.LOGIN, i / 100) for i in range(25)]
    for event in events:
        apply_usage(state, event, model)
    assert len(state.recent_event_ids) == MAX_RECENT_EVENT_IDS
    assert state.recent_event_ids == [str(e.event_id) for e in events[-20:]]


def test_users_and_features_are_tracked_and_bounded(model: ScoreModel) -> None:
    state = new_state(str(ORG))
    user = uuid4()
    apply_usage(state, usage(UsageType.LOGIN, 1, user=user), model)
    apply_usage(state, usage(UsageType.LOGIN, 0, user=user), model)  # older: last seen stays
    assert state.users == {str(user): S0 + DAY}
    apply_usage(state, usage(UsageType.FEATURE_USED, 2, feature="forms"), model)
    apply_usage(state, usage(UsageType.FEATURE_USED, 1, feature="forms"), model)
    assert state.features == {"forms": [2.0, S0 + 2 * DAY]}

    for i in range(MAX_USERS + 5):
        apply_usage(state, usage(UsageType.LOGIN, 2 + i / 1000, user=UUID(int=i + 1)), model)
    assert len(state.users) <= MAX_USERS
    assert str(UUID(int=MAX_USERS + 5)) in state.users  # the newest survive
    for i in range(MAX_FEATURES + 3):
        apply_usage(state, usage(UsageType.FEATURE_USED, 3 + i / 1000, feature=f"f{i}"), model)
    assert len(state.features) == MAX_FEATURES
    assert "forms" not in state.features  # the least recently used went first
    assert f"f{MAX_FEATURES + 2}" in state.features


def test_a_feature_is_one_feature_however_its_producer_spells_it(model: ScoreModel) -> None:
    """Review 33 L5: "Reports", "reports " and "REPORTS" counted as three features (the
    breadth of adoption the score reads), and "café" sent decomposed as another; a name
    of spaces counted as a feature."""
    state = new_state("o")
    spellings = ["Reports", "reports ", "REPORTS", "Cafe\u0301", "café", "   "]
    for i, feature in enumerate(spellings):
        apply_usage(state, usage(UsageType.FEATURE_USED, 1 + i / 100, feature=feature), model)
    assert sorted(state.features) == ["café", "reports"]
    assert state.features["reports"][0] == 3.0 and state.features["café"][0] == 2.0


def test_users_not_seen_for_90_days_are_pruned(model: ScoreModel) -> None:
    state = new_state(str(ORG))
    old = uuid4()
    apply_usage(state, usage(UsageType.LOGIN, 0, user=old), model)
    for i in range(300):  # passes a prune cadence (every 256 events)
        apply_usage(state, usage(UsageType.LOGIN, 100 + i / 1000, user=UUID(int=1)), model)
    assert str(old) not in state.users
    assert str(UUID(int=1)) in state.users


def test_apply_usage_returns_and_records_milestones_once(model: ScoreModel) -> None:
    state = new_state(str(ORG))
    event = usage(UsageType.ONBOARDING_COMPLETED, 2)
    (crossing,) = apply_usage(state, event, model)
    assert state.milestones == {"onboarding_completed": S0 + 2 * DAY}
    assert crossing.event_id == str(event.event_id)
    assert apply_usage(state, usage(UsageType.ONBOARDING_COMPLETED, 3), model) == []


# --- support ------------------------------------------------------------------------------

INTERACTION = UUID("3b4c5d6e-7f80-4a1b-9c2d-3e4f5a6b7c8d")


class SupportFields(TypedDict, total=False):
    """The optional fields of a SupportEvent."""

    interaction_type: InteractionType | None
    channel: Channel | None
    priority: Priority | None
    sentiment: Sentiment | None
    outcome: Outcome | None
    assigned_to: UUID | None
    subject: str | None
    follow_up_at: datetime | None


def support(
    action: SupportAction, days: float, n: int, **fields: Unpack[SupportFields]
) -> SupportEvent:
    if action is SupportAction.OPENED:
        fields.setdefault("interaction_type", InteractionType.TECHNICAL_SUPPORT)
        fields.setdefault("channel", Channel.CHAT)
    return SupportEvent(
        event_id=UUID(int=n),
        organization_id=ORG,
        interaction_id=INTERACTION,
        action=action,
        occurred_at=T0 + timedelta(days=days),
        **fields,
    )


class Desk:
    """Merges support events and applies them to one state, as the pipeline does."""

    def __init__(self, model: ScoreModel) -> None:
        self.model = model
        self.state: OrganizationState = new_state(str(ORG))
        self.record: InteractionRecord | None = None

    def apply(self, event: SupportEvent) -> None:
        after = merge_interaction(self.record, event)
        apply_interaction(self.state, self.record, after, event, self.model)
        self.record = after


def test_open_interactions_follow_the_status(model: ScoreModel) -> None:
    desk = Desk(model)
    desk.apply(support(SupportAction.OPENED, 1, 1, priority=Priority.URGENT))
    (open_one,) = desk.state.open_interactions.values()
    assert open_one.opened_at == S0 + DAY
    assert open_one.priority == "urgent" and not open_one.escalated
    desk.apply(support(SupportAction.RESOLVED, 2, 2))
    assert desk.state.open_interactions == {}
    desk.apply(support(SupportAction.REOPENED, 3, 3, outcome=Outcome.ESCALATED))
    assert desk.state.open_interactions[str(INTERACTION)].escalated
    assert desk.state.event_count == 3
    assert desk.state.last_usage_at is None  # support events are not product usage
    assert desk.state.last_event_at == S0 + 3 * DAY


def test_negative_sentiment_weights_very_negative_more(model: ScoreModel) -> None:
    desk = Desk(model)
    desk.apply(support(SupportAction.OPENED, 0, 1, sentiment=Sentiment.NEGATIVE))
    desk.apply(support(SupportAction.UPDATED, 0, 2, sentiment=Sentiment.VERY_NEGATIVE))
    desk.apply(support(SupportAction.UPDATED, 0, 3, sentiment=Sentiment.POSITIVE))
    assert desk.state.decayed["negative_sentiment"] == 1.0 + 2.0


def test_complaints_cancellations_and_escalations_count_once_per_interaction(
    model: ScoreModel,
) -> None:
    desk = Desk(model)
    desk.apply(support(SupportAction.OPENED, 0, 1, interaction_type=InteractionType.COMPLAINT))
    desk.apply(support(SupportAction.UPDATED, 1, 2, interaction_type=InteractionType.COMPLAINT))
    desk.apply(support(SupportAction.UPDATED, 1, 3, outcome=Outcome.ESCALATED))
    desk.apply(support(SupportAction.UPDATED, 1, 4, priority=Priority.HIGH))
    assert desk.state.decayed["complaints"] == pytest.approx(2 ** (-1 / 45))  # 45 d half-life
    assert desk.state.decayed["escalations"] == 1.0
    desk.apply(support(SupportAction.UPDATED, 2, 5,
                       interaction_type=InteractionType.CANCELLATION_REQUEST))  # fmt: skip
    desk.apply(support(SupportAction.UPDATED, 2, 6, outcome=Outcome.ESCALATED))
    assert desk.state.decayed["cancellation_requests"] == 1.0
    assert desk.state.decayed["escalations"] == pytest.approx(2 ** (-1 / 45))  # not again


def test_a_stale_complaint_counts_once_from_its_own_time(model: ScoreModel) -> None:
    """The interaction was a complaint at day 1 even if a newer event reclassified it:
    the signal counts, decayed from its own time, and the type stays the newer one's."""
    desk = Desk(model)
    desk.apply(support(SupportAction.OPENED, 5, 1))
    desk.apply(support(SupportAction.UPDATED, 1, 2, interaction_type=InteractionType.COMPLAINT))
    assert desk.record is not None and desk.record.interaction_type == "technical_support"
    assert desk.state.decayed["complaints"] == pytest.approx(2 ** (-4 / 45))
    desk.apply(support(SupportAction.UPDATED, 6, 3, interaction_type=InteractionType.COMPLAINT))
    assert desk.state.decayed["complaints"] == pytest.approx(2 ** (-5 / 45))  # not again


def test_a_type_that_flips_back_and_forth_signals_once(model: ScoreModel) -> None:
    """A producer that flips an interaction's type (or its escalation) back and forth
    must not add the signal at every return: one interaction, one complaint."""
    desk = Desk(model)
    desk.apply(support(SupportAction.OPENED, 0, 1, interaction_type=InteractionType.COMPLAINT))
    kinds = [InteractionType.BILLING_INQUIRY, InteractionType.COMPLAINT] * 10
    kinds += [InteractionType.CANCELLATION_REQUEST, InteractionType.BILLING_INQUIRY] * 5
    for n, kind in enumerate(kinds, start=2):
        desk.apply(support(SupportAction.UPDATED, 0, n, interaction_type=kind))
    for n, outcome in enumerate([Outcome.ESCALATED, Outcome.NO_ACTION] * 5, start=100):
        desk.apply(support(SupportAction.UPDATED, 0, n, outcome=outcome))
    assert desk.state.decayed["complaints"] == 1.0
    assert desk.state.decayed["cancellation_requests"] == 1.0
    assert desk.state.decayed["escalations"] == 1.0
    assert desk.record is not None
    # the memory is the interaction's own row: a later event that finds it stored
    # (another batch, another replica) adds nothing either
    stored = msgspec.json.decode(msgspec.json.encode(desk.record), type=InteractionRecord)
    again = Desk(model)
    again.record = stored
    again.apply(support(SupportAction.UPDATED, 1, 500, interaction_type=InteractionType.COMPLAINT))
    assert "complaints" not in again.state.decayed


def test_a_row_stored_before_the_signal_memory_does_not_signal_again(model: ScoreModel) -> None:
    desk = Desk(model)
    desk.apply(support(SupportAction.OPENED, 0, 1, interaction_type=InteractionType.COMPLAINT,
                       outcome=Outcome.ESCALATED))  # fmt: skip
    assert desk.record is not None
    legacy = msgspec.structs.replace(
        desk.record,
        field_event_times={
            k: v for k, v in desk.record.field_event_times.items() if not k.startswith("_")
        },
    )
    later = Desk(model)
    later.record = legacy
    later.apply(support(SupportAction.UPDATED, 1, 2, interaction_type=InteractionType.COMPLAINT))
    later.apply(support(SupportAction.UPDATED, 1, 3, priority=Priority.HIGH))
    assert later.state.decayed == {}


def test_decay_is_exponential_with_the_configured_half_life(model: ScoreModel) -> None:
    state = new_state(str(ORG))
    apply_usage(state, usage(UsageType.LOGIN, 0), model)
    # 30 days of activity half-life 7: 2**(-30/7)
    assert decayed_value(state, "activity", S0 + 30 * DAY, model) == pytest.approx(
        math.exp2(-30 / 7)
    )
