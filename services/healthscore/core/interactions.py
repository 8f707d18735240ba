"""Support interactions: merge one event into the stored interaction, pure.

Events of one interaction may arrive out of order (the contract); the stored
record must end the same whatever the order. So no field depends on arrival
order:

- Every field an event sets is last-writer-wins by the key ``(occurred_at,
  event_id)``; the key of the event that set a field is kept in
  ``field_event_times[field] = [occurred_at, event_id]`` and a later-arriving
  but older event does not overwrite it. The event id breaks ties so that two
  events at the same instant resolve the same way in every order; for the
  lifecycle (`status`, `resolved_at`, `closed_at`) the step an event takes comes
  first (closed over resolved over open, `_STEP`), so an interaction opened and
  resolved in the same second reads resolved whatever the two ids.
- Optional attributes (interaction_type, channel, priority, sentiment,
  outcome, assigned_to, subject, follow_up_at) are set only by events that
  carry them (non-null), so an `updated` before its `opened` is kept. Those of
  `events.CLEARABLE` are set to none by an event that names them in `cleared`,
  by the same rule: the latest wins, so a desk that unassigns an interaction
  takes it from its assignee (whom the support role's row-level security shows
  it to) back to the triage queue.
- `status` is set by opened/reopened (open), resolved, closed; `updated` and
  `follow_up_scheduled` leave it alone. Before any such event it reads `open`.
- `resolved_at` / `closed_at` are set by resolved / closed and cleared by a
  later `reopened` (LWW over those pairs of actions).
- `follow_up_required` is LWW: True by follow_up_scheduled, False by
  resolved/closed; at one instant the scheduling wins (`_FOLLOW_UP_STEP`).
- `opened_at` and `first_event_at` are minima, `last_event_at` a maximum.
- `follow_up_completed_at` is derived after every merge from two pseudo-fields
  in field_event_times (the newest follow_up_scheduled and the newest
  resolved/closed event): the time of that resolution if it is later than the
  newest scheduling (a later instant: not a later id), else None.
- The signals an interaction gives its organization (a complaint, a cancellation
  request, an escalation) are given once in its life, by the first event that
  carries one, whether or not it wins the merge: a producer flipping the type
  back and forth adds nothing more. The record remembers them as pseudo-fields
  (`_signalled_<signal>`: the earliest carrying event, a minimum, so the record
  still ends the same in every order).

A duplicate delivery of one event id never reaches `merge_interaction`
(dedupe happens upstream), so `event_count` simply counts.
"""

from __future__ import annotations

import unicodedata

import msgspec

from healthscore.core.enums import (
    InteractionStatus,
    InteractionType,
    Outcome,
    Priority,
    SupportAction,
)
from healthscore.core.events import SupportEvent

A = SupportAction
# pseudo-fields of field_event_times (not columns): newest scheduling / resolution event
SCHEDULED_KEY = "_follow_up_scheduled"
RESOLUTION_KEY = "_resolution"

_STATUS_OF: dict[str, str] = {
    A.OPENED: InteractionStatus.OPEN.value,
    A.REOPENED: InteractionStatus.OPEN.value,
    A.RESOLVED: InteractionStatus.RESOLVED.value,
    A.CLOSED: InteractionStatus.CLOSED.value,
}
# At one instant the lifecycle's furthest step wins: opened (or reopened), then
# resolved, then closed. An `opened` precedes whatever else happens to its
# interaction, yet a desk stamping to the second gives an interaction handled at
# once one time for both, and an id tie-break left half of those open for good.
# A step is read from the value a field holds, so the stored keys need no more.
_STEP: dict[str, int] = {
    InteractionStatus.OPEN.value: 0,
    InteractionStatus.RESOLVED.value: 1,
    InteractionStatus.CLOSED.value: 2,
}
# A desk resolving (or closing) an interaction and scheduling its check-in in one
# action stamps both the same second: the follow-up is what comes after the
# resolution, which cannot have completed it. An id tie-break marked about half of
# those follow-ups done, and they never fell due on the support queue.
_FOLLOW_UP_STEP: dict[bool, int] = {False: 0, True: 1}  # follow_up_required -> step
# the organization's decayed signals an interaction gives once (scoring's names)
COMPLAINTS = "complaints"
CANCELLATION_REQUESTS = "cancellation_requests"
ESCALATIONS = "escalations"
SIGNALS: tuple[str, ...] = (COMPLAINTS, CANCELLATION_REQUESTS, ESCALATIONS)
_MARKER = {signal: f"_signalled_{signal}" for signal in SIGNALS}
_OPTIONAL_FIELDS: tuple[str, ...] = (
    "interaction_type",
    "channel",
    "priority",
    "sentiment",
    "outcome",
    "assigned_to",
    "subject",
    "follow_up_at",
)


class InteractionRecord(msgspec.Struct):
    """One row of `support_interactions` (the columns, in order)."""

    id: str
    organization_id: str
    interaction_type: str | None
    channel: str | None
    status: str
    priority: str
    sentiment: str | None
    outcome: str | None
    assigned_to: str | None
    subject: str | None
    follow_up_required: bool
    follow_up_at: float | None
    follow_up_completed_at: float | None
    opened_at: float | None
    resolved_at: float | None
    closed_at: float | None
    first_event_at: float
    last_event_at: float
    # field -> [occurred_at, event_id] of the event that last set it
    field_event_times: dict[str, list[float | str]]
    event_count: int


Key = tuple[float, str]


def _set(time_set: bool) -> int:
    """The step of a field's value at one instant: set 1, cleared 0 (a resolution's or a
    closing's time, an attribute named in `cleared`)."""
    return 1 if time_set else 0


def _key_of(entry: list[float | str] | None) -> Key | None:
    if entry is None:
        return None
    return (float(entry[0]), str(entry[1]))


def _optional_values(event: SupportEvent) -> dict[str, str | float | None]:
    return {
        "interaction_type": event.interaction_type,
        "channel": event.channel,
        "priority": event.priority,
        "sentiment": event.sentiment,
        "outcome": event.outcome,
        "assigned_to": str(event.assigned_to) if event.assigned_to is not None else None,
        # one text, one spelling: a search in NFC finds what was sent decomposed
        "subject": unicodedata.normalize("NFC", event.subject) if event.subject else event.subject,
        "follow_up_at": event.follow_up_at.timestamp() if event.follow_up_at else None,
    }


def _plain(value: str | float | None) -> str | float | None:
    # StrEnum members -> plain str, so records compare and encode the same however built
    return str(value) if isinstance(value, str) else value


def _escalated(interaction_type: str | None, outcome: str | None) -> bool:
    return interaction_type == InteractionType.ESCALATION or outcome == Outcome.ESCALATED


def is_escalated(record: InteractionRecord | None) -> bool:
    """Whether the interaction reads escalated now (its type or its outcome)."""
    return record is not None and _escalated(record.interaction_type, record.outcome)


def _signals_shown(interaction_type: str | None, outcome: str | None) -> list[str]:
    """The signals an interaction of this type and outcome stands for (an event's own
    fields, or a record's)."""
    shown = []
    if interaction_type == InteractionType.COMPLAINT:
        shown.append(COMPLAINTS)
    elif interaction_type == InteractionType.CANCELLATION_REQUEST:
        shown.append(CANCELLATION_REQUESTS)
    if _escalated(interaction_type, outcome):
        shown.append(ESCALATIONS)
    return shown


def signals_given(record: InteractionRecord | None) -> frozenset[str]:
    """The signals this interaction has given its organization: those it remembers,
    and those it shows now (a row stored before it remembered them)."""
    if record is None:
        return frozenset()
    times = record.field_event_times
    remembered = [signal for signal in SIGNALS if _MARKER[signal] in times]
    return frozenset(remembered + _signals_shown(record.interaction_type, record.outcome))


def merge_interaction(current: InteractionRecord | None, event: SupportEvent) -> InteractionRecord:
    """Return a new record: `current` (or nothing yet) with `event` applied."""
    t = event.occurred_at.timestamp()
    event_id = str(event.event_id)
    key: Key = (t, event_id)
    entry: list[float | str] = [t, event_id]
    if current is None:
        record = InteractionRecord(
            id=str(event.interaction_id),
            organization_id=str(event.organization_id),
            interaction_type=None,
            channel=None,
            status=InteractionStatus.OPEN.value,
            priority=Priority.NORMAL.value,
            sentiment=None,
            outcome=None,
            assigned_to=None,
            subject=None,
            follow_up_required=False,
            follow_up_at=None,
            follow_up_completed_at=None,
            opened_at=None,
            resolved_at=None,
            closed_at=None,
            first_event_at=t,
            last_event_at=t,
            field_event_times={},
            event_count=0,
        )
    else:
        record = msgspec.structs.replace(
            current,
            field_event_times=dict(current.field_event_times),
            first_event_at=min(current.first_event_at, t),
            last_event_at=max(current.last_event_at, t),
        )
    times = record.field_event_times

    def wins(field: str, step: int = 0, held_step: int = 0) -> bool:
        """Whether this event is newer than whatever set `field`, at one instant the one
        taking the further lifecycle step (`step` its own, `held_step` that of the
        value `field` holds); records it if so."""
        previous = _key_of(times.get(field))
        if previous is not None and (previous[0], held_step, previous[1]) >= (t, step, event_id):
            return False
        times[field] = entry
        return True

    # at one instant a value wins over a clearing (a desk unassigning and reassigning in
    # the same second meant the new assignee), whatever the two ids; among values, or
    # among clearings, the id decides
    for field, value in _optional_values(event).items():
        if value is not None and wins(field, 1, _set(getattr(record, field) is not None)):
            setattr(record, field, _plain(value))
    for field in event.cleared:
        if wins(field, 0, _set(getattr(record, field) is not None)):
            setattr(record, field, None)

    action = str(event.action)
    status = _STATUS_OF.get(action)
    if status is not None and wins("status", _STEP[status], _STEP[record.status]):
        record.status = status
    if action == A.OPENED and (record.opened_at is None or t < record.opened_at):
        record.opened_at = t
    # a resolution (a closing) sets its time, a reopen clears it: the step back
    if action in (A.RESOLVED, A.REOPENED) and wins(
        "resolved_at", _set(action == A.RESOLVED), _set(record.resolved_at is not None)
    ):
        record.resolved_at = t if action == A.RESOLVED else None
    if action in (A.CLOSED, A.REOPENED) and wins(
        "closed_at", _set(action == A.CLOSED), _set(record.closed_at is not None)
    ):
        record.closed_at = t if action == A.CLOSED else None
    scheduling = action == A.FOLLOW_UP_SCHEDULED
    if action in (A.FOLLOW_UP_SCHEDULED, A.RESOLVED, A.CLOSED) and wins(
        "follow_up_required",
        _FOLLOW_UP_STEP[scheduling],
        _FOLLOW_UP_STEP[record.follow_up_required],
    ):
        record.follow_up_required = scheduling
    if action == A.FOLLOW_UP_SCHEDULED:
        wins(SCHEDULED_KEY)
    elif action in (A.RESOLVED, A.CLOSED):
        wins(RESOLUTION_KEY)

    for signal in _signals_shown(event.interaction_type, event.outcome):
        marker = _MARKER[signal]
        first = _key_of(times.get(marker))
        if first is None or key < first:
            times[marker] = entry

    scheduled = _key_of(times.get(SCHEDULED_KEY))
    resolution = _key_of(times.get(RESOLUTION_KEY))
    if scheduled is not None and resolution is not None and resolution[0] > scheduled[0]:
        record.follow_up_completed_at = resolution[0]
    else:
        record.follow_up_completed_at = None
    # sorted keys: the encoded record is byte-identical whatever the arrival order
    record.field_event_times = dict(sorted(times.items()))
    record.event_count += 1
    return record
