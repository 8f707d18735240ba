"""The bench's own measures: Zipf ranks and /proc CPU readings."""

from __future__ import annotations

import os
import random
import time

from healthscore_lab.bench.cpu import process_cpu_seconds, sample, tree_cpu_seconds
from healthscore_lab.simulator import zipf_rank


def test_zipf_ranks_stay_in_range_and_concentrate() -> None:
    rng = random.Random(3)
    count = 100_000
    draws = [zipf_rank(rng.random(), count, 1.1) for _ in range(50_000)]
    assert min(draws) >= 0 and max(draws) < count
    top = sum(1 for d in draws if d < count // 100)
    # the most active 1% of organizations send far more than 1% of the events
    assert top / len(draws) > 0.4
    uniform = [rng.randrange(count) for _ in range(50_000)]
    assert sum(1 for d in uniform if d < count // 100) / len(uniform) < 0.02


def test_zipf_exponent_one_and_tiny_populations() -> None:
    assert zipf_rank(0.0, 10, 1.0) == 0
    assert zipf_rank(0.999999, 10, 1.0) == 9
    assert {zipf_rank(u / 100, 1, 1.2) for u in range(100)} == {0}


def test_cpu_seconds_of_this_process_grow_with_work() -> None:
    pid = os.getpid()
    before = process_cpu_seconds(pid)
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        sum(range(1000))
    after = process_cpu_seconds(pid)
    assert after - before >= 0.1
    assert tree_cpu_seconds(pid) >= after
    taken = sample([pid], None, None)
    assert taken.service >= after and taken.postgres is None and taken.broker is None
