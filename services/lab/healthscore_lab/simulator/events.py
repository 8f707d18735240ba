"""What one organization does over a span: scripted milestones, support
interactions, and the bodies of its events.

A `Timeline` is the span (its start and length, in ms) and the support staff.
A `Planner` decides *when* and *what* (times as offsets into the span); a
`BodyWriter` turns a planned event into the JSON body the contracts define.
Each consumes its own random generator in a fixed order, which is what makes
every stream built on them replay byte for byte.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from healthscore_lab.simulator.catalogue import (
    CHANNELS,
    CHURNING,
    DECLINING,
    HEALTHY,
    INTERACTION_TYPES,
    LEFT_OPEN_TYPES,
    MS,
    NO_USER_TYPES,
    PLANS,
    SENTIMENTS,
    SUBJECTS,
    USAGE_WEIGHTS,
    iso_ms,
    new_uuid,
    to_ms,
)
from healthscore_lab.simulator.messages import SimulatedMessage, event_message
from healthscore_lab.simulator.organizations import Organization

# a support interaction's events: (offset ms, the event's fields)
InteractionSteps = list[tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class Timeline:
    start_ms: int
    span_ms: int
    staff: tuple[str, ...]  # who support interactions are assigned to

    @classmethod
    def of(cls, start: datetime, span: timedelta, staff: tuple[str, ...]) -> Timeline:
        return cls(to_ms(start), max(1, math.floor(span.total_seconds() * MS)), staff)


class Planner:
    """When an organization's scripted events happen, and its support interactions."""

    def __init__(self, timeline: Timeline, rng: random.Random) -> None:
        self.timeline = timeline
        self.rng = rng

    def at(self, low: float, high: float) -> int:
        """A random offset (ms) in the fraction [low, high) of the span."""
        span = self.timeline.span_ms
        return min(span - 1, int(span * self.rng.uniform(low, high)))

    def milestones(self, org: Organization) -> list[tuple[int, str]]:
        """The profile's scripted usage (onboarding, upgrades, downgrades...): (offset, type)."""
        rng = self.rng
        plans: list[tuple[int, str]] = []

        def add(offset: int, kind: str) -> None:
            plans.append((offset, kind))

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

    def interaction(self, org: Organization, number: int) -> InteractionSteps:
        """The events of one support interaction (opened ... resolved, closed), numbered
        `number` in its subject; ones of the complaint kind may be left open."""
        rng = self.rng
        span = self.timeline.span_ms
        profile = org.profile
        names, type_weights = zip(*INTERACTION_TYPES[profile], strict=True)
        kind = rng.choices(names, weights=type_weights)[0]
        if profile == HEALTHY:
            opened_at = self.at(0.0, 0.9)
        elif profile == DECLINING:
            opened_at = self.at(0.1, 0.95)
        else:
            opened_at = self.at(0.3, 0.95)
        if kind == "onboarding_call":
            opened_at = self.at(0.0, 0.15)
        sentiments, sentiment_weights = zip(*SENTIMENTS[profile], strict=True)
        channels, channel_weights = zip(*CHANNELS, strict=True)
        sentiment = rng.choices(sentiments, weights=sentiment_weights)[0]
        if kind in LEFT_OPEN_TYPES:
            sentiment = rng.choice(("negative", "very_negative"))
        priority = (
            rng.choice(("high", "urgent"))
            if kind in LEFT_OPEN_TYPES
            else rng.choices(("low", "normal", "high"), weights=(3, 6, 1))[0]
        )
        interaction_id = new_uuid(rng)
        staff = rng.choice(self.timeline.staff)
        subject = f"{rng.choice(SUBJECTS[kind])} #{number}"
        gap_ms = max(1, span // 400)  # ~2 hours for 30 days

        def later(offset: int) -> int:
            return min(span - 1, offset + int(gap_ms * rng.uniform(0.2, 3.0)))

        steps: InteractionSteps = [
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
                update["assigned_to"] = rng.choice(self.timeline.staff)
            if rng.random() < 0.4:
                update["priority"] = rng.choice(("normal", "high", "urgent"))
            if rng.random() < 0.5:
                update["sentiment"] = sentiment
            steps.append((moment, update))
        left_open = kind in LEFT_OPEN_TYPES and (profile == CHURNING or rng.random() < 0.5)
        if left_open or rng.random() < 0.3:
            moment = later(moment)
            follow_up_at = self.timeline.start_ms + moment + rng.randint(1, 7) * 86_400 * MS
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


class BodyWriter:
    """Turns planned events into message bodies (consumes its own rng in emission order)."""

    def __init__(self, timeline: Timeline, rng: random.Random) -> None:
        self.timeline = timeline
        self.rng = rng
        self.usage_names = {
            profile: (tuple(weights), tuple(itertools.accumulate(weights.values())))
            for profile, weights in USAGE_WEIGHTS.items()
        }

    def usage(self, org: Organization, offset: int, kind: str | None) -> dict[str, Any]:
        """A usage event `offset` ms into the span; `kind` None: a background type
        drawn by the organization's profile."""
        rng = self.rng
        fraction = offset / self.timeline.span_ms
        if kind is None:
            names, cumulative = self.usage_names[org.profile]
            kind = rng.choices(names, cum_weights=cumulative)[0]
        user = None if kind in NO_USER_TYPES else rng.choice(org.users)
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
                "from_plan": PLANS[org.plan],
                "to_plan": PLANS[min(org.plan + 1, len(PLANS) - 1)],
            }
        elif kind == "subscription_downgraded":
            properties = {"from_plan": PLANS[org.plan], "to_plan": PLANS[max(org.plan - 1, 0)]}
        elif kind == "seat_removed":
            properties = {"seats": rng.randint(1, 3)}
        elif kind == "data_export_requested":
            properties = {"format": rng.choice(("csv", "json"))}
        elif kind == "review_received":
            properties = {"rating": rng.choices((5, 4, 3), weights=(6, 3, 1))[0]}
        body: dict[str, Any] = {
            "event_id": new_uuid(rng),
            "organization_id": org.id,
            "user_id": user,
            "type": kind,
            "occurred_at": iso_ms(self.timeline.start_ms + offset),
            "quantity": quantity,
        }
        if feature is not None:
            body["feature"] = feature
        if properties is not None:
            body["properties"] = properties
        return body

    def support(self, org: Organization, offset: int, fields: dict[str, Any]) -> dict[str, Any]:
        """A support event with the planned `fields` (a `follow_up_at` offset becomes a time)."""
        body: dict[str, Any] = {
            "event_id": new_uuid(self.rng),
            "organization_id": org.id,
        }
        for name, value in fields.items():
            body[name] = iso_ms(value) if name == "follow_up_at" else value
        body["occurred_at"] = iso_ms(self.timeline.start_ms + offset)
        return body

    def message(
        self, org: Organization, offset: int, detail: str | dict[str, Any] | None
    ) -> SimulatedMessage:
        """The message of a planned event: support `detail` fields, or a usage type."""
        at_ms = self.timeline.start_ms + offset
        if isinstance(detail, dict):
            return event_message(
                "support", org.key, org.id, self.support(org, offset, detail), at_ms
            )
        return event_message("usage", org.key, org.id, self.usage(org, offset, detail), at_ms)
