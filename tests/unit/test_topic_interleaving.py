"""How the usage and support topics interleave cannot change the aggregates or the score."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from healthscore.core.effects import compute_batch_effects
from healthscore.core.enums import Channel, InteractionType, Sentiment, SupportAction, UsageType
from healthscore.core.events import SupportEvent, UsageEvent
from healthscore.core.scoring.model import default_model

ORG = str(uuid.UUID(int=42))
START = datetime(2026, 3, 1, tzinfo=UTC)


def _streams(seed: int) -> tuple[list[UsageEvent], list[SupportEvent]]:
    rng = random.Random(seed)
    usage = [
        UsageEvent(
            event_id=uuid.UUID(int=rng.getrandbits(128)),
            organization_id=uuid.UUID(ORG),
            type=rng.choice(
                [
                    UsageType.LOGIN,
                    UsageType.FEATURE_USED,
                    UsageType.CLIENT_ADDED,
                    UsageType.PAYMENT_RECEIVED,
                    UsageType.SEAT_REMOVED,
                ]
            ),
            feature="calendar",
            occurred_at=START + timedelta(hours=i * 7 + rng.random()),
        )
        for i in range(60)
    ]
    support = []
    for n in range(6):
        interaction = uuid.UUID(int=rng.getrandbits(128))
        opened = START + timedelta(days=n * 2, hours=rng.random())
        support.append(
            SupportEvent(
                event_id=uuid.UUID(int=rng.getrandbits(128)),
                organization_id=uuid.UUID(ORG),
                interaction_id=interaction,
                action=SupportAction.OPENED,
                interaction_type=rng.choice(
                    [
                        InteractionType.COMPLAINT,
                        InteractionType.TECHNICAL_SUPPORT,
                        InteractionType.ESCALATION,
                    ]
                ),
                channel=Channel.EMAIL,
                sentiment=rng.choice(
                    [Sentiment.NEGATIVE, Sentiment.VERY_NEGATIVE, Sentiment.NEUTRAL]
                ),
                occurred_at=opened,
            )
        )
        support.append(
            SupportEvent(
                event_id=uuid.UUID(int=rng.getrandbits(128)),
                organization_id=uuid.UUID(ORG),
                interaction_id=interaction,
                action=SupportAction.RESOLVED,
                occurred_at=opened + timedelta(hours=5),
            )
        )
    return usage, support


def _interleave(
    usage: list[UsageEvent], support: list[SupportEvent], seed: int
) -> list[UsageEvent | SupportEvent]:
    """A random merge that keeps each topic's own order (what two partitions give)."""
    rng = random.Random(seed)
    merged: list[UsageEvent | SupportEvent] = []
    u, s = list(usage), list(support)
    while u or s:
        take_usage = bool(u) and (not s or rng.random() < len(u) / (len(u) + len(s)))
        merged.append(u.pop(0) if take_usage else s.pop(0))
    return merged


def test_any_interleaving_of_the_two_topics_gives_identical_aggregates_and_score() -> None:
    model = default_model()
    usage, support = _streams(1)
    results = []
    for seed in range(8):
        effects = compute_batch_effects(_interleave(usage, support, seed), {}, {}, model)
        state = effects.states[ORG]
        results.append(
            (
                dict(state.decayed),
                state.decay_ref,
                state.support_decay_ref,
                effects.rescored[ORG].health.score,
                effects.rescored[ORG].health.components,
            )
        )
    assert all(r == results[0] for r in results[1:])
