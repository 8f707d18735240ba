"""Score quality, pure: a candidate model scored beside the live one, and how their
alert episodes differ.

Definitions shared by the offline evaluation (`healthscore evaluate --candidate`,
the lab's `evaluation/compare.py`) and the service (shadow scoring, its report):

- An **episode** is one `risk_raised` (the contract's episodes: one raise each).
- **Matching** (`compare_raises`): per organization, each live raise is matched
  with the candidate's nearest one within `window_days` (each used once, nearest
  first). A match is *moved* by the difference in days (negative: the candidate
  warns earlier); a live raise without a match is *dropped*, a candidate raise
  without one *added*.
- An episode's **outcome** (`ALERT_HORIZON_DAYS`): *churned* when the organization
  churns within 60 days after the raise, *retained* when it does not and that is
  known. The service labels its live alerts with the same rule in SQL
  (`healthscore.store.quality`).

**Shadow scoring** (`shadow_score`): the candidate scores the live state's
aggregates at the live state's last score time. Only what a model's own scores
shape is the candidate's own (`ShadowState`: its daily scores, for the 7- and
30-day changes and the drop rule, its last score and its alert episode state);
everything else is the live state's. The aggregates were accumulated under the
live model's half-lives and signal weights (`aggregates_differ` says when a
candidate would have accumulated them differently).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid5

import msgspec

from healthscore.core.scoring.alerts import evaluate_alert
from healthscore.core.scoring.model import DAY, ScoreModel
from healthscore.core.scoring.results import AlertDecision, HealthScore
from healthscore.core.scoring.score import record_score, score
from healthscore.core.scoring.state import AlertState, OrganizationState, current_as_of

# a candidate raise this close to a live one is the same episode, moved
WINDOW_DAYS = 14.0
# an episode is true when the organization churns within this long after the raise
ALERT_HORIZON_DAYS = 60.0


@dataclass(frozen=True, slots=True)
class RaiseChanges:
    """How a candidate's raises of one organization differ from the live ones."""

    added: list[float] = field(default_factory=list)  # candidate raise times, unmatched
    dropped: list[float] = field(default_factory=list)  # live raise times, unmatched
    moved_days: list[float] = field(default_factory=list)  # candidate - live, non-zero

    @property
    def changed(self) -> bool:
        return bool(self.added or self.dropped or self.moved_days)


def compare_raises(
    live: Iterable[float], candidate: Iterable[float], window_days: float = WINDOW_DAYS
) -> RaiseChanges:
    """Match one organization's raise times (POSIX seconds), nearest first."""
    ours, theirs = list(live), list(candidate)
    pairs = sorted(
        (abs(b - a), a, b) for a in ours for b in theirs if abs(b - a) <= window_days * DAY
    )
    matched_a: set[float] = set()
    matched_b: set[float] = set()
    shifts: list[float] = []
    for _gap, a, b in pairs:
        if a in matched_a or b in matched_b:
            continue
        matched_a.add(a)
        matched_b.add(b)
        shifts.append(round((b - a) / DAY, 2))
    return RaiseChanges(
        added=[b for b in theirs if b not in matched_b],
        dropped=[a for a in ours if a not in matched_a],
        moved_days=[s for s in shifts if s != 0.0],
    )


def median(values: list[float]) -> float | None:
    """The upper median (the offline report's), None when empty."""
    return sorted(values)[len(values) // 2] if values else None


def churned_within_horizon(raised_at: float, churned_at: float | None) -> bool:
    """Whether an episode raised at `raised_at` is true (churn within the horizon)."""
    return churned_at is not None and raised_at < churned_at <= raised_at + ALERT_HORIZON_DAYS * DAY


class ShadowState(msgspec.Struct):
    """What a candidate model keeps of its own past for one organization."""

    daily_scores: dict[str, float] = msgspec.field(default_factory=dict)
    last_score: float | None = None
    last_scored_at: float | None = None
    alert: AlertState = msgspec.field(default_factory=AlertState)


@dataclass(frozen=True, slots=True)
class ShadowScore:
    health: HealthScore
    scored_at: float
    decision: AlertDecision | None
    state: ShadowState


def start_shadow(live: OrganizationState) -> ShadowState:
    """A candidate's first look at an organization: no scores of its own yet, and the
    live episode state (an organization in a live episode is in one for the candidate
    too, so that joining mid-episode does not count as a new raise)."""
    return ShadowState(alert=msgspec.structs.replace(live.alert))


def shadow_score(
    live: OrganizationState,
    shadow: ShadowState | None,
    model: ScoreModel,
    changed: bool = False,
) -> ShadowScore | None:
    """The candidate's score of `live` as of its newest event or last score
    (`current_as_of`), with the alert the candidate would decide; None when there
    is nothing new to score: `live` stands where the candidate last scored it and,
    unless `changed` (the state was written since), is the state it scored then.
    A state can change without standing later: a profile (`organization.profile.v1`)
    or a late event is decided as of the newest event, as the live model does."""
    as_of = current_as_of(live)
    if as_of is None:
        return None
    own = shadow if shadow is not None else start_shadow(live)
    scored = own.last_scored_at
    if scored is not None and (scored > as_of or (scored == as_of and not changed)):
        return None
    state = msgspec.structs.replace(
        live,
        daily_scores=dict(own.daily_scores),
        last_score=own.last_score,
        last_scored_at=own.last_scored_at,
        alert=msgspec.structs.replace(own.alert),
    )
    health = score(state, as_of, model, explain=False)
    decision = evaluate_alert(state, state.last_score, health, as_of, model)
    record_score(state, health, as_of)
    return ShadowScore(
        health=health,
        scored_at=as_of,
        decision=decision,
        state=ShadowState(
            daily_scores=state.daily_scores,
            last_score=state.last_score,
            last_scored_at=state.last_scored_at,
            alert=state.alert,
        ),
    )


def shadow_alert_id(decision: AlertDecision, candidate_version: str) -> UUID:
    """The id of a candidate's alert: derived from the id a live alert of the same
    organization, episode and kind would have, and the candidate's version, so that
    it is never a live alert's id."""
    return uuid5(decision.alert_id, f"shadow:{candidate_version}")


AGGREGATE_SETTINGS = ("half_life_days", "signals")


def aggregate_settings(model: ScoreModel) -> dict[str, Any]:
    """The settings under which a model accumulates the state's aggregates (plain
    JSON values): two models with the same ones build the same decayed sums."""
    return {name: msgspec.to_builtins(getattr(model, name)) for name in AGGREGATE_SETTINGS}


def scoring_settings(model: ScoreModel) -> dict[str, Any]:
    """Every setting a model scores by (plain JSON values): the model without what only
    documents it (changelog, evaluation)."""
    settings: dict[str, Any] = msgspec.to_builtins(
        msgspec.structs.replace(model, changelog=[], evaluation=None)
    )
    return settings


def scoring_differs(one: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """The settings (`scoring_settings`) that differ between two models, by name."""
    return sorted(name for name in one.keys() | other.keys() if one.get(name) != other.get(name))


def settings_differ(one: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """The aggregate settings (`aggregate_settings`) that differ between two models."""
    return [name for name in AGGREGATE_SETTINGS if one.get(name) != other.get(name)]


def aggregates_differ(live: ScoreModel, candidate: ScoreModel) -> list[str]:
    """Settings under which the candidate would have accumulated the state's
    aggregates differently from the live model (empty: shadow scores are exact)."""
    return settings_differ(aggregate_settings(live), aggregate_settings(candidate))


_shadow_encoder = msgspec.json.Encoder()
_shadow_decoder = msgspec.json.Decoder(ShadowState)


def encode_shadow(state: ShadowState) -> bytes:
    return _shadow_encoder.encode(state)


def decode_shadow(raw: bytes | str) -> ShadowState:
    return _shadow_decoder.decode(raw)


# the held-out figures a model config carries (`healthscore fit` and `adapt` write
# them under evaluation.held_out) that the dashboard shows: ranking, calibration and
# the alert targets of issue 13
BACKTEST_FIGURES = (
    "auc_30d_churn_probability",
    "brier_skill_vs_base_rate",
    "recall",
    "median_lead_days",
    "false_alerts_per_100_healthy_per_month",
    "precision",
)


def backtest(model: ScoreModel) -> dict[str, Any]:
    """What `model` was accepted on: where its held-out figures come from, on how many
    organizations, and those of `BACKTEST_FIGURES` it has (a finite number each; a
    model written by hand has none, and says so by an empty `figures`)."""
    evaluation = model.evaluation or {}
    held_out = evaluation.get("held_out")
    figures: dict[str, float] = {}
    if isinstance(held_out, Mapping):
        for name in BACKTEST_FIGURES:
            value = held_out.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                figures[name] = float(value)
    source = evaluation.get("source")
    organizations = evaluation.get("held_out_organizations")
    return {
        "source": source if isinstance(source, str) else None,
        "held_out_organizations": organizations
        if isinstance(organizations, int) and not isinstance(organizations, bool)
        else None,
        "figures": figures,
    }
