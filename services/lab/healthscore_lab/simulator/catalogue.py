"""What simulated organizations do, and the small helpers every generator shares.

Data only, plus pure helpers: the three profiles and their default mix, the
feature catalogue, usage and support weights per profile, the shape of a day
(office hours, quieter weekends) and of a profile's life (decay), the
largest-remainder split, Zipf ranks, and ids and times as the contracts write
them. Nothing here draws from a random generator except through the one it is
given, so every stream built on it stays a function of its seed.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Literal

TopicKind = Literal["usage", "support", "profile"]

HEALTHY = "healthy"
DECLINING = "declining"
CHURNING = "churning"
PROFILES = (HEALTHY, DECLINING, CHURNING)
PROFILE_SHARES: Mapping[str, float] = {HEALTHY: 0.6, DECLINING: 0.25, CHURNING: 0.15}

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
USAGE_WEIGHTS: Mapping[str, Mapping[str, float]] = {
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
NO_USER_TYPES = frozenset({"form_submitted", "payment_received", "review_received"})

PLANS = ("starter", "professional", "business", "enterprise")

INTERACTION_TYPES: Mapping[str, tuple[tuple[str, float], ...]] = {
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

LEFT_OPEN_TYPES = frozenset({"complaint", "cancellation_request", "escalation"})

SUBJECTS: Mapping[str, tuple[str, ...]] = {
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

SENTIMENTS: Mapping[str, tuple[tuple[str, float], ...]] = {
    HEALTHY: (("very_positive", 2.0), ("positive", 4.0), ("neutral", 3.0)),
    DECLINING: (("positive", 1.0), ("neutral", 3.0), ("negative", 3.0), ("very_negative", 0.5)),
    CHURNING: (("neutral", 0.5), ("negative", 3.0), ("very_negative", 3.0)),
}

CHANNELS: tuple[tuple[str, float], ...] = (
    ("email", 4.0),
    ("chat", 3.0),
    ("phone", 2.0),
    ("video", 1.0),
    ("in_app", 1.5),
)

# how much more often than a healthy one an organization of the profile asks for support
SUPPORT_WEIGHT: Mapping[str, float] = {HEALTHY: 1.0, DECLINING: 2.5, CHURNING: 4.0}

BINS = 720  # time bins the span is cut into for activity sampling (an hour for 30 days)
DUPLICATE_MEAN_DELAY = 40  # originals between an event and its duplicate, on average
MS = 1000
DAY_MS = 86_400 * MS


# --------------------------------------------------------------------------- time shape


def hour_weight(hour: int) -> float:
    """Activity in an hour of the day (UTC): office hours, evenings, nights."""
    return 1.0 if 8 <= hour < 19 else 0.35 if 19 <= hour < 23 else 0.08


def clock_intensity(moment_ms: float) -> float:
    """Activity at a moment: the hour's weight, halved at weekends."""
    moment = datetime.fromtimestamp(moment_ms / MS, UTC)
    weight = hour_weight(moment.hour)
    if moment.weekday() >= 5:
        weight *= 0.5
    return weight


def profile_intensity(profile: str, fraction: float, elapsed_ms: float, span_ms: int) -> float:
    """Activity of a profile `elapsed_ms` (a `fraction` of the span) into the span.

    Declining halves every week (every quarter of a span shorter than four
    weeks); churning is normal for the first third, falls to almost nothing by
    the middle and stays there.
    """
    if profile == DECLINING:
        half_life = min(7 * DAY_MS, span_ms / 4)
        return float(0.5 ** (elapsed_ms / half_life))
    if profile == CHURNING:
        if fraction < 1 / 3:
            return 1.0
        if fraction < 0.5:
            return 1.0 - (fraction - 1 / 3) * 6 * 0.98
        return 0.02
    return 1.0


# --------------------------------------------------------------------------- sampling


def allocate(
    total: int, weights: Mapping[str, float], ties_by_name: bool = False
) -> dict[str, int]:
    """Split `total` by `weights`, largest remainders first (deterministic).

    Equal remainders go in the order of `weights`, or by name with `ties_by_name`.
    """
    norm = sum(weights.values())
    exact = {name: total * weight / norm for name, weight in weights.items()}
    counts = {name: int(value) for name, value in exact.items()}
    rest = total - sum(counts.values())
    order = sorted(weights) if ties_by_name else list(weights)
    by_remainder = sorted(order, key=lambda name: -(exact[name] - counts[name]))
    for name in by_remainder[:rest]:
        counts[name] += 1
    return counts


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


# --------------------------------------------------------------------------- ids and times

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def new_uuid(rng: random.Random) -> str:
    """A version-4 UUID from `rng` (128 bits)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float rounding)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def iso(seconds: float) -> str:
    """A POSIX time as the contracts write it: RFC 3339, UTC, milliseconds."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def iso_ms(ms: int) -> str:
    return iso(ms / MS)
