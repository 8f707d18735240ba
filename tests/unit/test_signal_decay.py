"""Strong signals (v2, and v3 with a softer ceiling): a cancellation request pulls the
score down at once and fades with its signal, closing it does not make the score leap
back; a critical risk is raised at once, a merely elevated one only once it has
persisted."""

from __future__ import annotations

import msgspec

from healthscore.contracts.enums import AlertKind, AlertTrigger, MilestoneType
from healthscore.core.scoring.alerts import evaluate_alert
from healthscore.core.scoring.model import DAY, default_model, v2_model
from healthscore.core.scoring.results import HealthScore
from healthscore.core.scoring.score import record_score, score
from healthscore.core.scoring.state import OpenInteraction, OrganizationState

ORG = "3c4d5e6f-7081-4293-a4b5-c6d7e8f90a1b"
NOW = 1_790_000_000.0 // DAY * DAY
REQUEST = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d"


def healthy_with_request(open_: bool, requested_days_ago: float) -> OrganizationState:
    """An active established organization that asked to cancel some days ago."""
    return OrganizationState(
        organization_id=ORG,
        first_event_at=NOW - 300 * DAY,
        last_event_at=NOW - 0.1 * DAY,
        last_usage_at=NOW - 0.1 * DAY,
        decay_ref=NOW - 0.1 * DAY,
        support_decay_ref=NOW - requested_days_ago * DAY,
        decayed={
            "activity": 60.0,
            "logins": 25.0,
            "activity_baseline": 520.0,
            "activity_recent": 60.0,
            "cancellation_requests": 1.0,
        },
        users={f"u{i}": NOW - DAY for i in range(4)},
        milestones={m.value: NOW - 250 * DAY for m in MilestoneType},
        open_interactions=(
            {
                REQUEST: OpenInteraction(
                    opened_at=NOW - requested_days_ago * DAY,
                    interaction_type="cancellation_request",
                )
            }
            if open_
            else {}
        ),
    )


def test_a_cancellation_request_holds_the_score_down_and_closing_it_does_not_lift_it() -> None:
    model = v2_model()  # v2's ceiling (40): a fresh request is a high risk at once
    assert model.ceilings.follow_signals
    calm = msgspec.structs.replace(
        healthy_with_request(False, 1.0),
        decayed={**healthy_with_request(False, 1.0).decayed, "cancellation_requests": 0.0},
    )
    fresh = score(healthy_with_request(True, 1.0), NOW, model)
    assert score(calm, NOW, model).score > 80  # the same customer without the request
    assert fresh.score <= model.ceilings.open_cancellation_request + 1
    assert fresh.risk_level.value in ("high", "critical")
    assert "ceiling_cancellation_request" in {f.factor for f in fresh.risk_factors}
    closed = score(healthy_with_request(False, 1.0), NOW, model)
    assert closed.score - fresh.score < 10  # v1: back to the 80s in one event
    later = score(healthy_with_request(False, 90.0), NOW, model)  # 1.5 half-lives on
    assert later.score > closed.score + 15  # it recovers as the signal fades


def test_v3s_softer_ceiling_still_holds_and_fades() -> None:
    """v3's fitted ceiling (70) holds the same customer down and fades the same way."""
    model = default_model()
    assert 40 < model.ceilings.open_cancellation_request < 100
    fresh = score(healthy_with_request(True, 1.0), NOW, model)
    assert fresh.score <= model.ceilings.open_cancellation_request + 1
    assert "ceiling_cancellation_request" in {f.factor for f in fresh.risk_factors}
    closed = score(healthy_with_request(False, 1.0), NOW, model)
    assert closed.score - fresh.score < 10
    later = score(healthy_with_request(False, 90.0), NOW, model)
    assert later.score > closed.score + 5


def health(probability: float, score_: float = 50.0) -> HealthScore:
    from healthscore.core.bands import health_band, risk_level_for

    return HealthScore(
        score=score_,
        status=health_band(score_),
        components={},
        churn_probability=probability,
        risk_level=risk_level_for(probability),
        risk_factors=[],
        segment="established",
        change_7d=None,
        change_30d=None,
        active_users_30d=0,
    )


def run(probabilities: list[tuple[float, float]]) -> list[tuple[float, AlertKind]]:
    model = default_model()
    state = OrganizationState(organization_id=ORG)
    out = []
    for hours, p in probabilities:
        at = NOW + hours * 3600
        decision = evaluate_alert(state, state.last_score, health(p), at, model)
        record_score(state, health(p), at)
        if decision is not None:
            out.append((hours, decision.kind))
            assert decision.trigger in (AlertTrigger.PROBABILITY_THRESHOLD, AlertTrigger.RECOVERY)
    return out


def test_an_elevated_risk_is_raised_only_once_it_has_persisted() -> None:
    alerts = default_model().alerts
    assert alerts.persist_hours > 0 and alerts.immediate_probability is not None
    p = (alerts.enter_probability + alerts.immediate_probability) / 2
    step = alerts.persist_hours / 4
    # a blip above the threshold, shorter than persist_hours: nothing
    assert run([(0, 0.01), (step, p), (2 * step, 0.01)]) == []
    # the same level, held: raised when it has persisted
    held = [(k * step, p) for k in range(6)]
    assert run(held) == [(alerts.persist_hours, AlertKind.RISK_RAISED)]


def test_a_critical_risk_is_raised_at_once() -> None:
    alerts = default_model().alerts
    assert alerts.immediate_probability is not None
    assert run([(0, 0.01), (1, alerts.immediate_probability)]) == [(1, AlertKind.RISK_RAISED)]
