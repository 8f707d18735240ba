"""The core's inputs: a usage event, a support-interaction event and an
organization profile, validated.

The service's decoder builds them from Kafka records after the wire contract
(`healthscore.contracts`, pydantic) has been checked: straight from its msgspec
fast path, or from the validated pydantic model on its fallback. The core
trusts them and validates nothing again.

They carry every field of the contract, in the contract's order, not only
the ones the core reads (`properties` is not read here): the service derives
an event's payload digest from them (`healthscore.service.ingest.decode.event_json`),
and the decoder refuses to start if a contract model and its struct drift
apart. Timestamps are aware datetimes; identifiers are UUIDs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from healthscore.core.enums import (
    Channel,
    InteractionType,
    Outcome,
    Priority,
    Sentiment,
    SupportAction,
    UsageType,
)


class UsageEvent(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One thing an organization's user did in the product (`product.usage.v1`)."""

    event_id: UUID
    organization_id: UUID
    user_id: UUID | None = None
    type: UsageType
    occurred_at: datetime
    quantity: int = 1
    feature: str | None = None
    properties: dict[str, Any] | None = None


class SupportEvent(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One step in the life of a support interaction (`support.interactions.v1`)."""

    event_id: UUID
    organization_id: UUID
    interaction_id: UUID
    action: SupportAction
    interaction_type: InteractionType | None = None
    channel: Channel | None = None
    priority: Priority | None = None
    sentiment: Sentiment | None = None
    outcome: Outcome | None = None
    assigned_to: UUID | None = None
    subject: str | None = None
    follow_up_at: datetime | None = None
    occurred_at: datetime
    # the fields this event sets to none (of CLEARABLE), as the producer listed them
    cleared: tuple[str, ...] = ()


CLEARABLE = ("assigned_to", "sentiment", "outcome", "subject")
"""The support fields an event may set to none by naming them in `cleared`."""


class ProfileEvent(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """What a CRM knows of an organization from before its events reach the service
    (`organization.profile.v1`): when the account was created and the success
    milestones it reached (contract names, each with when)."""

    event_id: UUID
    organization_id: UUID
    created_at: datetime | None = None
    milestones: dict[str, datetime] = {}
    occurred_at: datetime


Event = UsageEvent | SupportEvent | ProfileEvent
