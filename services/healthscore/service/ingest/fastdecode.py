"""The decoder's fast path: contract events validated with msgspec, not pydantic.

`fast_usage_event` and `fast_support_event` take the JSON object the decoder
has already parsed (orjson, the same parse the pydantic path uses, so which
bytes are JSON at all is decided in one place) and return the core's event
(`healthscore.core.events`), or None when they cannot vouch for the body. None
is never a verdict: the decoder then validates the body with the pydantic
models, which give the rejection its reason and detail (or accept what this
path was too cautious for). So this path has one duty: accept only what the
pydantic contract accepts, and build exactly the event the pydantic path
builds from it.

It is deliberately narrower than the contract where matching pydantic's
parsers exactly would be fiddly: timestamps must have the RFC 3339 form
`YYYY-MM-DDTHH:MM:SS[.ffffff](Z|±HH:MM)` (anything else, `t`/`z`, a space,
more than six fractional digits, goes to pydantic); `properties` nested
below the top level are checked with the contract's own function.

The events are the core's msgspec structs, built from the checked wire
struct without a second validation; the pydantic path converts its validated
model into the same struct (`decode.core_event`). One difference is not
observable: a timestamp's tzinfo is a `datetime.timezone` here, a
`pydantic_core.TzInfo` from pydantic; the values, offsets, ISO forms and
serialized JSON (`decode.event_json`, hence the payload digest) are equal
(tests/unit/test_fast_decode.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from uuid import UUID

import msgspec
import orjson
from pydantic import BaseModel
from pydantic_core import PydanticCustomError

from healthscore.contracts import SupportEvent as SupportModel
from healthscore.contracts import UsageEvent as UsageModel
from healthscore.contracts._common import (
    EARLIEST_PLAUSIBLE_YEAR,
    MAX_FUTURE_SKEW,
    checked_json_size,
)
from healthscore.contracts.support import ClearableField
from healthscore.contracts.usage import MAX_PROPERTIES_BYTES
from healthscore.core.enums import (
    Channel,
    InteractionType,
    Outcome,
    Priority,
    Sentiment,
    SupportAction,
    UsageType,
)
from healthscore.core.events import SupportEvent, UsageEvent

# --------------------------------------------------------------------------- wire structs


class UsageWire(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """UsageEvent's fields and msgspec-checkable rules, in the model's field order.

    Timestamps stay text: their form and the contract's clock rules are
    checked by `_timestamp`. Unknown fields are ignored, as the contract says.
    """

    event_id: UUID
    organization_id: UUID
    user_id: UUID | None = None
    type: UsageType
    occurred_at: str
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    feature: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    properties: dict[str, Any] | None = None


class SupportWire(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """SupportEvent's fields and msgspec-checkable rules, in the model's field order."""

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
    subject: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    follow_up_at: str | None = None
    occurred_at: str
    cleared: Annotated[list[ClearableField], msgspec.Meta(max_length=4)] | None = None


def _check_mirrors(wire: type[msgspec.Struct], model: type[BaseModel]) -> None:
    """Refuse to start if a contract model changed without its wire struct."""
    if wire.__struct_fields__ != tuple(model.model_fields):
        raise RuntimeError(f"{wire.__name__} does not mirror the fields of {model.__name__}")
    if (
        model.model_config.get("extra") != "ignore"
        or model.__pydantic_post_init__ is not None
        or model.__private_attributes__
        or any(f.alias or f.validation_alias for f in model.model_fields.values())
    ):
        raise RuntimeError(f"{model.__name__} is no longer built the way fastdecode builds it")


_check_mirrors(UsageWire, UsageModel)
_check_mirrors(SupportWire, SupportModel)


# --------------------------------------------------------------------------- rules

_RFC3339: Final = re.compile(
    r"\d{4}-\d\d-\d\dT(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?"
    r"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
).fullmatch


_EARLIEST_YEAR: Final = f"{EARLIEST_PLAUSIBLE_YEAR:04d}"


def _timestamp(text: str) -> datetime | None:
    """An RFC 3339 timestamp written with a year from 1990 (the contract's
    EARLIEST_PLAUSIBLE_YEAR) whose UTC value is within years 1-9999, else None.

    The pattern keeps `fromisoformat` to the form where it agrees with
    pydantic's parser (it alone would take `+01:60` or `12:00:00.Z`).
    """
    # the pattern starts with the year's four digits: compared as text, before parsing
    if _RFC3339(text) is None or text < _EARLIEST_YEAR:
        return None
    try:
        value = datetime.fromisoformat(text)  # refuses 02-30 and the like
        if value.year == 9999:
            value.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return value


def _occurred_at(text: str, received_at: datetime) -> datetime | None:
    value = _timestamp(text)
    if value is None or value - received_at > MAX_FUTURE_SKEW:
        return None
    return value


def _nil(*ids: UUID | None) -> bool:
    """Is one of them the nil UUID, which the contract refuses (`check_not_nil`)?"""
    return any(i is not None and i.int == 0 for i in ids)


def _properties_ok(value: dict[str, Any]) -> bool:
    """The contract's rules for `properties`: depth, no U+0000, at most 16 KiB."""
    try:
        return checked_json_size(value, MAX_PROPERTIES_BYTES) <= MAX_PROPERTIES_BYTES
    except (PydanticCustomError, orjson.JSONEncodeError):
        return False


# --------------------------------------------------------------------------- events


def fast_usage_event(body: dict[str, Any], received_at: datetime) -> UsageEvent | None:
    """The event the pydantic path would build from `body`, or None to let pydantic decide."""
    try:
        wire = msgspec.convert(body, UsageWire)
    except msgspec.ValidationError:
        return None
    if _nil(wire.event_id, wire.organization_id, wire.user_id):
        return None
    occurred_at = _occurred_at(wire.occurred_at, received_at)
    if occurred_at is None:
        return None
    feature = wire.feature
    if feature is not None and "\x00" in feature:
        return None
    properties = wire.properties
    if properties is not None and not _properties_ok(properties):
        return None
    return UsageEvent(
        event_id=wire.event_id,
        organization_id=wire.organization_id,
        user_id=wire.user_id,
        type=wire.type,
        occurred_at=occurred_at,
        quantity=wire.quantity,
        feature=feature,
        properties=properties,
    )


def fast_support_event(body: dict[str, Any], received_at: datetime) -> SupportEvent | None:
    """The event the pydantic path would build from `body`, or None to let pydantic decide."""
    try:
        wire = msgspec.convert(body, SupportWire)
    except msgspec.ValidationError:
        return None
    if _nil(wire.event_id, wire.organization_id, wire.interaction_id, wire.assigned_to):
        return None
    occurred_at = _occurred_at(wire.occurred_at, received_at)
    if occurred_at is None:
        return None
    follow_up_at = None
    if isinstance(wire.follow_up_at, str):
        follow_up_at = _timestamp(wire.follow_up_at)
        if follow_up_at is None:
            return None
    subject = wire.subject
    if subject is not None and "\x00" in subject:
        return None
    cleared = wire.cleared
    if cleared and (
        len(set(cleared)) < len(cleared) or any(getattr(wire, n) is not None for n in cleared)
    ):
        return None  # named twice, or set and cleared: pydantic says which
    action = wire.action
    if action is SupportAction.OPENED:
        if wire.interaction_type is None or wire.channel is None:
            return None
    elif action is SupportAction.FOLLOW_UP_SCHEDULED and follow_up_at is None:
        return None
    return SupportEvent(
        event_id=wire.event_id,
        organization_id=wire.organization_id,
        interaction_id=wire.interaction_id,
        action=action,
        interaction_type=wire.interaction_type,
        channel=wire.channel,
        priority=wire.priority,
        sentiment=wire.sentiment,
        outcome=wire.outcome,
        assigned_to=wire.assigned_to,
        subject=subject,
        follow_up_at=follow_up_at,
        occurred_at=occurred_at,
        cleared=tuple(cleared) if cleared else (),
    )
