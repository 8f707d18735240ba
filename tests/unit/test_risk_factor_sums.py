"""The risk factors explain the score exactly: all the shortfalls together sum to
score - 100, whatever clamps the components and the composite (a component at 0, the
support and growth caps and their scaling, the ceilings), under every shipped model."""

from __future__ import annotations

from unittest.mock import patch
from uuid import UUID

import msgspec
import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from healthscore.contracts.enums import MilestoneType
from healthscore.core.scoring import path
from healthscore.core.scoring.model import DAY, SIGNALS, ScoreModel, parse_model, shipped_models
from healthscore.core.scoring.score import (
    MIN_REPORTED_IMPACT,
    _apportion,
    score,
    score_ceiling,
    score_with_impacts,
)
from healthscore.core.scoring.state import OpenInteraction, OrganizationState

NOW = 1_790_000_000.0
# the score is the composite rounded to 2 decimals; the shortfalls sum to the composite
HALF_HUNDREDTH = 0.005 + 1e-9
PROPERTY = settings(max_examples=200, deadline=None)
BEHAVIOUR_FACTORS = frozenset(path._BEHAVIOUR)


def clamped(model: ScoreModel) -> ScoreModel:
    """`model` with the clamps the shipped numbers seldom reach made common: no grace,
    growth below 0 (its penalty over the baseline), support over 100 from a few
    interactions, tight ceilings."""
    config = msgspec.to_builtins(model)
    config["segments"]["grace_days"] = 0
    config["growth"].update(negative_penalty=60, negative_cap=100)
    config["support"].update(
        open_interaction_penalty=40, open_interaction_cap=100, complaint_penalty=50
    )
    config["ceilings"].update(open_cancellation_request=30, open_escalation=55)
    return parse_model(orjson.dumps(config))


SHIPPED = shipped_models()
MODELS = {
    **{version: model for version, model in SHIPPED.items()},
    **{f"{version} clamped": clamped(model) for version, model in SHIPPED.items()},
}


def between(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=low, max_value=high, allow_nan=False)


@st.composite
def states(draw: st.DrawFn) -> OrganizationState:
    tenure = draw(st.sampled_from([0.0, 0.5, 13.0, 30.0, 89.0, 90.0, 400.0]) | between(0, 500))
    first = NOW - tenure * DAY
    opened = {
        str(UUID(int=i + 1)): OpenInteraction(
            opened_at=draw(between(first, NOW)),
            interaction_type=draw(
                st.sampled_from([None, "complaint", "escalation", "cancellation_request"])
            ),
            priority=draw(st.sampled_from([None, "normal", "urgent"])),
            escalated=draw(st.booleans()),
        )
        for i in range(draw(st.integers(0, 8)))
    }
    return OrganizationState(
        organization_id="4d5e6f70-8192-4a3b-8c4d-5e6f7a8b9c0d",
        first_event_at=first,
        last_event_at=NOW,
        last_usage_at=draw(st.none() | between(first, NOW)),
        decay_ref=draw(between(first, NOW)),
        support_decay_ref=draw(st.none() | between(first, NOW)),
        decayed={
            signal: draw(st.just(0.0) | between(0, 3) | between(0, 200)) for signal in SIGNALS
        },
        users={
            str(UUID(int=i + 1)): draw(between(first - 60 * DAY, NOW))
            for i in range(draw(st.integers(0, 12)))
        },
        features={
            f"feature-{i}": [float(draw(st.integers(1, 50))), draw(between(first, NOW))]
            for i in range(draw(st.integers(0, 12)))
        },
        open_interactions=opened,
        milestones={m.value: first for m in draw(st.sets(st.sampled_from(MilestoneType)))},
    )


@pytest.mark.parametrize("name", sorted(MODELS))
@PROPERTY
@given(state=states(), later=st.sampled_from([0.0, 1.0, 20.0]) | between(0, 90))
def test_all_shortfalls_sum_to_score_minus_100(
    name: str, state: OrganizationState, later: float
) -> None:
    health, impacts = score_with_impacts(state, NOW + later * DAY, MODELS[name])
    assert all(impact <= 0 for impact in impacts.values())  # every factor is a shortfall
    assert abs(sum(impacts.values()) - (health.score - 100.0)) <= HALF_HUNDREDTH, (
        health.score,
        health.components,
        impacts,
    )


def test_the_clamped_variants_reach_the_clamps() -> None:
    """Without this, the property could hold only because no clamp was ever reached."""
    state = OrganizationState(
        organization_id="4d5e6f70-8192-4a3b-8c4d-5e6f7a8b9c0d",
        first_event_at=NOW - 200 * DAY,
        last_event_at=NOW,
        last_usage_at=NOW,
        decay_ref=NOW,
        decayed={
            **dict.fromkeys(("activity", "logins", "value_actions", "activity_recent"), 200.0),
            **dict.fromkeys(("activity_baseline", "logins_baseline"), 200.0),
            **{"complaints": 5.0, "negative_signals": 5.0, "cancellation_requests": 1.0},
        },
        users={str(UUID(int=i + 1)): NOW for i in range(12)},
        features={f"feature-{i}": [9.0, NOW] for i in range(12)},
        milestones={m.value: NOW - 200 * DAY for m in MilestoneType},
        open_interactions={
            str(UUID(int=i + 1)): OpenInteraction(
                opened_at=NOW - 100 * DAY,
                interaction_type="cancellation_request",
                priority="urgent",
            )
            for i in range(5)
        },
    )
    for name, model in MODELS.items():
        if name.endswith("clamped"):
            health, impacts = score_with_impacts(state, NOW, model)
            assert health.components["support"] == 0.0, name
            assert health.components["growth"] == 0.0, name
            assert any(factor.startswith("ceiling_") for factor in impacts), name
            assert abs(sum(impacts.values()) - (health.score - 100.0)) <= HALF_HUNDREDTH


def hundredths(value: float) -> int:
    return round(value * 100)


@pytest.mark.parametrize("name", sorted(MODELS))
@PROPERTY
@given(state=states(), later=st.sampled_from([0.0, 1.0, 20.0]) | between(0, 90))
def test_the_reported_factors_sum_exactly_to_score_minus_100(
    name: str, state: OrganizationState, later: float
) -> None:
    """What a reader adds up, at the published precision (hundredths), is score - 100;
    each reported impact is its factor's own (or the folded ones' sum) within a
    hundredth, largest first, and only minor_factors is under half a point."""
    health, own = score_with_impacts(state, NOW + later * DAY, MODELS[name])
    reported = health.risk_factors
    assert sum(hundredths(f.impact) for f in reported) == hundredths(health.score - 100.0)
    assert all(f.impact == round(f.impact, 2) and f.impact < 0 for f in reported)
    assert [abs(f.impact) for f in reported] == sorted(
        (abs(f.impact) for f in reported), reverse=True
    )
    folded = {factor: impact for factor, impact in own.items() if abs(impact) < MIN_REPORTED_IMPACT}
    minor = [f for f in reported if f.factor == "minor_factors"]
    assert len(minor) <= 1
    for f in reported:
        if f.factor == "minor_factors":
            assert f.value == len(folded)
            assert abs(f.impact - sum(folded.values())) < 0.01 + 1e-9
        else:
            assert abs(own[f.factor]) >= MIN_REPORTED_IMPACT
            assert abs(f.impact - own[f.factor]) < 0.01 + 1e-9
    named = {f.factor for f in reported}
    assert named - {"minor_factors"} == set(own) - set(folded)
    if not minor:  # left out only when the folded ones are nothing at this precision
        assert hundredths(sum(folded.values())) in (0, -1, 1)


def cancellation_request_state() -> OrganizationState:
    """An established organization, silent for 200 days, with five open urgent
    cancellation requests, complaints and contraction signals."""
    return OrganizationState(
        organization_id="4d5e6f70-8192-4a3b-8c4d-5e6f7a8b9c0d",
        first_event_at=NOW - 200 * DAY,
        last_event_at=NOW,
        last_usage_at=NOW - 200 * DAY,
        decay_ref=NOW,
        decayed={"complaints": 5.0, "negative_signals": 5.0, "cancellation_requests": 1.0},
        open_interactions={
            str(UUID(int=i + 1)): OpenInteraction(
                opened_at=NOW - 100 * DAY,
                interaction_type="cancellation_request",
                priority="urgent",
            )
            for i in range(5)
        },
    )


def test_a_v2_alert_at_40_lists_exactly_60_points() -> None:
    """design.md's example: v2 holds this organization at 40.00 under its cancellation
    ceiling; each factor rounded on its own, the list added up to -60.01."""
    health, _own = score_with_impacts(cancellation_request_state(), NOW, SHIPPED["v2"])
    assert health.score == 40.0
    assert sum(hundredths(f.impact) for f in health.risk_factors) == -6000


def test_the_folded_factors_are_reported_under_half_a_point_too() -> None:
    """v4 scores this organization 47.45; its one folded factor (cancellation_request,
    -0.23) went unreported, under half a point: the list added up to -52.30."""
    health, own = score_with_impacts(cancellation_request_state(), NOW, SHIPPED["v4"])
    assert health.score == 47.45
    folded = [factor for factor, impact in own.items() if abs(impact) < MIN_REPORTED_IMPACT]
    assert folded == ["cancellation_request"]
    minor = health.risk_factors[-1]
    assert (minor.factor, minor.value, minor.impact) == ("minor_factors", 1.0, -0.23)
    assert minor.detail == "1 smaller factor, under 0.5 points: cancellation_request."
    assert sum(hundredths(f.impact) for f in health.risk_factors) == -5255


def test_several_folded_factors_are_named_largest_first() -> None:
    state = msgspec.structs.replace(
        cancellation_request_state(),
        decayed={"complaints": 0.3, "negative_signals": 0.2, "cancellation_requests": 0.1},
        open_interactions={},
    )
    health, own = score_with_impacts(state, NOW, SHIPPED["v4"])
    folded = sorted(
        (impact, factor) for factor, impact in own.items() if abs(impact) < MIN_REPORTED_IMPACT
    )
    assert len(folded) > 1
    minor = next(f for f in health.risk_factors if f.factor == "minor_factors")
    names = ", ".join(factor for _impact, factor in folded)
    assert (
        minor.detail == f"{len(folded)} smaller factors together, each under 0.5 points: {names}."
    )
    assert sum(hundredths(f.impact) for f in health.risk_factors) == hundredths(health.score - 100)


@pytest.mark.parametrize(
    ("impacts", "total", "expected"),
    [
        ([-12.5, -3.25], -1575, [-1250, -325]),  # exact already
        # -43.654 in all: the one hundredth the floors miss goes to the largest remainder
        ([-22.595, -12.119, -8.94], -4365, [-2259, -1212, -894]),
        ([-0.125, -0.125], -25, [-13, -12]),  # a tie goes to the first (the larger)
        ([-0.004], 0, [0]),  # a fold that is nothing at this precision
        ([-1.0, -2.0], -301, [-101, -200]),  # more than the remainders (never in a score)
        ([-1.0, -2.5], -349, [-100, -249]),  # less than the floors (never in a score)
    ],
)
def test_apportion_sums_to_the_total_by_largest_remainder(
    impacts: list[float], total: int, expected: list[int]
) -> None:
    assert _apportion(impacts, total) == expected


def without_ceilings(state: OrganizationState) -> OrganizationState:
    """`state` without what sets a ceiling: open or past escalations and cancellation
    requests."""
    return msgspec.structs.replace(
        state,
        decayed={**state.decayed, "escalations": 0.0, "cancellation_requests": 0.0},
        open_interactions={
            key: interaction
            for key, interaction in state.open_interactions.items()
            if not interaction.escalated
            and interaction.interaction_type not in ("escalation", "cancellation_request")
        },
    )


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=100, deadline=None)
@given(state=states(), later=st.sampled_from([0.0, 1.0, 20.0]) | between(0, 90))
def test_a_behavioural_action_is_worth_the_impact_listed_beside_it(
    name: str, state: OrganizationState, later: float
) -> None:
    """Undoing a behavioural shortfall gives back the impact the alert lists for that
    factor, to the hundredth: a CS manager reads both side by side. Where no ceiling
    holds the score (a ceiling may cap the action), before the actions are pooled."""
    model, as_of = MODELS[name], NOW + later * DAY
    state = without_ceilings(state)
    assume(score_ceiling(state, as_of, model) >= 100.0)
    listed = {risk.factor: risk.impact for risk in score(state, as_of, model).risk_factors}
    with patch.object(path, "_largest_first", lambda actions: actions):
        actions = path.path_to_healthy(state, as_of, model)
    for action in actions:
        if action.factor in BEHAVIOUR_FACTORS:
            assert round(action.impact, 2) == -listed[action.factor], (action, listed)
