"""A labelled population: an event stream with ground truth, for `healthscore evaluate`.

`simulator.stream` and `simulator.workload` script three profiles (healthy,
declining, churning) for the demo, the tests and the benchmark; nothing in them
churns. This module draws a population from a generative model in which churn
and behaviour share one latent variable, and writes down who churned and when,
so that a score can be backtested against outcomes it never saw. The model knows nothing of the
scoring model's formulas or weights: it is written in terms of a latent health
`h` (about +1 for a healthy customer, below -1 for one about to leave):

* **Latent health** moves day by day: an Ornstein-Uhlenbeck walk around the
  organization's own level `mu` (time constant `tau_days`, noise `sigma`).
  At a small daily rate an organization enters a *decline*: its health slides
  by `decline_drift` a day (drawn per decline) until the decline ends (daily
  rate `recovery_rate`: the customer is saved, and drifts back to `mu`).
* **Churn** is a hazard: per day `sudden_hazard + base_hazard * exp(-slope * h)`.
  It is negligible at ordinary health and steep below about -1, so most churn
  follows weeks of decline; a little is sudden (a business closing), which no
  score can foresee.
* **Behaviour** follows health through `e = logistic(2 h - 0.3)`: how many of
  the organization's users are active each day, how many features they use
  (the set in use shrinks with e), the volume of value actions (clients,
  forms, emails, payments, contracts: scaled by the organization's own
  business volume, which has nothing to do with health), commercial signals
  (reviews, referrals, upgrades), contraction (downgrades, seat removals, data
  exports, more likely as h falls), and support: how often interactions open,
  of which type (complaints, escalations and cancellation requests grow as h
  falls), with which sentiment (h plus noise), and how long they stay open.
* **Tenure**: a share of the organizations signs up during the stream (their
  onboarding milestones come as events); the others predate it, and their
  account creation date and the milestones they reached before the stream
  are written as *profiles* (what a CRM export would give).

After the stream ends (`days`), the latent process runs on for
`follow_up_days` without emitting events, so that "churns within 30, 60 or 90
days" is known for every as-of point in the stream. An organization that
churns during the stream sends nothing after its churn time.

How the settings were chosen: the latent dynamics so that churn follows weeks of
visible decline, as the issue describes its population (a model-free check: the
true latent health ranks 30-day churners at ROC AUC 0.95-0.98), and the
behaviour so that early decline shows in behaviour at all (the first choice,
`e = logistic(1.4 h + 0.3)`, saturated near healthy levels, so that a customer
a month from churning still behaved like a healthy one; a logistic regression
on the raw aggregates, cross-validated within the population, then reached only
0.86-0.89). They were fixed before the v2 model was fitted and have not been
changed since to move any figure.

Everything is deterministic for the config (one `random.Random` per
organization, seeded from the config's seed and the organization's index, so
adding organizations does not change the others). `reference()` and
`shifted()` are the two settings the model is fitted and checked on: the
shifted one changes activity, support volume, the share of new sign-ups, the
decline rate and depth, the hazard, the noise and the stream length.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from healthscore.contracts.enums import MilestoneType
from healthscore_lab.simulator.catalogue import (
    CHANNELS,
    FEATURES,
    NO_USER_TYPES,
    TopicKind,
    hour_weight,
    iso,
    new_uuid,
)

DAY_S = 86_400.0

# usage type -> base daily rate per unit of business volume (scaled by engagement)
_VALUE_RATES: tuple[tuple[str, float], ...] = (
    ("client_added", 0.35),
    ("form_created", 0.05),
    ("form_submitted", 0.30),
    ("journey_launched", 0.04),
    ("email_sent", 0.45),
    ("payment_received", 0.25),
    ("contract_signed", 0.12),
    ("wedding_completed", 0.06),
)

# interaction type -> (base weight, sensitivity to low health: weight * exp(-k * h))
_INTERACTIONS: tuple[tuple[str, float, float], ...] = (
    ("check_in", 1.0, -0.6),
    ("training_session", 0.6, -0.6),
    ("quarterly_business_review", 0.35, -0.6),
    ("feature_request", 0.8, -0.4),
    ("upsell_discussion", 0.25, -0.9),
    ("renewal_discussion", 0.4, 0.0),
    ("feedback_survey", 0.4, -0.3),
    ("technical_support", 1.0, 0.3),
    ("bug_report", 0.8, 0.6),
    ("billing_inquiry", 0.6, 0.4),
    ("complaint", 0.35, 1.3),
    ("escalation", 0.2, 1.4),
    ("cancellation_request", 0.08, 2.0),
    ("churn_intervention", 0.12, 1.5),
)
# mean days an interaction of this type stays open: a + b * (1 - engagement)
_OPEN_DAYS: dict[str, tuple[float, float]] = {
    "technical_support": (1.5, 2.0),
    "bug_report": (2.0, 4.0),
    "billing_inquiry": (1.0, 1.0),
    "complaint": (2.0, 8.0),
    "escalation": (3.0, 12.0),
    "cancellation_request": (4.0, 25.0),
    "churn_intervention": (2.0, 6.0),
}
_CHANNELS, _CHANNEL_WEIGHTS = zip(*CHANNELS, strict=True)

# milestones an organization that predates the stream had reached before it:
# (milestone, probability at engagement 1, minimum tenure in days)
_PRIOR_MILESTONES: tuple[tuple[MilestoneType, float, float], ...] = (
    (MilestoneType.ONBOARDING_COMPLETED, 0.97, 0),
    (MilestoneType.PROFILE_COMPLETED, 0.9, 0),
    (MilestoneType.FIRST_CLIENT_ADDED, 0.98, 0),
    (MilestoneType.CLIENTS_10, 0.9, 30),
    (MilestoneType.CLIENTS_50, 0.55, 150),
    (MilestoneType.FIRST_FORM_CREATED, 0.9, 0),
    (MilestoneType.FIRST_FORM_SUBMITTED, 0.85, 0),
    (MilestoneType.FIRST_JOURNEY_LAUNCHED, 0.7, 0),
    (MilestoneType.FIRST_EMAIL_SENT, 0.95, 0),
    (MilestoneType.FIRST_PAYMENT_RECEIVED, 0.9, 0),
    (MilestoneType.FIRST_CONTRACT_SIGNED, 0.85, 0),
    (MilestoneType.INTEGRATION_CONNECTED, 0.6, 0),
    (MilestoneType.TEAM_MEMBER_INVITED, 0.55, 0),
    (MilestoneType.WEDDINGS_COMPLETED_10, 0.6, 180),
    (MilestoneType.FIRST_REVIEW_RECEIVED, 0.65, 60),
    (MilestoneType.FIRST_REFERRAL, 0.3, 90),
    (MilestoneType.SUBSCRIPTION_UPGRADED, 0.25, 60),
)


@dataclass(frozen=True)
class PopulationConfig:
    """The generative model's settings (see the module docstring for their meaning)."""

    start: datetime = datetime(2025, 1, 6, tzinfo=UTC)
    organizations: int = 300
    days: int = 90
    follow_up_days: int = 90
    seed: int = 11
    new_share: float = 0.3  # organizations that sign up during the stream
    activity: float = 1.0  # multiplier on every usage rate
    support: float = 1.0  # multiplier on the rate of support interactions
    mu_mean: float = 1.0
    mu_sd: float = 0.3
    tau_days: float = 10.0  # time constant of the pull back to mu (outside declines)
    sigma: float = 0.05  # daily noise of the latent health
    decline_rate: float = 1 / 200  # per day: enters a decline
    decline_drift: tuple[float, float] = (0.04, 0.07)  # health lost per day in a decline
    recovery_rate: float = 1 / 90  # per day: a decline ends (the customer is saved)
    base_hazard: float = 0.0002  # churn per day at h = 0
    slope: float = 4.0  # hazard = base_hazard * exp(-slope * h)
    sudden_hazard: float = 0.00005  # churn per day whatever the health (a business closing)
    engagement_slope: float = 2.0  # engagement e = logistic(slope * h + offset)
    engagement_offset: float = -0.3
    user_activity: float = 0.85  # chance a user is active on a weekday, at e = 1
    team_size: float = 2.5  # users = min(12, 1 + exponential(mean team_size)), rounded down
    burn_in_days: int = 150

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if self.organizations < 1 or self.days < 14 or self.follow_up_days < 0:
            raise ValueError("need >= 1 organization, >= 14 days and follow_up_days >= 0")
        if not 0.0 <= self.new_share <= 1.0:
            raise ValueError("new_share must be within 0..1")


def reference(**overrides: Any) -> PopulationConfig:
    """The setting the shipped model was fitted on (300 organizations, 90 days)."""
    return replace(PopulationConfig(), **overrides)


def shifted(**overrides: Any) -> PopulationConfig:
    """Another population: 30% less usage, 40% more support, more sign-ups, healthier
    on average, more frequent but slower declines and fewer saves, a steeper hazard,
    noisier health, a 120-day stream, another seed."""
    base = PopulationConfig(
        days=120,
        seed=2027,
        new_share=0.45,
        activity=0.7,
        support=1.4,
        mu_mean=1.1,
        mu_sd=0.3,
        tau_days=8.0,
        sigma=0.055,
        decline_rate=1 / 160,
        decline_drift=(0.035, 0.06),
        recovery_rate=1 / 80,
        base_hazard=0.00015,
        slope=4.5,
        sudden_hazard=0.00006,
    )
    return replace(base, **overrides)


PRESETS = {"reference": reference, "shifted": shifted}


@dataclass(frozen=True)
class Profile:
    """What a CRM knows of an organization whose history predates the stream."""

    organization_id: str
    created_at: datetime
    milestones: dict[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelledEvent:
    topic_kind: TopicKind
    occurred_at: float  # POSIX seconds
    value: bytes  # the message body (JSON)


@dataclass
class Population:
    config: PopulationConfig
    events: list[LabelledEvent]  # in event-time order
    churned_at: dict[str, datetime | None]  # every organization of the stream
    profiles: dict[str, Profile]
    # the latent health at the start of each stream day, per organization (for an
    # oracle figure: how well the truth itself ranks; never an input to a score)
    latent: dict[str, list[float | None]]
    stream_start: float
    stream_end: float
    labels_until: float  # churn is known up to here
    # the rest of the latent state, for the oracle (`evaluation.oracle`): each
    # organization's level `mu`, and per stream day the decline drift after that
    # day's step (0 outside a decline), aligned with `latent`
    level: dict[str, float] = field(default_factory=dict)
    drift: dict[str, list[float | None]] = field(default_factory=dict)


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0.0:
        return 0
    if lam > 30.0:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


_HOUR_WEIGHTS = tuple(hour_weight(hour) for hour in range(24))
_HOUR_CUMULATIVE = tuple(sum(_HOUR_WEIGHTS[: hour + 1]) for hour in range(24))


class _Latent:
    """One organization's latent health, one day at a time."""

    def __init__(self, config: PopulationConfig, rng: random.Random, mu: float) -> None:
        self.config, self.rng, self.mu = config, rng, mu
        self.h = mu + rng.gauss(0.0, 0.3)
        self.drift = 0.0  # > 0 while declining: health lost per day

    def step(self) -> bool:
        """Advance a day; True if the organization churns during it."""
        c, rng = self.config, self.rng
        if self.drift > 0.0:
            if rng.random() < c.recovery_rate:
                self.drift = 0.0
        elif rng.random() < c.decline_rate:
            self.drift = rng.uniform(*c.decline_drift)
        if self.drift > 0.0:
            self.h += -self.drift + c.sigma * rng.gauss(0.0, 1.0)
        else:
            self.h += (self.mu - self.h) / c.tau_days + c.sigma * rng.gauss(0.0, 1.0)
        hazard = c.sudden_hazard + c.base_hazard * math.exp(-c.slope * self.h)
        return rng.random() < 1.0 - math.exp(-hazard)


@dataclass
class _Interaction:
    id: str
    type: str
    close_at: float | None


class _Org:
    """Writes one organization's events, day by day, from its latent health."""

    def __init__(self, config: PopulationConfig, index: int) -> None:
        self.config = config
        self.rng = rng = random.Random(f"{config.seed}:population:{index}")
        self.id = new_uuid(rng)
        self.users = tuple(
            new_uuid(rng) for _ in range(min(12, 1 + int(rng.expovariate(1 / config.team_size))))
        )
        self.features = tuple(rng.sample(FEATURES, rng.randint(6, 20)))
        self.volume = math.exp(rng.gauss(0.0, 0.4))
        self.staff = tuple(new_uuid(rng) for _ in range(3))
        self.events: list[LabelledEvent] = []
        self.open: list[_Interaction] = []
        self.achieved: set[str] = set()

    # -- event bodies ------------------------------------------------------------

    def _when(self, day_start: float) -> float:
        hour = self.rng.choices(range(24), cum_weights=_HOUR_CUMULATIVE)[0]
        return day_start + hour * 3600.0 + self.rng.random() * 3600.0

    def usage(
        self,
        t: float,
        kind: str,
        user: str | None = None,
        quantity: int = 1,
        feature: str | None = None,
    ) -> None:
        rng = self.rng
        if user is None and kind not in NO_USER_TYPES:
            user = rng.choice(self.users)
        body: dict[str, Any] = {
            "event_id": new_uuid(rng),
            "organization_id": self.id,
            "user_id": user,
            "type": kind,
            "occurred_at": iso(t),
            "quantity": quantity,
        }
        if feature is not None:
            body["feature"] = feature
        self.events.append(LabelledEvent("usage", t, orjson.dumps(body)))

    def support(self, t: float, fields: dict[str, Any]) -> None:
        body = {"event_id": new_uuid(self.rng), "organization_id": self.id, **fields}
        body["occurred_at"] = iso(t)
        self.events.append(LabelledEvent("support", t, orjson.dumps(body)))

    # -- one day -----------------------------------------------------------------

    def day(self, day_start: float, h: float, weekday: int, end: float, new: bool) -> None:
        """Every event of one stream day, given the latent health (`end`: the
        organization's last moment in the stream, its churn or the stream end)."""
        c, rng = self.config, self.rng
        e = _logistic(c.engagement_slope * h + c.engagement_offset)
        week = 1.0 if weekday < 5 else 0.45
        self._close_due(day_start + DAY_S, end)
        # users and features
        in_use = self.features[: max(1, round(len(self.features) * (0.25 + 0.75 * e)))]
        for rank, user in enumerate(self.users):
            p = min(0.95, c.activity * c.user_activity * e * week * (1.0 if rank < 2 else 0.6))
            if rng.random() >= p:
                continue
            for _ in range(1 + (rng.random() < 0.3)):
                self.usage(self._when(day_start), "login", user)
            for _ in range(_poisson(rng, 1.2 * (0.4 + e))):
                self.usage(self._when(day_start), "feature_used", user, feature=rng.choice(in_use))
        # value actions and commercial signals
        volume = c.activity * self.volume * week * (0.15 + 0.85 * e)
        for kind, rate in _VALUE_RATES:
            for _ in range(_poisson(rng, volume * rate)):
                quantity = (
                    rng.randint(2, 30) if kind == "client_added" and rng.random() < 0.05 else 1
                )
                self.usage(self._when(day_start), kind, quantity=quantity)
        for kind, rate in (
            ("review_received", 0.04 * e),
            ("referral_made", 0.01 * e * e),
            ("subscription_upgraded", 0.002 * e * e),
        ):
            if rng.random() < rate * c.activity:
                self.usage(self._when(day_start), kind)
        # contraction
        for kind, rate in (
            ("subscription_downgraded", 0.003 * math.exp(-1.2 * h)),
            ("seat_removed", 0.003 * math.exp(-1.2 * h) if len(self.users) > 1 else 0.0),
            ("data_export_requested", 0.0015 * math.exp(-1.6 * h)),
        ):
            if rng.random() < min(0.3, rate):
                self.usage(self._when(day_start), kind)
        # milestones reached by their own events
        for kind, rate in (
            ("onboarding_completed", 0.25 * e if new else 0.0),
            ("profile_completed", 0.2 * e if new else 0.0),
            ("integration_connected", 0.02 * e),
            ("team_member_invited", 0.02 * e if len(self.users) > 1 else 0.0),
        ):
            if kind not in self.achieved and rng.random() < rate:
                self.achieved.add(kind)
                self.usage(self._when(day_start), kind)
        # support
        rate = (
            c.support
            * (0.02 + 0.05 * math.exp(-1.1 * h))
            * (0.6 + 0.2 * math.sqrt(len(self.users)))
        )
        for _ in range(_poisson(rng, rate)):
            self._interaction(self._when(day_start), h, e, end, new)

    def _interaction(self, t: float, h: float, e: float, end: float, new: bool) -> None:
        rng = self.rng
        names = [name for name, _w, _k in _INTERACTIONS]
        weights = [w * math.exp(k * -h) for _name, w, k in _INTERACTIONS]
        if new:
            names.append("onboarding_call")
            weights.append(1.0)
        kind = rng.choices(names, weights=weights)[0]
        z = 0.8 * h + rng.gauss(0.0, 0.9)
        sentiment = (
            "very_positive" if z > 1.5
            else "positive" if z > 0.5
            else "neutral" if z > -0.5
            else "negative" if z > -1.5
            else "very_negative"
        )  # fmt: skip
        if kind in ("escalation", "cancellation_request"):
            priority = rng.choice(("high", "urgent"))
        else:
            priority = "urgent" if z < -1.8 else "high" if z < -1.0 else "normal"
        interaction_id = new_uuid(rng)
        self.support(
            t,
            {
                "interaction_id": interaction_id,
                "action": "opened",
                "interaction_type": kind,
                "channel": rng.choices(_CHANNELS, weights=_CHANNEL_WEIGHTS)[0],
                "priority": priority,
                "sentiment": sentiment,
                "assigned_to": rng.choice(self.staff),
                "subject": f"{kind.replace('_', ' ')} #{rng.randrange(10_000)}",
            },
        )
        a, b = _OPEN_DAYS.get(kind, (0.5, 1.0))
        close_at = t + rng.expovariate(1.0 / (a + b * (1.0 - e))) * DAY_S
        if kind not in ("escalation", "cancellation_request") and z < -1.3 and rng.random() < 0.4:
            step = t + rng.uniform(0.05, 0.5) * (close_at - t)
            self.support(
                step,
                {"interaction_id": interaction_id, "action": "updated", "outcome": "escalated"},
            )
        # an interaction still open when the organization leaves (or the stream ends)
        # is never closed in the stream
        self.open.append(_Interaction(interaction_id, kind, close_at if close_at < end else None))

    def _close_due(self, until: float, end: float) -> None:
        rng = self.rng
        still: list[_Interaction] = []
        for item in self.open:
            if item.close_at is None or item.close_at >= until:
                still.append(item)
                continue
            outcome = (
                "retained"
                if item.type in ("cancellation_request", "churn_intervention")
                else "resolved"
            )
            self.support(
                item.close_at,
                {
                    "interaction_id": item.id,
                    "action": "resolved",
                    "outcome": outcome,
                    "sentiment": rng.choice(("neutral", "positive", "negative")),
                },
            )
            if rng.random() < 0.5 and item.close_at + 3600.0 < end:
                self.support(
                    item.close_at + 3600.0, {"interaction_id": item.id, "action": "closed"}
                )
        self.open = still


def _prior_milestones(
    rng: random.Random, created: float, start: float, e: float, users: int
) -> dict[str, datetime]:
    tenure = (start - created) / DAY_S
    reached: dict[str, datetime] = {}
    for milestone, probability, min_tenure in _PRIOR_MILESTONES:
        if milestone is MilestoneType.TEAM_MEMBER_INVITED and users < 2:
            continue
        if tenure >= min_tenure and rng.random() < probability * (0.5 + 0.5 * e):
            at = created + rng.uniform(min_tenure, tenure) * DAY_S
            reached[milestone.value] = datetime.fromtimestamp(at, UTC)
    return reached


def generate_population(config: PopulationConfig) -> Population:
    """Draw the population: events in event-time order, churn labels, profiles."""
    start = config.start.timestamp()
    start = start - start % DAY_S  # days are UTC days
    end = start + config.days * DAY_S
    events: list[LabelledEvent] = []
    churned: dict[str, datetime | None] = {}
    profiles: dict[str, Profile] = {}
    latent_by_org: dict[str, list[float | None]] = {}
    level_by_org: dict[str, float] = {}
    drift_by_org: dict[str, list[float | None]] = {}
    weekday0 = datetime.fromtimestamp(start, UTC).weekday()
    for index in range(config.organizations):
        org = _Org(config, index)
        rng = org.rng
        mu = rng.gauss(config.mu_mean, config.mu_sd)
        new = rng.random() < config.new_share
        if new:
            first_day = rng.randrange(0, config.days - 13)
            latent = _Latent(config, rng, mu)
        else:
            first_day = 0
            while True:  # only organizations alive when the stream starts are in it
                latent = _Latent(config, rng, mu)
                if not any(latent.step() for _ in range(config.burn_in_days)):
                    break
            created = start - rng.uniform(30.0, 720.0) * DAY_S
            e0 = _logistic(config.engagement_slope * mu + config.engagement_offset)
            org.achieved |= {"onboarding_completed", "profile_completed"}
            reached = _prior_milestones(rng, created, start, e0, len(org.users))
            org.achieved |= {
                m for m in reached if m in ("integration_connected", "team_member_invited")
            }
            profiles[org.id] = Profile(org.id, datetime.fromtimestamp(created, UTC), reached)
        # the latent path over the stream and the follow-up, and the churn day
        path: list[float] = []
        drifts: list[float] = []  # recorded only (no draw): the stream is unchanged
        churn_day: int | None = None
        for day in range(first_day, config.days + config.follow_up_days):
            if latent.step():
                churn_day = day
                break
            path.append(latent.h)
            drifts.append(latent.drift)
        churn_at = None if churn_day is None else start + (churn_day + rng.random()) * DAY_S
        last = min(end, churn_at) if churn_at is not None else end
        if new:  # a sign-up's first event is its account's first moment
            org.usage(start + first_day * DAY_S + rng.uniform(8, 18) * 3600.0, "login")
        for day in range(first_day, min(config.days, first_day + len(path))):
            h = path[day - first_day]
            org.day(start + day * DAY_S, h, (weekday0 + day) % 7, last, new)
        org_events = [event for event in org.events if event.occurred_at < last]
        if not org_events:
            continue  # churned before doing anything: not in the stream
        org_events.sort(key=lambda event: event.occurred_at)
        events.extend(org_events)
        churned[org.id] = datetime.fromtimestamp(churn_at, UTC) if churn_at is not None else None
        daily: list[float | None] = [None] * config.days
        daily_drift: list[float | None] = [None] * config.days
        for offset, h in enumerate(path):
            if first_day + offset < config.days:
                daily[first_day + offset] = h
                daily_drift[first_day + offset] = drifts[offset]
        latent_by_org[org.id] = daily
        level_by_org[org.id] = mu
        drift_by_org[org.id] = daily_drift
    events.sort(key=lambda event: event.occurred_at)
    profiles = {org: profile for org, profile in profiles.items() if org in churned}
    return Population(
        config=config,
        events=events,
        churned_at=churned,
        profiles=profiles,
        latent=latent_by_org,
        stream_start=start,
        stream_end=end,
        labels_until=start + (config.days + config.follow_up_days) * DAY_S,
        level=level_by_org,
        drift=drift_by_org,
    )


def iter_jsonl(population: Population) -> Iterator[bytes]:
    """The stream as `healthscore evaluate --events` reads it: one JSON object per line."""
    for event in population.events:
        topic = "product.usage.v1" if event.topic_kind == "usage" else "support.interactions.v1"
        yield b'{"topic":"' + topic.encode() + b'","value":' + event.value + b"}\n"


def labels_csv(population: Population) -> str:
    lines = ["organization_id,churned_at"]
    for org, at in population.churned_at.items():
        lines.append(f"{org},{at.isoformat() if at is not None else ''}")
    return "\n".join(lines) + "\n"


def profiles_csv(population: Population) -> str:
    """organization_id,created_at,milestones (milestone=achieved_at pairs joined by ';')."""
    lines = ["organization_id,created_at,milestones"]
    for profile in population.profiles.values():
        reached = ";".join(f"{m}={at.isoformat()}" for m, at in sorted(profile.milestones.items()))
        lines.append(f"{profile.organization_id},{profile.created_at.isoformat()},{reached}")
    return "\n".join(lines) + "\n"


def summary(population: Population) -> dict[str, float]:
    """Counts that describe a population (events, churn within 30 days of the end...)."""
    end = population.stream_end
    churn = [at.timestamp() for at in population.churned_at.values() if at is not None]
    n = len(population.churned_at)
    return {
        "organizations": n,
        "events": len(population.events),
        "churned_in_stream": sum(1 for t in churn if t < end) / n,
        "churned_within_30d_after_end": sum(1 for t in churn if end <= t < end + 30 * DAY_S) / n,
        "churned_by_labels_end": len(churn) / n,
        "predating_stream": len(population.profiles) / n,
    }
