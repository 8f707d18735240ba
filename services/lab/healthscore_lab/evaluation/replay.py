"""Drive the service's pure core over a labelled log, recording what evaluation needs.

The events go through `compute_batch_effects` one at a time (with the silence
step, as `serve` runs), and at every daily as-of point `compute_silence_effects`
makes the silence rescorings due below it, as the sweep does below the log's
watermark: each organization sees exactly the sequence of events and silence
rescorings the service would make, so the alerts are the service's alerts.
Batches of one event are the same as any other cut (the core's decisions do not
depend on batch boundaries). No broker, no database.

Recorded:

- a *snapshot* per organization and as-of point (00:00 UTC of each day from
  `warmup_days` after the first event to the last event): the score, churn
  probability, components and 30-day change `score()` gives as of that time,
  and the raw measures (`scoring.measure`); organizations that have sent no
  event yet or churned already are left out;
- the *path*: every rescoring (the decision points among the events, and
  silence), its time, score and probability (the alert state machine's input,
  for `fit` to try thresholds; which events are decision points depends on the
  replayed model's alert exit threshold, so other alert settings are tried on
  that model's decision points);
- every alert, with its trigger;
- the score before and after each event that closed an escalated interaction
  or a cancellation request (how much a closure moves the score at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from healthscore.contracts.enums import AlertKind
from healthscore.core.effects import BatchEffects, compute_batch_effects, compute_silence_effects
from healthscore.core.events import ProfileEvent, SupportEvent
from healthscore.core.interactions import InteractionRecord
from healthscore.core.scoring.aggregate import apply_profile, new_state
from healthscore.core.scoring.measure import MEASURES, measure
from healthscore.core.scoring.model import COMPONENTS, ScoreModel
from healthscore.core.scoring.score import score
from healthscore.core.scoring.state import OrganizationState, current_as_of
from healthscore_lab.evaluation.log import DAY, LabelledLog

DEFAULT_SILENCE_STEP = 21_600.0  # SILENCE_RESCORE_AFTER_SECONDS' default

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class AlertRow:
    org: int
    at: float
    kind: AlertKind
    episode: int
    risk_level: str
    trigger: str
    score: float
    probability: float


@dataclass
class Backtest:
    model_version: str
    orgs: list[str]
    churn: FloatArray  # per organization: churn time, NaN when retained
    first_seen: FloatArray  # per organization: its first event
    labels_until: float
    start: float  # the first event
    end: float  # the last event
    # snapshots
    snap_org: IntArray
    snap_at: FloatArray
    snap_score: FloatArray
    snap_probability: FloatArray
    snap_change_30d: FloatArray  # NaN when unknown
    snap_components: FloatArray  # (n, 5), COMPONENTS order
    snap_measures: FloatArray  # (n, len(MEASURES))
    # the path (every rescoring)
    path_org: IntArray
    path_at: FloatArray
    path_score: FloatArray
    path_probability: FloatArray
    alerts: list[AlertRow] = field(default_factory=list)
    closures: list[tuple[int, float, float, float]] = field(default_factory=list)

    def measure(self, name: str) -> FloatArray:
        return self.snap_measures[:, MEASURES.index(name)]

    def component(self, name: str) -> FloatArray:
        return self.snap_components[:, COMPONENTS.index(name)]


class _Recorder:
    def __init__(self, orgs: dict[str, int]) -> None:
        self.orgs = orgs
        self.path_org: list[int] = []
        self.path_at: list[float] = []
        self.path_score: list[float] = []
        self.path_probability: list[float] = []
        self.alerts: list[AlertRow] = []

    def effects(self, effects: BatchEffects) -> None:
        # every score in order (the decision points and the silence rescorings)
        for row in effects.scores:
            self.path_org.append(self.orgs[row.organization_id])
            self.path_at.append(row.scored_at)
            self.path_score.append(row.health.score)
            self.path_probability.append(row.health.churn_probability)
        for alert in effects.alerts:
            self.alerts.append(
                AlertRow(
                    org=self.orgs[alert.organization_id],
                    at=alert.scored_at,
                    kind=alert.decision.kind,
                    episode=alert.decision.episode,
                    risk_level=alert.health.risk_level.value,
                    trigger=alert.decision.trigger.value,
                    score=alert.health.score,
                    probability=alert.health.churn_probability,
                )
            )


def _is_strong(state: OrganizationState, interaction_id: str) -> bool:
    open_ = state.open_interactions.get(interaction_id)
    return open_ is not None and (
        open_.escalated
        or open_.priority == "urgent"
        or open_.interaction_type in ("escalation", "cancellation_request")
    )


def run_backtest(
    log: LabelledLog,
    model: ScoreModel,
    *,
    warmup_days: float = 14.0,
    silence_step: float | None = DEFAULT_SILENCE_STEP,
) -> Backtest:
    """Replay `log` through the pure core under `model` (see the module docstring)."""
    orgs: dict[str, int] = {}
    for org in log.churned_at:
        orgs.setdefault(org, len(orgs))
    for event in log.events:
        if not isinstance(event, ProfileEvent):  # profiles of others: as `log.profiles`'
            orgs.setdefault(str(event.organization_id), len(orgs))
    states: dict[str, OrganizationState] = {}
    for org, profile in log.profiles.items():
        if org in orgs:
            state = states[org] = new_state(org)
            apply_profile(state, profile.created_at, profile.milestones)
    interactions: dict[str, InteractionRecord] = {}
    recorder = _Recorder(orgs)
    churn = np.full(len(orgs), np.nan)
    for org, at in log.churned_at.items():
        if at is not None:
            churn[orgs[org]] = at
    first_seen = np.full(len(orgs), np.nan)

    snap_org: list[int] = []
    snap_at: list[float] = []
    snap_score: list[float] = []
    snap_probability: list[float] = []
    snap_change: list[float] = []
    snap_components: list[list[float]] = []
    snap_measures: list[tuple[float, ...]] = []
    closures: list[tuple[int, float, float, float]] = []

    start, end = log.first_event_at, log.last_event_at
    next_point = (math.floor(start / DAY) + 1) * DAY + warmup_days * DAY

    def snapshot(at: float) -> None:
        if silence_step is not None:
            recorder.effects(compute_silence_effects(states, at, silence_step, model, True))
        for org, state in states.items():
            index = orgs[org]
            if state.last_event_at is None or churn[index] <= at:  # NaN: never churns
                continue
            health = score(state, at, model, explain=False)
            snap_org.append(index)
            snap_at.append(at)
            snap_score.append(health.score)
            snap_probability.append(health.churn_probability)
            snap_change.append(math.nan if health.change_30d is None else health.change_30d)
            snap_components.append([health.components[name] for name in COMPONENTS])
            snap_measures.append(tuple(measure(state, at, model)))

    for event in log.events:
        org = str(event.organization_id)
        index = orgs.get(org)
        if index is None:
            continue  # a profile of an organization neither labelled nor seen
        t = event.occurred_at.timestamp()
        while t >= next_point and next_point <= end:
            snapshot(next_point)
            next_point += DAY
        if math.isnan(first_seen[index]) and not isinstance(event, ProfileEvent):
            first_seen[index] = t  # a profile is not activity
        closing = None
        known = states.get(org)
        if isinstance(event, SupportEvent) and known is not None:
            key = str(event.interaction_id)
            if _is_strong(known, key):
                # the score before it, events that were not decision points included
                as_of = current_as_of(known)
                before = None if as_of is None else score(known, as_of, model, explain=False).score
                closing = (key, before)
        effects = compute_batch_effects(
            [event], states, interactions, model, silence_step, keep_scores=True
        )
        recorder.effects(effects)
        if closing is not None:
            after = states[org]
            key, before = closing
            if key not in after.open_interactions and before is not None:
                assert after.last_score is not None
                closures.append((index, t, before, after.last_score))
    while next_point <= end:
        snapshot(next_point)
        next_point += DAY

    measures = np.array(snap_measures, dtype=float).reshape(-1, len(MEASURES))
    return Backtest(
        model_version=model.version,
        orgs=list(orgs),
        churn=churn,
        first_seen=first_seen,
        labels_until=log.labels_until,
        start=start,
        end=end,
        snap_org=np.array(snap_org, dtype=np.int64),
        snap_at=np.array(snap_at),
        snap_score=np.array(snap_score),
        snap_probability=np.array(snap_probability),
        snap_change_30d=np.array(snap_change),
        snap_components=np.array(snap_components, dtype=float).reshape(-1, len(COMPONENTS)),
        snap_measures=measures,
        path_org=np.array(recorder.path_org, dtype=np.int64),
        path_at=np.array(recorder.path_at),
        path_score=np.array(recorder.path_score),
        path_probability=np.array(recorder.path_probability),
        alerts=recorder.alerts,
        closures=closures,
    )
