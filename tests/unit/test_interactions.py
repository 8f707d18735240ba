"""Support interaction merge: per-field last-writer-wins, order independent."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import Any
from uuid import UUID

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from healthscore.contracts.enums import (
    Channel,
    InteractionType,
    Outcome,
    Priority,
    Sentiment,
    SupportAction,
)
from healthscore.core.events import CLEARABLE, SupportEvent
from healthscore.core.interactions import InteractionRecord, merge_interaction

ORG = UUID("9d3c0b7e-1b2a-4c8d-8e9f-0a1b2c3d4e5f")
INTERACTION = UUID("2a7e4f10-5c6d-4e3f-a1b2-c3d4e5f60718")
T0 = datetime(2026, 4, 1, 12, tzinfo=UTC)
A = SupportAction


def event(action: SupportAction, minute: int, n: int, **fields: Any) -> SupportEvent:
    if action is A.OPENED:
        fields.setdefault("interaction_type", InteractionType.TECHNICAL_SUPPORT)
        fields.setdefault("channel", Channel.EMAIL)
    if action is A.FOLLOW_UP_SCHEDULED:
        fields.setdefault("follow_up_at", T0 + timedelta(days=3))
    return SupportEvent(
        event_id=UUID(int=n),
        organization_id=ORG,
        interaction_id=INTERACTION,
        action=action,
        occurred_at=T0 + timedelta(minutes=minute),
        **fields,
    )


def merge_all(events: list[SupportEvent]) -> InteractionRecord:
    record: InteractionRecord | None = None
    for item in events:
        record = merge_interaction(record, item)
    assert record is not None
    return record


def ts(minute: int) -> float:
    return (T0 + timedelta(minutes=minute)).timestamp()


def test_opened_creates_the_record() -> None:
    opened = event(A.OPENED, 0, 1, priority=Priority.HIGH, subject="Cannot log in")
    record = merge_interaction(None, opened)
    assert record.id == str(INTERACTION)
    assert record.organization_id == str(ORG)
    assert record.status == "open"
    assert record.interaction_type == "technical_support"
    assert record.channel == "email"
    assert record.priority == "high"
    assert record.subject == "Cannot log in"
    assert record.opened_at == record.first_event_at == record.last_event_at == ts(0)
    assert record.event_count == 1
    assert record.field_event_times["priority"] == [ts(0), str(UUID(int=1))]


def test_merge_returns_a_new_record_and_leaves_the_old_one_alone() -> None:
    first = merge_interaction(None, event(A.OPENED, 0, 1))
    snapshot = msgspec.json.encode(first)
    second = merge_interaction(first, event(A.RESOLVED, 5, 2))
    assert second is not first
    assert msgspec.json.encode(first) == snapshot
    assert second.status == "resolved" and first.status == "open"


def test_updated_before_opened_is_kept() -> None:
    update = event(A.UPDATED, 10, 2, priority=Priority.URGENT, sentiment=Sentiment.NEGATIVE)
    opened = event(A.OPENED, 0, 1, priority=Priority.LOW)
    record = merge_all([update, opened])  # the later update arrives first
    assert record.priority == "urgent"  # newer wins although it arrived first
    assert record.sentiment == "negative"
    assert record.interaction_type == "technical_support"  # only the opened event set it
    assert record.status == "open"
    assert record.opened_at == ts(0)
    assert record.first_event_at == ts(0) and record.last_event_at == ts(10)
    assert record.event_count == 2


def test_an_update_alone_makes_an_open_record_with_default_priority() -> None:
    record = merge_interaction(None, event(A.UPDATED, 0, 1, subject="hello"))
    assert record.status == "open"
    assert record.priority == "normal"
    assert record.opened_at is None
    assert record.subject == "hello"


def test_reopen_clears_resolved_at_and_closed_at() -> None:
    record = merge_all([event(A.OPENED, 0, 1), event(A.RESOLVED, 5, 2), event(A.CLOSED, 6, 3)])
    assert (record.status, record.resolved_at, record.closed_at) == ("closed", ts(5), ts(6))
    record = merge_interaction(record, event(A.REOPENED, 8, 4))
    assert (record.status, record.resolved_at, record.closed_at) == ("open", None, None)
    record = merge_interaction(record, event(A.RESOLVED, 9, 5))
    assert (record.status, record.resolved_at, record.closed_at) == ("resolved", ts(9), None)


def test_a_late_resolution_older_than_the_reopen_does_not_win() -> None:
    record = merge_all([event(A.OPENED, 0, 1), event(A.REOPENED, 8, 3), event(A.RESOLVED, 5, 2)])
    assert record.status == "open"
    assert record.resolved_at is None


def test_opened_at_is_the_earliest_opened_event() -> None:
    record = merge_all([event(A.OPENED, 7, 2), event(A.OPENED, 3, 1), event(A.UPDATED, 1, 3)])
    assert record.opened_at == ts(3)
    assert record.first_event_at == ts(1)


def test_follow_up_required_and_completed() -> None:
    record = merge_all([event(A.OPENED, 0, 1), event(A.FOLLOW_UP_SCHEDULED, 2, 2)])
    assert record.follow_up_required is True
    assert record.follow_up_at == (T0 + timedelta(days=3)).timestamp()
    assert record.follow_up_completed_at is None
    record = merge_interaction(record, event(A.RESOLVED, 4, 3))
    assert record.follow_up_required is False
    assert record.follow_up_completed_at == ts(4)
    record = merge_interaction(record, event(A.FOLLOW_UP_SCHEDULED, 6, 4))
    assert record.follow_up_required is True
    assert record.follow_up_completed_at is None  # a newer follow-up is pending again


def test_resolution_without_any_follow_up_completes_nothing() -> None:
    record = merge_all([event(A.OPENED, 0, 1), event(A.CLOSED, 3, 2)])
    assert record.follow_up_completed_at is None
    assert record.follow_up_required is False


def test_same_instant_ties_break_on_event_id() -> None:
    low = event(A.UPDATED, 5, 1, priority=Priority.LOW)
    high = event(A.UPDATED, 5, 2, priority=Priority.HIGH)
    assert merge_all([low, high]).priority == "high"
    assert merge_all([high, low]).priority == "high"


def test_all_orders_of_a_realistic_lifecycle_end_the_same() -> None:
    events = [
        event(A.OPENED, 0, 1, priority=Priority.NORMAL, sentiment=Sentiment.NEUTRAL),
        event(A.UPDATED, 3, 2, priority=Priority.URGENT, outcome=Outcome.ESCALATED),
        event(A.FOLLOW_UP_SCHEDULED, 5, 3),
        event(A.RESOLVED, 8, 4, sentiment=Sentiment.POSITIVE),
        event(A.REOPENED, 9, 5),
        event(A.CLOSED, 12, 6, outcome=Outcome.RETAINED),
    ]
    results = {msgspec.json.encode(merge_all(list(p))) for p in itertools.permutations(events)}
    assert len(results) == 1
    final = merge_all(events)
    assert final.status == "closed"
    assert final.resolved_at is None  # the reopen at 9 cleared the resolution at 8
    assert final.closed_at == ts(12)
    assert final.outcome == "retained"
    assert final.follow_up_completed_at == ts(12)
    assert final.event_count == 6


# --- property: any set of events, any order, same record ------------------------------

_optional = {
    "interaction_type": st.none() | st.sampled_from(InteractionType),
    "channel": st.none() | st.sampled_from(Channel),
    "priority": st.none() | st.sampled_from(Priority),
    "sentiment": st.none() | st.sampled_from(Sentiment),
    "outcome": st.none() | st.sampled_from(Outcome),
    "assigned_to": st.none() | st.sampled_from([UUID(int=7), UUID(int=8)]),
    "subject": st.none() | st.sampled_from(["a", "b"]),
    "follow_up_at": st.none() | st.sampled_from([T0 + timedelta(days=1), T0 + timedelta(days=2)]),
}


@st.composite
def event_sets(draw: st.DrawFn) -> list[SupportEvent]:
    count = draw(st.integers(min_value=1, max_value=7))
    events = []
    for n in range(1, count + 1):
        action = draw(st.sampled_from(SupportAction))
        minute = draw(st.integers(min_value=0, max_value=4))  # few minutes: many ties
        fields = {name: draw(strategy) for name, strategy in _optional.items()}
        fields = {k: v for k, v in fields.items() if v is not None}
        # a field an event may clear is left out, set, or named in `cleared`
        cleared = tuple(name for name in CLEARABLE if name not in fields and draw(st.booleans()))
        events.append(
            event(action, minute, draw(st.integers(0, 3)) * 100 + n, cleared=cleared, **fields)
        )
    return events


@settings(max_examples=150, deadline=None)
@given(events=event_sets(), data=st.data())
def test_any_order_of_events_gives_the_identical_record(
    events: list[SupportEvent], data: st.DataObject
) -> None:
    reference = merge_all(events)
    shuffled = data.draw(st.permutations(events))
    result = merge_all(shuffled)
    assert result == reference
    assert msgspec.json.encode(result) == msgspec.json.encode(reference)
    # and merging in one go equals merging across many calls (state round-trips through JSON)
    decoded = reduce(
        lambda rec, ev: msgspec.json.decode(
            msgspec.json.encode(merge_interaction(rec, ev)), type=InteractionRecord
        ),
        shuffled,
        None,
    )
    assert decoded == reference


def test_a_subject_is_kept_in_nfc_whatever_form_it_was_sent_in() -> None:
    """A search compares characters: "café" sent decomposed (e + combining accent, as
    some ticketing systems send it) must be the "café" a person types."""
    decomposed = "Cafe\u0301 menu not saving"
    opened = event(A.OPENED, 0, 1, subject=decomposed)
    record = merge_interaction(None, opened)
    assert record.subject == "Caf\u00e9 menu not saving"
    # an update with the same text in the other form changes nothing a reader sees
    again = merge_interaction(record, event(A.UPDATED, 1, 2, subject="Caf\u00e9 menu not saving"))
    assert again.subject == record.subject


def test_opened_and_resolved_at_one_instant_read_resolved_whatever_their_ids() -> None:
    """An interaction handled at once (opened and resolved, or closed, stamped the same
    second): the id decided the tie, so about half such interactions read `open` for
    good, with a resolution time beside it. At one instant the lifecycle's furthest
    step wins: closed over resolved over open."""
    for opened_id, resolved_id in ((1, 2), (2, 1)):
        opened = event(A.OPENED, 0, opened_id)
        resolved = event(A.RESOLVED, 0, resolved_id, outcome=Outcome.RESOLVED)
        for order in ([opened, resolved], [resolved, opened]):
            record = merge_all(order)
            assert (record.status, record.resolved_at) == ("resolved", ts(0))
        closed = event(A.CLOSED, 0, resolved_id + 10)
        for permuted in itertools.permutations([opened, resolved, closed]):
            record = merge_all(list(permuted))
            assert (record.status, record.resolved_at, record.closed_at) == (
                "closed",
                ts(0),
                ts(0),
            )
    # a reopen at the instant of a closing: closed too, its time kept (any ids)
    for reopened_id, closed_id in ((1, 2), (2, 1)):
        reopened, closed = event(A.REOPENED, 4, reopened_id), event(A.CLOSED, 4, closed_id)
        for order in ([reopened, closed], [closed, reopened]):
            record = merge_all([event(A.OPENED, 0, 9), *order])
            assert (record.status, record.closed_at) == ("closed", ts(4))


def test_a_follow_up_scheduled_as_it_is_resolved_stays_to_do_whatever_their_ids() -> None:
    """A desk resolving an interaction and scheduling its check-in in one action stamps
    both the same second: the id decided the tie, so about half such follow-ups read
    done (required false, completed at the resolution) and never showed as due. A
    resolution cannot complete a follow-up scheduled at its own instant: it stays to do."""
    for scheduled_id, resolution_id in ((1, 2), (2, 1)):
        for action in (A.RESOLVED, A.CLOSED):
            scheduled = event(A.FOLLOW_UP_SCHEDULED, 5, scheduled_id)
            resolution = event(action, 5, resolution_id)
            for order in ([scheduled, resolution], [resolution, scheduled]):
                record = merge_all([event(A.OPENED, 0, 9), *order])
                assert record.status == action.value
                assert (record.follow_up_required, record.follow_up_completed_at) == (
                    True,
                    None,
                ), (scheduled_id, resolution_id, action, order)
    # a resolution after it (a later second) completes it, whatever the ids
    for scheduled_id, resolution_id in ((1, 2), (2, 1)):
        record = merge_all(
            [
                event(A.OPENED, 0, 9),
                event(A.FOLLOW_UP_SCHEDULED, 5, scheduled_id),
                event(A.RESOLVED, 6, resolution_id),
            ]
        )
        assert (record.follow_up_required, record.follow_up_completed_at) == (False, ts(6))


def test_a_field_named_in_cleared_is_set_to_none_when_it_is_the_latest() -> None:
    """An event names the fields it sets to none (`cleared`: an unassigned interaction
    stayed with its former assignee, as null means "left out"); the latest event wins per
    field, a clearing included; a field left out (or null) changes nothing."""
    staff = UUID(int=7)
    opened = event(A.OPENED, 0, 1, assigned_to=staff, sentiment=Sentiment.NEGATIVE, subject="x")
    unassigned = event(
        A.UPDATED,
        2,
        2,
        cleared=(
            "assigned_to",
            "sentiment",
        ),
    )
    older_null = event(A.UPDATED, 1, 3, cleared=("subject",))
    newer_subject = event(A.UPDATED, 3, 4, subject="y")
    left_out = event(A.UPDATED, 4, 5, priority=Priority.HIGH)
    for order in itertools.permutations([opened, unassigned, older_null, newer_subject, left_out]):
        record = merge_all(list(order))
        assert (record.assigned_to, record.sentiment) == (None, None)
        assert record.subject == "y"  # the null at minute 1 is older than "y"
        assert record.field_event_times["assigned_to"] == [ts(2), str(UUID(int=2))]
    # a null older than the value it would clear clears nothing
    kept = merge_all([event(A.UPDATED, -1, 6, cleared=("assigned_to",)), opened])
    assert kept.assigned_to == str(staff)


def test_at_one_instant_a_value_wins_over_a_clearing_whatever_the_ids() -> None:
    """Unassigned and reassigned in the same second: the event ids decided, and the
    interaction ended unassigned about half the time, out of the new assignee's view."""
    staff = UUID(int=7)
    opened = event(A.OPENED, 0, 1, assigned_to=UUID(int=8))
    for clear_id, set_id in ((2, 3), (3, 2)):
        unassigned = event(A.UPDATED, 1, clear_id, cleared=("assigned_to",))
        reassigned = event(A.UPDATED, 1, set_id, assigned_to=staff)
        for order in itertools.permutations([opened, unassigned, reassigned]):
            assert merge_all(list(order)).assigned_to == str(staff), (clear_id, order)
