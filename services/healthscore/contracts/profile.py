"""`organization.profile.v1`: what a CRM knows of an organization from before its
events reach the service."""

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from healthscore.contracts._common import (
    OccurredAt,
    TextTimestamp,
    WireUUID,
    check_not_in_future,
)
from healthscore.contracts.enums import MilestoneType

# fields of the other input topics' events (product.usage.v1, support.interactions.v1)
# that a profile does not have; each of those events has `type` or `interaction_id`
# and `action`
_OTHER_EVENTS_FIELDS = (
    "type",
    "quantity",
    "feature",
    "user_id",
    "interaction_id",
    "action",
    "interaction_type",
)


def _misrouted_event_schema() -> dict[str, Any]:
    """`_not_another_topics_event` in JSON Schema, so a producer's CI refuses what the
    service refuses: without a creation time (absent or null) and without a milestone
    (absent or `{}`), each field of another topic's event is absent or null."""
    said_something = {
        "anyOf": [
            {"required": ["created_at"], "properties": {"created_at": {"not": {"type": "null"}}}},
            {
                "required": ["milestones"],
                "properties": {"milestones": {"type": "object", "minProperties": 1}},
            },
        ]
    }
    return {
        "allOf": [
            {
                "if": {"not": said_something},
                "then": {"properties": {name: {"type": "null"} for name in _OTHER_EVENTS_FIELDS}},
            }
        ]
    }


class OrganizationProfile(BaseModel):
    """An organization's history from before the stream: when its account was created
    and the success milestones it reached. Missing data is not bad data: the score
    counts tenure from the creation and expects only the milestones really missing.
    Order-independent and idempotent: the earliest time of each wins. One with neither a
    creation time nor a milestone is refused when it has a usage or support event's
    fields, any of `type`, `quantity`, `feature`, `user_id`, `interaction_id`, `action`
    or `interaction_type` not null: an event sent to the wrong topic."""

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        title="OrganizationProfile",
        json_schema_extra=_misrouted_event_schema(),
    )

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
        max_length=len(MilestoneType),
        description=(
            "Success milestones reached before the stream: contract name -> when it was "
            "reached (RFC 3339 with an offset; not after occurred_at). They count in the "
            "score; they are not acknowledged as new milestones. At most one per "
            "milestone type."
        ),
    )
    occurred_at: OccurredAt = Field(
        description=(
            "When the profile was sent (as `healthscore import --publish` sets it), not "
            "when its facts changed; RFC 3339 with an offset, not more than 5 minutes "
            "ahead of the Kafka record's timestamp (or of the consumer's clock where that "
            "is earlier or the record has none). A profile is ordered among its "
            "organization's events by it: a replay applies it where the live run did only "
            "if it is the time it was sent."
        )
    )

    _future = field_validator("occurred_at")(check_not_in_future)

    @field_validator("milestones", mode="before")
    @classmethod
    def _at_most_one_per_type(cls, value: Any) -> Any:
        # counted before each entry is validated: a value of thousands of names (all
        # but a few necessarily unknown) cost a pydantic error each: 90-140 ms a record
        if isinstance(value, dict) and len(value) > len(MilestoneType):
            raise PydanticCustomError(
                "too_long",
                "{count} entries; there are {types} milestone types",
                {"count": len(value), "types": len(MilestoneType)},
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _not_another_topics_event(cls, data: Any) -> Any:
        """A record that says nothing a profile says (no creation time, no milestone) and
        has the fields of a usage or support event is one sent to the wrong topic:
        taken as an empty profile, it claimed the event's id, and the event's resend to
        the right topic was refused as a conflicting reuse of that id. A profile that
        says nothing and nothing else stays valid (a CRM that knows nothing yet), and so
        does one whose fields of another event are null (a CRM's record writing every
        field it has). The schema says it too (`_misrouted_event_schema`)."""
        if not isinstance(data, dict):
            return data
        if data.get("created_at") is not None or data.get("milestones"):
            return data
        other = sorted(name for name in _OTHER_EVENTS_FIELDS if data.get(name) is not None)
        if not other:
            return data
        raise PydanticCustomError(
            "wrong_topic",
            "no created_at and no milestones, and the fields of another topic's event "
            "({fields}): a usage or support event sent to the profile topic?",
            {"field": "(message)", "fields": ", ".join(other)},
        )

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
