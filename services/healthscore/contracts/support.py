"""`support.interactions.v1`: support-interaction events from the support desk."""

from typing import Annotated, Any, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from healthscore.contracts._common import (
    OccurredAt,
    SubjectText,
    TextTimestamp,
    WireUUID,
    check_not_in_future,
)
from healthscore.contracts.enums import (
    Channel,
    InteractionType,
    Outcome,
    Priority,
    Sentiment,
    SupportAction,
)

# field -> the actions that require it (absent or null refused: `_action_requirements`)
REQUIRED_BY_ACTION: dict[str, tuple[SupportAction, ...]] = {
    "interaction_type": (SupportAction.OPENED,),
    "channel": (SupportAction.OPENED,),
    "follow_up_at": (SupportAction.FOLLOW_UP_SCHEDULED,),
}


def _action_rules_schema() -> dict[str, Any]:
    """`REQUIRED_BY_ACTION` in JSON Schema (if/then per action), so a producer's CI
    refuses what the service refuses: present and not null."""
    rules = []
    for action in SupportAction:
        fields = [name for name, actions in REQUIRED_BY_ACTION.items() if action in actions]
        if fields:
            rules.append(
                {
                    "if": {
                        "properties": {"action": {"const": action.value}},
                        "required": ["action"],
                    },
                    "then": {
                        "properties": {name: {"not": {"type": "null"}} for name in fields},
                        "required": fields,
                    },
                }
            )
    # a field named in `cleared` carries no value in the same event
    for name in get_args(ClearableField):
        rules.append(
            {
                "if": {
                    "properties": {"cleared": {"type": "array", "contains": {"const": name}}},
                    "required": ["cleared"],
                },
                "then": {"properties": {name: {"type": "null"}}},
            }
        )
    return {"allOf": rules}


_LEFT_AS_IT_IS = "Null, or left out: the interaction keeps its value (see `cleared`)."

# the fields an event may set to none, by naming them in `cleared` (an explicit list:
# null has always meant "not this event's business", and producers that write every
# field send it so)
ClearableField = Literal["assigned_to", "sentiment", "outcome", "subject"]


class SupportEvent(BaseModel):
    """One step in the life of a support interaction."""

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        title="SupportEvent",
        json_schema_extra=_action_rules_schema(),
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
    interaction_id: WireUUID = Field(
        description="The interaction; one interaction has many events."
    )
    action: SupportAction = Field(description="What this event does to the interaction.")
    interaction_type: InteractionType | None = Field(
        default=None, description="Kind of interaction; required on `opened`."
    )
    channel: Channel | None = Field(default=None, description="Channel; required on `opened`.")
    priority: Priority | None = Field(default=None, description="Priority.")
    sentiment: Sentiment | None = Field(
        default=None, description=f"Customer sentiment. {_LEFT_AS_IT_IS}"
    )
    outcome: Outcome | None = Field(
        default=None, description=f"Outcome of the interaction. {_LEFT_AS_IT_IS}"
    )
    assigned_to: WireUUID | None = Field(
        default=None,
        description=f"The support staff member (a user_profiles id). {_LEFT_AS_IT_IS}",
    )
    subject: SubjectText | None = Field(
        default=None,
        description=f"Subject, stored in Unicode NFC and searchable. {_LEFT_AS_IT_IS}",
    )
    follow_up_at: TextTimestamp | None = Field(
        default=None,
        description=(
            "When to follow up; with `follow_up_scheduled`. RFC 3339 with an offset, "
            "written with a year from 1990; its UTC value within 0001-01-01..9999-12-31."
        ),
    )
    occurred_at: OccurredAt
    # `uniqueItems` on the list itself, not beside the anyOf with null: there Ajv's
    # strict mode refuses to compile the schema (a keyword of arrays, no array type)
    cleared: (
        Annotated[list[ClearableField], Field(json_schema_extra={"uniqueItems": True})] | None
    ) = Field(
        default=None,
        max_length=4,
        description='Fields this event sets to none (e.g. `["assigned_to"]`: unassigned, '
        "back to the triage queue), each by the rule of any value: the latest event "
        "(occurred_at, then event_id) wins per field, and at one instant a value wins "
        "over a clearing. A field named here must not also "
        "carry a value in the same event. Added to v1: a producer that does not send it "
        "changes nothing; send it only once every replica of the service runs a release "
        "that reads it (an older one ignores it and the clearing is lost: the operator "
        "says when).",
    )

    _future = field_validator("occurred_at")(check_not_in_future)

    @field_validator("cleared")
    @classmethod
    def _each_once(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) < len(value):
            raise PydanticCustomError("value_error", "names a field twice")
        return value or None  # an empty list clears nothing, as none does

    @model_validator(mode="after")
    def _action_requirements(self) -> Self:
        missing = [
            name
            for name, actions in REQUIRED_BY_ACTION.items()
            if self.action in actions and getattr(self, name) is None
        ]
        if missing:
            raise _required_by(self.action.value, missing)
        both = [name for name in self.cleared or () if getattr(self, name) is not None]
        if both:
            raise PydanticCustomError(
                "value_error",
                "set and named in cleared in one event ({fields})",
                {"field": both[0], "fields": ", ".join(both)},
            )
        return self


def _required_by(action: str, missing: list[str]) -> PydanticCustomError:
    """A field the action requires is absent (or null): `missing_field` naming it, as for
    a field every event requires (the decoder takes the field from `field`)."""
    return PydanticCustomError(
        "missing",
        "Field required when action is `{action}` (missing: {fields})",
        {"field": missing[0], "action": action, "fields": ", ".join(missing)},
    )
