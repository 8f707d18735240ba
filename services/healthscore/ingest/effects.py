"""Gather-compute-apply, the compute part: a batch's events -> every effect.

Pure: no I/O and no clock. Given the locked state of every organization the
batch touches, the stored support interactions it touches, and the new
(deduplicated) events in partition order, it returns what the store must
write. Each event is applied and the organization rescored right after it,
so an alert decision never depends on where a batch boundary fell: a replay
that cuts the log into other batches makes the same decisions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from healthscore.contracts import SupportEvent, UsageEvent
from healthscore.contracts.enums import HistoryCause
from healthscore.interactions import InteractionRecord, merge_interaction
from healthscore.milestones import MilestoneCrossing
from healthscore.scoring.aggregate import apply_interaction, apply_usage, new_state
from healthscore.scoring.alerts import AlertDecision, evaluate_alert
from healthscore.scoring.model import ScoreModel
from healthscore.scoring.score import HealthScore, record_score, score
from healthscore.scoring.state import OrganizationState


@dataclass(frozen=True, slots=True)
class RaisedAlert:
    organization_id: str
    decision: AlertDecision
    health: HealthScore
    scored_at: float
    caused_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rescored:
    """The organization's score after the batch, for the read model."""

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
    rescored: dict[str, Rescored] = field(default_factory=dict)
    alerts: list[RaisedAlert] = field(default_factory=list)
    misrouted: list[tuple[SupportEvent, str]] = field(default_factory=list)
    applied: int = 0


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
    effects.rescored[state.organization_id] = Rescored(
        organization_id=state.organization_id,
        health=health,
        previous_score=before,
        scored_at=as_of,
        cause=cause,
    )


def compute_batch_effects(
    events: Iterable[UsageEvent | SupportEvent],
    states: dict[str, OrganizationState],
    interactions: dict[str, InteractionRecord],
    model: ScoreModel,
) -> BatchEffects:
    """Apply `events` (deduplicated, in partition order) to the given state."""
    effects = BatchEffects(states=states, interactions=interactions)
    events = list(events)
    # the organization's last event of the batch is scored with its risk
    # factors (what the read model shows); the others only need the numbers
    last_of = {str(event.organization_id): index for index, event in enumerate(events)}
    # organizations whose last applied score carries its risk factors already
    explained: set[str] = set()
    for index, event in enumerate(events):
        org = str(event.organization_id)
        state = states.get(org)
        if state is None:
            state = states[org] = new_state(org)
        if isinstance(event, UsageEvent):
            for crossing in apply_usage(state, event, model):
                effects.milestones.append((org, crossing))
        else:
            key = str(event.interaction_id)
            current = interactions.get(key)
            if current is not None and current.organization_id != org:
                # An interaction never moves between organizations; applying it
                # would corrupt two organizations' support aggregates.
                effects.misrouted.append((event, current.organization_id))
                continue
            merged = merge_interaction(current, event)
            interactions[key] = merged
            apply_interaction(state, current, merged, event, model)
        effects.applied += 1
        assert state.last_event_at is not None
        # previous_score: the score before this event, not before the batch, so
        # that it does not depend on where the batch boundaries fell (replay)
        # per event only the numbers (alert decisions must not depend on batch
        # boundaries); the risk factors once per organization, below
        explain = last_of[org] == index
        if explain:
            explained.add(org)
        _rescore(
            state,
            state.last_event_at,
            model,
            effects,
            state.last_score,
            HistoryCause.EVENTS,
            explain=explain,
        )
    for org, rescored in effects.rescored.items():
        if org not in explained:
            # its last event of the batch was rejected (misrouted): explain the
            # score of the last event that was applied
            effects.rescored[org] = replace(
                rescored, health=score(states[org], rescored.scored_at, model)
            )
    return effects


def compute_silence_effects(
    states: dict[str, OrganizationState], as_of: float, model: ScoreModel
) -> BatchEffects:
    """Rescore quiet organizations at `as_of` (the sweep): time itself is the input."""
    effects = BatchEffects(states=states)
    for state in states.values():
        _rescore(state, as_of, model, effects, state.last_score, HistoryCause.SWEEP, explain=True)
    return effects
