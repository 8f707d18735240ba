"""`organization.profile.v1`: what a CRM knows of an organization from before its
events reach the service."""

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from healthscore.contracts._common import (
    OccurredAt,
    TextTimestamp,
    WireUUID,
    check_not_in_future,
)
from healthscore.contracts.enums import MilestoneType


class OrganizationProfile(BaseModel):
    """An organization's history from before the stream: when its account was created
    and the success milestones it reached. Missing data is not bad data: the score
    counts tenure from the creation and expects only the milestones really missing.
    Order-independent and idempotent: the earliest time of each wins."""

    model_config = ConfigDict(frozen=True, extra="ignore", title="OrganizationProfile")

    event_id: WireUUID = Field(
        description="Idempotency key: the same id delivered twice counts once, within "
        "the service's dedupe window (DEDUPE_RETENTION_DAYS, 14 days by default, after "
        "the first was applied)."
    )
    organization_id: WireUUID = Field(
        description="The organization; equals the Kafka message key, which is this id in "
        "canonical lowercase text form (8-4-4-4-12 lowercase hex digits)."
    )
    created_at: TextTimestamp | None = Field(
        default=None,
        description=(
            "When the account was created, if known (RFC 3339 with an offset; "
            "not after occurred_at)."
        ),
    )
    milestones: dict[MilestoneType, TextTimestamp] = Field(
        default_factory=dict,
        description=(
            "Success milestones reached before the stream: contract name -> when it was "
            "reached (RFC 3339 with an offset; not after occurred_at). They count in the "
            "score; they are not acknowledged as new milestones."
        ),
    )
    occurred_at: OccurredAt = Field(
        description=(
            "When the profile was sent (as `healthscore import --publish` sets it), not "
            "when its facts changed; RFC 3339 with an offset, not more than 5 minutes "
            "ahead. A profile is ordered among its organization's events by it: a replay "
            "applies it where the live run did only if it is the time it was sent."
        )
    )

    _future = field_validator("occurred_at")(check_not_in_future)

    @model_validator(mode="after")
    def _known_when_sent(self) -> Self:
        late = [
            name
            for name, at in (("created_at", self.created_at), *self.milestones.items())
            if at is not None and at > self.occurred_at
        ]
        if late:
            raise ValueError(f"{', '.join(late)} after occurred_at (a profile says what was known)")
        return self
