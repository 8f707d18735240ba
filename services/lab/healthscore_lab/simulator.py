"""A realistic synthetic event stream for both input topics, and a producer loop.

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
`healthscore_lab.poison` are interleaved (malformed). `produce` is the only I/O.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import math
import random
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

from healthscore_lab.poison import poison_corpus

TopicKind = Literal["usage", "support"]

HEALTHY = "healthy"
DECLINING = "declining"
CHURNING = "churning"
PROFILES = (HEALTHY, DECLINING, CHURNING)


def _default_profile_mix() -> dict[str, float]:
    return {HEALTHY: 0.6, DECLINING: 0.25, CHURNING: 0.15}


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

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        if self.organizations < 1:
            raise ValueError("organizations must be at least 1")
        if self.events < 0:
            raise ValueError("events must not be negative")
        if self.span <= timedelta(0):
            raise ValueError("span must be positive")
        for name in ("duplicate_rate", "malformed_rate", "support_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        unknown = set(self.profile_mix) - set(PROFILES)
        if unknown:
            raise ValueError(f"unknown profiles in profile_mix: {sorted(unknown)}")
        if sum(self.profile_mix.values()) <= 0 or min(self.profile_mix.values()) < 0:
            raise ValueError("profile_mix weights must be non-negative and not all zero")


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


# --------------------------------------------------------------------------- catalogue

FEATURES = (
    "calendar",
    "client_portal",
    "invoices",
    "contracts",
    "questionnaires",
    "timeline_builder",
    "vendor_directory",
    "seating_chart",
    "budget_tracker",
    "guest_list",
    "moodboards",
    "task_manager",
    "email_templates",
    "automations",
    "reports",
    "gallery",
    "mobile_app",
    "scheduler",
    "proposals",
    "forms",
    "journeys",
    "crm",
    "tags",
    "website_widget",
    "payment_plans",
)

# relative rates of background usage; logins and feature_used dominate
_USAGE_WEIGHTS: dict[str, dict[str, float]] = {
    HEALTHY: {
        "login": 30.0,
        "feature_used": 36.0,
        "client_added": 6.0,
        "form_created": 1.5,
        "form_submitted": 5.0,
        "journey_launched": 1.2,
        "email_sent": 8.0,
        "payment_received": 3.0,
        "contract_signed": 2.0,
        "wedding_completed": 1.0,
        "review_received": 0.7,
        "referral_made": 0.25,
        "team_member_invited": 0.15,
        "integration_connected": 0.1,
        "subscription_upgraded": 0.03,
    },
    DECLINING: {
        "login": 38.0,
        "feature_used": 30.0,
        "client_added": 3.0,
        "form_created": 0.6,
        "form_submitted": 3.0,
        "journey_launched": 0.4,
        "email_sent": 5.0,
        "payment_received": 2.0,
        "contract_signed": 1.0,
        "wedding_completed": 0.8,
        "review_received": 0.2,
    },
    CHURNING: {
        "login": 45.0,
        "feature_used": 25.0,
        "client_added": 1.5,
        "form_submitted": 2.0,
        "email_sent": 3.0,
        "payment_received": 1.5,
        "contract_signed": 0.4,
        "wedding_completed": 0.8,
    },
}

# usage done by the organization's clients or the system, not by a user
_NO_USER_TYPES = frozenset({"form_submitted", "payment_received", "review_received"})

_PLANS = ("starter", "professional", "business", "enterprise")

_INTERACTION_TYPES: dict[str, tuple[tuple[str, float], ...]] = {
    HEALTHY: (
        ("onboarding_call", 2.0),
        ("training_session", 2.0),
        ("check_in", 3.0),
        ("quarterly_business_review", 1.5),
        ("upsell_discussion", 1.0),
        ("renewal_discussion", 1.0),
        ("feature_request", 2.0),
        ("technical_support", 2.0),
        ("billing_inquiry", 1.5),
        ("feedback_survey", 1.5),
    ),
    DECLINING: (
        ("technical_support", 3.0),
        ("bug_report", 2.5),
        ("billing_inquiry", 2.0),
        ("check_in", 1.5),
        ("renewal_discussion", 1.0),
        ("feature_request", 1.0),
        ("churn_intervention", 1.0),
        ("complaint", 1.0),
    ),
    CHURNING: (
        ("complaint", 3.0),
        ("cancellation_request", 2.5),
        ("escalation", 2.0),
        ("churn_intervention", 1.5),
        ("bug_report", 1.5),
        ("billing_inquiry", 1.0),
    ),
}

_LEFT_OPEN_TYPES = frozenset({"complaint", "cancellation_request", "escalation"})

_SUBJECTS: dict[str, tuple[str, ...]] = {
    "onboarding_call": ("Onboarding session booking", "Getting started call"),
    "training_session": ("Training on automations", "Team training request"),
    "check_in": ("Monthly check-in", "Account check-in"),
    "quarterly_business_review": ("Quarterly review", "QBR agenda"),
    "renewal_discussion": ("Renewal terms", "Plan renewal"),
    "upsell_discussion": ("Upgrade options", "More seats enquiry"),
    "technical_support": ("Calendar sync issue", "Login trouble", "Email delivery delay"),
    "bug_report": ("Form not saving", "Invoice PDF rendering bug", "Portal error page"),
    "feature_request": ("Request: bulk export", "Request: custom fields"),
    "billing_inquiry": ("Invoice question", "Card update", "Refund query"),
    "complaint": ("Service complaint", "Unhappy with response time"),
    "escalation": ("Escalated issue", "Urgent: payments failing"),
    "cancellation_request": ("Cancel subscription", "Account closure request"),
    "churn_intervention": ("Save call", "Retention offer"),
    "feedback_survey": ("Feedback survey", "NPS follow-up"),
}

_SENTIMENTS: dict[str, tuple[tuple[str, float], ...]] = {
    HEALTHY: (("very_positive", 2.0), ("positive", 4.0), ("neutral", 3.0)),
    DECLINING: (("positive", 1.0), ("neutral", 3.0), ("negative", 3.0), ("very_negative", 0.5)),
    CHURNING: (("neutral", 0.5), ("negative", 3.0), ("very_negative", 3.0)),
}

_CHANNELS: tuple[tuple[str, float], ...] = (
    ("email", 4.0),
    ("chat", 3.0),
    ("phone", 2.0),
    ("video", 1.0),
    ("in_app", 1.5),
)

_SUPPORT_WEIGHT = {HEALTHY: 1.0, DECLINING: 2.5, CHURNING: 4.0}

_BINS = 720  # time bins the span is cut into for activity sampling (an hour for 30 days)
_DUPLICATE_MEAN_DELAY = 40  # originals between an event and its duplicate, on average
_MS = 1000


# --------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class _Org:
    index: int
    id: str
    key: bytes
    profile: str
    users: tuple[str, ...]
    features: tuple[str, ...]
    plan: int
    activity: float


@dataclass
class _World:
    config: SimulationConfig
    orgs: list[_Org]
    staff: tuple[str, ...]
    start_ms: int
    span_ms: int


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` by `weights`, largest remainders first (deterministic)."""
    norm = sum(weights.values())
    exact = {name: total * weight / norm for name, weight in weights.items()}
    counts = {name: int(value) for name, value in exact.items()}
    rest = total - sum(counts.values())
    by_remainder = sorted(weights, key=lambda name: (-(exact[name] - counts[name]), name))
    for name in by_remainder[:rest]:
        counts[name] += 1
    return counts


def _build_world(config: SimulationConfig) -> _World:
    rng = random.Random(config.seed)
    mix = {name: config.profile_mix.get(name, 0.0) for name in PROFILES}
    counts = _allocate(config.organizations, mix)
    profiles = [name for name in PROFILES for _ in range(counts[name])]
    rng.shuffle(profiles)
    orgs: list[_Org] = []
    for index, profile in enumerate(profiles):
        org_id = _uuid(rng)
        user_count = min(15, 2 + int(rng.expovariate(1 / 3.5)))
        users = tuple(_uuid(rng) for _ in range(user_count))
        feature_count = {
            HEALTHY: rng.randint(12, 20),
            DECLINING: rng.randint(6, 9),
            CHURNING: rng.randint(4, 6),
        }[profile]
        features = tuple(rng.sample(FEATURES, feature_count))
        plan = rng.randint(0, 2) if profile == HEALTHY else rng.randint(1, 3)
        activity = user_count * rng.uniform(0.7, 1.3)
        orgs.append(_Org(index, org_id, org_id.encode(), profile, users, features, plan, activity))
    staff = tuple(_uuid(rng) for _ in range(6))
    start_ms = _to_ms(config.start)
    span_ms = max(1, math.floor(config.span.total_seconds() * _MS))
    return _World(config, orgs, staff, start_ms, span_ms)


def organization_profiles(config: SimulationConfig) -> dict[str, str]:
    """The profile (`healthy`, `declining`, `churning`) of each simulated organization."""
    return {org.id: org.profile for org in _build_world(config).orgs}


# --------------------------------------------------------------------------- activity


def _profile_intensity(profile: str, fraction: float, elapsed_ms: float, span_ms: int) -> float:
    if profile == DECLINING:
        half_life = min(7 * 86_400 * _MS, span_ms / 4)
        return float(0.5 ** (elapsed_ms / half_life))
    if profile == CHURNING:
        if fraction < 1 / 3:
            return 1.0
        if fraction < 0.5:
            return 1.0 - (fraction - 1 / 3) * 6 * 0.98
        return 0.02
    return 1.0


def _clock_intensity(moment_ms: float) -> float:
    moment = datetime.fromtimestamp(moment_ms / _MS, UTC)
    hour = moment.hour
    weight = 1.0 if 8 <= hour < 19 else 0.35 if 19 <= hour < 23 else 0.08
    if moment.weekday() >= 5:
        weight *= 0.5
    return weight


# a planned event: (time offset ms, sequence, org index, usage type or support fields)
_Plan = tuple[int, int, int, str | dict[str, Any] | None]


class _Planner:
    def __init__(self, world: _World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.seq = itertools.count()

    def at(self, low: float, high: float) -> int:
        """A random offset (ms) in the fraction [low, high) of the span."""
        span = self.world.span_ms
        return min(span - 1, int(span * self.rng.uniform(low, high)))

    def usage_milestones(self, org: _Org) -> list[_Plan]:
        rng = self.rng
        plans: list[_Plan] = []

        def add(offset: int, kind: str) -> None:
            plans.append((offset, next(self.seq), org.index, kind))

        if org.profile == HEALTHY:
            add(self.at(0.0, 0.05), "onboarding_completed")
            add(self.at(0.02, 0.1), "profile_completed")
            add(self.at(0.05, 0.4), "integration_connected")
            add(self.at(0.05, 0.5), "team_member_invited")
            if rng.random() < 0.35:
                add(self.at(0.3, 0.95), "subscription_upgraded")
            if rng.random() < 0.5:
                add(self.at(0.2, 0.95), "referral_made")
        elif org.profile == DECLINING:
            add(self.at(0.0, 0.08), "onboarding_completed")
            if rng.random() < 0.7:
                add(self.at(0.03, 0.2), "profile_completed")
            if rng.random() < 0.3:
                add(self.at(0.05, 0.3), "integration_connected")
            change = rng.random()
            if change < 0.7:
                add(self.at(0.55, 0.9), "subscription_downgraded")
            if change > 0.4:
                add(self.at(0.5, 0.95), "seat_removed")
        else:
            if rng.random() < 0.6:
                add(self.at(0.0, 0.1), "onboarding_completed")
            if rng.random() < 0.4:
                add(self.at(0.05, 0.25), "profile_completed")
            add(self.at(0.55, 0.9), "subscription_downgraded")
            add(self.at(0.6, 0.98), "data_export_requested")
            if rng.random() < 0.5:
                add(self.at(0.5, 0.9), "seat_removed")
        return plans

    def background(self, count: int) -> list[_Plan]:
        """`count` ordinary usage events, spread by each organization's activity."""
        if count <= 0:
            return []
        world = self.world
        bin_ms = world.span_ms / _BINS
        clock = [_clock_intensity(world.start_ms + (b + 0.5) * bin_ms) for b in range(_BINS)]
        weights: list[float] = []
        for org in world.orgs:
            for b in range(_BINS):
                elapsed = (b + 0.5) * bin_ms
                fraction = elapsed / world.span_ms
                weight = _profile_intensity(org.profile, fraction, elapsed, world.span_ms)
                weights.append(org.activity * weight * clock[b])
        cumulative = list(itertools.accumulate(weights))
        picks = self.rng.choices(range(len(weights)), cum_weights=cumulative, k=count)
        plans: list[_Plan] = []
        for pick in picks:
            org_index, b = divmod(pick, _BINS)
            offset = min(world.span_ms - 1, int((b + self.rng.random()) * bin_ms))
            plans.append((offset, next(self.seq), org_index, None))
        return plans

    def interactions(self, budget: int) -> list[_Plan]:
        """Support interactions (several events each) until `budget` events are planned."""
        world = self.world
        rng = self.rng
        if budget <= 0:
            return []
        weights = list(
            itertools.accumulate(
                org.activity**0.5 * _SUPPORT_WEIGHT[org.profile] for org in world.orgs
            )
        )
        plans: list[_Plan] = []
        number = itertools.count(100 + rng.randrange(900))
        while len(plans) < budget:
            pick = bisect.bisect_right(weights, rng.random() * weights[-1])
            org = world.orgs[min(pick, len(world.orgs) - 1)]
            steps = self._interaction(org, next(number))
            for offset, fields in steps[: budget - len(plans)]:
                plans.append((offset, next(self.seq), org.index, fields))
        return plans

    def _interaction(self, org: _Org, number: int) -> list[tuple[int, dict[str, Any]]]:
        rng = self.rng
        span = self.world.span_ms
        profile = org.profile
        names, type_weights = zip(*_INTERACTION_TYPES[profile], strict=True)
        kind = rng.choices(names, weights=type_weights)[0]
        if profile == HEALTHY:
            opened_at = self.at(0.0, 0.9)
        elif profile == DECLINING:
            opened_at = self.at(0.1, 0.95)
        else:
            opened_at = self.at(0.3, 0.95)
        if kind == "onboarding_call":
            opened_at = self.at(0.0, 0.15)
        sentiments, sentiment_weights = zip(*_SENTIMENTS[profile], strict=True)
        channels, channel_weights = zip(*_CHANNELS, strict=True)
        sentiment = rng.choices(sentiments, weights=sentiment_weights)[0]
        if kind in _LEFT_OPEN_TYPES:
            sentiment = rng.choice(("negative", "very_negative"))
        priority = (
            rng.choice(("high", "urgent"))
            if kind in _LEFT_OPEN_TYPES
            else rng.choices(("low", "normal", "high"), weights=(3, 6, 1))[0]
        )
        interaction_id = _uuid(rng)
        staff = rng.choice(self.world.staff)
        subject = f"{rng.choice(_SUBJECTS[kind])} #{number}"
        gap_ms = max(1, span // 400)  # ~2 hours for 30 days

        def later(offset: int) -> int:
            return min(span - 1, offset + int(gap_ms * rng.uniform(0.2, 3.0)))

        steps: list[tuple[int, dict[str, Any]]] = [
            (
                opened_at,
                {
                    "interaction_id": interaction_id,
                    "action": "opened",
                    "interaction_type": kind,
                    "channel": rng.choices(channels, weights=channel_weights)[0],
                    "priority": priority,
                    "sentiment": sentiment,
                    "assigned_to": staff if rng.random() < 0.8 else None,
                    "subject": subject,
                },
            )
        ]
        moment = opened_at
        for _ in range(rng.choices((0, 1, 2), weights=(5, 4, 1))[0]):
            moment = later(moment)
            update: dict[str, Any] = {"interaction_id": interaction_id, "action": "updated"}
            if rng.random() < 0.5:
                update["assigned_to"] = rng.choice(self.world.staff)
            if rng.random() < 0.4:
                update["priority"] = rng.choice(("normal", "high", "urgent"))
            if rng.random() < 0.5:
                update["sentiment"] = sentiment
            steps.append((moment, update))
        left_open = kind in _LEFT_OPEN_TYPES and (profile == CHURNING or rng.random() < 0.5)
        if left_open or rng.random() < 0.3:
            moment = later(moment)
            follow_up_at = self.world.start_ms + moment + rng.randint(1, 7) * 86_400 * _MS
            steps.append(
                (
                    moment,
                    {
                        "interaction_id": interaction_id,
                        "action": "follow_up_scheduled",
                        "follow_up_at": follow_up_at,
                        "outcome": "escalated" if kind == "escalation" else "follow_up_required",
                    },
                )
            )
        if left_open:
            return steps
        outcome = "retained" if kind == "churn_intervention" else "resolved"
        resolved_sentiment = (
            rng.choice(("positive", "very_positive", "neutral"))
            if profile == HEALTHY
            else rng.choice(("neutral", "negative", "positive"))
        )
        moment = later(moment)
        steps.append(
            (
                moment,
                {
                    "interaction_id": interaction_id,
                    "action": "resolved",
                    "outcome": outcome,
                    "sentiment": resolved_sentiment,
                },
            )
        )
        if rng.random() < (0.05 if profile == HEALTHY else 0.2):
            moment = later(moment)
            steps.append(
                (
                    moment,
                    {
                        "interaction_id": interaction_id,
                        "action": "reopened",
                        "sentiment": "negative",
                        "priority": "high",
                    },
                )
            )
            moment = later(moment)
            steps.append(
                (
                    moment,
                    {"interaction_id": interaction_id, "action": "resolved", "outcome": outcome},
                )
            )
        if rng.random() < 0.6:
            moment = later(moment)
            steps.append((moment, {"interaction_id": interaction_id, "action": "closed"}))
        return steps


# --------------------------------------------------------------------------- bodies


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float rounding)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _timestamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / _MS, UTC).isoformat(timespec="milliseconds")


class _Writer:
    """Turns planned events into message bytes (consumes its own rng in emission order)."""

    def __init__(self, world: _World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.usage_names = {
            profile: (tuple(weights), tuple(itertools.accumulate(weights.values())))
            for profile, weights in _USAGE_WEIGHTS.items()
        }

    def usage(self, org: _Org, offset: int, kind: str | None) -> dict[str, Any]:
        rng = self.rng
        fraction = offset / self.world.span_ms
        if kind is None:
            names, cumulative = self.usage_names[org.profile]
            kind = rng.choices(names, cum_weights=cumulative)[0]
        user = None if kind in _NO_USER_TYPES else rng.choice(org.users)
        quantity = 1
        feature: str | None = None
        properties: dict[str, Any] | None = None
        if kind == "login":
            properties = {
                "method": rng.choices(("password", "sso", "magic_link"), weights=(6, 2, 1))[0],
                "device": rng.choices(("desktop", "mobile", "tablet"), weights=(6, 3, 1))[0],
            }
        elif kind == "feature_used":
            features = org.features
            if org.profile != HEALTHY:  # the set in use shrinks as the organization fades
                keep = max(2, round(len(features) * (1.0 - 0.6 * fraction)))
                features = features[:keep]
            feature = rng.choice(features)
            if rng.random() < 0.3:
                properties = {"duration_s": rng.randint(5, 1800)}
        elif kind == "client_added":
            if rng.random() < 0.08:
                quantity = rng.randint(2, 40)
                properties = {"source": "import"}
            else:
                properties = {"source": rng.choice(("manual", "enquiry_form", "referral"))}
        elif kind == "email_sent":
            if rng.random() < 0.15:
                quantity = rng.randint(2, 250)
            properties = {"template": rng.choice(("welcome", "reminder", "invoice", "newsletter"))}
        elif kind == "payment_received":
            properties = {
                "amount_cents": rng.randint(5, 800) * 500,
                "currency": rng.choices(("GBP", "USD", "EUR", "AUD"), weights=(4, 3, 2, 1))[0],
            }
        elif kind == "form_submitted":
            properties = {"form": rng.choice(("enquiry", "questionnaire", "feedback"))}
        elif kind == "subscription_upgraded":
            properties = {
                "from_plan": _PLANS[org.plan],
                "to_plan": _PLANS[min(org.plan + 1, len(_PLANS) - 1)],
            }
        elif kind == "subscription_downgraded":
            properties = {"from_plan": _PLANS[org.plan], "to_plan": _PLANS[max(org.plan - 1, 0)]}
        elif kind == "seat_removed":
            properties = {"seats": rng.randint(1, 3)}
        elif kind == "data_export_requested":
            properties = {"format": rng.choice(("csv", "json"))}
        elif kind == "review_received":
            properties = {"rating": rng.choices((5, 4, 3), weights=(6, 3, 1))[0]}
        body: dict[str, Any] = {
            "event_id": _uuid(rng),
            "organization_id": org.id,
            "user_id": user,
            "type": kind,
            "occurred_at": _timestamp(self.world.start_ms + offset),
            "quantity": quantity,
        }
        if feature is not None:
            body["feature"] = feature
        if properties is not None:
            body["properties"] = properties
        return body

    def support(self, org: _Org, offset: int, fields: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event_id": _uuid(self.rng),
            "organization_id": org.id,
        }
        for name, value in fields.items():
            body[name] = _timestamp(value) if name == "follow_up_at" else value
        body["occurred_at"] = _timestamp(self.world.start_ms + offset)
        return body


# --------------------------------------------------------------------------- the stream


def generate(config: SimulationConfig) -> Iterator[SimulatedMessage]:
    """The simulated stream: valid events in event-time order, plus duplicates and bad ones.

    Exactly `config.events` valid originals; `round(events * duplicate_rate)`
    duplicates, each after its original; `round(events * malformed_rate)`
    malformed messages. Deterministic for the config.
    """
    world = _build_world(config)
    plan_rng = random.Random(f"{config.seed}:plan")
    writer = _Writer(world, random.Random(f"{config.seed}:bodies"))
    extras_rng = random.Random(f"{config.seed}:extras")

    total = config.events
    support_budget = round(total * config.support_share)
    usage_budget = total - support_budget
    planner = _Planner(world, plan_rng)
    scripted = [plan for org in world.orgs for plan in planner.usage_milestones(org)]
    if len(scripted) > usage_budget:
        scripted = plan_rng.sample(scripted, usage_budget)
    plans = scripted + planner.background(usage_budget - len(scripted))
    plans += planner.interactions(support_budget)
    plans.sort(key=lambda plan: (plan[0], plan[1]))
    if plans:  # the first event happens exactly at `start`
        first = plans[0]
        plans[0] = (0, first[1], first[2], first[3])

    duplicate_count = min(total, round(total * config.duplicate_rate))
    duplicated = set(extras_rng.sample(range(total), duplicate_count))
    malformed_count = min(total, round(total * config.malformed_rate))
    malformed_after = set(extras_rng.sample(range(total), malformed_count))
    pending: list[tuple[int, int, SimulatedMessage]] = []  # (after original n, seq, message)
    pending_seq = itertools.count()
    last_occurred = config.start

    for position, (offset, _seq, org_index, detail) in enumerate(plans):
        org = world.orgs[org_index]
        if isinstance(detail, dict):
            kind: TopicKind = "support"
            body = writer.support(org, offset, detail)
        else:
            kind = "usage"
            body = writer.usage(org, offset, detail)
        occurred_at = datetime.fromtimestamp((world.start_ms + offset) / _MS, UTC)
        message = SimulatedMessage(
            topic_kind=kind,
            key=org.key,
            value=orjson.dumps(body),
            event_id=body["event_id"],
            organization_id=org.id,
            valid=True,
            occurred_at=occurred_at,
            is_duplicate=False,
            expected_reason=None,
        )
        yield message
        last_occurred = occurred_at
        if position in duplicated:
            delay = 1 + int(extras_rng.expovariate(1 / _DUPLICATE_MEAN_DELAY))
            duplicate = replace(message, is_duplicate=True)
            heapq.heappush(pending, (position + delay, next(pending_seq), duplicate))
        while pending and pending[0][0] <= position:
            due = heapq.heappop(pending)[2]
            yield due
            last_occurred = due.occurred_at or last_occurred
        if position in malformed_after:
            victim = world.orgs[extras_rng.randrange(len(world.orgs))]
            corpus = poison_corpus(victim.id, last_occurred)
            case = corpus[extras_rng.randrange(len(corpus))]
            yield SimulatedMessage(
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
    while pending:
        yield heapq.heappop(pending)[2]


# --------------------------------------------------------------------------- producing


@dataclass
class ProduceStats:
    sent: int = 0
    valid: int = 0
    duplicates: int = 0
    malformed: int = 0
    seconds: float = 0.0


_CHUNK = 1000
_PACE_TICK = 0.01  # with a rate, send in bursts about every 10 ms


async def produce(
    messages: Iterable[SimulatedMessage],
    producer: Any,
    usage_topic: str,
    support_topic: str,
    rate: float | None = None,
    timestamp_from_event: bool = True,
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
            delay = started + stats.sent / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(max(delay, _PACE_TICK))
        timestamp_ms: int | None = None
        if timestamp_from_event:
            if message.occurred_at is not None:
                last_ms = _to_ms(message.occurred_at)
            timestamp_ms = last_ms
        topic = usage_topic if message.topic_kind == "usage" else support_topic
        future = await producer.send(
            topic, value=message.value, key=message.key, timestamp_ms=timestamp_ms
        )
        pending.append(future)
        stats.sent += 1
        if not message.valid:
            stats.malformed += 1
        elif message.is_duplicate:
            stats.duplicates += 1
        else:
            stats.valid += 1
        if len(pending) >= _CHUNK:
            await asyncio.gather(*pending)
            pending.clear()
    if pending:
        await asyncio.gather(*pending)
    stats.seconds = time.perf_counter() - clock_started
    return stats
