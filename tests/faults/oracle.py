"""An independent oracle: what the database must hold after a stream, from the stream alone.

Built from the produced messages with nothing of the service but the wire
contract: dedupe by `event_id` (first occurrence wins), malformed messages
excluded, per organization the event count, the cumulative quantity per usage
type, the milestones those totals cross (the contract's list, written out
again here rather than imported from `healthscore.core.milestones`), the
support interactions with how many distinct events each received, and what
CRM profiles said (the earliest account creation, the milestones reached
before the stream; a profile is not activity and counts no event).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson

from healthscore_lab.simulator import SimulatedMessage, SimulationConfig, generate

# usage type -> (milestone, threshold on that type's cumulative quantity), per the contract:
# "first" milestones at 1, clients at 1/10/50, weddings at 10, the rest named after their type
MILESTONE_RULES: dict[str, tuple[tuple[str, int], ...]] = {
    "onboarding_completed": (("onboarding_completed", 1),),
    "profile_completed": (("profile_completed", 1),),
    "client_added": (("first_client_added", 1), ("clients_10", 10), ("clients_50", 50)),
    "form_created": (("first_form_created", 1),),
    "form_submitted": (("first_form_submitted", 1),),
    "journey_launched": (("first_journey_launched", 1),),
    "email_sent": (("first_email_sent", 1),),
    "payment_received": (("first_payment_received", 1),),
    "contract_signed": (("first_contract_signed", 1),),
    "integration_connected": (("integration_connected", 1),),
    "team_member_invited": (("team_member_invited", 1),),
    "wedding_completed": (("weddings_completed_10", 10),),
    "review_received": (("first_review_received", 1),),
    "referral_made": (("first_referral", 1),),
    "subscription_upgraded": (("subscription_upgraded", 1),),
}
assert len({m for rules in MILESTONE_RULES.values() for m, _ in rules}) == 17


def milestones_for(totals: dict[str, int]) -> set[str]:
    return {
        milestone
        for kind, rules in MILESTONE_RULES.items()
        for milestone, threshold in rules
        if totals.get(kind, 0) >= threshold
    }


@dataclass
class OrgExpectation:
    event_count: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    # interaction id -> distinct events of it
    interactions: Counter[str] = field(default_factory=Counter)
    # from profiles: the earliest account creation (POSIX seconds), milestones reached before
    created_at: float | None = None
    profile_milestones: set[str] = field(default_factory=set)

    @property
    def milestones(self) -> set[str]:
        return milestones_for(self.totals)


@dataclass
class Oracle:
    event_ids: set[str] = field(default_factory=set)
    organizations: dict[str, OrgExpectation] = field(
        default_factory=lambda: defaultdict(OrgExpectation)
    )
    duplicates: int = 0
    malformed: int = 0

    @classmethod
    def from_stream(cls, values: Iterable[tuple[bool, bytes]]) -> Oracle:
        """`values`: (valid, message value) in the order produced."""
        oracle = cls()
        for valid, value in values:
            if not valid:
                oracle.malformed += 1
                continue
            oracle.add(orjson.loads(value))
        return oracle

    def add(self, body: dict[str, Any]) -> None:
        event_id = body["event_id"]
        if event_id in self.event_ids:
            self.duplicates += 1
            return
        self.event_ids.add(event_id)
        org = self.organizations[body["organization_id"]]
        if "type" not in body and "interaction_id" not in body:  # a profile
            created = body.get("created_at")
            if created is not None:
                at = datetime.fromisoformat(created).timestamp()
                org.created_at = at if org.created_at is None else min(org.created_at, at)
            org.profile_milestones.update(body.get("milestones") or {})
            return
        org.event_count += 1
        if "interaction_id" in body:
            org.interactions[body["interaction_id"]] += 1
        else:
            kind = body["type"]
            org.totals[kind] = org.totals.get(kind, 0) + int(body.get("quantity", 1))


def episode_violations(rows: Iterable[tuple[str, int, str, str | None, int]]) -> list[str]:
    """Check the alert lifecycle: rows are (organization, episode, kind, risk_level, seq).

    Per organization: episodes 1..n without gaps, exactly one risk_raised per
    episode and nothing before it, at most one risk_escalated per level, at
    most one recovered and nothing after it, and only the last episode may be
    left open; an episode begins after the previous one's last alert. `seq` is the
    outbox's decision order (an identity column).
    """
    by_org: dict[str, dict[int, list[tuple[str, str | None, int]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for org, episode, kind, level, seq in rows:
        by_org[org][episode].append((kind, level, seq))
    problems: list[str] = []
    for org, episodes in by_org.items():
        numbers = sorted(episodes)
        if numbers != list(range(1, len(numbers) + 1)):
            problems.append(f"{org}: episodes {numbers} are not 1..n")
        for number in numbers:
            alerts = episodes[number]
            count = Counter(kind for kind, _, _ in alerts)
            where = f"{org} episode {number}"
            if count["risk_raised"] != 1:
                problems.append(f"{where}: {count['risk_raised']} risk_raised")
            elif any(seq < _seq_of(alerts, "risk_raised") for _, _, seq in alerts):
                problems.append(f"{where}: an alert before its risk_raised")
            if count["recovered"] > 1:
                problems.append(f"{where}: {count['recovered']} recovered")
            elif count["recovered"] == 1:
                ended = _seq_of(alerts, "recovered")
                if any(seq > ended for _, _, seq in alerts):
                    problems.append(f"{where}: an alert after its recovered")
            elif number != numbers[-1]:
                problems.append(f"{where}: a later episode began before it recovered")
            previous = episodes.get(number - 1)
            if previous and count["risk_raised"] == 1:
                previous_end = max(seq for _, _, seq in previous)
                if _seq_of(alerts, "risk_raised") < previous_end:
                    problems.append(f"{where}: raised before episode {number - 1} ended")
            levels = Counter(level for kind, level, _ in alerts if kind == "risk_escalated")
            for level, n in levels.items():
                if n > 1:
                    problems.append(f"{where}: {n} risk_escalated to {level}")
    return problems


def _seq_of(alerts: list[tuple[str, str | None, int]], kind: str) -> int:
    return next(seq for k, _, seq in alerts if k == kind)


class StreamPlan(Protocol):
    """What a fault test's simulated stream is made of."""

    @property
    def organizations(self) -> int: ...
    @property
    def events(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def duplicate_rate(self) -> float: ...
    @property
    def malformed_rate(self) -> float: ...
    @property
    def profile_share(self) -> float: ...


def simulated_stream(plan: StreamPlan, span: timedelta) -> tuple[list[SimulatedMessage], Oracle]:
    """The simulator's stream of `plan` over `span` ending a minute ago, and its oracle."""
    config = SimulationConfig.ending_now(
        span,
        organizations=plan.organizations,
        events=plan.events,
        seed=plan.seed,
        duplicate_rate=plan.duplicate_rate,
        malformed_rate=plan.malformed_rate,
        profile_share=plan.profile_share,
    )
    messages = list(generate(config))
    return messages, Oracle.from_stream((m.valid, m.value) for m in messages)
