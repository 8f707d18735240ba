"""The simulator's event mix, at benchmark scale.

`healthscore_lab.simulator.generate` samples activity from an (organizations x
720 hours) weight table and builds every organization up front: fine for
thousands of organizations, impossible for a million (720M weights). This
module keeps the simulator's message bodies, profiles (healthy / declining /
churning, 60/25/15), usage-type weights, support interaction life cycles,
duplicate and malformed rates, and time shape (profile decay, office hours),
but builds each organization lazily from its index and draws each event's
organization per hour bin, so memory and time per event do not depend on the
number of organizations.

Two shapes:

* `Workload.messages()`: a historical stream over `span`, in event-time order
  (for the preloaded throughput phase);
* `LiveStream`: events that happen *now* (for the latency phase), plus alert
  triggers: a cancellation request opened by an organization nobody has seen,
  which raises a churn-risk alert on its first event.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from healthscore_lab.poison import poison_corpus
from healthscore_lab.simulator import (
    _BINS,
    _DUPLICATE_MEAN_DELAY,
    _MS,
    _SUPPORT_WEIGHT,
    CHURNING,
    DECLINING,
    FEATURES,
    HEALTHY,
    PROFILES,
    SimulatedMessage,
    SimulationConfig,
    _clock_intensity,
    _Org,
    _Planner,
    _profile_intensity,
    _to_ms,
    _World,
    _Writer,
)

PROFILE_SHARES = {HEALTHY: 0.6, DECLINING: 0.25, CHURNING: 0.15}
# share of usage events that are the scripted, milestone-like kinds the
# simulator schedules per organization (onboarding, profile, downgrades...)
_SCRIPTED_SHARE = 0.02
_ORG_CACHE = 65_536


@dataclass(frozen=True)
class WorkloadConfig:
    organizations: int
    events: int
    start: datetime
    seed: int = 7
    span: timedelta = timedelta(days=30)
    duplicate_rate: float = 0.01
    malformed_rate: float = 0.001
    support_share: float = 0.08
    # Zipf exponent of activity within each profile (0: uniform over its organizations)
    skew: float = 0.0


@dataclass
class WorkloadCounts:
    """What a generated stream held (filled while it is consumed)."""

    messages: int = 0
    valid: int = 0
    duplicates: int = 0
    malformed: int = 0
    usage: int = 0
    support: int = 0
    organizations_seen: set[str] = field(default_factory=set)


class _Population:
    """Organizations built on demand from their index (deterministic)."""

    def __init__(self, organizations: int, seed: int) -> None:
        if organizations < 1:
            raise ValueError("organizations must be at least 1")
        self.size = organizations
        self._seed = seed
        counts = _split(organizations, PROFILE_SHARES)
        self.ranges: dict[str, tuple[int, int]] = {}
        low = 0
        for name in PROFILES:
            self.ranges[name] = (low, counts[name])
            low += counts[name]
        self.org = functools.lru_cache(maxsize=_ORG_CACHE)(self._build)

    def profile_of(self, index: int) -> str:
        for name in PROFILES:
            low, count = self.ranges[name]
            if low <= index < low + count:
                return name
        raise IndexError(index)

    def pick(self, rng: random.Random, profile: str, skew: float = 0.0) -> int:
        low, count = self.ranges[profile]
        if skew <= 0:
            return low + rng.randrange(count)
        return low + zipf_rank(rng.random(), count, skew)

    def _build(self, index: int) -> _Org:
        rng = random.Random(self._seed * 1_000_003 + index)
        profile = self.profile_of(index)
        org_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        user_count = min(15, 2 + int(rng.expovariate(1 / 3.5)))
        users = tuple(
            str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(user_count)
        )
        feature_count = {
            HEALTHY: rng.randint(12, 20),
            DECLINING: rng.randint(6, 9),
            CHURNING: rng.randint(4, 6),
        }[profile]
        features = tuple(rng.sample(FEATURES, feature_count))
        plan = rng.randint(0, 2) if profile == HEALTHY else rng.randint(1, 3)
        activity = user_count * rng.uniform(0.7, 1.3)
        return _Org(index, org_id, org_id.encode(), profile, users, features, plan, activity)


def zipf_rank(u: float, count: int, s: float) -> int:
    """A rank in [0, count) with P(rank k) roughly proportional to 1/(k+1)^s.

    Inverse of the continuous approximation of the Zipf CDF: O(1) per draw
    whatever `count`, which a table over a million organizations would not be.
    """
    if abs(s - 1.0) < 1e-9:
        rank = math.exp(u * math.log(count + 1)) - 1
    else:
        rank = ((count + 1) ** (1 - s) - 1) * u + 1
        rank = rank ** (1 / (1 - s)) - 1
    return min(count - 1, max(0, int(rank)))


def _split(total: int, weights: dict[str, float]) -> dict[str, int]:
    norm = sum(weights.values())
    exact = {name: total * w / norm for name, w in weights.items()}
    counts = {name: int(v) for name, v in exact.items()}
    for name in sorted(weights, key=lambda n: -(exact[n] - counts[n]))[
        : total - sum(counts.values())
    ]:
        counts[name] += 1
    return counts


def _world(config: WorkloadConfig) -> _World:
    sim = SimulationConfig(
        start=config.start, organizations=config.organizations, events=config.events
    )
    staff_rng = random.Random(f"{config.seed}:staff")
    staff = tuple(str(uuid.UUID(int=staff_rng.getrandbits(128), version=4)) for _ in range(6))
    span_ms = max(1, int(config.span.total_seconds() * _MS))
    return _World(sim, [], staff, _to_ms(config.start), span_ms)


def _profile_weights(
    population: _Population, fraction: float, elapsed_ms: float, span_ms: int
) -> list[float]:
    return [
        population.ranges[p][1] * _profile_intensity(p, fraction, elapsed_ms, span_ms)
        for p in PROFILES
    ]


class Workload:
    """A historical stream of `events` valid events over `organizations`."""

    def __init__(self, config: WorkloadConfig) -> None:
        self.config = config
        self.population = _Population(config.organizations, config.seed)
        self.world = _world(config)
        self.counts = WorkloadCounts()

    def messages(self) -> Iterator[SimulatedMessage]:
        """Valid events in event-time order, plus duplicates and malformed ones."""
        config = self.config
        world = self.world
        population = self.population
        counts = self.counts
        plan_rng = random.Random(f"{config.seed}:plan")
        writer = _Writer(world, random.Random(f"{config.seed}:bodies"))
        extras = random.Random(f"{config.seed}:extras")
        planner = _Planner(world, plan_rng)

        total = config.events
        support_budget = round(total * config.support_share)
        usage_budget = total - support_budget
        support = self._plan_support(planner, plan_rng, support_budget)
        per_bin = self._usage_per_bin(plan_rng, usage_budget)
        bin_ms = world.span_ms / _BINS

        pending: list[tuple[int, int, SimulatedMessage]] = []
        pending_seq = itertools.count()
        position = 0
        last_occurred = config.start
        support_at = 0
        for b in range(_BINS):
            low = b * bin_ms
            high = world.span_ms if b == _BINS - 1 else (b + 1) * bin_ms
            elapsed = (b + 0.5) * bin_ms
            cum = list(
                itertools.accumulate(
                    _profile_weights(population, elapsed / world.span_ms, elapsed, world.span_ms)
                )
            )
            plans: list[tuple[int, int, dict[str, Any] | str | None]] = []
            for _ in range(per_bin[b]):
                offset = min(world.span_ms - 1, int(low + plan_rng.random() * (high - low)))
                profile = PROFILES[bisect.bisect_right(cum, plan_rng.random() * cum[-1])]
                index = population.pick(plan_rng, profile, config.skew)
                kind: str | None = None
                if plan_rng.random() < _SCRIPTED_SHARE:
                    scripted = planner.usage_milestones(population.org(index))
                    if scripted:
                        kind = str(plan_rng.choice(scripted)[3])
                plans.append((offset, index, kind))
            while support_at < len(support) and support[support_at][0] < high:
                plans.append(support[support_at])
                support_at += 1
            plans.sort(key=lambda p: p[0])
            for offset, index, detail in plans:
                org = population.org(index)
                if isinstance(detail, dict):
                    kind_name = "support"
                    body = writer.support(org, offset, detail)
                else:
                    kind_name = "usage"
                    body = writer.usage(org, offset, detail)
                occurred = datetime.fromtimestamp((world.start_ms + offset) / _MS, UTC)
                message = SimulatedMessage(
                    topic_kind="support" if kind_name == "support" else "usage",
                    key=org.key,
                    value=orjson.dumps(body),
                    event_id=body["event_id"],
                    organization_id=org.id,
                    valid=True,
                    occurred_at=occurred,
                    is_duplicate=False,
                    expected_reason=None,
                )
                counts.valid += 1
                counts.organizations_seen.add(org.id)
                if kind_name == "support":
                    counts.support += 1
                else:
                    counts.usage += 1
                yield self._count(message)
                last_occurred = occurred
                if extras.random() < config.duplicate_rate:
                    delay = 1 + int(extras.expovariate(1 / _DUPLICATE_MEAN_DELAY))
                    duplicate = replace(message, is_duplicate=True)
                    heapq.heappush(pending, (position + delay, next(pending_seq), duplicate))
                while pending and pending[0][0] <= position:
                    counts.duplicates += 1
                    yield self._count(heapq.heappop(pending)[2])
                if extras.random() < config.malformed_rate:
                    victim = population.org(extras.randrange(population.size))
                    corpus = poison_corpus(victim.id, last_occurred)
                    case = corpus[extras.randrange(len(corpus))]
                    counts.malformed += 1
                    yield self._count(
                        SimulatedMessage(
                            topic_kind=case.kind,
                            key=case.key,
                            value=case.value,
                            event_id=None,
                            organization_id=victim.id,
                            valid=False,
                            occurred_at=None,
                            is_duplicate=False,
                            expected_reason=case.expected_reason,
                        )
                    )
                position += 1
        while pending:
            counts.duplicates += 1
            yield self._count(heapq.heappop(pending)[2])

    def _count(self, message: SimulatedMessage) -> SimulatedMessage:
        self.counts.messages += 1
        return message

    def _usage_per_bin(self, rng: random.Random, budget: int) -> list[int]:
        world = self.world
        bin_ms = world.span_ms / _BINS
        weights = []
        for b in range(_BINS):
            elapsed = (b + 0.5) * bin_ms
            activity = sum(
                _profile_weights(self.population, elapsed / world.span_ms, elapsed, world.span_ms)
            )
            weights.append(activity * _clock_intensity(world.start_ms + elapsed))
        return list(_split(budget, {str(b): w for b, w in enumerate(weights)}).values())

    def _plan_support(
        self, planner: _Planner, rng: random.Random, budget: int
    ) -> list[tuple[int, int, dict[str, Any] | str | None]]:
        population = self.population
        cum = list(
            itertools.accumulate(population.ranges[p][1] * _SUPPORT_WEIGHT[p] for p in PROFILES)
        )
        plans: list[tuple[int, int, dict[str, Any] | str | None]] = []
        number = itertools.count(100 + rng.randrange(900))
        while len(plans) < budget:
            profile = PROFILES[bisect.bisect_right(cum, rng.random() * cum[-1])]
            index = population.pick(rng, profile)
            steps = planner._interaction(population.org(index), next(number))
            for offset, fields in steps[: budget - len(plans)]:
                plans.append((offset, index, fields))
        plans.sort(key=lambda p: p[0])
        return plans


class LiveStream:
    """Events that happen now, over the same organizations, and alert triggers."""

    def __init__(self, config: WorkloadConfig, seed_suffix: str = "live") -> None:
        self.config = config
        self.population = _Population(config.organizations, config.seed)
        self.world = _world(config)
        self._rng = random.Random(f"{config.seed}:{seed_suffix}")
        self._writer = _Writer(self.world, random.Random(f"{config.seed}:{seed_suffix}:bodies"))
        self._planner = _Planner(self.world, random.Random(f"{config.seed}:{seed_suffix}:plan"))
        self._open: list[list[dict[str, Any]]] = []
        self._numbers = itertools.count(10_000)
        world = self.world
        now_fraction = 1.0
        self._usage_cum = list(
            itertools.accumulate(
                _profile_weights(self.population, now_fraction, world.span_ms, world.span_ms)
            )
        )
        self._support_cum = list(
            itertools.accumulate(
                self.population.ranges[p][1] * _SUPPORT_WEIGHT[p] for p in PROFILES
            )
        )

    def next(self, now_ms: int) -> SimulatedMessage:
        rng = self._rng
        offset = now_ms - self.world.start_ms
        if rng.random() < self.config.support_share:
            if not self._open or (len(self._open) < 200 and rng.random() < 0.4):
                cum = self._support_cum
                profile = PROFILES[bisect.bisect_right(cum, rng.random() * cum[-1])]
                index = self.population.pick(rng, profile)
                steps = [
                    {"__org": index, **fields}
                    for _, fields in self._planner._interaction(
                        self.population.org(index), next(self._numbers)
                    )
                ]
                self._open.append(steps)
            slot = rng.randrange(len(self._open))
            steps = self._open[slot]
            fields = dict(steps.pop(0))
            if not steps:
                self._open[slot] = self._open[-1]
                self._open.pop()
            org = self.population.org(fields.pop("__org"))
            body = self._writer.support(org, offset, fields)
            return _live_message("support", org.key, org.id, body, now_ms)
        cum = self._usage_cum
        profile = PROFILES[bisect.bisect_right(cum, rng.random() * cum[-1])]
        org = self.population.org(self.population.pick(rng, profile))
        body = self._writer.usage(org, offset, None)
        return _live_message("usage", org.key, org.id, body, now_ms)

    def alert_trigger(self, now_ms: int) -> SimulatedMessage:
        """A cancellation request opened by a brand-new organization: raises an alert."""
        rng = self._rng
        org_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        body = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "organization_id": org_id,
            "interaction_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "action": "opened",
            "interaction_type": "cancellation_request",
            "channel": "email",
            "priority": "urgent",
            "sentiment": "very_negative",
            "subject": "Cancel subscription",
            "occurred_at": _iso_ms(now_ms),
        }
        return _live_message("support", org_id.encode(), org_id, body, now_ms)


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / _MS, UTC).isoformat(timespec="milliseconds")


def _live_message(
    kind: str, key: bytes, org_id: str, body: dict[str, Any], now_ms: int
) -> SimulatedMessage:
    body["occurred_at"] = _iso_ms(now_ms)
    return SimulatedMessage(
        topic_kind="support" if kind == "support" else "usage",
        key=key,
        value=orjson.dumps(body),
        event_id=body["event_id"],
        organization_id=org_id,
        valid=True,
        occurred_at=datetime.fromtimestamp(now_ms / _MS, UTC),
        is_duplicate=False,
        expected_reason=None,
    )
