"""The risk factors explain the score exactly: all the shortfalls together sum to
score - 100, whatever clamps the components and the composite (a component at 0, the
support and growth caps and their scaling, the ceilings), under every shipped model."""

from __future__ import annotations

from uuid import UUID

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthscore.contracts.enums import MilestoneType
from healthscore.core.scoring.model import DAY, SIGNALS, ScoreModel, parse_model, shipped_models
from healthscore.core.scoring.score import score_with_impacts
from healthscore.core.scoring.state import OpenInteraction, OrganizationState

NOW = 1_790_000_000.0
# the score is the composite rounded to 2 decimals; the shortfalls sum to the composite
HALF_HUNDREDTH = 0.005 + 1e-9
PROPERTY = settings(max_examples=300, deadline=None)


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
