"""Per-organization aggregate state: what the scoring model reads.

Stored as one MessagePack document per organization (table `organization_state`,
column `state_msgpack`: `pack_state`, `unpack_state`), encoded with msgspec; JSON
(`encode_state`, `decode_state`) is the readable form, and what releases before
migration 0066 stored. Every update is O(1) in the number of
events; the whole state stays bounded (maps are pruned, rings capped).

Times are POSIX seconds (float) so that the pure code needs no tz handling;
they are always *event* times, never the wall clock.
"""

import msgspec


class OpenInteraction(msgspec.Struct, frozen=True):
    """What the support component needs of one interaction that is still open."""

    opened_at: float
    interaction_type: str | None = None
    priority: str | None = None
    escalated: bool = False

    @property
    def strong(self) -> bool:
        """Escalated or urgent: what the support component's `open_escalations` counts."""
        return self.escalated or self.priority == "urgent" or self.interaction_type == "escalation"

    @property
    def cancellation(self) -> bool:
        return self.interaction_type == "cancellation_request"


class OpenBeyond(msgspec.Struct):
    """The open interactions past `MAX_OPEN_INTERACTIONS`, counted, not itemized: what
    the support component reads of them (an organization with thousands of open
    interactions would otherwise carry them all in its state, read and written with
    every batch, and scored with every event)."""

    count: int = 0
    # of them, escalated or urgent (`open_escalations`), and cancellation requests
    escalated: int = 0
    cancellations: int = 0
    # the earliest opening among those counted since the count was last zero (the
    # oldest open interaction's age: too old when that one has closed meanwhile)
    since: float | None = None


class AlertState(msgspec.Struct):
    """Where the organization is in its churn-risk episode lifecycle."""

    episode: int = 0  # how many episodes have started so far (the current one's number)
    in_episode: bool = False
    level: str | None = None  # highest risk level alerted in the current episode
    raised_at: float | None = None
    recovered_at: float | None = None  # end of the last episode, for the cooldown
    # set when the episode was raised by a sharp drop (not by probability): the peak score
    # before the drop, so that recovery also waits for the score to regain most of it
    drop_peak: float | None = None
    # idle: since when the churn probability has been at or above the enter threshold
    # (only tracked when the model asks for persistence: alerts.persist_hours > 0)
    above_since: float | None = None
    # the current (or last) episode's alert ids carry the day it was raised on: every
    # episode raised since they do; one raised before keeps its scheme to its end
    dated_ids: bool = False


class OrganizationState(msgspec.Struct):
    organization_id: str
    first_event_at: float | None = None
    last_event_at: float | None = None  # newest occurred_at seen (monotone)
    last_login_at: float | None = None
    last_usage_at: float | None = None  # newest usage (product) event; support events excluded
    event_count: int = 0
    # exponentially decayed sums: usage signals are expressed at time `decay_ref`,
    # support signals at `support_decay_ref` (each topic moves only its own
    # reference, so the interleaving of the two topics cannot change the sums)
    decay_ref: float | None = None
    decayed: dict[str, float] = msgspec.field(default_factory=dict)
    # cumulative quantities per usage type (milestones, growth)
    totals: dict[str, int] = msgspec.field(default_factory=dict)
    # feature name -> [use count, last used at]
    features: dict[str, list[float]] = msgspec.field(default_factory=dict)
    # user id -> last seen at (pruned to the active-user window)
    users: dict[str, float] = msgspec.field(default_factory=dict)
    # the open interactions, at most MAX_OPEN_INTERACTIONS; the rest are counted
    open_interactions: dict[str, OpenInteraction] = msgspec.field(default_factory=dict)
    open_beyond: OpenBeyond | None = None
    # milestone type -> achieved at
    milestones: dict[str, float] = msgspec.field(default_factory=dict)
    # the newest event ids applied (at most 20), newest last: an alert's `caused_by`
    recent_event_ids: list[str] = msgspec.field(default_factory=list)
    # day number (days since epoch, event time) -> last score of that day; 31 days kept
    daily_scores: dict[str, float] = msgspec.field(default_factory=dict)
    last_score: float | None = None
    last_scored_at: float | None = None
    # the churn probability of the last score: whether an alert could be near
    # (`healthscore.core.effects`: an event is a decision point unless it is not)
    last_churn_probability: float | None = None
    alert: AlertState = msgspec.field(default_factory=AlertState)
    support_decay_ref: float | None = None
    # known from the organization's profile (a CRM export: `apply_profile`), for an
    # organization whose history began before its first event here: its tenure counts
    # from the account's creation, not from the first event the service saw
    created_at: float | None = None


MAX_OPEN_INTERACTIONS = 100
"""Open interactions itemized in the state; the support penalties saturate long before."""


def open_interaction_count(state: OrganizationState) -> int:
    beyond = state.open_beyond
    return len(state.open_interactions) + (beyond.count if beyond is not None else 0)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(OrganizationState)
_packer = msgspec.msgpack.Encoder()
_unpacker = msgspec.msgpack.Decoder(OrganizationState)


def current_as_of(state: OrganizationState) -> float | None:
    """The event time the state stands at: its newest event, or a later silence rescoring.

    What a reader scores the state as of (the read model, the shadow model): events
    that were not decision points are in the aggregates but not in `last_scored_at`.
    """
    scored, newest = state.last_scored_at, state.last_event_at
    if scored is None or (newest is not None and newest > scored):
        return newest
    return scored


def encode_state(state: OrganizationState) -> bytes:
    return _encoder.encode(state)


def decode_state(raw: bytes | str) -> OrganizationState:
    return _decoder.decode(raw)


def pack_state(state: OrganizationState) -> bytes:
    """The stored form: MessagePack writes floats as eight bytes, where JSON formats
    every one as decimal text, and PostgreSQL keeps bytes without parsing them."""
    return _packer.encode(state)


def unpack_state(raw: bytes) -> OrganizationState:
    """A stored state: MessagePack, or the JSON document an earlier release stored
    (a JSON object starts with `{`; a MessagePack map never does)."""
    if raw[:1] == b"{":
        return _decoder.decode(raw)
    return _unpacker.decode(raw)
