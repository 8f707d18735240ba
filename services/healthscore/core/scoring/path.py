"""The path to healthy: the fewest actions that bring an organization out of risk; pure.

"Out of risk" is what ends an alert episode: a churn probability below
`alerts.exit_probability`. The actions are of three kinds, each valued by the
model itself:

- close an open support interaction (each one by its id, in the text and as
  `interaction_id`): the score is
  recomputed with it closed, so its value includes the open-interaction,
  escalation, unresolved-age and (v1) ceiling points it holds;
- reach a missing success milestone: recomputed with the milestone achieved;
- undo a behavioural shortfall (inactivity, activity below the organization's
  usual level, few logins, ...): worth the factor's impact as the alert lists it
  beside the score (what it costs the composite, in the hundredths apportioned so
  the list sums to score - 100), up to the
  ceiling a cancellation request or an escalation holds the score under
  (`score_ceiling`): points above it never come, so under a ceiling that holds
  the score these actions are worth nothing until time lifts it.

Signals that only time heals (recent complaints, negative sentiment, past
escalations and cancellation requests, contraction) are not actions. An empty path
says why (`no_path_reason`): out of risk already, held under a ceiling such a signal
sets, or at risk by such signals alone. The
search is greedy on the marginal value, recomputed after every choice; since
the values add up (up to the support and growth clamps), the largest-first
order reaches the threshold with the fewest actions. At most `limit` actions;
if even those do not reach the threshold, the list says how far they go.

Where a clamp makes an action worth more once an earlier one is taken (the cap on
the open-escalation penalty: closing the first of three escalations adds little,
the second much), the actions out of order share their points equally with those
before them until the list is largest first again (pool adjacent violators): the
list then says they go together, and its sum is still what the actions add.
"""

from __future__ import annotations

import msgspec

from healthscore.core.enums import MilestoneType, NoPathReason
from healthscore.core.scoring.model import ScoreModel
from healthscore.core.scoring.results import HealthAction, HealthScore
from healthscore.core.scoring.score import (
    churn_probability,
    score,
    score_ceiling,
    score_with_impacts,
)
from healthscore.core.scoring.state import OrganizationState

MAX_ACTIONS = 5
MIN_VALUE = 0.05  # score points below which an action is not worth naming

_BEHAVIOUR: dict[str, str] = {
    "inactivity": "use the product again",
    "activity_decline": "bring product activity back to its usual level",
    "low_activity": "use the product more",
    "few_logins": "get the team logging in regularly",
    "few_logins_per_user": "get each active user logging in regularly",
    "login_decline": "bring logins back to their usual level",
    "few_active_users": "bring more users back",
    "narrow_feature_adoption": "use more of the product's features",
    "narrowing_feature_use": "use the features the team used before again",
    "shallow_usage": "do more work in the product (clients, forms, emails, payments)",
    "weak_commercial_momentum": "take payments, upgrade, refer or get reviews",
    "no_client_growth": "add clients",
}


def _with(
    state: OrganizationState, closed: frozenset[str], reached: frozenset[str], as_of: float
) -> OrganizationState:
    if not closed and not reached:
        return state
    milestones = dict(state.milestones)
    for name in reached:
        milestones[name] = as_of
    return msgspec.structs.replace(
        state,
        open_interactions={k: v for k, v in state.open_interactions.items() if k not in closed},
        milestones=milestones,
    )


def _out_of_risk(base: HealthScore, value: float, model: ScoreModel) -> bool:
    """Whether a score of `value`, where `base` is now, is below the recovery threshold."""
    reference = base.score - base.change_30d if base.change_30d is not None else None
    change = None if reference is None else value - reference
    return churn_probability(value, change, model) < model.alerts.exit_probability


def no_path_reason(state: OrganizationState, as_of: float, model: ScoreModel) -> NoPathReason:
    """Why `path_to_healthy(state, as_of, model)` is empty (call it only then)."""
    base = score(state, as_of, model)
    if _out_of_risk(base, base.score, model):
        return NoPathReason.OUT_OF_RISK
    # a ceiling that holds the score is a risk factor of its own (score.py)
    if any(risk.factor.startswith("ceiling_") for risk in base.risk_factors):
        return NoPathReason.HELD_BY_CEILING
    return NoPathReason.TIME_HEALS_ONLY


def path_to_healthy(
    state: OrganizationState, as_of: float, model: ScoreModel, limit: int = MAX_ACTIONS
) -> list[HealthAction]:
    """The fewest actions (largest first) after which the churn probability falls
    below alerts.exit_probability; [] when it already is. Reads `state`, changes
    nothing."""
    base, own = score_with_impacts(state, as_of, model)
    # a behavioural factor's impact does not depend on the support or milestone
    # components (the composite is a weighted mean): the action is worth what the
    # alert lists beside it, to the hundredth
    listed = {risk.factor: risk.impact for risk in base.risk_factors}

    def out_of_risk(value: float) -> bool:
        return _out_of_risk(base, value, model)

    if out_of_risk(base.score):
        return []
    closed: frozenset[str] = frozenset()
    reached: frozenset[str] = frozenset()
    undone: dict[str, float] = {}
    current = base
    # the state with the actions so far taken, which `current` scores
    now = _with(state, closed, reached, as_of)
    actions: list[HealthAction] = []

    def reachable(changed: OrganizationState, scored: float, behaviour: float) -> float:
        """The score of `changed` (scored `scored`) with `behaviour` points of behavioural
        shortfalls undone: they raise the composite, which the ceilings still hold."""
        if behaviour == 0.0:
            return scored
        return min(scored + behaviour, score_ceiling(changed, as_of, model))

    while len(actions) < limit:
        behaviour = sum(undone.values())
        level = reachable(now, current.score, behaviour)
        best: tuple[float, str, str, str] | None = None  # (gain, kind, key, factor)
        for key, interaction in state.open_interactions.items():
            if key in closed:
                continue
            changed = _with(state, closed | {key}, reached, as_of)
            after = score(changed, as_of, model, False)
            gain = reachable(changed, after.score, behaviour) - level
            factor = "open_escalations" if interaction.strong else "open_interactions"
            if best is None or gain > best[0]:
                best = (gain, "close", key, factor)
        for milestone in MilestoneType:
            name = milestone.value
            if name in state.milestones or name in reached:
                continue
            changed = _with(state, closed, reached | {name}, as_of)
            after = score(changed, as_of, model, False)
            gain = reachable(changed, after.score, behaviour) - level
            if best is None or gain > best[0]:
                best = (gain, "reach", name, "missing_milestones")
        for risk in current.risk_factors:  # the factors reported on their own
            if risk.factor in _BEHAVIOUR and risk.factor not in undone:
                alone = listed.get(risk.factor, own[risk.factor])
                gain = reachable(now, current.score, behaviour - alone) - level
                if best is None or gain > best[0]:
                    best = (gain, "undo", risk.factor, risk.factor)
        if best is None or best[0] < MIN_VALUE:
            break
        gain, kind, key, factor = best
        about: str | None = None
        if kind == "close":
            closed = closed | {key}
            interaction_type = state.open_interactions[key].interaction_type or "interaction"
            # the id stays in the text too: consumers built before `interaction_id` read it
            text = f"close {interaction_type.replace('_', ' ')} {key}"
            about = key
        elif kind == "reach":
            reached = reached | {key}
            text = f"reach the milestone {key}"
        else:
            # the factor's whole impact comes back to the composite, whatever the
            # ceiling lets through of it now (a later action may lift the ceiling)
            undone[key] = -listed.get(key, own[key])
            text = _BEHAVIOUR[key]
        actions.append(HealthAction(action=text, factor=factor, impact=gain, interaction_id=about))
        # a behavioural factor's impact does not depend on the support or milestone
        # components (the composite is a weighted mean), so `undone` keeps its value
        now = _with(state, closed, reached, as_of)
        current, own = score_with_impacts(now, as_of, model)
        if out_of_risk(reachable(now, current.score, sum(undone.values()))):
            break
    return _largest_first(actions)


def _largest_first(actions: list[HealthAction]) -> list[HealthAction]:
    """`actions` in their order, each valued at the mean of its run of actions worth
    more together than apart (the module's docstring); impacts rounded."""
    runs: list[tuple[float, int]] = []  # (points, actions) of each run, in order
    for action in actions:
        points, count = action.impact, 1
        while runs and runs[-1][0] / runs[-1][1] < points / count:
            before, many = runs.pop()
            points, count = points + before, count + many
        runs.append((points, count))
    shares = [points / count for points, count in runs for _ in range(count)]
    return [
        msgspec.structs.replace(action, impact=round(share, 2))
        for action, share in zip(actions, shares, strict=True)
    ]
