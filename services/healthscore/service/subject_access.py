"""A subject-access request (GDPR art. 15): everything the service holds of one
organization in PostgreSQL, as one JSON document, and where else its data lives.

The stored scoring state is MessagePack (user ids and feature names inside it): it
is decoded here, as `healthscore state` does. Binary columns are given as UTF-8 text
where they are text (a dead letter's record as it came), as base64 otherwise.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import orjson

from healthscore.core.scoring.state import unpack_state
from healthscore.errors import HealthscoreError
from healthscore.service.ingest.decode import key_organization
from healthscore.store import subject_access as q

# what the export cannot read, for the answer to the requester (docs/operations.md,
# "What it cannot remove" says the same of an erasure)
KEPT_ELSEWHERE = (
    "the input topics (product.usage.v1, support.interactions.v1, "
    "organization.profile.v1): every record the producers sent, for the topics' retention",
    "the dead-letter topics (<topic>.dlq): records refused, as sent, for their retention "
    "(30 days as shipped)",
    "the alert topic (customer.churn-risk.v1) and the notification service's copies",
    "the health feed (customer.health.v1): the newest score, until an erasure's tombstone",
    "PostgreSQL backups and WAL archives, for their retention",
    "the service's logs: organization ids, never an interaction's subject or a profile's "
    "name or e-mail; the names of fields a producer chose do appear",
)


class SubjectAccessRefused(HealthscoreError):
    """The export cannot be complete as asked; the message says why."""


def _value(value: Any, type_name: str) -> Any:
    if value is None:
        return None
    if type_name in ("json", "jsonb") and isinstance(value, str):
        return orjson.loads(value)
    if isinstance(value, bytes):
        try:
            return {"utf8": value.decode("utf-8")}
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    return value


async def _rows(conn: asyncpg.Connection, query: str, *args: Any) -> list[dict[str, Any]]:
    statement = await conn.prepare(query)
    types = [a.type.name for a in statement.get_attributes()]
    return [
        {key: _value(value, kind) for (key, value), kind in zip(row.items(), types, strict=True)}
        for row in await statement.fetch(*args)
    ]


def _key_organization(key: Any) -> UUID | None:
    """The organization a dead letter's key (as exported) names, read as the consumer
    reads it; a key that is no UTF-8 text names none, there as here."""
    if not isinstance(key, dict) or "utf8" not in key:
        return None
    return key_organization(key["utf8"].encode())


_ORGANIZATION_FIELD = re.compile(r'"organization_id"\s*:\s*"([^"]{32,45})"')


def _value_organization(value: Any) -> UUID | None:
    """The organization a dead letter's value says it is about (its `organization_id`,
    read from text that may not be valid JSON); None: it says none."""
    if not isinstance(value, dict) or "utf8" not in value:
        return None
    found = _ORGANIZATION_FIELD.search(value["utf8"])
    try:
        return UUID(found.group(1)) if found else None
    except ValueError:
        return None


def _its_dead_letters(
    rows: list[dict[str, Any]], organization: UUID
) -> tuple[list[dict[str, Any]], int]:
    """The dead letters that are the organization's: neither its key nor its value's
    `organization_id` names another organization. One that does (keyed to another, its
    value merely mentioning this one; or keyed to this one, its value another's) holds
    that organization's data, personal data included: counted, not handed over. (The
    erasure's rule deletes all of them: deleting too much is safe there, disclosing is
    not here.)"""
    kept: list[dict[str, Any]] = []
    others = 0
    for row in rows:
        named = {
            _key_organization(row.get("record_key")),
            _value_organization(row.get("record_value")),
        } - {None}
        if named <= {organization}:
            kept.append(row)
        else:
            others += 1
    return kept, others


async def export_organization(conn: asyncpg.Connection, organization: UUID) -> dict[str, Any]:
    """Every row held of `organization`, by table; its state decoded; its dead letters;
    read in one snapshot (a batch committing meanwhile shows whole or not at all)."""
    if not await conn.fetchval(q.READS_EVERY_ROW):
        raise SubjectAccessRefused(
            "the export reads past row-level security: run it as the administrator's login "
            "(MIGRATION_DATABASE_URL, a superuser or BYPASSRLS role); any other would "
            "leave rows out without a word"
        )
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _export(conn, organization)


async def _export(conn: asyncpg.Connection, organization: UUID) -> dict[str, Any]:
    tables = {
        name: await _rows(conn, query, organization)
        for name, query in q.ORGANIZATION_TABLES.items()
    }
    state = None
    for row in tables["organization_state"]:
        raw = row.pop("state_msgpack", None)
        if raw is not None:
            packed = base64.b64decode(raw["base64"]) if "base64" in raw else raw["utf8"].encode()
            state = msgspec.to_builtins(unpack_state(packed))
    canonical = str(organization)
    dead_letters: dict[str, list[dict[str, Any]]] = {}
    of_others = 0
    for name, query in q.DEAD_LETTERS.items():
        rows = await _rows(
            conn, query, organization.hex, canonical.encode(), canonical.upper().encode()
        )
        dead_letters[name], others = _its_dead_letters(rows, organization)
        of_others += others
    return {
        "organization_id": canonical,
        "exported_at": datetime.now(UTC).isoformat(),
        "erased": bool(tables["erased_organizations"]),
        "tables": tables,
        "state": state,
        "dead_letters": dead_letters,
        # rejected records keyed to other organizations whose value names this one
        "dead_letters_of_other_organizations_naming_it": of_others,
        "kept_elsewhere": list(KEPT_ELSEWHERE),
    }
