"""An organization with thousands of open support interactions keeps a bounded state.

Up to MAX_OPEN_INTERACTIONS are itemized; the rest are counted (`OpenBeyond`), and
what the support component reads (open, escalated or urgent, cancellation requests)
stays exact whatever opens, changes, closes and reopens; the oldest one's age is
exact while it is itemized and never younger than the truth otherwise.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from healthscore.core.effects import compute_batch_effects
from healthscore.core.enums import Channel, InteractionType, Priority, SupportAction
from healthscore.core.events import SupportEvent
from healthscore.core.interactions import InteractionRecord
from healthscore.core.scoring.model import DAY, default_model
from healthscore.core.scoring.score import _open_support, score
from healthscore.core.scoring.state import (
    MAX_OPEN_INTERACTIONS,
    OrganizationState,
    encode_state,
    open_interaction_count,
)

MODEL = default_model()
ORG = uuid.UUID("5d1b7c0e-2f4a-4b6c-8d9e-0a1b2c3d4e5f")
T0 = datetime(2026, 3, 2, tzinfo=UTC)


def _event(n: int, interaction: uuid.UUID, action: SupportAction, **fields: object) -> SupportEvent:
    return SupportEvent(
        event_id=uuid.uuid5(ORG, f"event-{n}"),
        organization_id=ORG,
        interaction_id=interaction,
        action=action,
        occurred_at=T0 + timedelta(minutes=n),
        **fields,  # type: ignore[arg-type]
    )


def _truth(records: dict[str, InteractionRecord], as_of: float) -> tuple[int, int, int, float]:
    """What `_open_support` would say with every open interaction itemized."""
    open_ = [r for r in records.values() if r.status == "open"]
    strong = sum(
        1
        for r in open_
        if r.interaction_type == "escalation" or r.outcome == "escalated" or r.priority == "urgent"
    )
    cancellations = sum(1 for r in open_ if r.interaction_type == "cancellation_request")
    oldest = min((r.opened_at or r.first_event_at for r in open_), default=None)
    age = 0.0 if oldest is None else max(0.0, (as_of - oldest) / DAY)
    return len(open_), strong, cancellations, age


def test_thousands_of_open_interactions_keep_the_state_bounded_and_the_counts_exact() -> None:
    rng = random.Random(4)
    states: dict[str, OrganizationState] = {}
    records: dict[str, InteractionRecord] = {}
    ids: list[uuid.UUID] = []
    kinds = [InteractionType.CHECK_IN, InteractionType.ESCALATION, InteractionType.COMPLAINT,
             InteractionType.CANCELLATION_REQUEST]  # fmt: skip
    for step in range(6000):
        n = step + 1
        roll = rng.random()
        if roll < 0.6 or not ids:  # a new interaction
            interaction = uuid.uuid5(ORG, f"interaction-{step}")
            ids.append(interaction)
            event = _event(
                n,
                interaction,
                SupportAction.OPENED,
                interaction_type=rng.choice(kinds),
                channel=Channel.EMAIL,
                priority=rng.choice([Priority.NORMAL, Priority.URGENT]),
            )
        else:
            interaction = rng.choice(ids)
            action = rng.choice(
                [SupportAction.RESOLVED, SupportAction.CLOSED, SupportAction.REOPENED,
                 SupportAction.UPDATED]
            )  # fmt: skip
            fields: dict[str, object] = {}
            if action is SupportAction.UPDATED:
                fields = {"priority": rng.choice([Priority.LOW, Priority.URGENT])}
            event = _event(n, interaction, action, **fields)
        compute_batch_effects([event], states, records, MODEL)
        state = states[str(ORG)]
        as_of = event.occurred_at.timestamp()
        got = _open_support(state.open_interactions, as_of, state.open_beyond)
        expected = _truth(records, as_of)
        assert got[:3] == expected[:3], (step, got, expected)
        assert got[3] >= expected[3] - 1e-9, (step, got, expected)
        assert len(state.open_interactions) <= MAX_OPEN_INTERACTIONS
        assert open_interaction_count(state) == expected[0]
    assert expected[0] > 10 * MAX_OPEN_INTERACTIONS  # the cap was far exceeded
    assert len(encode_state(state)) < 40_000
    # the score reads the same counts
    assert score(state, as_of, MODEL).components["support"] >= 0.0


def test_below_the_cap_nothing_is_counted_beyond() -> None:
    states: dict[str, OrganizationState] = {}
    records: dict[str, InteractionRecord] = {}
    events = [
        _event(i, uuid.uuid5(ORG, f"small-{i}"), SupportAction.OPENED,
               interaction_type=InteractionType.CHECK_IN, channel=Channel.CHAT)
        for i in range(MAX_OPEN_INTERACTIONS)
    ]  # fmt: skip
    compute_batch_effects(events, states, records, MODEL)
    state = states[str(ORG)]
    assert state.open_beyond is None and len(state.open_interactions) == MAX_OPEN_INTERACTIONS
    one_more = _event(
        10_000, uuid.uuid5(ORG, "one-more"), SupportAction.OPENED,
        interaction_type=InteractionType.CHECK_IN, channel=Channel.CHAT,
    )  # fmt: skip
    compute_batch_effects([one_more], states, records, MODEL)
    assert state.open_beyond is not None and state.open_beyond.count == 1
    compute_batch_effects(
        [_event(10_001, uuid.uuid5(ORG, "one-more"), SupportAction.RESOLVED)],
        states,
        records,
        MODEL,
    )
    assert state.open_beyond is None  # counted until it closed
