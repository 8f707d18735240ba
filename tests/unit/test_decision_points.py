"""Decision points: which events are rescored, and that the rest change nothing decided.

An event is applied always; it is rescored (its alert decided, its score
recorded) unless it is a usage event that cannot lower the score of an idle,
calm organization scored earlier in the same bucket and day
(`healthscore.core.effects._can_wait`). Such an event is decided later: with
the next decision point, before a silence rescoring, or before the first event
of a later day. The batch-cut property with a log dense enough to skip is in
tests/unit/test_silence_rescoring.py.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

import healthscore.core.effects as effects_module
from healthscore.core.effects import (
    DECISION_BUCKET,
    BatchEffects,
    compute_batch_effects,
    compute_silence_effects,
)
from healthscore.core.enums import InteractionType, SupportAction, UsageType
from healthscore.core.events import Event, SupportEvent, UsageEvent
from healthscore.core.scoring.model import ScoreModel, default_model
from healthscore.core.scoring.results import HealthScore
from healthscore.core.scoring.score import score
from healthscore.core.scoring.state import OrganizationState, current_as_of
from healthscore.service.projector import project

MODEL = default_model()
HOUR = 3600.0
MIDNIGHT = datetime(2026, 1, 5, tzinfo=UTC)
assert MIDNIGHT.timestamp() % DECISION_BUCKET == 0
# an organization whose buckets start on the hour (phase 0) ...
ON_THE_HOUR = uuid.UUID(int=int(DECISION_BUCKET * 1000) * 777)
# ... and one whose buckets start at half past (one spans midnight)
HALF_PAST = uuid.UUID(int=int(DECISION_BUCKET * 1000) * 777 + int(DECISION_BUCKET * 500))
USER = uuid.UUID(int=42)
# 20 minutes after the calm organization's first score, in the same bucket and day
LATER = MIDNIGHT + timedelta(hours=10, minutes=20)


def _usage(
    at: datetime,
    kind: UsageType = UsageType.LOGIN,
    user: uuid.UUID | None = USER,
    org: uuid.UUID = ON_THE_HOUR,
) -> UsageEvent:
    return UsageEvent(
        event_id=uuid.uuid4(), organization_id=org, user_id=user, type=kind, occurred_at=at
    )


def _support(at: datetime, org: uuid.UUID = ON_THE_HOUR) -> SupportEvent:
    return SupportEvent(
        event_id=uuid.uuid4(),
        organization_id=org,
        interaction_id=uuid.uuid4(),
        action=SupportAction.OPENED,
        interaction_type=InteractionType.CHECK_IN,
        occurred_at=at,
    )


def _effects_source() -> ModuleType:
    """healthscore.core.effects run from its source: compiled (hatch_build.py), its
    calls of score() are native and pass by any patch of the module's attribute."""
    compiled = Path(str(effects_module.__file__))
    if compiled.suffix == ".py":
        return effects_module
    name = "healthscore.core._effects_source"
    spec = importlib.util.spec_from_file_location(name, compiled.with_name("effects.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve the module's annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def score_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The as-of times of every score() the core computes (the test's batches run the
    effects module from its source, where a patch of score() is seen)."""
    calls: list[float] = []

    def counted(
        state: OrganizationState, as_of: float, model: ScoreModel, explain: bool = True
    ) -> HealthScore:
        calls.append(as_of)
        return score(state, as_of, model, explain)

    source = _effects_source()
    monkeypatch.setattr(source, "score", counted)
    monkeypatch.setattr(
        sys.modules[__name__], "compute_batch_effects", source.compute_batch_effects
    )
    source.compute_batch_effects([_usage(LATER, org=HALF_PAST)], {}, {}, MODEL)
    assert calls, "the patch of score() sees no call: the test would pass whatever is scored"
    calls.clear()
    yield calls


def _calm(
    org: uuid.UUID = ON_THE_HOUR, at: datetime = MIDNIGHT + timedelta(hours=10)
) -> dict[str, OrganizationState]:
    """States of an organization scored once (a login), idle and calm."""
    states: dict[str, OrganizationState] = {}
    compute_batch_effects([_usage(at, org=org)], states, {}, MODEL)
    state = states[str(org)]
    assert state.last_churn_probability is not None
    assert state.last_churn_probability < MODEL.alerts.exit_probability
    return states


def _then(states: dict[str, OrganizationState], event: Event) -> BatchEffects:
    return compute_batch_effects([event], states, {}, MODEL, keep_scores=True)


def test_an_event_that_is_not_a_decision_point_is_applied_and_not_scored(
    score_calls: list[float],
) -> None:
    states = _calm()
    state = states[str(ON_THE_HOUR)]
    before = copy.deepcopy(state)
    score_calls.clear()
    effects = _then(
        states, _usage(MIDNIGHT + timedelta(hours=10, minutes=20), UsageType.FEATURE_USED)
    )
    assert score_calls == []
    assert effects.scores == [] and effects.rescored == {} and effects.daily == {}
    assert effects.alerts == []
    assert (state.last_score, state.last_scored_at) == (before.last_score, before.last_scored_at)
    assert state.daily_scores == before.daily_scores
    # applied: the state changed, and the store saves it
    assert state.event_count == before.event_count + 1
    assert state.last_event_at == (MIDNIGHT + timedelta(hours=10, minutes=20)).timestamp()
    assert effects.applied == 1 and effects.changed() == [str(ON_THE_HOUR)]
    # the service keeps no list of the scores made (only the lab's replay asks for it)
    first = compute_batch_effects([_usage(LATER)], {}, {}, MODEL)
    assert first.rescored and first.scores == []
    # a reader scores it as of the event: the event is in the read model
    assert current_as_of(state) == state.last_event_at
    projected = project(state, MODEL)
    assert projected is not None and projected.score != before.last_score


def _decides(states: dict[str, OrganizationState], event: Event) -> bool:
    """Whether `event` is a decision point: scored, as of the state's newest event."""
    effects = _then(states, event)
    state = states[str(event.organization_id)]
    if not effects.scores:
        return False
    assert effects.scores[-1].scored_at == state.last_scored_at == current_as_of(state)
    return True


def test_the_reference_case_is_not_a_decision_point() -> None:
    """The cases below each differ from this one in one condition."""
    assert not _decides(_calm(), _usage(LATER))


def test_a_support_event_is_a_decision_point() -> None:
    assert _decides(_calm(), _support(LATER))


def test_a_usage_type_that_lowers_the_score_is_a_decision_point() -> None:
    assert "seat_removed" in MODEL.negative_signal_weights
    assert _decides(_calm(), _usage(LATER, UsageType.SEAT_REMOVED))


def test_a_milestone_crossed_is_a_decision_point() -> None:
    states = _calm()
    effects = _then(states, _usage(LATER, UsageType.CLIENT_ADDED))
    assert effects.milestones and effects.scores


def test_a_new_user_is_a_decision_point() -> None:
    assert _decides(_calm(), _usage(LATER, user=uuid.UUID(int=43)))


def test_a_late_event_is_a_decision_point() -> None:
    states = _calm()
    _then(states, _usage(LATER))  # not decided: the newest event is now at 10:20
    assert _decides(states, _usage(MIDNIGHT + timedelta(hours=10, minutes=10)))


def test_an_event_at_the_instant_of_the_last_score_is_a_decision_point() -> None:
    assert _decides(_calm(), _usage(MIDNIGHT + timedelta(hours=10)))


def test_an_event_in_a_later_bucket_is_a_decision_point() -> None:
    # 10:00 and 11:00 are in the organization's buckets [10:00, 11:00) and [11:00, 12:00)
    assert not _decides(_calm(), _usage(MIDNIGHT + timedelta(hours=10, minutes=59)))
    assert _decides(_calm(), _usage(MIDNIGHT + timedelta(hours=11)))
    # the other phase: [09:30, 10:30) and [10:30, 11:30)
    last = MIDNIGHT + timedelta(hours=10, minutes=20)
    assert not _decides(_calm(HALF_PAST), _usage(last + timedelta(minutes=9), org=HALF_PAST))
    assert _decides(_calm(HALF_PAST), _usage(last + timedelta(minutes=10), org=HALF_PAST))


def test_an_event_on_a_later_day_is_a_decision_point() -> None:
    # one bucket, [23:30, 00:30), spans midnight: the day still counts
    day_end = MIDNIGHT + timedelta(hours=23, minutes=40)
    states = _calm(HALF_PAST, day_end)
    assert _decides(states, _usage(day_end + timedelta(minutes=30), org=HALF_PAST))


def test_an_organization_in_an_alert_episode_decides_every_event() -> None:
    states = _calm()
    states[str(ON_THE_HOUR)].alert.in_episode = True
    assert _decides(states, _usage(LATER))


def test_an_organization_counting_time_above_the_enter_threshold_decides_every_event() -> None:
    states = _calm()
    states[str(ON_THE_HOUR)].alert.above_since = MIDNIGHT.timestamp()
    assert _decides(states, _usage(LATER))


def test_a_last_probability_at_the_exit_threshold_makes_a_decision_point() -> None:
    states = _calm()
    states[str(ON_THE_HOUR)].last_churn_probability = MODEL.alerts.exit_probability
    assert _decides(states, _usage(LATER))
    # a state stored before the probability was kept: decided (and then kept)
    states = _calm()
    states[str(ON_THE_HOUR)].last_churn_probability = None
    assert _decides(states, _usage(LATER))


def _day_of_logins(org: uuid.UUID = ON_THE_HOUR) -> list[UsageEvent]:
    """Bursts of logins and feature use over two days, by two known users."""
    other = uuid.UUID(int=43)
    events = [_usage(MIDNIGHT + timedelta(hours=8), user=USER, org=org)]
    events.append(_usage(MIDNIGHT + timedelta(hours=8, minutes=1), user=other, org=org))
    for day in range(2):
        for hour in (9, 13, 22):
            for minute in range(0, 60, 7):
                at = MIDNIGHT + timedelta(days=day, hours=hour, minutes=minute)
                kind = UsageType.FEATURE_USED if minute % 2 else UsageType.LOGIN
                events.append(_usage(at, kind, USER if minute % 3 else other, org))
    return events


def test_the_days_last_event_is_decided_before_a_later_days_event() -> None:
    """Each day's history row and daily score: the score after its last event."""
    events = _day_of_logins()
    reference = compute_batch_effects(events, {}, {}, MODEL, decision_bucket=None, keep_scores=True)
    states: dict[str, OrganizationState] = {}
    effects = compute_batch_effects(events, states, {}, MODEL, keep_scores=True)
    assert len(effects.scores) < len(events) / 2
    first_day = int(MIDNIGHT.timestamp() // 86400)
    day_one = (str(ON_THE_HOUR), first_day)
    day_ones_last = MIDNIGHT + timedelta(hours=22, minutes=56)
    assert effects.daily[day_one].scored_at == day_ones_last.timestamp()
    assert effects.daily[day_one].health == reference.daily[day_one].health
    # the second day's last events wait for a later decision point
    day_two = (str(ON_THE_HOUR), first_day + 1)
    assert effects.daily[day_two].scored_at < events[-1].occurred_at.timestamp()
    state = states[str(ON_THE_HOUR)]
    assert (
        reference.states[str(ON_THE_HOUR)].daily_scores[str(first_day)]
        == (state.daily_scores[str(first_day)])
    )
    # every score the rule made is one the every-event reference made
    made = {(r.scored_at, r.health.score, r.health.churn_probability) for r in effects.scores}
    every = {(r.scored_at, r.health.score, r.health.churn_probability) for r in reference.scores}
    assert made <= every
    # the read model: the same as the reference's last score
    assert project(state, MODEL) == project(reference.states[str(ON_THE_HOUR)], MODEL)


def test_events_not_decided_are_decided_before_a_silence_rescoring() -> None:
    events = _day_of_logins()
    step = 6 * HOUR
    states: dict[str, OrganizationState] = {}
    compute_batch_effects(events, states, {}, MODEL, step)
    state = states[str(ON_THE_HOUR)]
    last = events[-1].occurred_at.timestamp()
    assert state.last_scored_at is not None and state.last_scored_at < last
    swept = compute_silence_effects(states, last + 3 * step, step, MODEL, keep_scores=True)
    assert swept.scores[0].scored_at == last  # the pending events first, as of the newest
    assert swept.scores[1:] == swept.silence_rescorings
    reference: dict[str, OrganizationState] = {}
    compute_batch_effects(events, reference, {}, MODEL, step, decision_bucket=None)
    again = compute_silence_effects(reference, last + 3 * step, step, MODEL, keep_scores=True)
    assert [(r.scored_at, r.health) for r in swept.silence_rescorings] == [
        (r.scored_at, r.health) for r in again.silence_rescorings
    ]
