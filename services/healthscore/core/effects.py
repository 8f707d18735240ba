"""Gather-compute-apply, the compute part: a batch's events -> every effect.

Pure: no I/O and no clock. Given the locked state of every organization the
batch touches, the stored support interactions it touches, and the new
(deduplicated) events in partition order, it returns what the store must
write.

Each event is applied (its O(1) aggregate update) and, if it is a *decision
point*, the organization is rescored right after it: scored, its alert decided,
the score recorded (`last_score`, `daily_scores`, the history). An event is not
one only when it cannot matter to an alert: a usage event, in order, of a type
that cannot lower the score, with no new user and no milestone, of an idle,
calm organization (no episode, last churn probability below the exit
threshold) last scored in the same hour bucket (`DECISION_BUCKET`, at the
organization's grid phase) and the same day (`_can_wait`). Its decision waits:
the events applied since the last score are decided, as of the newest, before
a silence rescoring and before the first event of a later day
(`_decide_pending`), so each day's last event is a decision point and each
day's recorded score is the score after its last event, as when every event
was decided. The rule reads the event log and the state only, never where a
batch boundary fell: a replay that cuts the log into other batches makes the
same decisions. Whoever reads a score between decisions scores the state as of
its newest event (`current_as_of`: the read model, the shadow model), so every
event shows there.

Silence is rescored the same way, as a function of the log: an organization
is rescored at every point of its fixed event-time grid (every silence step,
at a phase set by its id) that lies at least one step after its newest event,
before its next one and within a year of it (`silence_rescore_times`,
`SILENCE_HORIZON`). Before applying an event, a batch
first rescores the grid points the organization went through in silence
(`compute_batch_effects` with `silence_step`); the sweep rescores the grid
points below the log's watermark for organizations that have not sent
anything since (`compute_silence_effects`). Either way each organization
sees the same sequence of events and silence rescorings, whoever runs them
and wherever the batches were cut.

The score history keeps one row per organization per event-time day (UTC):
the day's last score, which is the last decision point's (a decision point
of that day, or a silence rescoring). A batch hands the store each
organization's last score of every day it scored (`BatchEffects.history`); the
store keeps, per day, the one with the latest as-of time. An organization's
as-of times never go back, so whatever the batch cuts, each day ends with the
same row: the score after the day's last event once a later event or a
silence rescoring has come, the day's last decision point's until then.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from healthscore.core.enums import HistoryCause
from healthscore.core.events import Event, ProfileEvent, SupportEvent, UsageEvent
from healthscore.core.interactions import InteractionRecord, merge_interaction
from healthscore.core.milestones import MilestoneCrossing
from healthscore.core.scoring.aggregate import (
    apply_interaction,
    apply_profile_event,
    apply_usage,
    new_state,
)
from healthscore.core.scoring.alerts import evaluate_alert
from healthscore.core.scoring.model import DAY, ScoreModel
from healthscore.core.scoring.results import AlertDecision, HealthScore
from healthscore.core.scoring.score import record_score, score
from healthscore.core.scoring.state import OrganizationState

# The event-time bucket of the decision rule (`compute_batch_effects`): an idle,
# calm organization's events that cannot lower its score are decided at least
# once per bucket of its activity. An hour: what goes unseen meanwhile is the
# score's drift with time alone (decay, tenure, windows), a fraction of a point
# an hour, which for a silent organization goes unseen for a whole silence step
# (6 hours by default); and the alert persistence of the shipped model is 96 hours.
DECISION_BUCKET = 3600.0

# Silence is rescored for a year after an organization's newest event, no longer: by
# then every shipped model's score has all but settled, and the work one valid event
# can cause stays bounded (the contract admits events dated back to year 1; a first
# event centuries old followed by a current one would otherwise be rescored at every
# grid point in between, in one batch).
SILENCE_HORIZON = 365 * DAY


@dataclass(frozen=True, slots=True)
class RaisedAlert:
    organization_id: str
    decision: AlertDecision
    health: HealthScore
    scored_at: float
    caused_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rescored:
    """A score the batch made: the organization's last one, a silence rescoring, a day's last."""

    organization_id: str
    health: HealthScore
    previous_score: float | None
    scored_at: float
    cause: HistoryCause


@dataclass
class BatchEffects:
    states: dict[str, OrganizationState] = field(default_factory=dict)
    interactions: dict[str, InteractionRecord] = field(default_factory=dict)
    milestones: list[tuple[str, MilestoneCrossing]] = field(default_factory=list)
    # each organization's last score of the batch (the read model and the state)
    rescored: dict[str, Rescored] = field(default_factory=dict)
    # with keep_scores: every silence rescoring, in the order made; otherwise only
    # counted (a page of the sweep makes tens of thousands, and the history keeps
    # one a day of them)
    silence_rescorings: list[Rescored] = field(default_factory=list)
    # with keep_scores: every score the batch made (decision points and silence
    # rescorings), in order; off in the service, which reads none of them (kept,
    # a batch's thousands of scores outlive their event and the collector walks them)
    scores: list[Rescored] = field(default_factory=list)
    keep_scores: bool = False
    # (organization, event-time day: days since the epoch, UTC) -> its last score that day
    daily: dict[tuple[str, int], Rescored] = field(default_factory=dict)
    alerts: list[RaisedAlert] = field(default_factory=list)
    misrouted: list[tuple[SupportEvent, str]] = field(default_factory=list)
    applied: int = 0
    _applied_per_org: dict[str, int] = field(default_factory=dict, repr=False)
    _silence_per_org: dict[str, int] = field(default_factory=dict, repr=False)

    def without(self, organizations: set[str]) -> BatchEffects:
        """These effects less those of `organizations` (their events are computed again).

        Every effect belongs to one organization, so the rest stay exactly as
        computed: a batch that finds some organizations' state changed by another
        writer recomputes only theirs (`healthscore.service.ingest.pipeline`).
        """
        return BatchEffects(
            states={o: s for o, s in self.states.items() if o not in organizations},
            interactions={
                k: r for k, r in self.interactions.items() if r.organization_id not in organizations
            },
            milestones=[(o, m) for o, m in self.milestones if o not in organizations],
            rescored={o: r for o, r in self.rescored.items() if o not in organizations},
            silence_rescorings=[
                r for r in self.silence_rescorings if r.organization_id not in organizations
            ],
            scores=[r for r in self.scores if r.organization_id not in organizations],
            keep_scores=self.keep_scores,
            daily={k: r for k, r in self.daily.items() if k[0] not in organizations},
            alerts=[a for a in self.alerts if a.organization_id not in organizations],
            misrouted=[
                (e, owner)
                for e, owner in self.misrouted
                if str(e.organization_id) not in organizations
            ],
            applied=self.applied - sum(self._applied_per_org.get(o, 0) for o in organizations),
            _applied_per_org={
                o: n for o, n in self._applied_per_org.items() if o not in organizations
            },
            _silence_per_org={
                o: n for o, n in self._silence_per_org.items() if o not in organizations
            },
        )

    def merge(self, other: BatchEffects) -> BatchEffects:
        """These effects and `other`'s: of disjoint organizations, or of the events
        that followed these over the same states and interactions (`silence_slices`)."""
        self.states.update(other.states)
        self.interactions.update(other.interactions)
        self.milestones.extend(other.milestones)
        self.rescored.update(other.rescored)
        self.silence_rescorings.extend(other.silence_rescorings)
        self.scores.extend(other.scores)
        self.daily.update(other.daily)
        self.alerts.extend(other.alerts)
        self.misrouted.extend(other.misrouted)
        self.applied += other.applied
        for org, n in other._applied_per_org.items():
            self._applied_per_org[org] = self._applied_per_org.get(org, 0) + n
        for org, n in other._silence_per_org.items():
            self._silence_per_org[org] = self._silence_per_org.get(org, 0) + n
        return self

    @property
    def silence_rescored(self) -> int:
        """How many silence rescorings these effects made (kept or not)."""
        return sum(self._silence_per_org.values())

    def changed(self) -> list[str]:
        """The organizations whose state the batch changed: it applied an event or
        scored (an event that is not a decision point changes the state unscored)."""
        changed = dict.fromkeys(self.rescored)
        changed.update(dict.fromkeys(self._applied_per_org))
        return list(changed)

    def history(self) -> list[Rescored]:
        """The score history rows: each organization's last score of each day it was scored.

        One per (organization, day), so that one upsert statement can write them
        all (PostgreSQL refuses to update a row twice in one statement).
        """
        return list(self.daily.values())


class _Grid:
    """An organization's silence grid: every `step` of event time, at its own phase.

    In integer milliseconds, so that every grid point is computed one way
    (`at`) and compares with event times the same way in every run. The phase
    comes from the organization id: silent organizations fall due spread over
    the step, not all at once (the sweep's work, and their alerts).
    """

    __slots__ = ("phase_ms", "step_ms")

    def __init__(self, organization_id: str, step: float) -> None:
        self.step_ms = max(1, round(step * 1000))
        # the id's 128 bits (a canonical UUID string, as every state holds)
        self.phase_ms = int(organization_id.replace("-", ""), 16) % self.step_ms

    def at(self, k: int) -> float:
        return (k * self.step_ms + self.phase_ms) / 1000

    def index_at_or_after(self, x: float) -> int:
        """The smallest k with at(k) >= x."""
        step, phase = self.step_ms, self.phase_ms
        k = math.ceil((x * 1000 - phase) / step)
        while (k * step + phase) / 1000 < x:  # at(k), inline: once per organization per batch
            k += 1
        while ((k - 1) * step + phase) / 1000 >= x:
            k -= 1
        return k


def _next_silence_index(state: OrganizationState, grid: _Grid, step: float) -> int | None:
    last_event = state.last_event_at
    if last_event is None:
        return None
    k = grid.index_at_or_after(last_event + step)
    scored = state.last_scored_at
    if scored is not None and grid.at(k) <= scored:
        k = grid.index_at_or_after(scored)
        if grid.at(k) <= scored:
            k += 1
    return k


def next_silence_rescore(state: OrganizationState, step: float) -> float | None:
    """Event time of the organization's next silence rescoring, if it stays silent.

    The first point of its grid (every `step`, at a phase set by its id) that
    is at least `step` after its newest event and later than its last score (a
    silence rescoring already made). Every store of a state records it as
    `rescore_due_at`.
    """
    grid = _Grid(state.organization_id, step)
    k = _next_silence_index(state, grid, step)
    if k is None:
        return None
    at = grid.at(k)
    assert state.last_event_at is not None
    return at if at < state.last_event_at + SILENCE_HORIZON else None


def silence_rescore_times(
    state: OrganizationState, until: float, step: float, limit: int | None = None
) -> list[float]:
    """The grid points before `until`, and within `SILENCE_HORIZON` of the newest event,
    at which the silent organization is due (oldest first; the first `limit` of them)."""
    last_event = state.last_event_at
    if last_event is None or until <= last_event + step:
        return []  # the common case, per event of an active organization: nothing due
    grid = _Grid(state.organization_id, step)
    first = _next_silence_index(state, grid, step)
    assert first is not None
    end = grid.index_at_or_after(min(until, last_event + SILENCE_HORIZON))
    if limit is not None:
        end = min(end, first + limit)
    return [grid.at(k) for k in range(first, end)]


def silence_budget_index(
    events: Sequence[Event],
    states: Mapping[str, OrganizationState],
    step: float,
    budget: int,
) -> int | None:
    """Where a batch of `events` passes `budget` silence rescorings: the index of the
    event before which to cut it (never 0: the first event goes, whatever its cost).

    An estimate from each organization's newest event (grid points a step apart in
    each silence the events end, within `SILENCE_HORIZON`), enough to bound what one
    transaction computes and holds: every event may end a year of silence, and the
    decisions do not depend on where a batch is cut.
    """
    return silence_plan(events, states, step, budget, budget)[1]


def silence_slices(
    events: Sequence[Event],
    states: Mapping[str, OrganizationState],
    step: float,
    every: int,
) -> list[int]:
    """Where to cut `events` into consecutive parts of about `every` silence rescorings
    each (the estimate of `silence_budget_index`; an event that ends a longer silence
    starts a part of its own): the indexes each later part starts at, ascending.

    Computing the parts one after another over the same states and interactions
    makes exactly the effects of computing them at once, merged (`BatchEffects.merge`):
    it is the same loop, stopped in between.
    """
    return silence_plan(events, states, step, every)[0]


def silence_plan(
    events: Sequence[Event],
    states: Mapping[str, OrganizationState],
    step: float,
    every: int,
    budget: int | None = None,
) -> tuple[list[int], int | None]:
    """`silence_slices` and `silence_budget_index` in one walk of `events`: the slices'
    cuts before the budget is passed, and where it is (None: never).

    A profile event is not activity (it moves no organization's newest event) but the
    silence before it is rescored all the same (`compute_batch_effects`): it is counted
    where it is rescored, and not again by the organization's next event.
    """
    last = {org: state.last_event_at for org, state in states.items()}
    # per organization, the time its silence is counted up to within this batch
    counted: dict[str, float] = {}
    cuts: list[int] = []
    start = work = total = 0
    for index, event in enumerate(events):
        org = str(event.organization_id)
        t = event.occurred_at.timestamp()
        newest = last.get(org)
        if not isinstance(event, ProfileEvent) and (newest is None or t > newest):
            last[org] = t
        if newest is None or t <= newest:
            continue
        since = max(newest + step, counted.get(org, newest))
        until = min(t, newest + SILENCE_HORIZON)
        silent = until - since
        if silent <= 0:
            continue
        counted[org] = until
        rescorings = int(silent // step) + 1
        total += rescorings
        if budget is not None and total > budget and index > 0:
            return cuts, index
        if work + rescorings > every and index > start:
            cuts.append(index)
            start, work = index, 0
        work += rescorings
    return cuts, None


def _rescore_silence(
    state: OrganizationState,
    times: list[float],
    model: ScoreModel,
    effects: BatchEffects,
) -> None:
    """Rescore `state` at each of `times` (its silence rescorings), in order."""
    _decide_pending(state, model, effects)
    org = state.organization_id
    for as_of in times:
        _rescore(state, as_of, model, effects, state.last_score, HistoryCause.SWEEP, False)
        if effects.keep_scores:
            effects.silence_rescorings.append(effects.rescored[org])
    effects._silence_per_org[org] = effects._silence_per_org.get(org, 0) + len(times)


def _rescore(
    state: OrganizationState,
    as_of: float,
    model: ScoreModel,
    effects: BatchEffects,
    before: float | None,
    cause: HistoryCause,
    explain: bool,
) -> None:
    previous = state.last_score
    health = score(state, as_of, model, explain=explain)
    decision = evaluate_alert(state, previous, health, as_of, model)
    if decision is not None and not explain:
        health = score(state, as_of, model)  # the alert says why
    record_score(state, health, as_of)
    if decision is not None:
        effects.alerts.append(
            RaisedAlert(
                organization_id=state.organization_id,
                decision=decision,
                health=health,
                scored_at=as_of,
                caused_by=tuple(state.recent_event_ids[-20:]),
            )
        )
    rescored = Rescored(
        organization_id=state.organization_id,
        health=health,
        previous_score=before,
        scored_at=as_of,
        cause=cause,
    )
    effects.rescored[state.organization_id] = rescored
    if effects.keep_scores:
        effects.scores.append(rescored)
    # as-of times never go back (see compute_batch_effects): the last one assigned is
    # the day's latest
    effects.daily[(state.organization_id, int(as_of // DAY))] = rescored


def compute_batch_effects(
    events: Iterable[Event],
    states: dict[str, OrganizationState],
    interactions: dict[str, InteractionRecord],
    model: ScoreModel,
    silence_step: float | None = None,
    decision_bucket: float | None = DECISION_BUCKET,
    keep_scores: bool = False,
) -> BatchEffects:
    """Apply `events` (deduplicated, in partition order) to the given state.

    With `silence_step`, an organization that was silent for a step or more
    before an event is first rescored at the grid points in between. Each event
    is applied; it is then rescored (its alert decided, its score recorded) if
    it is a decision point (`_can_wait`), which depends on the log and the state
    only. With `decision_bucket` None every event is one (the reference the
    rule's tests compare with). With `keep_scores`, `BatchEffects.scores` lists
    every score made (the lab's replay records them all).
    """
    effects = BatchEffects(states=states, interactions=interactions, keep_scores=keep_scores)
    lowering = _lowering_usage_types(model)
    for event in events:
        org = str(event.organization_id)
        state = states.get(org)
        if state is None:
            state = states[org] = new_state(org)
        if isinstance(event, UsageEvent):
            t = event.occurred_at.timestamp()
            if silence_step is not None:
                _silence_before(state, t, silence_step, model, effects)
            # `_end_day` and the first check of `_can_wait` inline: they run for
            # every usage event, and most events of a sparse stream stop there
            scored = state.last_scored_at
            newest = state.last_event_at
            if (
                scored is not None
                and newest is not None
                and scored < newest
                and t // DAY > newest // DAY
            ):
                _decide(state, model, effects)
                scored = state.last_scored_at
            waits = (
                decision_bucket is not None
                and scored is not None
                and t - scored < decision_bucket
                and _can_wait(state, event, t, lowering, model, decision_bucket)
            )
            crossings = apply_usage(state, event, model)
            for crossing in crossings:
                effects.milestones.append((org, crossing))
            if crossings:
                waits = False
        elif isinstance(event, SupportEvent):
            key = str(event.interaction_id)
            current = interactions.get(key)
            if current is not None and current.organization_id != org:
                # An interaction never moves between organizations; applying it
                # would corrupt two organizations' support aggregates.
                effects.misrouted.append((event, current.organization_id))
                continue
            t = event.occurred_at.timestamp()
            if silence_step is not None:
                _silence_before(state, t, silence_step, model, effects)
            _end_day(state, t, model, effects)
            waits = False
            merged = merge_interaction(current, event)
            interactions[key] = merged
            apply_interaction(state, current, merged, event, model)
        elif isinstance(event, ProfileEvent):
            t = event.occurred_at.timestamp()
            if silence_step is not None:
                _silence_before(state, t, silence_step, model, effects)
            _end_day(state, t, model, effects)
            apply_profile_event(state, event)
            # a decision point (the score moves with tenure and milestones); an
            # organization not seen in events yet gets its score at its first event
            waits = state.last_event_at is None
        else:
            raise TypeError(f"not an event of the core: {type(event).__name__}")
        effects.applied += 1
        effects._applied_per_org[org] = effects._applied_per_org.get(org, 0) + 1
        if waits:
            continue  # applied, decided later (`_decide_pending`)
        # as of the newest event, or of a later silence rescoring (`_decide`, inline)
        as_of = state.last_event_at
        assert as_of is not None
        scored = state.last_scored_at
        if scored is not None and scored > as_of:
            as_of = scored
        _rescore(state, as_of, model, effects, state.last_score, HistoryCause.EVENTS, False)
    return effects


def _lowering_usage_types(model: ScoreModel) -> frozenset[str]:
    """The usage types the model counts against the organization (contraction signals)."""
    return frozenset(kind for kind, weight in model.negative_signal_weights.items() if weight > 0)


def _can_wait(
    state: OrganizationState,
    event: UsageEvent,
    t: float,
    lowering: frozenset[str],
    model: ScoreModel,
    bucket: float,
) -> bool:
    """Whether the usage event at `t`, about to be applied, is *not* a decision point.

    Decided before applying it (a new user is known only then), from the event
    and the state: so on every run of the log. It passes only when it can neither
    lower the score nor come near an alert (cheapest checks first):

    - its type is not one the model counts against the organization, and it is
      in order: at or after the newest event (a late event can lower the
      activity ratio) and after the last score (so the state knows it is
      undecided: `last_event_at > last_scored_at`);
    - it brings no new user (a new user lowers the logins per user);
    - the organization is idle and calm: in no alert episode, not counting the
      time above the enter threshold, and its last churn probability below
      the exit threshold (below the enter one): the event can only raise the
      score, so a raise could come only of the score's drift with time;
    - the last score lies in the same event-time bucket (`bucket` seconds, on
      the organization's silence-grid phase) and on the same UTC day.

    A milestone the event crosses makes it a decision point too (checked once
    applied, in `compute_batch_effects`).
    """
    scored = state.last_scored_at
    newest = state.last_event_at
    if scored is None or newest is None or t < newest or t <= scored:
        return False
    # a bucket or more after the last score (most events of a sparse stream): not in its bucket
    if t - scored >= bucket or int(t // DAY) != int(scored // DAY):
        return False
    if event.type in lowering:
        return False
    alert = state.alert
    probability = state.last_churn_probability
    if (
        alert.in_episode
        or alert.above_since is not None
        or probability is None
        or probability >= model.alerts.exit_probability
    ):
        return False
    user = event.user_id
    if user is not None and str(user) not in state.users:
        return False
    grid = _Grid(state.organization_id, bucket)
    k = grid.index_at_or_after(scored)
    if grid.at(k) <= scored:
        k += 1
    return t < grid.at(k)  # before the first bucket start after the last score


def _decide(state: OrganizationState, model: ScoreModel, effects: BatchEffects) -> None:
    """Rescore `state` as of its newest event (or a later silence rescoring)."""
    assert state.last_event_at is not None
    # as of the newest event, or of a later silence rescoring: an event older
    # than those (late) must not move the score back to before them
    as_of = state.last_event_at
    if state.last_scored_at is not None and state.last_scored_at > as_of:
        as_of = state.last_scored_at
    # previous_score: the organization's last score before this decision, not the
    # batch's, so that it does not depend on where the batch boundaries fell (replay).
    # Only the numbers: the explanations are computed where they are read
    # (an alert here, the read model in the projector).
    _rescore(state, as_of, model, effects, state.last_score, HistoryCause.EVENTS, explain=False)


def _decide_pending(state: OrganizationState, model: ScoreModel, effects: BatchEffects) -> None:
    """Decide the events applied since the last score, if any, as of the newest.

    Before a silence rescoring and before the first event of a later day: the
    day's last event is then a decision point, so each day's history row and
    `daily_scores` entry is the score after the day's last event, as when every
    event was decided (the later days' 7- and 30-day changes read them).
    """
    scored = state.last_scored_at
    newest = state.last_event_at
    if scored is not None and newest is not None and newest > scored:
        _decide(state, model, effects)


def _end_day(state: OrganizationState, t: float, model: ScoreModel, effects: BatchEffects) -> None:
    """Before the event at `t`: decide the pending events if `t` is on a later day."""
    scored = state.last_scored_at
    newest = state.last_event_at
    if scored is not None and newest is not None and newest > scored and t // DAY > newest // DAY:
        _decide(state, model, effects)


def _silence_before(
    state: OrganizationState,
    t: float,
    step: float,
    model: ScoreModel,
    effects: BatchEffects,
) -> None:
    """Rescore the silence due before an event at `t`."""
    times = silence_rescore_times(state, t, step)
    if times:
        _rescore_silence(state, times, model, effects)


def compute_silence_effects(
    states: dict[str, OrganizationState],
    watermark: float,
    step: float,
    model: ScoreModel,
    keep_scores: bool = False,
    limit: int | None = None,
) -> BatchEffects:
    """The sweep: rescore silent organizations at every due grid point below `watermark`
    (at most `limit` of them each: the rest stay due, for the next pass).

    `watermark` is an event time no event still to come precedes (see
    `healthscore.service.sweep`), so none of these rescorings can come out of order
    with a later event of the organization. The last rescoring of each
    organization carries its risk factors (the read model shows them).
    Organizations with nothing due are left out of `rescored`.
    """
    effects = BatchEffects(states=states, keep_scores=keep_scores)
    for state in states.values():
        times = silence_rescore_times(state, watermark, step, limit)
        if times:
            _rescore_silence(state, times, model, effects)
    return effects
