"""O(1) updates of an organization's aggregate state, one event at a time.

Decayed sums (``state.decayed``) are expressed at a reference time: usage
signals at ``state.decay_ref``, support signals at ``state.support_decay_ref``.
Each topic moves only its own group's reference, so how the two topics
interleave across batches cannot change a single bit of the sums. Applying a
weight w at event time t to signal s with half-life h (ref = its group's):

- first event of the group: ref = t;
- t >= ref: every stored sum of the group is multiplied by 2**(-(t - ref)/h_s),
  ref = t, then w is added;
- t < decay_ref (late event): w * 2**(-(decay_ref - t)/h) is added and the
  reference stays put.

Either way the result equals the sum over events of w * 2**(-(ref - t_i)/h),
whatever the arrival order. Readers decay the stored values on to their as_of
(`decayed_value`, or `decayed_values` for all signals at once).

The cost per event is bounded by the number of signals (13), plus an
occasional prune of the user and feature maps when they reach their caps.
"""

from __future__ import annotations

import math
import unicodedata

from healthscore.core.enums import (
    MilestoneType,
    Sentiment,
    UsageType,
)
from healthscore.core.events import ProfileEvent, SupportEvent, UsageEvent
from healthscore.core.interactions import InteractionRecord, is_escalated, signals_given
from healthscore.core.milestones import MilestoneCrossing, crossed
from healthscore.core.scoring.model import DAY, SIGNALS, ScoreModel
from healthscore.core.scoring.state import (
    MAX_OPEN_INTERACTIONS,
    OpenBeyond,
    OpenInteraction,
    OrganizationState,
)

MAX_RECENT_EVENT_IDS = 20
MAX_USERS = 500
USER_RETENTION = 90 * DAY
USER_PRUNE_EVERY = 256  # usage events between prunes of users not seen in 90 days
MAX_FEATURES = 200
_TINY = 1e-12  # decayed sums below this are dropped to 0 (no denormal drift)

U = UsageType
VALUE_ACTIONS: frozenset[str] = frozenset(
    {
        U.CLIENT_ADDED,
        U.FORM_CREATED,
        U.FORM_SUBMITTED,
        U.JOURNEY_LAUNCHED,
        U.EMAIL_SENT,
        U.PAYMENT_RECEIVED,
        U.CONTRACT_SIGNED,
    }
)


def new_state(organization_id: str) -> OrganizationState:
    return OrganizationState(organization_id=organization_id)


SUPPORT_SIGNALS: frozenset[str] = frozenset(
    {"negative_sentiment", "complaints", "cancellation_requests", "escalations"}
)


# (signal, is a support signal) in SIGNALS order, so readers need no set lookups
_SIGNAL_GROUPS: tuple[tuple[str, bool], ...] = tuple(
    (signal, signal in SUPPORT_SIGNALS) for signal in SIGNALS
)


def _ref(state: OrganizationState, signal: str) -> float | None:
    return state.support_decay_ref if signal in SUPPORT_SIGNALS else state.decay_ref


def decayed_value(state: OrganizationState, signal: str, as_of: float, model: ScoreModel) -> float:
    """One decayed sum as of `as_of` (see `decayed_values`)."""
    return decayed_values(state, as_of, model)[signal]


def decayed_values(state: OrganizationState, as_of: float, model: ScoreModel) -> dict[str, float]:
    """Every signal's decayed sum as of `as_of`, in one pass (the score reads all
    ten after every event); never amplified when as_of precedes its reference."""
    stored = state.decayed
    half_lives = model.half_life_seconds
    usage_ref, support_ref = state.decay_ref, state.support_decay_ref
    values: dict[str, float] = {}
    for signal, support in _SIGNAL_GROUPS:
        value = stored.get(signal, 0.0)
        ref = support_ref if support else usage_ref
        if value == 0.0 or ref is None or as_of <= ref:
            values[signal] = value
        else:
            values[signal] = value * math.exp2(-(as_of - ref) / half_lives[signal])
    return values


def _advance(state: OrganizationState, t: float, model: ScoreModel, support: bool) -> None:
    """Move one group's reference forward to t (if newer), decaying its stored sums."""
    ref = state.support_decay_ref if support else state.decay_ref
    if ref is None or t > ref:
        if ref is not None:
            dt = t - ref
            half_lives = model.half_life_seconds
            decayed = state.decayed
            for signal, value in decayed.items():
                if (signal in SUPPORT_SIGNALS) is support:
                    value *= math.exp2(-dt / half_lives[signal])
                    decayed[signal] = value if value > _TINY else 0.0
        if support:
            state.support_decay_ref = t
        else:
            state.decay_ref = t


def _add(state: OrganizationState, signal: str, weight: float, t: float, model: ScoreModel) -> None:
    """Add weight at time t; call after _advance for this event's group."""
    if weight <= 0.0:
        return
    ref = _ref(state, signal)
    if ref is not None and t < ref:
        weight *= math.exp2(-(ref - t) / model.half_life_seconds[signal])
    state.decayed[signal] = state.decayed.get(signal, 0.0) + weight


def _touch(state: OrganizationState, t: float, event_id: str) -> None:
    if state.first_event_at is None or t < state.first_event_at:
        state.first_event_at = t
    if state.last_event_at is None or t > state.last_event_at:
        state.last_event_at = t
    state.event_count += 1
    _remember(state, event_id)


def _remember(state: OrganizationState, event_id: str) -> None:
    recent = state.recent_event_ids
    recent.append(event_id)
    if len(recent) > MAX_RECENT_EVENT_IDS:
        del recent[: len(recent) - MAX_RECENT_EVENT_IDS]


def _see_user(state: OrganizationState, user_id: str, t: float) -> None:
    users = state.users
    seen = users.get(user_id)
    if seen is not None:
        if t > seen:
            users[user_id] = t
        return
    users[user_id] = t
    if len(users) > MAX_USERS:
        _prune_users(state, t)


def _prune_users(state: OrganizationState, t: float) -> None:
    """Drop users not seen within 90 days of the newest event; over the cap, the
    oldest too, down to 90% of it, so the O(n) prune runs once per ~50 new users."""
    newest = state.last_event_at if state.last_event_at is not None else t
    horizon = newest - USER_RETENTION
    users = state.users
    if len(users) <= MAX_USERS:
        state.users = {uid: seen_at for uid, seen_at in users.items() if seen_at >= horizon}
        return
    kept = sorted(
        ((seen_at, uid) for uid, seen_at in users.items() if seen_at >= horizon),
        reverse=True,
    )[: MAX_USERS * 9 // 10]
    state.users = {uid: seen_at for seen_at, uid in kept}


def feature_name(feature: str) -> str:
    """A feature as the adoption breadth counts it: "Reports", "reports " and "reports"
    are one feature (producers differ in case and spacing), in Unicode NFC ("café" one
    way); "" when nothing is left (no feature)."""
    if feature.isascii():
        return feature.strip().lower()
    return unicodedata.normalize("NFC", feature).strip().casefold()


def _use_feature(state: OrganizationState, feature: str, t: float) -> None:
    features = state.features
    entry = features.get(feature)
    if entry is not None:
        entry[0] += 1
        if t > entry[1]:
            entry[1] = t
        return
    if len(features) >= MAX_FEATURES:
        stalest = min(features, key=lambda name: features[name][1])
        del features[stalest]
    features[feature] = [1.0, t]


def apply_usage(
    state: OrganizationState, event: UsageEvent, model: ScoreModel
) -> list[MilestoneCrossing]:
    """Fold one usage event into `state`; returns the milestones it newly crossed."""
    t = event.occurred_at.timestamp()
    kind = str(event.type)  # plain str, as the state's keys are
    quantity = event.quantity
    _touch(state, t, str(event.event_id))
    if state.last_usage_at is None or t > state.last_usage_at:
        state.last_usage_at = t
    if kind == U.LOGIN and (state.last_login_at is None or t > state.last_login_at):
        state.last_login_at = t
    state.totals[kind] = state.totals.get(kind, 0) + quantity
    if event.user_id is not None:
        _see_user(state, str(event.user_id), t)
    if state.event_count % USER_PRUNE_EVERY == 0 and state.users:
        _prune_users(state, t)
    if kind == U.FEATURE_USED and event.feature:
        name = feature_name(event.feature)
        if name:
            _use_feature(state, name, t)

    signals = model.signals
    _advance(state, t, model, support=False)
    _add(state, "activity", 1.0, t, model)
    _add(state, "activity_baseline", 1.0, t, model)
    _add(state, "activity_recent", 1.0, t, model)
    if kind == U.LOGIN:
        _add(state, "logins", 1.0, t, model)
        _add(state, "logins_baseline", 1.0, t, model)
    if kind in VALUE_ACTIONS:
        _add(state, "value_actions", min(quantity, signals.value_action_quantity_cap), t, model)
    if kind == U.CLIENT_ADDED:
        _add(state, "clients_added", min(quantity, signals.client_quantity_cap), t, model)
    negative = model.negative_signal_weights.get(kind)
    if negative is not None:
        weight = negative * min(quantity, signals.negative_signal_quantity_cap)
        _add(state, "negative_signals", weight, t, model)
    positive = model.positive_commercial_weights.get(kind)
    if positive is not None:
        _add(state, "positive_commercial", positive, t, model)

    crossings = crossed(state, event, model)
    for crossing in crossings:
        state.milestones[crossing.milestone_type.value] = crossing.achieved_at
    return crossings


def _track_open(
    state: OrganizationState, before: InteractionRecord | None, after: InteractionRecord
) -> None:
    """Keep `state`'s open interactions: itemized up to MAX_OPEN_INTERACTIONS, counted
    beyond (`OpenBeyond`). One of those counted stays counted until it closes."""
    itemized = state.open_interactions
    beyond = state.open_beyond
    counted = (
        after.id not in itemized
        and before is not None
        and before.status == "open"
        and beyond is not None
        and beyond.count > 0
    )
    if counted:
        assert beyond is not None and before is not None
        _count_beyond(beyond, _open(before), -1)
        if after.status == "open":
            _count_beyond(beyond, _open(after), +1)
        elif beyond.count == 0:
            state.open_beyond = None
        return
    if after.status != "open":
        itemized.pop(after.id, None)
        return
    open_ = _open(after)
    if after.id in itemized or len(itemized) < MAX_OPEN_INTERACTIONS:
        itemized[after.id] = open_
        return
    if beyond is None:
        beyond = state.open_beyond = OpenBeyond()
    _count_beyond(beyond, open_, +1)
    if beyond.since is None or open_.opened_at < beyond.since:
        beyond.since = open_.opened_at


def _open(record: InteractionRecord) -> OpenInteraction:
    """What the support component needs of `record` while it is open."""
    return OpenInteraction(
        opened_at=record.opened_at if record.opened_at is not None else record.first_event_at,
        interaction_type=record.interaction_type,
        priority=record.priority,
        escalated=is_escalated(record),
    )


def _count_beyond(beyond: OpenBeyond, open_: OpenInteraction, sign: int) -> None:
    beyond.count = max(0, beyond.count + sign)
    if open_.strong:
        beyond.escalated = max(0, beyond.escalated + sign)
    if open_.cancellation:
        beyond.cancellations = max(0, beyond.cancellations + sign)


def apply_interaction(
    state: OrganizationState,
    before: InteractionRecord | None,
    after: InteractionRecord,
    event: SupportEvent,
    model: ScoreModel,
) -> None:
    """Fold one support event (whose merge turned `before` into `after`) into `state`."""
    t = event.occurred_at.timestamp()
    _touch(state, t, str(event.event_id))

    _track_open(state, before, after)

    _advance(state, t, model, support=True)
    sentiment_weights = model.signals.sentiment_weights
    if event.sentiment == Sentiment.NEGATIVE:
        _add(state, "negative_sentiment", sentiment_weights.negative, t, model)
    elif event.sentiment == Sentiment.VERY_NEGATIVE:
        _add(state, "negative_sentiment", sentiment_weights.very_negative, t, model)
    # once per interaction and signal: its row remembers what it gave
    for signal in sorted(signals_given(after) - signals_given(before)):
        _add(state, signal, 1.0, t, model)


def apply_profile(
    state: OrganizationState, created_at: float | None, milestones: dict[str, float]
) -> list[str]:
    """Fold what a CRM knows of an organization into its state: when the account was
    created and the success milestones it reached before its events reach the service
    (names of the contract's milestones, achieved-at times). Missing data is not bad
    data: the score then counts tenure from the creation and expects only milestones
    that are really missing. Order-independent and idempotent (earliest times win);
    returns the milestones newly recorded."""
    if created_at is not None and (state.created_at is None or created_at < state.created_at):
        state.created_at = created_at
    known = {m.value for m in MilestoneType}
    added: list[str] = []
    for name, at in sorted(milestones.items()):
        if name not in known:
            raise ValueError(f"unknown milestone {name!r}")
        current = state.milestones.get(name)
        if current is None:
            added.append(name)
        if current is None or at < current:
            state.milestones[name] = at
    return added


def apply_profile_event(state: OrganizationState, event: ProfileEvent) -> list[str]:
    """`apply_profile` of an `organization.profile.v1` event. A profile is not
    activity: the organization's event times (silence, tenure from its first event)
    and event count stay as they are; its id joins the recent ones, so that an alert
    it moves names it among its causes (`caused_by`)."""
    _remember(state, str(event.event_id))
    created = event.created_at.timestamp() if event.created_at is not None else None
    return apply_profile(
        state, created, {name: at.timestamp() for name, at in event.milestones.items()}
    )
