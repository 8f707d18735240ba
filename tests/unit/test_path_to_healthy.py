"""path_to_healthy: the fewest actions out of risk, valued by the model; and the alert
fields that carry it (trigger, episode, score_model_version, path_to_healthy)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
import pytest

from healthscore.contracts.alerts import ChurnRiskAlert
from healthscore.contracts.enums import AlertKind, AlertTrigger, MilestoneType, NoPathReason
from healthscore.core.effects import RaisedAlert
from healthscore.core.scoring.alerts import alert_id_for, evaluate_alert
from healthscore.core.scoring.model import (
    DAY,
    ScoreModel,
    default_model,
    v1_model,
    v2_model,
    v3_model,
)
from healthscore.core.scoring.path import no_path_reason, path_to_healthy
from healthscore.core.scoring.results import AlertDecision
from healthscore.core.scoring.score import churn_probability, record_score, score
from healthscore.core.scoring.state import OpenInteraction, OrganizationState
from healthscore.store.effects_writer import alert_payload
from tests.utils.alert_stream import ALERT_SCHEMA, VALIDATOR

ORG = "0b7c6f0e-3a1d-4c5e-8f9a-1b2c3d4e5f60"
NOW = 1_790_000_000.0 // DAY * DAY
ESCALATION = "9d8c7b6a-5f4e-4d3c-8b2a-190807060504"


def troubled(**changes: object) -> OrganizationState:
    """An established organization, quiet for 12 days, with an open escalation."""
    state = OrganizationState(
        organization_id=ORG,
        first_event_at=NOW - 200 * DAY,
        last_event_at=NOW - 12 * DAY,
        last_usage_at=NOW - 12 * DAY,
        decay_ref=NOW - 12 * DAY,
        decayed={"activity": 4.0, "logins": 1.0, "activity_baseline": 40.0, "activity_recent": 4.0},
        users={"u1": NOW - 12 * DAY},
        open_interactions={
            ESCALATION: OpenInteraction(
                opened_at=NOW - 5 * DAY, interaction_type="escalation", priority="urgent"
            )
        },
        milestones={"onboarding_completed": NOW - 190 * DAY},
    )
    return msgspec.structs.replace(state, **changes)


def outcome(state: OrganizationState, model: ScoreModel, actions: list[str]) -> float:
    """The churn probability after the path's state-changing actions, plus the value
    of its behavioural ones (as the path counts them)."""
    closed = {a.split()[-1] for a in actions if a.startswith("close ")}
    reached = {a.split()[-1] for a in actions if a.startswith("reach the milestone ")}
    after = msgspec.structs.replace(
        state,
        open_interactions={k: v for k, v in state.open_interactions.items() if k not in closed},
        milestones={**state.milestones, **dict.fromkeys(reached, NOW)},
    )
    return score(after, NOW, model).score


@pytest.mark.parametrize(
    "model", [v1_model(), v2_model(), v3_model(), default_model()], ids=["v1", "v2", "v3", "v4"]
)
def test_the_path_leads_out_of_risk_largest_step_first(model: ScoreModel) -> None:
    state = troubled()
    before = msgspec.json.encode(state)
    health = score(state, NOW, model)
    assert health.churn_probability >= model.alerts.exit_probability  # at risk
    path = path_to_healthy(state, NOW, model)
    assert msgspec.json.encode(state) == before  # pure
    assert path, "an at-risk organization gets a path"
    impacts = [step.impact for step in path]
    assert impacts == sorted(impacts, reverse=True)  # greedy: largest first
    assert all(step.impact > 0 for step in path)
    # following it: the state-changing steps recomputed, the behavioural ones at their
    # impact, the probability ends below the recovery threshold
    behaviour = sum(
        step.impact for step in path if not step.action.startswith(("close ", "reach "))
    )
    final = outcome(state, model, [step.action for step in path]) + behaviour
    assert churn_probability(final, None, model) < model.alerts.exit_probability + 1e-9 or (
        len(path) == 5
    )
    # and no shorter prefix already gets there (the fewest actions)
    prefix = path[:-1]
    partial = outcome(state, model, [step.action for step in prefix]) + sum(
        step.impact for step in prefix if not step.action.startswith(("close ", "reach "))
    )
    assert churn_probability(partial, None, model) >= model.alerts.exit_probability - 1e-9


def test_under_v1_closing_the_cancellation_request_lifts_the_ceiling_first() -> None:
    model = v1_model()
    state = troubled(
        last_usage_at=NOW - DAY,
        decay_ref=NOW - DAY,
        decayed={"activity": 40.0, "logins": 12.0, "value_actions": 30.0},
        users={f"u{i}": NOW - DAY for i in range(4)},
        features={f"f{i}": [3.0, NOW - DAY] for i in range(8)},
        milestones={m.value: NOW - 150 * DAY for m in MilestoneType},
        open_interactions={
            ESCALATION: OpenInteraction(
                opened_at=NOW - 2 * DAY, interaction_type="cancellation_request"
            )
        },
    )
    health = score(state, NOW, model)
    assert health.score == model.ceilings.open_cancellation_request  # pinned at 35
    path = path_to_healthy(state, NOW, model)
    assert path[0].action == f"close cancellation request {ESCALATION}"
    closed = msgspec.structs.replace(state, open_interactions={})
    assert path[0].impact == pytest.approx(score(closed, NOW, model).score - health.score, abs=0.01)
    assert path[0].impact > 20  # what a CS manager should do first


def test_a_healthy_organization_needs_no_path() -> None:
    model = default_model()
    state = troubled(
        open_interactions={},
        last_usage_at=NOW - 0.1 * DAY,
        decay_ref=NOW - 0.1 * DAY,
        decayed={
            "activity": 60.0,
            "logins": 20.0,
            "activity_baseline": 500.0,
            "activity_recent": 60.0,
        },
        users={"u1": NOW - DAY, "u2": NOW - DAY, "u3": NOW - 2 * DAY},
    )
    assert score(state, NOW, model).churn_probability < model.alerts.exit_probability
    assert path_to_healthy(state, NOW, model) == []


def test_alerts_say_why_which_episode_which_model_and_the_way_back() -> None:
    model = default_model()
    state = troubled()
    decisions = []
    for hours in range(0, 24 * 8, 6):  # the probability must hold for persist_hours
        at = NOW + hours * 3600
        health = score(state, at, model)
        decision = evaluate_alert(state, state.last_score, health, at, model)
        record_score(state, health, at)
        if decision is not None:
            decisions.append((decision, health, at))
    raised = [d for d, _h, _t in decisions if d.kind is AlertKind.RISK_RAISED]
    assert raised, "a quiet organization with an open escalation is alerted"
    first, health, at = decisions[0]
    assert first.kind is AlertKind.RISK_RAISED
    assert first.trigger is AlertTrigger.PROBABILITY_THRESHOLD
    assert first.episode == 1
    assert first.score_model_version == model.version == "v4"
    assert first.path_to_healthy and first.path_to_healthy[0].impact > 0
    # the wire message carries them (additive fields of customer.churn-risk.v1)
    payload = alert_payload(
        RaisedAlert(organization_id=ORG, decision=first, health=health, scored_at=at, caused_by=())
    )
    message = ChurnRiskAlert.model_validate_json(payload)
    assert message.trigger is AlertTrigger.PROBABILITY_THRESHOLD
    assert message.episode == 1
    assert message.score_model_version == "v4"
    assert [a.action for a in message.path_to_healthy] == [a.action for a in first.path_to_healthy]
    assert message.organization_id == UUID(ORG)


def test_an_alert_without_the_added_fields_is_still_valid() -> None:
    """Consumers and producers built before the added fields keep working."""
    old = {
        "alert_id": "6f1c2b8e-3d4a-5e6f-9a0b-1c2d3e4f5a6b",
        "organization_id": ORG,
        "kind": "risk_raised",
        "health_score": 40.0,
        "previous_score": 70.0,
        "health_status": "at_risk",
        "churn_probability": 0.6,
        "risk_level": "high",
        "risk_factors": [],
        "caused_by": [],
        "scored_at": "2026-09-21T00:00:00+00:00",
        "emitted_at": "2026-09-21T00:00:01+00:00",
    }
    message = ChurnRiskAlert.model_validate(old)
    assert message.trigger is None and message.path_to_healthy == []


@pytest.mark.parametrize("model", [v2_model(), v3_model(), default_model()], ids=["v2", "v3", "v4"])
def test_no_action_is_valued_past_the_ceiling_that_holds_the_score(model: ScoreModel) -> None:
    # A fresh cancellation request holds the score at or below a ceiling (v2: 40, v3
    # and v4: 70) that fades with the request's decayed signal, open or closed: nothing
    # a CS manager does lifts it before time does. The behavioural shortfalls were
    # valued at their whole impact on the composite, past the ceiling: v2's alert
    # promised 52 points (and a way out of risk) to an organization held at 40.
    state = troubled(
        open_interactions={},
        last_usage_at=NOW - 4 * DAY,
        last_event_at=NOW - 4 * DAY,
        decay_ref=NOW - 4 * DAY,
        decayed={
            "activity": 20.0,
            "logins": 2.0,
            "value_actions": 30.0,
            "activity_baseline": 300.0,
            "activity_recent": 20.0,
            "cancellation_requests": 1.0,
        },
        users={f"u{i}": NOW - 4 * DAY for i in range(4)},
        features={f"f{i}": [3.0, NOW - 4 * DAY] for i in range(8)},
        milestones={m.value: NOW - 150 * DAY for m in MilestoneType},
    )
    held = model.ceilings.open_cancellation_request  # the request's weight is 1: fresh
    health = score(state, NOW, model)
    assert health.churn_probability >= model.alerts.exit_probability  # at risk
    behaviour = [f for f in health.risk_factors if not f.factor.startswith("ceiling_")]
    assert health.score - sum(f.impact for f in behaviour) > held  # undone, past the ceiling
    path = path_to_healthy(state, NOW, model)
    assert health.score + sum(a.impact for a in path) <= held + 0.01, path
    if health.score >= held:  # held at the ceiling now: no action lifts it
        assert path == [], path


def three_escalations() -> OrganizationState:
    """A week-old organization used once, with three urgent escalations open for three
    days: the open-escalation penalty's cap holds two of them, so closing one is worth
    little until another is closed (as the alert stream first showed)."""
    opened = NOW - 3 * DAY
    return OrganizationState(
        organization_id=ORG,
        first_event_at=NOW - 7 * DAY,
        last_event_at=NOW,
        last_login_at=NOW - 7 * DAY,
        last_usage_at=NOW - 7 * DAY,
        decay_ref=NOW - 7 * DAY,
        decayed={
            "activity": 1.0,
            "activity_baseline": 1.0,
            "activity_recent": 1.0,
            "logins": 1.0,
            "logins_baseline": 1.0,
            "negative_sentiment": 5.6,
            "escalations": 2.87,
        },
        totals={"login": 1},
        users={"u1": NOW - 7 * DAY},
        open_interactions={
            f"9d8c7b6a-5f4e-4d3c-8b2a-19080706050{n}": OpenInteraction(
                opened_at=opened + n * 3600, interaction_type="escalation", priority="urgent"
            )
            for n in range(3)
        },
        support_decay_ref=NOW,
    )


@pytest.mark.parametrize("model", [v2_model(), v3_model()], ids=["v2", "v3"])
def test_actions_worth_more_together_share_their_points_largest_first(model: ScoreModel) -> None:
    # Closing the first of three capped escalations adds under a point, the second five:
    # the path read "close escalation A (+0.66), close escalation B (+5.13)" after the
    # behavioural steps, not largest first, and told a CS manager that A is hardly worth
    # closing when B's points need it.
    state = three_escalations()
    health = score(state, NOW, model)
    assert health.churn_probability >= model.alerts.exit_probability  # at risk
    path = path_to_healthy(state, NOW, model)
    closes = [a for a in path if a.action.startswith("close ")]
    assert len(closes) >= 2, path
    impacts = [a.impact for a in path]
    assert impacts == sorted(impacts, reverse=True), path
    # the points are shared, not made up: together they still add what the actions add
    closed = {a.action.split()[-1] for a in closes}
    after = msgspec.structs.replace(
        state,
        open_interactions={k: v for k, v in state.open_interactions.items() if k not in closed},
    )
    behaviour = [a for a in path if not a.action.startswith("close ")]
    gained = score(after, NOW, model).score - health.score
    assert sum(a.impact for a in closes) == pytest.approx(gained, abs=0.02 * len(path)), path
    assert all(a.impact > 0 for a in behaviour)


def test_an_action_about_one_interaction_names_it_as_data() -> None:
    # "close escalation <id>" named the interaction only inside its text: a task system
    # had to parse a sentence meant for a person to know which interaction to close
    model = v2_model()
    state = three_escalations()
    path = path_to_healthy(state, NOW, model)
    closes = [a for a in path if a.action.startswith("close ")]
    assert closes, path
    for action in path:
        if action in closes:
            assert action.interaction_id in state.open_interactions
            assert action.action.endswith(f" {action.interaction_id}")  # the text is as before
        else:
            assert action.interaction_id is None
    decision = AlertDecision(
        kind=AlertKind.RISK_RAISED,
        episode=1,
        alert_id=alert_id_for(ORG, 1, AlertKind.RISK_RAISED, raised_day=0),
        previous_score=None,
        trigger=AlertTrigger.PROBABILITY_THRESHOLD,
        score_model_version=model.version,
        path_to_healthy=tuple(path),
    )
    payload = alert_payload(
        RaisedAlert(
            organization_id=ORG,
            decision=decision,
            health=score(state, NOW, model),
            scored_at=NOW,
            caused_by=(),
        )
    )
    wire = msgspec.json.decode(payload)["path_to_healthy"]
    assert [a["interaction_id"] for a in wire] == [
        a.interaction_id for a in decision.path_to_healthy
    ]
    assert ALERT_SCHEMA["$defs"]["HealthAction"]["properties"]["interaction_id"]
    errors = [e.message for e in VALIDATOR.iter_errors(_as_published(msgspec.json.decode(payload)))]
    assert errors == []
    # and a consumer built before the field still reads the action
    assert {"action", "factor", "impact"} <= set(wire[0])


def _as_published(payload: dict[str, Any]) -> dict[str, Any]:
    """An outbox payload as the relay publishes it: its `emitted_at` (the epoch, a
    placeholder) stamped with the wall clock, as `outbox._publish_alerts` does."""
    return {**payload, "emitted_at": "2026-09-21T00:00:01.250000Z"}


def _decide(
    state: OrganizationState, model: ScoreModel, hours: int = 24 * 8
) -> list[AlertDecision]:
    """The alerts the state's rescorings every 6 hours decide (it changes nothing else)."""
    decisions = []
    for step in range(0, hours, 6):
        at = NOW + step * 3600
        health = score(state, at, model)
        decision = evaluate_alert(state, state.last_score, health, at, model)
        record_score(state, health, at)
        if decision is not None:
            decisions.append(decision)
    return decisions


def test_an_empty_path_says_why_as_data() -> None:
    # An alert with no action out of risk could not say why: the dashboard guessed "a
    # signal only time heals", whatever held the score
    model = v2_model()
    # a fresh cancellation request holds the score under v2's ceiling (40)
    held = troubled(
        open_interactions={},
        last_usage_at=NOW - DAY,
        decay_ref=NOW - DAY,
        decayed={
            "activity": 40.0,
            "logins": 12.0,
            "value_actions": 30.0,
            "cancellation_requests": 1.0,
        },
        users={f"u{i}": NOW - DAY for i in range(4)},
        features={f"f{i}": [3.0, NOW - DAY] for i in range(8)},
        milestones={m.value: NOW - 150 * DAY for m in MilestoneType},
    )
    assert path_to_healthy(held, NOW, model) == []
    assert no_path_reason(held, NOW, model) is NoPathReason.HELD_BY_CEILING
    raised = _decide(held, model, hours=24)[0]
    assert raised.kind is AlertKind.RISK_RAISED and raised.path_to_healthy == ()
    assert raised.no_path_reason is NoPathReason.HELD_BY_CEILING
    # an alert with actions gives no reason; a recovery is out of risk
    troubled_alerts = _decide(three_escalations(), model)
    assert troubled_alerts[0].path_to_healthy and troubled_alerts[0].no_path_reason is None
    # on the wire, beside the empty path
    payload = msgspec.json.decode(
        alert_payload(
            RaisedAlert(
                organization_id=ORG,
                decision=raised,
                health=score(held, NOW, model),
                scored_at=NOW,
                caused_by=(),
            )
        )
    )
    assert payload["path_to_healthy"] == [] and payload["no_path_reason"] == "held_by_ceiling"
    assert [e.message for e in VALIDATOR.iter_errors(_as_published(payload))] == []


def test_a_recovery_and_a_drop_without_risk_are_out_of_risk() -> None:
    model = v1_model()  # v1 raises on a sharp drop (off in v2 and v3)
    state = troubled(
        open_interactions={},
        last_usage_at=NOW - 0.1 * DAY,
        decay_ref=NOW - 0.1 * DAY,
        decayed={
            "activity": 60.0,
            "logins": 20.0,
            "activity_baseline": 500.0,
            "activity_recent": 60.0,
            "value_actions": 30.0,
        },
        users={f"u{i}": NOW - DAY for i in range(4)},
        features={f"f{i}": [3.0, NOW - DAY] for i in range(8)},
        daily_scores={str(int(NOW // DAY) - 1): 100.0},
    )
    health = score(state, NOW, model)
    assert health.churn_probability < model.alerts.exit_probability
    assert 100.0 - health.score > model.alerts.drop_points  # a drop from yesterday's 100
    decision = evaluate_alert(state, 100.0, health, NOW, model)
    assert decision is not None and decision.trigger is AlertTrigger.SCORE_DROP
    assert decision.path_to_healthy == ()
    assert decision.no_path_reason is NoPathReason.OUT_OF_RISK
    # the episode recovers once back near its peak: out of risk, nothing to do
    state.alert.drop_peak = health.score
    recovered = evaluate_alert(state, health.score, health, NOW + DAY, model)
    assert recovered is not None and recovered.kind is AlertKind.RECOVERED
    assert recovered.no_path_reason is NoPathReason.OUT_OF_RISK
