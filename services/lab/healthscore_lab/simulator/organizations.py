"""Simulated organizations: one way to draw one, two ways to draw many.

* `scripted_organizations`: the population of `generate` (demo, tests), drawn
  one after the other from one generator, profiles shuffled;
* `Organizations`: the population of the bench's workload, where organization
  `index` is drawn from its own generator seeded by (seed, index), built only
  when asked for and kept in a bounded cache, so a million organizations cost
  no memory until they act.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from healthscore_lab.simulator.catalogue import (
    CHURNING,
    DECLINING,
    FEATURES,
    HEALTHY,
    PROFILE_SHARES,
    PROFILES,
    allocate,
    new_uuid,
    zipf_rank,
)

_CACHE = 65_536  # organizations kept built at once by `Organizations`


@dataclass(frozen=True)
class Organization:
    index: int
    id: str
    key: bytes  # the Kafka message key: the id's bytes
    profile: str
    users: tuple[str, ...]
    features: tuple[str, ...]  # in the order the organization takes them up
    plan: int  # index into catalogue.PLANS
    activity: float  # relative volume of usage (about its number of users)


class OrganizationLookup(Protocol):
    """Organizations by index: a list of them, or `Organizations`."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Organization: ...


def draw_organization(rng: random.Random, index: int, profile: str) -> Organization:
    """One organization of `profile` (a fixed number of draws from `rng` per profile)."""
    org_id = new_uuid(rng)
    user_count = min(15, 2 + int(rng.expovariate(1 / 3.5)))
    users = tuple(new_uuid(rng) for _ in range(user_count))
    feature_count = {  # all three are drawn, whatever the profile
        HEALTHY: rng.randint(12, 20),
        DECLINING: rng.randint(6, 9),
        CHURNING: rng.randint(4, 6),
    }[profile]
    features = tuple(rng.sample(FEATURES, feature_count))
    plan = rng.randint(0, 2) if profile == HEALTHY else rng.randint(1, 3)
    activity = user_count * rng.uniform(0.7, 1.3)
    return Organization(index, org_id, org_id.encode(), profile, users, features, plan, activity)


def scripted_organizations(
    rng: random.Random, count: int, profile_mix: Mapping[str, float]
) -> Iterator[Organization]:
    """`count` organizations split by `profile_mix`, profiles in shuffled order, from `rng`."""
    mix = {name: profile_mix.get(name, 0.0) for name in PROFILES}
    counts = allocate(count, mix, ties_by_name=True)
    profiles = [name for name in PROFILES for _ in range(counts[name])]
    rng.shuffle(profiles)
    for index, profile in enumerate(profiles):
        yield draw_organization(rng, index, profile)


class Organizations:
    """`count` organizations built on demand from their index (deterministic).

    Indexes are grouped by profile (healthy first), in the shares of
    `catalogue.PROFILE_SHARES`; `pick` draws one of a profile, uniformly or with
    a Zipf skew (a few organizations do most of the activity).
    """

    def __init__(self, count: int, seed: int) -> None:
        if count < 1:
            raise ValueError("organizations must be at least 1")
        self.size = count
        self._seed = seed
        counts = allocate(count, PROFILE_SHARES)
        self.ranges: dict[str, tuple[int, int]] = {}  # profile -> (first index, count)
        low = 0
        for name in PROFILES:
            self.ranges[name] = (low, counts[name])
            low += counts[name]
        self._build = functools.lru_cache(maxsize=_CACHE)(self._draw)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Organization:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return self._build(index)

    def __iter__(self) -> Iterator[Organization]:
        """Every organization in index order, each built as it is reached (not cached)."""
        return (self._draw(index) for index in range(self.size))

    def profile_of(self, index: int) -> str:
        for name in PROFILES:
            low, count = self.ranges[name]
            if low <= index < low + count:
                return name
        raise IndexError(index)

    def pick(self, rng: random.Random, profile: str, skew: float = 0.0) -> int:
        """The index of an organization of `profile` (Zipf exponent `skew`; 0: uniform)."""
        low, count = self.ranges[profile]
        if skew <= 0:
            return low + rng.randrange(count)
        return low + zipf_rank(rng.random(), count, skew)

    def _draw(self, index: int) -> Organization:
        rng = random.Random(self._seed * 1_000_003 + index)
        return draw_organization(rng, index, self.profile_of(index))
