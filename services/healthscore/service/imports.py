"""`healthscore import`: what a CRM knows, into the service's state.

Two CSV files, both with a header row, times RFC 3339 with an offset:

- profiles, ``organization_id,created_at,milestones``: when the account was
  created (may be empty) and the success milestones it reached before its
  events reach the service, as ``name=achieved_at`` pairs joined by ``;`` (may
  be empty). The same shape as `healthscore evaluate --profiles`.
- labels, ``organization_id,churned_at``: when the organization churned, empty
  when it was retained (as far as `--labels-until`, default the import time).

The whole file is checked first; any bad row (row number, column, reason) and
nothing is applied. Then it is applied a page at a time, one transaction per
page. Profiles go through the pure core's `apply_profile` into each
organization's state (rows locked in id order, as consumers lock them), which
is queued for the projector as a batch's changes are; applying the same file
twice changes nothing more (the earliest times win). Labels replace what an
earlier import said of the same organization.

With `--publish`, profiles go to `organization.profile.v1` instead, one record per
organization, and the service applies them as it applies the stream: in the log,
so `healthscore replay` rebuilds them (a profile written straight into the
database is not in the log, and a replay into an empty database loses it).
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from uuid import UUID, uuid5

import asyncpg
import orjson
import structlog
from pydantic import TypeAdapter, ValidationError

from healthscore.contracts._common import (
    EARLIEST_PLAUSIBLE_YEAR,
    TextTimestamp,
    utc_representable,
)
from healthscore.contracts.profile import OrganizationProfile
from healthscore.core.enums import MilestoneType
from healthscore.core.scoring.aggregate import apply_profile, new_state
from healthscore.core.scoring.state import OrganizationState
from healthscore.errors import HealthscoreError
from healthscore.store import Connection, quality, sql
from healthscore.store.states import erased_among, lock_states, save_locked_states

log = structlog.get_logger(__name__)

PROFILE_COLUMNS = ("organization_id", "created_at", "milestones")
LABEL_COLUMNS = ("organization_id", "churned_at")
_T = TypeVar("_T")
_KNOWN_MILESTONES = frozenset(m.value for m in MilestoneType)


@dataclass(frozen=True, slots=True)
class RowError:
    row: int  # 1 is the header
    column: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}, column {self.column}: {self.reason}"


SHOWN_ERRORS = 50
"""Bad rows an error message lists (`ImportRefused.lines`); the count says the rest."""


class ImportRefused(HealthscoreError):
    """A file with bad rows: nothing of it was applied."""

    def __init__(self, source: str, errors: list[RowError]) -> None:
        self.source = source
        self.errors = sorted(errors, key=lambda error: error.row)  # stable: column order kept
        super().__init__(f"{source}: {len(errors)} bad row(s), nothing applied")

    def lines(self, limit: int = SHOWN_ERRORS) -> list[str]:
        """The first `limit` bad rows, one line each, and how many more there are: a file
        wrong throughout (another export's columns) has as many as it has rows."""
        shown = [f"{self.source}: {error}" for error in self.errors[:limit]]
        if len(self.errors) > limit:
            shown.append(f"... and {len(self.errors) - limit} more (the first {limit} shown)")
        return shown


@dataclass(frozen=True, slots=True)
class Profile:
    organization_id: UUID
    created_at: float | None
    milestones: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChurnLabel:
    organization_id: UUID
    churned_at: datetime | None


def read_csv_text(path: Path) -> str:
    """The file's text, UTF-8 with or without the byte-order mark spreadsheets write;
    `ImportRefused` naming the line of the first byte that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        # lines end in LF, CRLF or CR alone (`_lines`)
        line = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1
        reason = f"byte 0x{data[exc.start]:02x} is not UTF-8: save the file as UTF-8 (CSV UTF-8)"
        raise ImportRefused(str(path), [RowError(line, "-", reason)]) from None


_CONTRACT_TIME: TypeAdapter[datetime] = TypeAdapter(TextTimestamp)


def _lines(text: str) -> io.StringIO:
    """`text` for the csv module: lines ending in LF, CRLF or CR alone (Excel's "CSV
    (Macintosh)"), each kept as written, so the reader keeps a quoted line break in its
    cell (the csv module's own advice: a file opened with newline="")."""
    return io.StringIO(text, newline="")


_NULL_SPELLINGS = frozenset({"null", "none", "nil", "n/a", "na", "nan", "\\n"})
_HOUR_ONLY_OFFSET = re.compile(r"[0-9][+-][0-9]{2}\s*$")


def _time(text: str) -> datetime:
    """A time as the contract reads one (RFC 3339 with an offset): not whatever
    `datetime.fromisoformat` takes (ISO week dates, basic `20260301T0000Z`), which a
    profile published from the same row would then not be."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is not None and moment.tzinfo is None:
        raise ValueError("a time without an offset (write e.g. 2026-03-01T00:00:00Z)")
    try:
        return _CONTRACT_TIME.validate_python(text)
    except ValidationError as exc:
        # as the contract's: no later conversion (a published profile's timestamp, a
        # score's tenure) could take it
        if moment is not None and not utc_representable(moment):
            raise ValueError("its UTC value falls outside 0001-01-01..9999-12-31") from None
        if moment is not None and moment.year < EARLIEST_PLAUSIBLE_YEAR:
            # the earliest time of a profile wins (a later profile cannot move it back),
            # so a mistyped year (0202 for 2022) would be permanent
            raise ValueError(
                f"before {EARLIEST_PLAUSIBLE_YEAR}-01-01: a mistyped year? (the "
                "earliest time of an organization wins: no later file could correct it)"
            ) from None
        # spellings a warehouse export writes (review 37a): said with their fix
        if text.strip().lower() in _NULL_SPELLINGS:
            raise ValueError("a null written as text: leave the cell empty") from None
        if _HOUR_ONLY_OFFSET.search(text):
            raise ValueError(
                "an offset without its minutes (as psql prints a timestamptz): write "
                "+00:00, not +00"
            ) from None
        detail = exc.errors()[0]["msg"].removeprefix("Value error, ")
        said = "" if detail.startswith("must be") else f" ({detail})"
        raise ValueError(
            f"not an RFC 3339 time with an offset{said}: write e.g. 2026-03-01T00:00:00Z"
        ) from None


def _past(moment: datetime, now: datetime) -> datetime:
    if moment > now:
        raise ValueError(f"after the import's time {now.isoformat()}")
    return moment


def _rows(
    text: str, columns: Sequence[str], source: str
) -> tuple[list[tuple[int, dict[str, str]]], list[RowError]]:
    reader = csv.reader(_lines(text))
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        raise ImportRefused(source, [RowError(1, "-", f"not CSV: {exc}")]) from None
    if header != list(columns):
        raise ImportRefused(
            source, [RowError(1, "-", f"expected the header {','.join(columns)}, got {header}")]
        )
    rows: list[tuple[int, dict[str, str]]] = []
    errors: list[RowError] = []
    number = 1
    try:
        for number, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) > len(columns):
                errors.append(RowError(number, "-", f"{len(row)} columns, expected {len(columns)}"))
                continue
            cells = [cell.strip() for cell in row] + [""] * (len(columns) - len(row))
            rows.append((number, dict(zip(columns, cells, strict=True))))
    except csv.Error as exc:  # a NUL byte, a field past the csv module's limit
        errors.append(RowError(number + 1, "-", f"not CSV: {exc}"))
        raise ImportRefused(source, errors) from None
    return rows, errors


def _organization(number: int, value: str, errors: list[RowError]) -> UUID | None:
    try:
        organization = UUID(value)
    except ValueError:
        errors.append(RowError(number, "organization_id", f"not a UUID: {value!r}"))
        return None
    if organization.int == 0:
        # as the topics refuse it (contracts._common.check_not_nil)
        errors.append(RowError(number, "organization_id", "the nil UUID is not an id"))
        return None
    return organization


def parse_profiles(
    text: str, source: str = "profiles", now: datetime | None = None
) -> list[Profile]:
    """Every profile of the file, one per organization (rows of one organization
    merged: the earliest times win); `ImportRefused` with every bad row. A time after
    `now` (default: the wall clock) is one: a profile says what has happened."""
    now = now or datetime.now(UTC)
    rows, errors = _rows(text, PROFILE_COLUMNS, source)
    merged: dict[UUID, OrganizationState] = {}
    for number, cells in rows:
        before = len(errors)
        org = _organization(number, cells["organization_id"], errors)
        created: float | None = None
        if cells["created_at"]:
            try:
                created = _past(_time(cells["created_at"]), now).timestamp()
            except ValueError as exc:
                errors.append(RowError(number, "created_at", f"{cells['created_at']!r}: {exc}"))
        milestones: dict[str, float] = {}
        for pair in filter(None, (p.strip() for p in cells["milestones"].split(";"))):
            name, sep, at = (part.strip() for part in pair.partition("="))
            if not sep or not at:
                errors.append(RowError(number, "milestones", f"{pair!r}: expected name=time"))
            elif name not in _KNOWN_MILESTONES:
                errors.append(RowError(number, "milestones", f"unknown milestone {name!r}"))
            else:
                try:
                    achieved = _past(_time(at), now).timestamp()
                except ValueError as exc:
                    errors.append(RowError(number, "milestones", f"{name}={at!r}: {exc}"))
                else:
                    # named twice in one row: the earliest, as across rows
                    milestones[name] = min(achieved, milestones.get(name, achieved))
        if org is None or len(errors) > before:
            continue
        state = merged.setdefault(org, new_state(str(org)))
        apply_profile(state, created, milestones)
    if errors:
        raise ImportRefused(source, errors)
    return [
        Profile(org, state.created_at, dict(state.milestones))
        for org, state in sorted(merged.items())
    ]


def parse_labels(
    text: str, source: str = "labels", known_until: datetime | None = None
) -> list[ChurnLabel]:
    """Every label of the file; `ImportRefused` with every bad row (an organization
    listed twice is one, and with `known_until` a churn after it: a label records a
    churn that happened, and the file is complete only up to then)."""
    rows, errors = _rows(text, LABEL_COLUMNS, source)
    labels: dict[UUID, ChurnLabel] = {}
    for number, cells in rows:
        org = _organization(number, cells["organization_id"], errors)
        churned: datetime | None = None
        if cells["churned_at"]:
            try:
                churned = _time(cells["churned_at"])
            except ValueError as exc:
                errors.append(RowError(number, "churned_at", f"{cells['churned_at']!r}: {exc}"))
                continue
            if known_until is not None and churned > known_until:
                errors.append(
                    RowError(
                        number,
                        "churned_at",
                        f"{cells['churned_at']!r} is after the time the labels are known "
                        f"until ({known_until.isoformat()}, --labels-until or the import "
                        "time): a churn label records a churn that happened",
                    )
                )
                continue
        if org is None:
            continue
        if org in labels:
            errors.append(RowError(number, "organization_id", f"{org} is listed twice"))
            continue
        labels[org] = ChurnLabel(org, churned)
    if errors:
        raise ImportRefused(source, errors)
    return sorted(labels.values(), key=lambda label: label.organization_id)


def _pages(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    if size < 1:  # a page of none would import nothing and say nothing
        raise ValueError(f"a page holds at least one row, not {size}")
    return [items[start : start + size] for start in range(0, len(items), size)]


# A page locks its organizations' state rows in organization order, but a consumer's
# batch saves the states it holds with one checked UPDATE whose row order the plan
# decides: the two can deadlock, and PostgreSQL then aborts one of them. An aborted
# batch is rewound and retried by the consumer; an aborted page is applied again here.
PAGE_ATTEMPTS = 5


async def _each_page_retried(
    conn: Connection,
    items: Sequence[_T],
    page: int,
    apply: Callable[[Sequence[_T]], Awaitable[int]],
) -> int:
    """`apply` to each page of `items` in a transaction of its own, again after a
    deadlock or a serialization failure (an organization the page creates erased
    meanwhile, migration 0100: the next attempt leaves it out); the sum of what the
    pages returned."""
    total = 0
    for chunk in _pages(items, page):
        for attempt in range(1, PAGE_ATTEMPTS + 1):
            try:
                async with conn.transaction():
                    total += await apply(chunk)
                break
            except asyncpg.TransactionRollbackError as exc:
                if attempt == PAGE_ATTEMPTS:
                    raise
                log.warning(
                    "import_page_retried",
                    reason=type(exc).__name__,
                    attempt=attempt,
                    organizations=len(chunk),
                )
                await asyncio.sleep(0.05 * attempt)
    return total


async def apply_profiles(
    conn: Connection, profiles: Sequence[Profile], rescore_step_seconds: float, page: int = 500
) -> int:
    """Apply `profiles` a page per transaction; how many organizations' states changed."""

    async def apply(chunk: Sequence[Profile]) -> int:
        return await _apply_profile_page(conn, chunk, rescore_step_seconds)

    return await _each_page_retried(conn, profiles, page, apply)


async def _apply_profile_page(
    conn: Connection, page: Sequence[Profile], rescore_step_seconds: float
) -> int:
    states, versions = await lock_states(conn, [str(p.organization_id) for p in page])
    # read after the locks: an erasure committed before then is seen (a CRM export may
    # still list an erased organization; its profile would bring its state back)
    erased = await erased_among(conn, [p.organization_id for p in page])
    if erased:
        log.warning("import_skipped_erased", organizations=len(erased))
    saved: list[OrganizationState] = []
    for profile in page:
        org = str(profile.organization_id)
        if org in erased:
            continue
        state = states.get(org) or new_state(org)
        before = (state.created_at, dict(state.milestones))
        apply_profile(state, profile.created_at, profile.milestones)
        if (state.created_at, state.milestones) != before:
            saved.append(state)
    if saved:
        # checked like every save: a consumer holding one of these states finds its
        # version moved on and continues from the imported profile
        await save_locked_states(conn, saved, versions, rescore_step_seconds)
    return len(saved)


async def import_labels(
    conn: Connection, labels: Sequence[ChurnLabel], known_until: datetime, page: int = 500
) -> int:
    """Upsert `labels` a page per transaction; how many."""

    async def apply(chunk: Sequence[ChurnLabel]) -> int:
        await _apply_label_page(conn, chunk, known_until)
        return len(chunk)

    return await _each_page_retried(conn, labels, page, apply)


async def _apply_label_page(
    conn: Connection, chunk: Sequence[ChurnLabel], known_until: datetime
) -> None:
    erased = await erased_among(conn, [label.organization_id for label in chunk])
    if erased:
        log.warning("import_skipped_erased", organizations=len(erased))
        chunk = [label for label in chunk if str(label.organization_id) not in erased]
    # a label may name an organization not seen in events yet
    await conn.execute(sql.ENSURE_ORGANIZATIONS, [label.organization_id for label in chunk])
    await conn.execute(
        quality.UPSERT_CHURN_LABELS,
        [label.organization_id for label in chunk],
        [label.churned_at for label in chunk],
        [known_until] * len(chunk),
    )


_PROFILE_IDS = UUID("6f1e3c52-8d47-4a0b-9a51-0c2d7e4b8f13")
"""Namespace of the event ids of published profiles (`profile_records`)."""


def profile_records(profiles: Sequence[Profile], sent_at: datetime) -> list[tuple[bytes, bytes]]:
    """Each profile as an `organization.profile.v1` record (key, value), checked against
    the contract as the service will check it (`parse_profiles` with `now=sent_at`
    leaves nothing for it to refuse). The event id is derived from the whole record,
    `occurred_at` included: the service's dedupe compares the payload, so an id that
    one publish of a file shared with the next (another `occurred_at`) would be an
    `event_id_conflict`, dead-lettered. A second publish is then new events that change
    nothing (the earliest times win); a record sent twice by the producer counts once."""
    occurred_at = sent_at.astimezone(UTC).isoformat()
    records: list[tuple[bytes, bytes]] = []
    for profile in profiles:
        if profile.created_at is None and not profile.milestones:
            continue  # a row that knows nothing: its profile would change nothing
        org = str(profile.organization_id)
        milestones = {
            name: datetime.fromtimestamp(at, UTC).isoformat()
            for name, at in sorted(profile.milestones.items())
        }
        created = (
            None
            if profile.created_at is None
            else datetime.fromtimestamp(profile.created_at, UTC).isoformat()
        )
        said = orjson.dumps([org, created, milestones, occurred_at]).decode()
        body = {
            "event_id": str(uuid5(_PROFILE_IDS, said)),
            "organization_id": org,
            "created_at": created,
            "milestones": milestones,
            "occurred_at": occurred_at,
        }
        OrganizationProfile.model_validate(body, context={"received_at": sent_at})
        records.append((org.encode(), orjson.dumps(body)))
    return records
