"""Send a simulated stream to the input topics: the simulator's only I/O."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from healthscore_lab.simulator.catalogue import to_ms
from healthscore_lab.simulator.messages import SimulatedMessage, StreamCounts


@dataclass
class ProduceStats(StreamCounts):
    seconds: float = 0.0

    @property
    def sent(self) -> int:
        return self.messages


def topic_of(
    message: SimulatedMessage, usage_topic: str, support_topic: str, profile_topic: str | None
) -> str:
    """The input topic `message` goes to (a profile needs `profile_topic`)."""
    if message.topic_kind == "usage":
        return usage_topic
    if message.topic_kind == "support":
        return support_topic
    if profile_topic is None:
        raise ValueError("the stream holds organization profiles: give the profile topic")
    return profile_topic


_CHUNK = 1000
_PACE_TICK = 0.01  # with a rate, send in bursts about every 10 ms


async def produce(
    messages: Iterable[SimulatedMessage],
    producer: Any,
    usage_topic: str,
    support_topic: str,
    rate: float | None = None,
    timestamp_from_event: bool = True,
    profile_topic: str | None = None,
) -> ProduceStats:
    """Send `messages` with a started aiokafka producer; wait for every delivery.

    With `timestamp_from_event` the record timestamp is the event's
    `occurred_at` (a malformed message takes the previous message's time), so
    the decoder judges "future" as if each event arrived when it happened.
    `rate` (messages per second) paces the stream in small bursts.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    stats = ProduceStats()
    loop = asyncio.get_running_loop()
    started = loop.time()
    clock_started = time.perf_counter()
    pending: list[asyncio.Future[Any]] = []
    last_ms: int | None = None
    for message in messages:
        if rate is not None:
            delay = started + stats.messages / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(max(delay, _PACE_TICK))
        timestamp_ms: int | None = None
        if timestamp_from_event:
            if message.occurred_at is not None:
                last_ms = to_ms(message.occurred_at)
            timestamp_ms = last_ms
        topic = topic_of(message, usage_topic, support_topic, profile_topic)
        future = await producer.send(
            topic, value=message.value, key=message.key, timestamp_ms=timestamp_ms
        )
        pending.append(future)
        stats.add(message)
        if len(pending) >= _CHUNK:
            await asyncio.gather(*pending)
            pending.clear()
    if pending:
        await asyncio.gather(*pending)
    stats.seconds = time.perf_counter() - clock_started
    return stats
