"""The simulated stream of both input topics, as the demo and the tests use it.

`generate` is pure and deterministic for a `SimulationConfig`: the same config
gives the same byte stream. Each organization has a profile:

* healthy: steady activity from several users, many features, the early
  milestones, clients, forms, journeys, emails, payments and contracts, the
  occasional upgrade, referral or review, and a few friendly support
  interactions that get resolved;
* declining: activity halves every week (or every quarter of the span when the
  span is shorter than four weeks), uses fewer and fewer features, has some
  negative support interactions and a downgrade or a seat removal;
* churning: normal activity in the first third of the span that falls to
  almost nothing by the middle, complaints, cancellation requests and
  escalations with negative sentiment left open, a data export and a
  downgrade.

Valid events are emitted in event-time order; a fraction is re-emitted later
with the same event id and bytes (duplicates), and bad messages from
`healthscore_lab.poison` are interleaved (malformed). With `profile_share`, a
CRM also publishes what it knows of some organizations from before the stream
(`organization.profile.v1`: account creation, milestones reached) at a random
point of it; half of those profiles are sent again later re-serialized (every
key in another order: a repeat, not a conflict), and a tenth of the profiled
organizations get a bad profile as well (`poison.profile_poison_corpus`).

`generate` samples every event from one (organizations x hour) activity table,
so its counts are exact (`events` originals, `events * duplicate_rate`
duplicates...) but its memory grows with organizations x events: it is for
thousands of organizations. `simulator.workload` draws the same kind of stream
hour by hour over organizations built on demand, for the bench's millions;
both share the organizations, the planner, the bodies and the messages.
"""

from __future__ import annotations

import bisect
import itertools
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from healthscore.contracts.enums import MilestoneType
from healthscore_lab.poison import profile_poison_corpus
from healthscore_lab.simulator.catalogue import (
    BINS,
    PROFILE_SHARES,
    PROFILES,
    SUPPORT_WEIGHT,
    clock_intensity,
    iso,
    iso_ms,
    new_uuid,
    profile_intensity,
    to_ms,
)
from healthscore_lab.simulator.events import BodyWriter, Planner, Timeline
from healthscore_lab.simulator.messages import (
    Duplicates,
    SimulatedMessage,
    event_message,
    malformed_message,
    poison_message,
)
from healthscore_lab.simulator.organizations import Organization, scripted_organizations


def _default_profile_mix() -> dict[str, float]:
    return dict(PROFILE_SHARES)


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. `start` is the event time of the first event (tz-aware)."""

    start: datetime
    organizations: int = 50
    events: int = 5000
    seed: int = 7
    span: timedelta = timedelta(days=30)
    duplicate_rate: float = 0.01
    malformed_rate: float = 0.001
    support_share: float = 0.08
    profile_mix: dict[str, float] = field(default_factory=_default_profile_mix)
    # organizations whose CRM profile is published during the stream (0: no profile topic)
    profile_share: float = 0.0

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        if self.organizations < 1:
            raise ValueError("organizations must be at least 1")
        if self.events < 0:
            raise ValueError("events must not be negative")
        if self.span <= timedelta(0):
            raise ValueError("span must be positive")
        for name in ("duplicate_rate", "malformed_rate", "support_share", "profile_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        unknown = set(self.profile_mix) - set(PROFILES)
        if unknown:
            raise ValueError(f"unknown profiles in profile_mix: {sorted(unknown)}")
        if sum(self.profile_mix.values()) <= 0 or min(self.profile_mix.values()) < 0:
            raise ValueError("profile_mix weights must be non-negative and not all zero")

    @classmethod
    def ending_now(cls, span: timedelta, **fields: Any) -> SimulationConfig:
        """A stream over `span` up to a minute ago: every event in the past as the
        service sees it (`fields`: the rest of the settings)."""
        return cls(start=datetime.now(UTC) - span, span=span - timedelta(minutes=1), **fields)


# --------------------------------------------------------------------------- generate

# a planned event: (time offset ms, sequence, org index, usage type or support fields)
_Plan = tuple[int, int, int, str | dict[str, Any] | None]


@dataclass
class _World:
    orgs: list[Organization]
    timeline: Timeline


def _build_world(config: SimulationConfig) -> _World:
    rng = random.Random(config.seed)
    orgs = list(scripted_organizations(rng, config.organizations, config.profile_mix))
    staff = tuple(new_uuid(rng) for _ in range(6))
    return _World(orgs, Timeline.of(config.start, config.span, staff))


def organization_profiles(config: SimulationConfig) -> dict[str, str]:
    """The profile (`healthy`, `declining`, `churning`) of each simulated organization."""
    return {org.id: org.profile for org in _build_world(config).orgs}


def _background(world: _World, rng: random.Random, count: int, seq: Iterator[int]) -> list[_Plan]:
    """`count` ordinary usage events, spread by each organization's activity."""
    if count <= 0:
        return []
    span_ms = world.timeline.span_ms
    bin_ms = span_ms / BINS
    clock = [clock_intensity(world.timeline.start_ms + (b + 0.5) * bin_ms) for b in range(BINS)]

    def weights() -> Iterator[float]:
        for org in world.orgs:
            for b in range(BINS):
                elapsed = (b + 0.5) * bin_ms
                weight = profile_intensity(org.profile, elapsed / span_ms, elapsed, span_ms)
                yield org.activity * weight * clock[b]

    cumulative = array("d", itertools.accumulate(weights()))  # 8 bytes a weight
    picks = rng.choices(range(len(cumulative)), cum_weights=cumulative, k=count)
    plans: list[_Plan] = []
    for pick in picks:
        org_index, b = divmod(pick, BINS)
        offset = min(span_ms - 1, int((b + rng.random()) * bin_ms))
        plans.append((offset, next(seq), org_index, None))
    return plans


def _interactions(world: _World, planner: Planner, budget: int, seq: Iterator[int]) -> list[_Plan]:
    """Support interactions (several events each) until `budget` events are planned."""
    if budget <= 0:
        return []
    rng = planner.rng
    weights = list(
        itertools.accumulate(org.activity**0.5 * SUPPORT_WEIGHT[org.profile] for org in world.orgs)
    )
    plans: list[_Plan] = []
    number = itertools.count(100 + rng.randrange(900))
    while len(plans) < budget:
        pick = bisect.bisect_right(weights, rng.random() * weights[-1])
        org = world.orgs[min(pick, len(world.orgs) - 1)]
        for offset, fields in planner.interaction(org, next(number))[: budget - len(plans)]:
            plans.append((offset, next(seq), org.index, fields))
    return plans


def generate(config: SimulationConfig) -> Iterator[SimulatedMessage]:
    """The simulated stream: valid events in event-time order, plus duplicates and bad ones.

    Exactly `config.events` valid originals; `round(events * duplicate_rate)`
    duplicates, each after its original; `round(events * malformed_rate)`
    malformed messages. Deterministic for the config. With `profile_share`, the
    profiles come on top (see the module docstring); without, the stream is the
    same as before profiles existed.
    """
    world = _build_world(config)
    timeline = world.timeline
    plan_rng = random.Random(f"{config.seed}:plan")
    writer = BodyWriter(timeline, random.Random(f"{config.seed}:bodies"))
    extras_rng = random.Random(f"{config.seed}:extras")

    total = config.events
    support_budget = round(total * config.support_share)
    usage_budget = total - support_budget
    planner = Planner(timeline, plan_rng)
    seq = itertools.count()
    scripted: list[_Plan] = [
        (offset, next(seq), org.index, kind)
        for org in world.orgs
        for offset, kind in planner.milestones(org)
    ]
    if len(scripted) > usage_budget:
        scripted = plan_rng.sample(scripted, usage_budget)
    plans = scripted + _background(world, plan_rng, usage_budget - len(scripted), seq)
    plans += _interactions(world, planner, support_budget, seq)
    plans.sort(key=lambda plan: (plan[0], plan[1]))
    if plans:  # the first event happens exactly at `start`
        first = plans[0]
        plans[0] = (0, first[1], first[2], first[3])

    duplicate_count = min(total, round(total * config.duplicate_rate))
    duplicated = set(extras_rng.sample(range(total), duplicate_count))
    malformed_count = min(total, round(total * config.malformed_rate))
    malformed_after = set(extras_rng.sample(range(total), malformed_count))
    duplicates = Duplicates()
    last_occurred = config.start
    crm = _Crm(world, config, len(plans))

    for position, (offset, _seq, org_index, detail) in enumerate(plans):
        message = writer.message(world.orgs[org_index], offset, detail)
        yield message
        last_occurred = message.occurred_at or last_occurred
        if position in duplicated:
            duplicates.schedule(message, position, extras_rng)
        for due in duplicates.due(position):
            yield due
            last_occurred = due.occurred_at or last_occurred
        if position in malformed_after:
            yield malformed_message(extras_rng, world.orgs, last_occurred)
        yield from crm.after(position, last_occurred)
    yield from duplicates.rest()
    yield from crm.rest()


class _Crm:
    """The profiles a CRM publishes during the stream (`SimulationConfig.profile_share`).

    Draws from a generator of its own, so that a stream without profiles is the
    same as before they existed.
    """

    def __init__(self, world: _World, config: SimulationConfig, positions: int) -> None:
        self._rng = random.Random(f"{config.seed}:crm")
        self._start = config.start
        self._orgs = world.orgs
        count = round(len(world.orgs) * config.profile_share) if positions else 0
        chosen = self._rng.sample(range(len(world.orgs)), count)
        # after which original each organization's profile goes out
        self._due: dict[int, list[int]] = {}
        for org_index in chosen:
            self._due.setdefault(self._rng.randrange(positions), []).append(org_index)
        self._repeats: list[tuple[int, SimulatedMessage]] = []  # (after original n, message)

    def after(self, position: int, now: datetime) -> Iterator[SimulatedMessage]:
        for org_index in self._due.pop(position, []):
            org = self._orgs[org_index]
            body = self._profile(org, now)
            yield event_message("profile", org.id.encode(), org.id, body, to_ms(now))
            if self._rng.random() < 0.5:  # sent again later, every key in another order
                again = event_message(
                    "profile", org.id.encode(), org.id, _reversed_keys(body), to_ms(now)
                )
                later = position + 1 + self._rng.randrange(200)
                self._repeats.append((later, replace(again, is_duplicate=True)))
            if self._rng.random() < 0.1:
                corpus = profile_poison_corpus(org.id, now)
                yield poison_message(corpus[self._rng.randrange(len(corpus))], org.id)
        due = [m for at, m in self._repeats if at <= position]
        self._repeats = [(at, m) for at, m in self._repeats if at > position]
        yield from due

    def rest(self) -> Iterator[SimulatedMessage]:
        yield from (m for _, m in self._repeats)
        self._repeats = []

    def _profile(self, org: Organization, now: datetime) -> dict[str, Any]:
        """Account creation 30-700 days before the stream, one to three milestones
        reached between it and the stream's start (keys in a random order)."""
        rng = self._rng
        created = self._start - timedelta(days=rng.uniform(30, 700))
        names = rng.sample(_MILESTONES, rng.randint(1, 3))
        span = (self._start - created).total_seconds()
        milestones = {
            name: iso((created + timedelta(seconds=rng.uniform(0, span))).timestamp())
            for name in names
        }
        return {
            "event_id": new_uuid(rng),
            "organization_id": org.id,
            "created_at": iso(created.timestamp()),
            "milestones": milestones,
            "occurred_at": iso_ms(to_ms(now)),
        }


_MILESTONES = [m.value for m in MilestoneType]


def _reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _reversed_keys(value[key]) for key in reversed(list(value))}
    return value
