"""The simulator's event mix at benchmark scale: a lazy population, skew, live events.

`stream.generate` samples activity from an (organizations x 720 hours) weight
table over organizations all built up front: fine for thousands of
organizations, impossible for a million (720M weights). The shapes here keep
its profiles (healthy / declining / churning, 60/25/15), usage-type weights,
support interaction life cycles, message bodies, duplicate and malformed
rates, and time shape (profile decay, office hours), but draw from
`Organizations`, built on demand from their index, and draw each event's
organization per hour bin, so memory and time per event do not depend on the
number of organizations:

* `Workload.messages()`: a historical stream over `span`, in event-time order
  (for the bench's preloaded throughput phase), uniform over each profile's
  organizations or Zipf-skewed (`skew`);
* `LiveStream`: events that happen *now* (for the latency phase, paced by the
  caller), plus alert triggers: a cancellation request opened by an
  organization nobody has seen, which raises a churn-risk alert on its first
  event.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from healthscore_lab.simulator.catalogue import (
    BINS,
    PROFILES,
    SUPPORT_WEIGHT,
    allocate,
    clock_intensity,
    iso_ms,
    new_uuid,
    profile_intensity,
)
from healthscore_lab.simulator.events import BodyWriter, Planner, Timeline
from healthscore_lab.simulator.messages import (
    Duplicates,
    SimulatedMessage,
    StreamCounts,
    event_message,
    malformed_message,
)
from healthscore_lab.simulator.organizations import Organizations

# share of usage events that are the scripted, milestone-like kinds the
# simulator schedules per organization (onboarding, profile, downgrades...)
_SCRIPTED_SHARE = 0.02

# a planned event: (time offset ms, organization index, usage type or support fields)
_Plan = tuple[int, int, str | dict[str, Any] | None]


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

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        if self.events < 0:
            raise ValueError("events must not be negative")


@dataclass
class WorkloadCounts(StreamCounts):
    """What a generated stream held (filled while it is consumed)."""

    usage: int = 0
    support: int = 0
    organizations_seen: set[str] = field(default_factory=set)

    def add(self, message: SimulatedMessage) -> None:
        super().add(message)
        if message.valid and not message.is_duplicate and message.organization_id is not None:
            if message.topic_kind == "support":
                self.support += 1
            else:
                self.usage += 1
            self.organizations_seen.add(message.organization_id)


def _timeline(config: WorkloadConfig) -> Timeline:
    staff_rng = random.Random(f"{config.seed}:staff")
    staff = tuple(new_uuid(staff_rng) for _ in range(6))
    return Timeline.of(config.start, config.span, staff)


def _profile_weights(
    organizations: Organizations, fraction: float, elapsed_ms: float, span_ms: int
) -> list[float]:
    """Each profile's share of the activity at a moment: its size times its intensity."""
    return [
        organizations.ranges[p][1] * profile_intensity(p, fraction, elapsed_ms, span_ms)
        for p in PROFILES
    ]


def _support_cumulative(organizations: Organizations) -> list[float]:
    return list(
        itertools.accumulate(organizations.ranges[p][1] * SUPPORT_WEIGHT[p] for p in PROFILES)
    )


def _draw_profile(rng: random.Random, cumulative: list[float]) -> str:
    return PROFILES[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]


class Workload:
    """A historical stream of `events` valid events over `organizations`."""

    def __init__(self, config: WorkloadConfig) -> None:
        self.config = config
        self.organizations = Organizations(config.organizations, config.seed)
        self.timeline = _timeline(config)
        self.counts = WorkloadCounts()

    def messages(self) -> Iterator[SimulatedMessage]:
        """Valid events in event-time order, plus duplicates and malformed ones."""
        config = self.config
        span_ms = self.timeline.span_ms
        organizations = self.organizations
        plan_rng = random.Random(f"{config.seed}:plan")
        writer = BodyWriter(self.timeline, random.Random(f"{config.seed}:bodies"))
        extras = random.Random(f"{config.seed}:extras")
        planner = Planner(self.timeline, plan_rng)

        total = config.events
        support_budget = round(total * config.support_share)
        usage_budget = total - support_budget
        support = self._plan_support(planner, support_budget)
        per_bin = self._usage_per_bin(usage_budget)
        bin_ms = span_ms / BINS

        duplicates = Duplicates()
        position = 0
        last_occurred = config.start
        support_at = 0
        for b in range(BINS):
            low = b * bin_ms
            high = span_ms if b == BINS - 1 else (b + 1) * bin_ms
            elapsed = (b + 0.5) * bin_ms
            cum = list(
                itertools.accumulate(
                    _profile_weights(organizations, elapsed / span_ms, elapsed, span_ms)
                )
            )
            plans: list[_Plan] = []
            for _ in range(per_bin[b]):
                offset = min(span_ms - 1, int(low + plan_rng.random() * (high - low)))
                profile = _draw_profile(plan_rng, cum)
                index = organizations.pick(plan_rng, profile, config.skew)
                kind: str | None = None
                if plan_rng.random() < _SCRIPTED_SHARE:
                    scripted = planner.milestones(organizations[index])
                    if scripted:
                        kind = plan_rng.choice(scripted)[1]
                plans.append((offset, index, kind))
            while support_at < len(support) and support[support_at][0] < high:
                plans.append(support[support_at])
                support_at += 1
            plans.sort(key=lambda p: p[0])
            for offset, index, detail in plans:
                message = writer.message(organizations[index], offset, detail)
                yield self._counted(message)
                last_occurred = message.occurred_at or last_occurred
                if extras.random() < config.duplicate_rate:
                    duplicates.schedule(message, position, extras)
                for due in duplicates.due(position):
                    yield self._counted(due)
                if extras.random() < config.malformed_rate:
                    yield self._counted(malformed_message(extras, organizations, last_occurred))
                position += 1
        for due in duplicates.rest():
            yield self._counted(due)

    def _counted(self, message: SimulatedMessage) -> SimulatedMessage:
        self.counts.add(message)
        return message

    def _usage_per_bin(self, budget: int) -> list[int]:
        span_ms = self.timeline.span_ms
        bin_ms = span_ms / BINS
        weights = []
        for b in range(BINS):
            elapsed = (b + 0.5) * bin_ms
            activity = sum(
                _profile_weights(self.organizations, elapsed / span_ms, elapsed, span_ms)
            )
            weights.append(activity * clock_intensity(self.timeline.start_ms + elapsed))
        return list(allocate(budget, {str(b): w for b, w in enumerate(weights)}).values())

    def _plan_support(self, planner: Planner, budget: int) -> list[_Plan]:
        """Support interactions (several events each) until `budget` events, by time."""
        organizations = self.organizations
        rng = planner.rng
        cum = _support_cumulative(organizations)
        plans: list[_Plan] = []
        number = itertools.count(100 + rng.randrange(900))
        while len(plans) < budget:
            index = organizations.pick(rng, _draw_profile(rng, cum))
            steps = planner.interaction(organizations[index], next(number))
            for offset, fields in steps[: budget - len(plans)]:
                plans.append((offset, index, fields))
        plans.sort(key=lambda p: p[0])
        return plans


class LiveStream:
    """Events that happen now, over the same organizations, and alert triggers."""

    def __init__(self, config: WorkloadConfig, seed_suffix: str = "live") -> None:
        self.config = config
        self.organizations = Organizations(config.organizations, config.seed)
        self.timeline = _timeline(config)
        self._rng = random.Random(f"{config.seed}:{seed_suffix}")
        self._writer = BodyWriter(
            self.timeline, random.Random(f"{config.seed}:{seed_suffix}:bodies")
        )
        self._planner = Planner(self.timeline, random.Random(f"{config.seed}:{seed_suffix}:plan"))
        # interactions under way: (organization index, the fields of their next events)
        self._open: list[tuple[int, list[dict[str, Any]]]] = []
        self._numbers = itertools.count(10_000)
        span_ms = self.timeline.span_ms
        self._usage_cum = list(
            itertools.accumulate(_profile_weights(self.organizations, 1.0, span_ms, span_ms))
        )
        self._support_cum = _support_cumulative(self.organizations)

    def next(self, now_ms: int) -> SimulatedMessage:
        rng = self._rng
        offset = now_ms - self.timeline.start_ms
        if rng.random() < self.config.support_share:
            if not self._open or (len(self._open) < 200 and rng.random() < 0.4):
                index = self.organizations.pick(rng, _draw_profile(rng, self._support_cum))
                org = self.organizations[index]
                steps = self._planner.interaction(org, next(self._numbers))
                self._open.append((index, [fields for _, fields in steps]))
            slot = rng.randrange(len(self._open))
            index, pending = self._open[slot]
            fields = pending.pop(0)
            if not pending:
                self._open[slot] = self._open[-1]
                self._open.pop()
            return self._writer.message(self.organizations[index], offset, fields)
        index = self.organizations.pick(rng, _draw_profile(rng, self._usage_cum))
        return self._writer.message(self.organizations[index], offset, None)

    def alert_trigger(self, now_ms: int) -> SimulatedMessage:
        """A cancellation request opened by a brand-new organization: raises an alert."""
        rng = self._rng
        org_id = new_uuid(rng)
        body = {
            "event_id": new_uuid(rng),
            "organization_id": org_id,
            "interaction_id": new_uuid(rng),
            "action": "opened",
            "interaction_type": "cancellation_request",
            "channel": "email",
            "priority": "urgent",
            "sentiment": "very_negative",
            "subject": "Cancel subscription",
            "occurred_at": iso_ms(now_ms),
        }
        return event_message("support", org_id.encode(), org_id, body, now_ms)
