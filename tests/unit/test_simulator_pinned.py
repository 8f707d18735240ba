"""The simulated streams are pinned: the same seed and config give exactly these bytes.

Replay determinism, the bench figures in docs/bench/*.json and the figures of
docs/score-quality.md were all produced with these generators; a refactor of
the simulator must not change one byte of what they emit. Each hash covers
every field of every message (or, for the labelled population, its JSON lines,
labels, profiles, summary and latent paths). A deliberate change of the
generated streams updates these hashes in the same commit and says why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from healthscore_lab.simulator import (
    LiveStream,
    SimulatedMessage,
    SimulationConfig,
    Workload,
    WorkloadConfig,
    generate,
    labelled,
    organization_profiles,
)

START = datetime(2025, 1, 6, tzinfo=UTC)
BENCH_SPAN = timedelta(days=30) - timedelta(minutes=5)  # as bench.runner sets it


def _digest(messages: Iterable[SimulatedMessage]) -> tuple[str, int]:
    digest = hashlib.sha256()
    count = 0
    for m in messages:
        occurred = m.occurred_at.isoformat() if m.occurred_at is not None else None
        fields = (m.topic_kind, m.key, m.value, m.event_id, m.organization_id, m.valid)
        digest.update(repr((*fields, occurred, m.is_duplicate, m.expected_reason)).encode())
        count += 1
    return digest.hexdigest(), count


@pytest.mark.parametrize(
    ("config", "expected", "count"),
    [
        (
            SimulationConfig(start=START),
            "dab0ee8752754263f091573cc8788f1ebea28df20244035e200ab20dcf818f2d",
            5055,
        ),
        (
            SimulationConfig(
                start=START,
                organizations=400,
                events=20_000,
                seed=3,
                span=timedelta(days=7),
                duplicate_rate=0.05,
                malformed_rate=0.01,
            ),
            "e26aa4c04c530df3e534a1652e5a8c1f5ef22e2109adcefc90d7f8d69ee2321d",
            21_200,
        ),
    ],
    ids=["default", "a-week-400-orgs"],
)
def test_simulator_stream_is_pinned(config: SimulationConfig, expected: str, count: int) -> None:
    digest, seen = _digest(generate(config))
    assert (digest, seen) == (expected, count)


def test_simulator_profiles_are_pinned() -> None:
    profiles = sorted(organization_profiles(SimulationConfig(start=START)).items())
    assert (
        hashlib.sha256(repr(profiles).encode()).hexdigest()
        == "8d60674f06fbbc74bd001df75c9295538131e7398f7d8ca1ad8ab1abfc96d62f"
    )


@pytest.mark.parametrize(
    ("skew", "expected", "seen"),
    [
        (0.0, "254c35bf6da48ff92b8b4c674f7c7052a3a99ca22312aa3fc1d11f4c8d403759", 16_939),
        (1.1, "46e63b3074b92b1386c350dba722091e0db22d820262daa931ded7763c5da09f", 6_083),
    ],
    ids=["uniform", "skewed"],
)
def test_bench_workload_is_pinned(skew: float, expected: str, seen: int) -> None:
    workload = Workload(
        WorkloadConfig(
            organizations=100_000, events=20_000, start=START, span=BENCH_SPAN, skew=skew
        )
    )
    digest, count = _digest(workload.messages())
    counts = workload.counts
    assert digest == expected
    assert (count, counts.messages, counts.valid, counts.duplicates, counts.malformed) == (
        20_231,
        20_231,
        20_000,
        206,
        25,
    )
    assert (counts.usage, counts.support, len(counts.organizations_seen)) == (18_400, 1_600, seen)


def test_bench_live_stream_is_pinned() -> None:
    live = LiveStream(WorkloadConfig(organizations=5_000, events=1, start=START))
    now_ms = int(START.timestamp() * 1000) + 30 * 86_400_000

    def messages() -> Iterator[SimulatedMessage]:
        for i in range(5_000):
            yield live.alert_trigger(now_ms + i) if i % 97 == 0 else live.next(now_ms + i)

    assert _digest(messages()) == (
        "472db2935a40bcfccbd8159ce4a9bf3698453ba1c23631be58e6a592c2fa997a",
        5_000,
    )


@pytest.mark.parametrize(
    ("config", "expected", "events"),
    [
        (
            labelled.reference(organizations=40),
            "fcd53d6e1ba79bfbb65b5e83df23c804b3c0145ae2a97dbed343932ba2d4aa7b",
            14_811,
        ),
        (
            labelled.shifted(organizations=30, days=40),
            "771f6a39638a1ede1cb5ef8bc7b64491fc86f73d3f10cf4d699d0975eb4ea881",
            3_524,
        ),
    ],
    ids=["reference", "shifted"],
)
def test_labelled_population_is_pinned(
    config: labelled.PopulationConfig, expected: str, events: int
) -> None:
    population = labelled.generate_population(config)
    digest = hashlib.sha256()
    for line in labelled.iter_jsonl(population):
        digest.update(line)
    digest.update(labelled.labels_csv(population).encode())
    digest.update(labelled.profiles_csv(population).encode())
    digest.update(repr(sorted(labelled.summary(population).items())).encode())
    digest.update(repr(sorted(population.latent.items())).encode())
    assert (digest.hexdigest(), len(population.events)) == (expected, events)
