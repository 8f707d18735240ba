"""`product.usage.v1`: usage events from product services."""

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from healthscore.contracts._common import (
    MAX_PROPERTIES_DEPTH,
    FeatureText,
    OccurredAt,
    WireUUID,
    check_not_in_future,
    checked_json_size,
)
from healthscore.contracts.enums import UsageType

MAX_PROPERTIES_BYTES = 16 * 1024


def integral_number(value: object) -> object:
    """A float without a fraction (`2.0`, `1e3`) as the integer it is: JSON has one number
    type, and JSON Schema's `integer` is any number whose fraction is zero, so a
    producer's validated `2.0` is the quantity 2. Anything else is left to the strict
    integer check (`1.5`, `true` and `"2"` stay refused)."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


class UsageEvent(BaseModel):
    """One thing an organization's user did in the product."""

    model_config = ConfigDict(frozen=True, extra="ignore", title="UsageEvent")

    event_id: WireUUID = Field(
        description="Idempotency key: the same id delivered twice counts once, within "
        "the service's dedupe window (DEDUPE_RETENTION_DAYS, 14 days by default, after "
        "the first was applied)."
    )
    organization_id: WireUUID = Field(
        description="The organization; equals the Kafka message key, which is this id in "
        "canonical lowercase text form (8-4-4-4-12 lowercase hex digits)."
    )
    user_id: WireUUID | None = Field(default=None, description="The acting user, if any.")
    type: UsageType = Field(description="What happened.")
    occurred_at: OccurredAt
    quantity: Annotated[int, BeforeValidator(integral_number)] = Field(
        default=1, ge=1, le=1_000_000, strict=True, description="How many (1..1,000,000)."
    )
    feature: FeatureText | None = Field(
        default=None, description="For `feature_used`: which feature."
    )
    properties: dict[str, Any] | None = Field(
        default=None,
        description=(
            f"Optional free-form object, at most {MAX_PROPERTIES_BYTES:,} bytes (16 KiB) "
            "measured as compact UTF-8 JSON, re-serialized without whitespace "
            "(`Buffer.byteLength(JSON.stringify(properties))` in Node.js, not the "
            f"string's `.length`), and {MAX_PROPERTIES_DEPTH} levels deep; strings and "
            "names without U+0000; numbers finite (`1e400` makes the record invalid_json)."
        ),
    )

    _future = field_validator("occurred_at")(check_not_in_future)

    @field_validator("properties")
    @classmethod
    def _properties_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            size = checked_json_size(value, MAX_PROPERTIES_BYTES)
            if size > MAX_PROPERTIES_BYTES:
                raise ValueError(f"properties is {size} bytes serialized; the limit is 16 KiB")
        return value
