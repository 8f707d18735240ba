"""Success milestones derived from usage (the contract's 17), pure.

`crossed` is called by `scoring.aggregate.apply_usage` after the event's
quantity has been added to `state.totals`; it reports each milestone whose
threshold the running total of the event's usage type has now reached and that
the organization has not achieved before (`state.milestones`). A single event
may cross several thresholds at once (60 clients added in one event cross
first_client_added, clients_10 and clients_50). Impact and reward of each
milestone come from the model config.

Totals are sums, so the *set* of milestones reached does not depend on arrival
order; with late events, the one credited (its time and id) is the event whose
arrival reached the threshold, not necessarily the earliest by occurred_at.
"""

from __future__ import annotations

import msgspec

from healthscore.core.enums import MilestoneType, RewardType, UsageType
from healthscore.core.events import UsageEvent
from healthscore.core.scoring.model import ScoreModel
from healthscore.core.scoring.state import OrganizationState

M = MilestoneType
U = UsageType

# usage type -> (milestone, threshold on the cumulative quantity of that type), lowest first
THRESHOLDS: dict[str, tuple[tuple[MilestoneType, int], ...]] = {
    U.ONBOARDING_COMPLETED: ((M.ONBOARDING_COMPLETED, 1),),
    U.PROFILE_COMPLETED: ((M.PROFILE_COMPLETED, 1),),
    U.INTEGRATION_CONNECTED: ((M.INTEGRATION_CONNECTED, 1),),
    U.TEAM_MEMBER_INVITED: ((M.TEAM_MEMBER_INVITED, 1),),
    U.SUBSCRIPTION_UPGRADED: ((M.SUBSCRIPTION_UPGRADED, 1),),
    U.CLIENT_ADDED: ((M.FIRST_CLIENT_ADDED, 1), (M.CLIENTS_10, 10), (M.CLIENTS_50, 50)),
    U.FORM_CREATED: ((M.FIRST_FORM_CREATED, 1),),
    U.FORM_SUBMITTED: ((M.FIRST_FORM_SUBMITTED, 1),),
    U.JOURNEY_LAUNCHED: ((M.FIRST_JOURNEY_LAUNCHED, 1),),
    U.EMAIL_SENT: ((M.FIRST_EMAIL_SENT, 1),),
    U.PAYMENT_RECEIVED: ((M.FIRST_PAYMENT_RECEIVED, 1),),
    U.CONTRACT_SIGNED: ((M.FIRST_CONTRACT_SIGNED, 1),),
    U.REVIEW_RECEIVED: ((M.FIRST_REVIEW_RECEIVED, 1),),
    U.REFERRAL_MADE: ((M.FIRST_REFERRAL, 1),),
    U.WEDDING_COMPLETED: ((M.WEDDINGS_COMPLETED_10, 10),),
}


class MilestoneCrossing(msgspec.Struct, frozen=True):
    milestone_type: MilestoneType
    achieved_at: float  # occurred_at of the event that crossed it (POSIX seconds)
    event_id: str
    health_score_impact: float  # the milestone's `impact` in the model config
    reward_type: RewardType | None
    reward_value: float | None


def crossed(
    state: OrganizationState, event: UsageEvent, model: ScoreModel
) -> list[MilestoneCrossing]:
    """Milestones newly crossed by `event`; pure (reads state, changes nothing)."""
    rules = THRESHOLDS.get(event.type)
    if rules is None:
        return []
    total = state.totals.get(event.type, 0)
    result: list[MilestoneCrossing] = []
    for milestone, threshold in rules:
        if total < threshold:
            break
        if milestone in state.milestones:
            continue
        rule = model.milestone_rules[milestone]
        reward = rule.reward
        result.append(
            MilestoneCrossing(
                milestone_type=milestone,
                achieved_at=event.occurred_at.timestamp(),
                event_id=str(event.event_id),
                health_score_impact=rule.impact,
                reward_type=reward.type if reward is not None else None,
                reward_value=reward.value if reward is not None else None,
            )
        )
    return result
