"""Field types and rules shared by the input contracts."""

from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AwareDatetime, Field, ValidationInfo

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
            f"occurred_at {value.isoformat()} is more than 5 minutes after "
            f"{reference.isoformat()}"
        )
    return value


OccurredAt = Annotated[
    AwareDatetime,
    Field(description="When it happened (RFC 3339 with offset); not more than 5 minutes ahead."),
]
