"""The messages of a simulated stream, and what every stream does with them.

A `SimulatedMessage` is one Kafka message with what a test needs to know about
it (valid or not, a duplicate or not, the rejection reason a bad one must
get). Every stream writes its originals with `event_message`, re-emits some
later through `Duplicates`, interleaves `malformed_message`s from the poison
corpus, and can count itself with `StreamCounts`.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from healthscore_lab.poison import STREAMED_CASES, PoisonCase, poison_corpus
from healthscore_lab.simulator.catalogue import DUPLICATE_MEAN_DELAY, MS, TopicKind
from healthscore_lab.simulator.organizations import OrganizationLookup


@dataclass(frozen=True)
class SimulatedMessage:
    """One Kafka message of the simulated stream, with what the test needs to know."""

    topic_kind: TopicKind
    key: bytes | None
    value: bytes
    event_id: str | None
    organization_id: str | None
    valid: bool
    occurred_at: datetime | None
    is_duplicate: bool
    expected_reason: str | None


def event_message(
    topic_kind: TopicKind, key: bytes, organization_id: str, body: dict[str, Any], at_ms: int
) -> SimulatedMessage:
    """A valid original: `body` (written for the moment `at_ms`) as message bytes."""
    return SimulatedMessage(
        topic_kind=topic_kind,
        key=key,
        value=orjson.dumps(body),
        event_id=body["event_id"],
        organization_id=organization_id,
        valid=True,
        occurred_at=datetime.fromtimestamp(at_ms / MS, UTC),
        is_duplicate=False,
        expected_reason=None,
    )


def malformed_message(
    rng: random.Random, organizations: OrganizationLookup, last_occurred: datetime
) -> SimulatedMessage:
    """A bad message of the poison corpus, about a random organization (two draws)."""
    victim = organizations[rng.randrange(len(organizations))]
    corpus = poison_corpus(victim.id, last_occurred)
    return poison_message(corpus[rng.randrange(STREAMED_CASES)], victim.id)


def poison_message(case: PoisonCase, organization_id: str) -> SimulatedMessage:
    """A bad message of a poison corpus (`healthscore_lab.poison`) as the stream sends it."""
    return SimulatedMessage(
        topic_kind=case.kind,
        key=case.key,
        value=case.value,
        event_id=None,
        organization_id=organization_id,
        valid=False,
        occurred_at=None,
        is_duplicate=False,
        expected_reason=case.expected_reason,
    )


class Duplicates:
    """Duplicates of originals, each re-emitted a random number of originals later."""

    def __init__(self) -> None:
        self._pending: list[tuple[int, int, SimulatedMessage]] = []  # (after original n, seq, m)
        self._seq = itertools.count()

    def schedule(self, message: SimulatedMessage, position: int, rng: random.Random) -> None:
        """Re-emit `message`, original number `position`, on average 40 originals later."""
        delay = 1 + int(rng.expovariate(1 / DUPLICATE_MEAN_DELAY))
        duplicate = replace(message, is_duplicate=True)
        heapq.heappush(self._pending, (position + delay, next(self._seq), duplicate))

    def due(self, position: int) -> Iterator[SimulatedMessage]:
        """The duplicates due once original number `position` has been emitted."""
        while self._pending and self._pending[0][0] <= position:
            yield heapq.heappop(self._pending)[2]

    def rest(self) -> Iterator[SimulatedMessage]:
        """The duplicates still pending when the originals have ended."""
        while self._pending:
            yield heapq.heappop(self._pending)[2]


@dataclass
class StreamCounts:
    """What a stream held so far: every message, valid originals, duplicates, malformed."""

    messages: int = 0
    valid: int = 0
    duplicates: int = 0
    malformed: int = 0

    def add(self, message: SimulatedMessage) -> None:
        self.messages += 1
        if not message.valid:
            self.malformed += 1
        elif message.is_duplicate:
            self.duplicates += 1
        else:
            self.valid += 1
