"""Silence rescorings are a function of the log: the grid, and batch-cut independence.

An organization is rescored at every multiple of the step that lies at least a
step after its newest event, before its next one. Whether a batch makes those
rescorings (before the event that ends the silence) or the sweep does (below a
watermark, between batches), and wherever the batches are cut, every
organization goes through the same sequence of events and rescorings: the
states, the rescorings and the alerts are identical.
"""

from __future__ import annotations

import copy
import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import TypedDict

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthscore.contracts.enums import HistoryCause, UsageType
from healthscore.core.effects import (
    DECISION_BUCKET,
    SILENCE_HORIZON,
    BatchEffects,
    Rescored,
    compute_batch_effects,
    compute_silence_effects,
    next_silence_rescore,
    silence_budget_index,
    silence_plan,
    silence_rescore_times,
    silence_slices,
)
from healthscore.core.events import ProfileEvent, UsageEvent
from healthscore.core.scoring.aggregate import new_state
from healthscore.core.scoring.model import DAY, ScoreModel, default_model
from healthscore.core.scoring.state import OrganizationState, encode_state

STEP = 6 * 3600.0
# a grid point (a multiple of the step), well in the past
T0 = datetime(2026, 1, 5, tzinfo=UTC)
assert T0.timestamp() % STEP == 0
MODEL = default_model()


# an organization whose grid has phase 0: its points are the multiples of the step
ON_THE_HOUR = str(uuid.UUID(int=int(STEP * 1000) * 12_345))


def _login(at: float) -> UsageEvent:
    """A login of the organization whose grid has phase 0, at event time `at`."""
    return UsageEvent(
        event_id=uuid.uuid4(),
        organization_id=uuid.UUID(ON_THE_HOUR),
        type=UsageType.LOGIN,
        occurred_at=datetime.fromtimestamp(at, UTC),
    )


def _state(
    last_event: float, last_scored: float | None = None, org: str = ON_THE_HOUR
) -> OrganizationState:
    state = new_state(org)
    state.first_event_at = state.last_event_at = last_event
    state.last_scored_at = last_event if last_scored is None else last_scored
    return state


def test_the_grid() -> None:
    t0 = T0.timestamp()
    # on the grid: the first rescoring is one step later
    assert next_silence_rescore(_state(t0), STEP) == t0 + STEP
    # just after a grid point: the point two steps on (at least a step of silence)
    assert next_silence_rescore(_state(t0 + 1), STEP) == t0 + 2 * STEP
    assert next_silence_rescore(_state(t0 - 1), STEP) == t0 + STEP
    # after a silence rescoring at t0 + 3 steps: the next grid point
    assert next_silence_rescore(_state(t0, t0 + 3 * STEP), STEP) == t0 + 4 * STEP
    # a score stored off the grid (another step, older code): the grid point after it
    assert next_silence_rescore(_state(t0, t0 + 3 * STEP + 5), STEP) == t0 + 4 * STEP
    assert next_silence_rescore(new_state(ON_THE_HOUR), STEP) is None
    # the times strictly below `until`
    state = _state(t0 + 60)
    assert silence_rescore_times(state, t0 + 2 * STEP, STEP) == []
    assert silence_rescore_times(state, t0 + 2 * STEP + 1, STEP) == [t0 + 2 * STEP]
    assert silence_rescore_times(state, t0 + 5 * STEP, STEP) == [
        t0 + 2 * STEP,
        t0 + 3 * STEP,
        t0 + 4 * STEP,
    ]
    # microsecond event times far from the epoch: the grid stays exact
    for micros in (1, 999_999, 123_456):
        at = t0 + 7 * STEP + micros / 1e6
        due = next_silence_rescore(_state(at), STEP)
        assert due is not None and due % STEP == 0 and at + STEP <= due < at + 2 * STEP


def test_each_organization_has_its_own_phase() -> None:
    """Silent organizations fall due spread over the step, not all at one instant."""
    t0 = T0.timestamp()
    rng = random.Random(1)
    orgs = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(400)]
    dues = []
    for org in orgs:
        state = _state(t0, org=org)
        due = next_silence_rescore(state, STEP)
        assert due is not None and t0 + STEP <= due < t0 + 2 * STEP
        # the same organization's points are a step apart, whatever its last score
        times = silence_rescore_times(state, t0 + 10 * STEP, STEP)
        assert times[0] == due and len(times) in (8, 9)
        assert all(b - a == STEP for a, b in itertools.pairwise(times))
        assert next_silence_rescore(_state(t0 + 3 * 3600, org=org), STEP) in (due, due + STEP)
        dues.append(due - (t0 + STEP))
    # spread over the whole step: every hour of the six gets some
    assert {int(d // 3600) for d in dues} == set(range(6))


SPARSE_GAPS = (30, 600, 3600, 4 * 3600, 9 * 3600, 2 * 86400)
# minutes apart mostly: many events of an organization share an hour (not decision points)
DENSE_GAPS = (5, 30, 60, 120, 300, 600, 900, 1800, 3600, 4 * 3600)


def _log(
    seed: int, organizations: int, events: int, gaps: tuple[int, ...] = SPARSE_GAPS
) -> list[UsageEvent]:
    """A usage log in event-time order: bursts of activity and silences of hours to weeks."""
    rng = random.Random(seed)
    orgs = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(organizations)]
    users = {org: [uuid.UUID(int=rng.getrandbits(128)) for _ in range(3)] for org in orgs}
    at = T0
    log = []
    for _ in range(events):
        at += timedelta(seconds=rng.choice(gaps))
        if rng.random() < 0.1:
            at += timedelta(seconds=STEP)  # land exactly on a grid point now and then
            at = datetime.fromtimestamp(at.timestamp() // STEP * STEP, UTC)
        # a few organizations do most of the talking; the others go quiet for long
        org = orgs[min(int(rng.expovariate(0.8)), organizations - 1)]
        kind = rng.choice(
            [
                UsageType.LOGIN,
                UsageType.FEATURE_USED,
                UsageType.CLIENT_ADDED,
                UsageType.SEAT_REMOVED,
                UsageType.EMAIL_SENT,
            ]
        )
        log.append(
            UsageEvent(
                event_id=uuid.UUID(int=rng.getrandbits(128)),
                organization_id=org,
                user_id=rng.choice(users[org]),
                type=kind,
                feature="calendar",
                occurred_at=at,
            )
        )
    return log


# (organization, scored at, score, churn probability)
Scored = tuple[str, float, float, float]


class Run(TypedDict):
    """What a run ends with, compared whole between runs."""

    states: dict[str, bytes]
    rescorings: list[Scored]
    scores: list[Scored]
    history: list[tuple[object, ...]]
    # (alert, organization, scored at, score)
    alerts: list[tuple[str, str, float, float]]


def _run(
    log: list[UsageEvent],
    cuts: list[int],
    sweeps: list[bool],
    decision_bucket: float | None = DECISION_BUCKET,
    model: ScoreModel = MODEL,
) -> Run:
    """Apply `log` in batches cut at `cuts`; after a batch, sweep to the watermark if asked.

    The watermark after a batch is its newest event time (one partition): no
    later event is older. The run ends with a sweep to the log's end. With
    `decision_bucket` None every event is a decision point (the reference).
    """
    states: dict[str, OrganizationState] = {}
    all_effects: list[BatchEffects] = []
    bounds = [0, *sorted(set(cuts)), len(log)]
    for n, (start, end) in enumerate(itertools.pairwise(bounds)):
        batch = log[start:end]
        if not batch:
            continue
        all_effects.append(
            compute_batch_effects(batch, states, {}, model, STEP, decision_bucket, keep_scores=True)
        )
        if sweeps[n % len(sweeps)]:
            watermark = batch[-1].occurred_at.timestamp()
            all_effects.append(compute_silence_effects(states, watermark, STEP, model, True))
    last = log[-1].occurred_at.timestamp() + 0.5
    all_effects.append(compute_silence_effects(states, last, STEP, model, True))
    rescorings = [
        (r.organization_id, r.scored_at, r.health.score, r.health.churn_probability)
        for effects in all_effects
        for r in effects.silence_rescorings
    ]
    scores = [
        (r.organization_id, r.scored_at, r.health.score, r.health.churn_probability)
        for effects in all_effects
        for r in effects.scores
    ]
    return {
        "states": {org: encode_state(state) for org, state in states.items()},
        "rescorings": sorted(rescorings),
        # every score made, decision points and silence rescorings (in order per organization)
        "scores": sorted(scores, key=lambda row: row[0]),
        "history": stored_history(all_effects),
        "alerts": sorted(
            (str(a.decision.alert_id), a.organization_id, a.scored_at, a.health.score)
            for effects in all_effects
            for a in effects.alerts
        ),
    }


def stored_history(all_effects: list[BatchEffects]) -> list[tuple[object, ...]]:
    """The score history rows the store ends with: UPSERT_SCORE_HISTORY, in Python.

    One row per (organization, event-time day); a score replaces the day's row
    unless it is older. Each batch hands over at most one row per day, as one
    statement needs.
    """
    rows: dict[tuple[str, int], Rescored] = {}
    for effects in all_effects:
        batch = effects.history()
        keys = [(r.organization_id, int(r.scored_at // DAY)) for r in batch]
        assert len(set(keys)) == len(keys), "two rows for one organization's day in a batch"
        for key, r in zip(keys, batch, strict=True):
            stored = rows.get(key)
            if stored is None or r.scored_at >= stored.scored_at:
                rows[key] = r
    return sorted(
        (
            *key,
            r.scored_at,
            r.health.score,
            r.health.churn_probability,
            str(r.health.risk_level),
            tuple(sorted(r.health.components.items())),
            str(r.cause),
        )
        for key, r in rows.items()
    )


def test_silence_rescorings_do_not_depend_on_batches_or_sweep_timing() -> None:
    log = _log(seed=5, organizations=8, events=400)
    whole = _run(log, [], [False])
    one_by_one = _run(log, list(range(1, len(log))), [True])
    assert one_by_one == whole
    rescorings = whole["rescorings"]
    assert isinstance(rescorings, list) and len(rescorings) > 100
    first: dict[str, float] = {}
    for org, at, _, _ in rescorings:
        first.setdefault(org, at)
        steps = (at - first[org]) / STEP
        assert abs(steps - round(steps)) < 1e-9  # on the organization's grid
    alerts = whole["alerts"]
    assert isinstance(alerts, list) and alerts
    # some alerts come from silence
    silence_points = {(org, at) for org, at, _, _ in rescorings}
    assert any((org, at) in silence_points for _, org, at, _ in alerts)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(1, 119), max_size=30),
    sweeps=st.lists(st.booleans(), min_size=1, max_size=5),
)
def test_any_batch_cuts_and_sweep_points_give_the_same_result(
    seed: int, cuts: list[int], sweeps: list[bool]
) -> None:
    log = _log(seed=seed, organizations=5, events=120)
    assert _run(log, cuts, sweeps) == _run(log, [], [False])


def test_events_that_wait_for_their_decision_do_not_depend_on_batches() -> None:
    """A log dense enough that many events are not decision points: the same
    decisions whatever the cuts, and every score one the every-event reference makes."""
    log = _log(seed=11, organizations=6, events=600, gaps=DENSE_GAPS)
    whole = _run(log, [], [False])
    assert _run(log, list(range(1, len(log))), [True]) == whole
    assert _run(log, list(range(7, len(log), 13)), [False, True]) == whole
    scores = whole["scores"]
    rescorings = whole["rescorings"]
    assert isinstance(scores, list) and isinstance(rescorings, list)
    decided = len(scores) - len(rescorings)
    assert len(log) - decided > 100  # many events waited (154 of 600)
    reference = _run(log, [], [False], decision_bucket=None)
    every = reference["scores"]
    assert isinstance(every, list) and len(every) - len(rescorings) == len(log)
    assert set(scores) <= set(every)
    # on this log, the same alerts and silence rescorings as scoring every event
    assert whole["alerts"] == reference["alerts"] and whole["alerts"]
    assert whole["rescorings"] == reference["rescorings"]


@pytest.mark.parametrize(("decline_points", "holds_back"), [(19.0, False), (80.0, True)])
def test_a_decline_gate_keeps_the_decisions_of_scoring_every_event(
    decline_points: float, holds_back: bool
) -> None:
    """alerts.decline_points (no shipped model sets it) holds raises back and adds no
    reason to decide: the events that wait change nothing decided under it either."""
    gated = msgspec.structs.replace(
        MODEL, alerts=msgspec.structs.replace(MODEL.alerts, decline_points=decline_points)
    )
    log = _log(seed=11, organizations=6, events=600, gaps=DENSE_GAPS)
    whole = _run(log, [], [False], model=gated)
    assert _run(log, list(range(7, len(log), 13)), [False, True], model=gated) == whole
    reference = _run(log, [], [False], decision_bucket=None, model=gated)
    assert whole["alerts"] == reference["alerts"]
    assert whole["rescorings"] == reference["rescorings"]
    # this log's two raises follow declines of more than 19 points over 30 days
    # (both kept); not of 80 (both held back: the gate was asked)
    assert (whole["alerts"] != _run(log, [], [False])["alerts"]) is holds_back


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(1, 149), max_size=30),
    sweeps=st.lists(st.booleans(), min_size=1, max_size=5),
)
def test_any_batch_cuts_give_the_same_decision_points(
    seed: int, cuts: list[int], sweeps: list[bool]
) -> None:
    log = _log(seed=seed, organizations=4, events=150, gaps=DENSE_GAPS)
    whole = _run(log, [], [False])
    assert _run(log, cuts, sweeps) == whole
    every = _run(log, [], [False], decision_bucket=None)["scores"]
    assert isinstance(every, list) and set(whole["scores"]) <= set(every)


def test_batch_rescores_silence_before_the_event_that_ends_it() -> None:
    t0 = T0.timestamp()
    org = uuid.UUID(ON_THE_HOUR)

    # active at t0 + 10 min, then silent until two days later (an hour after the
    # silence rescoring at 00:00: a decision point, see tests/unit/test_decision_points.py)
    back = t0 + 2 * 86400 + 3600 + 60
    effects = compute_batch_effects(
        [_login(t0 + 600), _login(back)], {}, {}, MODEL, STEP, keep_scores=True
    )
    times = [r.scored_at for r in effects.silence_rescorings]
    assert times == [t0 + k * STEP for k in range(2, 9)]
    # without keep_scores they are counted, not kept (the history keeps a day's last)
    counted = compute_batch_effects([_login(t0 + 600), _login(back)], {}, {}, MODEL, STEP)
    assert counted.silence_rescorings == [] and counted.silence_rescored == len(times)
    assert counted.history() == effects.history()
    assert {r.cause for r in effects.silence_rescorings} == {HistoryCause.SWEEP}
    scores = [r.health.score for r in effects.silence_rescorings]
    assert scores == sorted(scores, reverse=True) and scores[-1] < scores[0]
    final = effects.rescored[str(org)]
    assert final.cause is HistoryCause.EVENTS and final.scored_at == back
    assert final.previous_score == scores[-1]
    # the history: each day's last score (t0 is midnight UTC; the step is 6 hours)
    history = effects.history()
    assert [(r.scored_at, r.cause) for r in history] == [
        (t0 + 3 * STEP, HistoryCause.SWEEP),  # day 0: the event at 00:10, silence 12:00, 18:00
        (t0 + 7 * STEP, HistoryCause.SWEEP),  # day 1: silence at 00:00, 06:00, 12:00, 18:00
        (back, HistoryCause.EVENTS),  # day 2: silence at 00:00, then the event at 01:01
    ]
    assert [r.health.score for r in history[:2]] == [scores[1], scores[5]]
    # without a step (the sweep off), no silence rescorings at all
    quiet = compute_batch_effects([_login(t0 + 600), _login(back)], {}, {}, MODEL)
    assert quiet.silence_rescored == 0
    assert [r.scored_at for r in quiet.history()] == [t0 + 600, back]
    state = copy.deepcopy(effects.states[str(org)])
    assert next_silence_rescore(state, STEP) == t0 + 10 * STEP  # back + a step, on the grid
    # an event in the hour of the silence rescoring (00:01) waits for its decision
    soon = t0 + 2 * 86400 + 60
    waits = compute_batch_effects(
        [_login(t0 + 600), _login(soon)], {}, {}, MODEL, STEP, keep_scores=True
    )
    assert waits.scores[-1] == waits.silence_rescorings[-1]
    assert waits.states[str(org)].last_scored_at == t0 + 8 * STEP
    assert next_silence_rescore(waits.states[str(org)], STEP) == t0 + 10 * STEP


def test_a_late_event_does_not_rescore_the_same_silence_twice() -> None:
    """An event older than rescorings already made (late) is scored as of the newest."""
    t0 = T0.timestamp()
    org = uuid.UUID(ON_THE_HOUR)

    states: dict[str, OrganizationState] = {}
    compute_batch_effects([_login(t0)], states, {}, MODEL, STEP)
    swept = compute_silence_effects(states, t0 + 5 * STEP + 1, STEP, MODEL, keep_scores=True)
    assert [r.scored_at for r in swept.silence_rescorings] == [t0 + k * STEP for k in range(1, 6)]
    late = compute_batch_effects([_login(t0 + 2 * STEP)], states, {}, MODEL, STEP)
    assert late.silence_rescored == 0
    assert late.rescored[str(org)].scored_at == t0 + 5 * STEP
    state = states[str(org)]
    assert state.last_event_at == t0 + 2 * STEP and state.last_scored_at == t0 + 5 * STEP
    assert next_silence_rescore(state, STEP) == t0 + 6 * STEP
    again = compute_silence_effects(states, t0 + 7 * STEP + 1, STEP, MODEL, keep_scores=True)
    assert [r.scored_at for r in again.silence_rescorings] == [t0 + 6 * STEP, t0 + 7 * STEP]


def test_silence_is_rescored_for_a_year_at_most() -> None:
    """A first event decades old, then a current one: one year of silence rescorings,
    not one per grid point since (the contract admits events dated back to year 1)."""
    org = uuid.UUID(ON_THE_HOUR)
    ancient = datetime(1990, 1, 1, tzinfo=UTC).timestamp()
    assert ancient % STEP == 0

    now = T0.timestamp() + 600
    effects = compute_batch_effects(
        [_login(ancient), _login(now)], {}, {}, MODEL, STEP, keep_scores=True
    )
    times = [r.scored_at for r in effects.silence_rescorings]
    year = SILENCE_HORIZON // STEP  # grid points a year holds
    assert times == [ancient + k * STEP for k in range(1, int(year))]
    assert times[-1] < ancient + SILENCE_HORIZON <= times[-1] + STEP
    assert len(effects.history()) == 365 + 1  # the year's days, then the current event's
    assert effects.rescored[str(org)].scored_at == now
    # within the year the grid goes on; past it nothing is due, and the sweep agrees
    state = _state(T0.timestamp())
    assert next_silence_rescore(state, STEP) == T0.timestamp() + STEP
    late = _state(T0.timestamp(), T0.timestamp() + SILENCE_HORIZON - STEP)
    assert next_silence_rescore(late, STEP) is None
    states = {ON_THE_HOUR: _state(T0.timestamp())}
    swept = compute_silence_effects(states, T0.timestamp() + 3 * SILENCE_HORIZON, STEP, MODEL)
    assert swept.silence_rescored == year - 1
    assert next_silence_rescore(states[ON_THE_HOUR], STEP) is None
    assert (
        silence_rescore_times(states[ON_THE_HOUR], T0.timestamp() + 9 * SILENCE_HORIZON, STEP) == []
    )


def test_a_batch_is_cut_where_its_silence_rescorings_pass_the_budget() -> None:
    """Events a year apart each end a year of silence: the pipeline cuts the batch
    where the estimate passes its budget (never before the first event), and the
    sweep's per-organization limit leaves the rest due, to the same end."""
    start = datetime(1990, 1, 1, tzinfo=UTC).timestamp()

    year = SILENCE_HORIZON
    events = [_login(start + k * year) for k in range(6)]
    per_gap = int((year - STEP) // STEP) + 1  # the estimate of one year of silence
    assert silence_budget_index(events, {}, STEP, 10**9) is None
    assert silence_budget_index(events, {}, STEP, per_gap) == 2  # one gap fits, two do not
    assert silence_budget_index(events, {}, STEP, 0) == 1  # the first event ends no silence
    held = {ON_THE_HOUR: _state(start - year)}
    assert silence_budget_index(events, held, STEP, per_gap) == 1
    # the first event goes whatever it costs: never a cut before it
    assert silence_budget_index(events[:1], held, STEP, 0) is None
    # cutting there changes nothing: the same effects in two batches as in one
    whole: dict[str, OrganizationState] = {}
    one = compute_batch_effects(events, whole, {}, MODEL, STEP)
    parts: dict[str, OrganizationState] = {}
    first = compute_batch_effects(events[:2], parts, {}, MODEL, STEP)
    second = compute_batch_effects(events[2:], parts, {}, MODEL, STEP)
    assert first.silence_rescored + second.silence_rescored == one.silence_rescored
    assert encode_state(parts[ON_THE_HOUR]) == encode_state(whole[ON_THE_HOUR])
    # the sweep in pages of at most 500 per organization ends where one pass ends
    swept = {ON_THE_HOUR: _state(start)}
    limited = {ON_THE_HOUR: _state(start)}
    watermark = start + 2 * year
    all_at_once = compute_silence_effects(swept, watermark, STEP, MODEL)
    made = 0
    while times := silence_rescore_times(limited[ON_THE_HOUR], watermark, STEP):
        page = compute_silence_effects(limited, watermark, STEP, MODEL, limit=500)
        assert page.silence_rescored == min(500, len(times))
        made += page.silence_rescored
    assert made == all_at_once.silence_rescored
    assert encode_state(limited[ON_THE_HOUR]) == encode_state(swept[ON_THE_HOUR])


def _effects_seen(effects: BatchEffects) -> tuple[object, ...]:
    """Everything the store and the outbox read of a batch's effects, in its order."""
    return (
        {org: encode_state(state) for org, state in effects.states.items()},
        list(effects.rescored.items()),
        effects.history(),
        effects.alerts,
        effects.milestones,
        effects.misrouted,
        effects.silence_rescorings,
        effects.scores,
        effects.changed(),
        effects.applied,
        effects.silence_rescored,
    )


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("every", [1, 7, 60, 500])
def test_a_batch_computed_in_slices_makes_the_effects_of_one_computation(
    seed: int, every: int
) -> None:
    """The pipeline computes a batch that ends long silences a slice at a time
    (`silence_slices`, the event loop runs in between): the slices, computed one after
    another over the same states and merged, make exactly what one computation makes,
    in the same order; each slice ends at most `every` estimated rescorings, unless one
    event alone ends a longer silence."""
    log = _log(seed, organizations=12, events=400)
    held = _log(seed + 100, organizations=12, events=50)  # states the batch continues
    whole: dict[str, OrganizationState] = {}
    compute_batch_effects(held, whole, {}, MODEL, STEP)
    sliced = copy.deepcopy(whole)
    before = copy.deepcopy(whole)
    one = compute_batch_effects(log, whole, {}, MODEL, STEP, keep_scores=True)
    cuts = silence_slices(log, sliced, STEP, every)
    assert cuts == sorted(set(cuts)) and all(0 < cut < len(log) for cut in cuts)
    assert len(cuts) > 3, "the log ends too few silences to slice"
    merged: BatchEffects | None = None
    for start, end in itertools.pairwise([0, *cuts, len(log)]):
        part = log[start:end]
        # the estimate of each slice, from the states as they stand before it
        estimate = silence_budget_index(part, sliced, STEP, every)
        assert estimate is None or len(part) == 1, (start, end)
        effects = compute_batch_effects(part, sliced, {}, MODEL, STEP, keep_scores=True)
        merged = effects if merged is None else merged.merge(effects)
    assert merged is not None
    assert merged.silence_rescored > 0
    assert _effects_seen(merged) == _effects_seen(one)
    # fewer cuts with a larger slice, none past the whole batch's estimate
    total = sum(
        int((min(b, a + SILENCE_HORIZON) - a - STEP) // STEP) + 1 for a, b in _silences(log, before)
    )
    assert silence_slices(log, before, STEP, total) == []
    assert len(silence_slices(log, before, STEP, every * 4)) <= len(cuts)


def test_profile_events_count_the_silence_rescored_before_them() -> None:
    """A profile event moves no organization's newest event, but the silence before it
    is rescored (a CRM sync of dormant accounts): the plan counts that work at the
    profile event, and not again at the organization's next event, so such a batch is
    sliced and bounded like one of activity. Before, profile events counted nothing: a
    batch of them each ending a year of silence computed in one stretch, unbounded."""
    orgs = [uuid.UUID(int=(k + 1) * 7_919) for k in range(20)]
    states: dict[str, OrganizationState] = {}
    compute_batch_effects(
        [
            UsageEvent(
                event_id=uuid.uuid4(), organization_id=o, type=UsageType.LOGIN, occurred_at=T0
            )
            for o in orgs
        ],
        states,
        {},
        MODEL,
        STEP,
    )
    synced = T0 + timedelta(days=30)
    batch: list[ProfileEvent | UsageEvent] = [
        ProfileEvent(event_id=uuid.uuid4(), organization_id=o, occurred_at=synced) for o in orgs
    ]
    batch += [
        UsageEvent(
            event_id=uuid.uuid4(),
            organization_id=o,
            type=UsageType.LOGIN,
            occurred_at=synced + timedelta(hours=1),
        )
        for o in orgs
    ]
    whole = copy.deepcopy(states)
    one = compute_batch_effects(batch, whole, {}, MODEL, STEP)
    per_organization = one.silence_rescored // len(orgs)
    assert one.silence_rescored == per_organization * len(orgs) > 100
    # the estimate: each organization's 30 days at its profile event, within a point
    every = 5 * per_organization
    cuts, over = silence_plan(batch, states, STEP, every, 10**9)
    assert over is None
    assert cuts and all(cut <= len(orgs) for cut in cuts), cuts  # where the work is
    assert len(cuts) in (3, 4), cuts
    budget = one.silence_rescored // 2
    index = silence_budget_index(batch, states, STEP, budget)
    assert index is not None and abs(index - len(orgs) // 2) <= 1, index
    # computed in those slices, the same states and rescorings as at once
    sliced = copy.deepcopy(states)
    made = 0
    for start, end in itertools.pairwise([0, *cuts, len(batch)]):
        made += compute_batch_effects(batch[start:end], sliced, {}, MODEL, STEP).silence_rescored
    assert made == one.silence_rescored
    assert {o: encode_state(s) for o, s in sliced.items()} == {
        o: encode_state(s) for o, s in whole.items()
    }


def _silences(
    log: list[UsageEvent], states: dict[str, OrganizationState]
) -> list[tuple[float, float]]:
    """(newest event, next event) of each silence of a step or more that `log` ends."""
    last = {org: state.last_event_at for org, state in states.items()}
    found = []
    for event in log:
        org, t = str(event.organization_id), event.occurred_at.timestamp()
        newest = last.get(org)
        if newest is not None and t - newest > STEP:
            found.append((newest, t))
        if newest is None or t > newest:
            last[org] = t
    return found
