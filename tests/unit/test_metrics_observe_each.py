"""A batch's latencies observed at once expose what observing them one by one does."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from healthscore.service.ops.metrics import LATENCY_BUCKETS, observe_each


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("latency_seconds", "x", buckets=LATENCY_BUCKETS, registry=registry)


def _exposition(registry: CollectorRegistry) -> list[str]:
    # without the creation time, which differs between two histograms
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


@pytest.mark.parametrize("seed", range(5))
def test_observing_a_batch_at_once_is_observing_each(seed: int) -> None:
    rng = random.Random(seed)
    # on bucket bounds, between them, beyond the last, zero
    amounts = [rng.choice([*LATENCY_BUCKETS, 0.0, 100.0]) for _ in range(50)]
    amounts += [rng.uniform(0, 70) for _ in range(50)] + [rng.expovariate(5) for _ in range(50)]
    one_by_one, histogram = _histogram()
    for amount in amounts:
        histogram.observe(amount)
    at_once, batched = _histogram()
    half = len(amounts) // 2
    observe_each(batched, amounts[:half])
    observe_each(batched, [])
    observe_each(batched, amounts[half:])
    batched_lines, each_lines = _exposition(at_once), _exposition(one_by_one)
    # the counts exactly; the sum up to float rounding (added at once, not one by one)
    assert [line for line in batched_lines if "_sum" not in line] == [
        line for line in each_lines if "_sum" not in line
    ]
    [batched_sum] = [float(line.split()[-1]) for line in batched_lines if "_sum " in line]
    [each_sum] = [float(line.split()[-1]) for line in each_lines if "_sum " in line]
    assert batched_sum == pytest.approx(each_sum, rel=1e-12)
