"""Field types and rules shared by the input contracts."""

from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AwareDatetime, BeforeValidator, Field, ValidationInfo

MAX_FUTURE_SKEW = timedelta(minutes=5)


def check_not_in_future(value: datetime, info: ValidationInfo) -> datetime:
    """Reject timestamps more than five minutes ahead of the reference clock.

    The reference is the Kafka record's timestamp when the decoder passes one in
    the validation context (so a replay judges an event exactly as the live run
    did), else the wall clock.
    """
    context = info.context or {}
    reference: datetime | None = context.get("received_at")
    if reference is None:
        reference = datetime.now(UTC)
    if value - reference > MAX_FUTURE_SKEW:
        raise ValueError(
            f"occurred_at {value.isoformat()} is more than 5 minutes after {reference.isoformat()}"
        )
    return value


def require_text_timestamp(value: object) -> object:
    """Only RFC 3339 strings: lax parsing would read 0 or "1700000000" as a date."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string with an offset")
    if not value[:1].isdigit() or len(value) < 20:
        raise ValueError("must be an RFC 3339 timestamp string with an offset")
    return value


OccurredAt = Annotated[
    AwareDatetime,
    BeforeValidator(require_text_timestamp),
    Field(description="When it happened (RFC 3339 with offset); not more than 5 minutes ahead."),
]
TextTimestamp = Annotated[AwareDatetime, BeforeValidator(require_text_timestamp)]
