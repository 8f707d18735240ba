"""A labelled event log: decoded events, churn labels and profiles.

Two sources: the labelled population simulator (`from_population`), or a user's
own export (`load_log`): JSON lines, each ``{"topic": ..., "timestamp": ms,
"value": {...}}`` in log order, as exported from the input topics (profiles from
`organization.profile.v1` among them; ``timestamp``, the record's, optional); a
labels CSV ``organization_id,churned_at`` (empty when retained); optionally a
profiles CSV ``organization_id,created_at,milestones`` (``name=achieved_at`` pairs
joined by ``;``). Every event goes through the service's own decoder (the
contract's rules); rejected ones are counted and left out, as the service
dead-letters them: a value that is not JSON (or none, a tombstone) too, as an export
of a topic holding one copies it.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import orjson

from healthscore.core.events import Event, ProfileEvent
from healthscore.errors import HealthscoreError
from healthscore.service import imports as import_files
from healthscore.service.imports import ImportRefused
from healthscore.service.ingest.decode import Decoded, Decoder, RawRecord
from healthscore.service.ingest.pipeline import payload_digest
from healthscore_lab.simulator.labelled import Population, iter_jsonl

USAGE_TOPIC = "product.usage.v1"
SUPPORT_TOPIC = "support.interactions.v1"
PROFILE_TOPIC = "organization.profile.v1"
DAY = 86_400.0


_ANY_TIME = datetime.max.replace(tzinfo=UTC)  # an export's profiles may postdate today

# A line whose wrapper names a topic and then holds a value that is not JSON: the
# record a producer sent as bytes that are not JSON (or a tombstone), copied by the
# export as it was; the service dead-letters it, so it is counted as rejected
_WRAPPED_NOT_JSON = re.compile(
    rb'^\s*\{\s*"topic"\s*:\s*"([^"\\]+)"\s*,'
    rb'(?:\s*"timestamp"\s*:\s*-?\d+\s*,)?\s*"value"\s*:'
)

# How far an event may lie from the bulk of the log's times (its 0.1% and 99.9%
# quantiles) before the log is refused: one stray-dated event (a producer's clock a
# year off) stretches every organization's as-of points and rewrites every figure
STRAY_DAYS = 30.0
STRAY_QUANTILE = 0.001


class EvaluationInputError(HealthscoreError):
    """A labelled log that cannot be evaluated (the message says which file and line)."""


@dataclass(frozen=True)
class OrgProfile:
    created_at: float | None
    milestones: dict[str, float] = field(default_factory=dict)


@dataclass
class LabelledLog:
    events: list[Event]  # decoded, in event-time order (stable)
    churned_at: dict[str, float | None]  # organization -> churn time (None: retained)
    profiles: dict[str, OrgProfile]
    labels_until: float  # churn is known up to this time
    rejected: int = 0
    # repeats of an event already in the log (the same id and payload): counted once
    duplicates: int = 0
    # the first rejected lines, each `file:line: reason` (what the service's dead
    # letters would say of them)
    rejections: list[str] = field(default_factory=list)
    source: str = ""
    population: Population | None = None  # the ground truth, when simulated (the oracle)
    labelled: bool = True  # False: no labels were given (every organization taken as retained)
    # where the labels and the events disagree (a user's export only): each kind's ids
    mismatches: dict[str, list[str]] = field(default_factory=dict)

    @property
    def first_event_at(self) -> float:
        """The first usage or support event's time (a profile is not activity)."""
        return next(_activity(self.events)).occurred_at.timestamp()

    @property
    def last_event_at(self) -> float:
        return next(_activity(reversed(self.events))).occurred_at.timestamp()


def _activity(events: Iterable[Event]) -> Iterator[Event]:
    return (event for event in events if not isinstance(event, ProfileEvent))


REJECTIONS_KEPT = 5


@dataclass
class _Decoded:
    events: list[Event]
    rejected: int
    duplicates: int
    rejections: list[str]


def _decode_lines(lines: Iterable[bytes], where: str) -> _Decoded:
    """The log's valid events in event-time order, each id once; how many lines were
    rejected (the first few with their reasons) and how many repeated an event.

    A record's own timestamp (``"timestamp"``, milliseconds, as the export writes it)
    judges "not in the future" as the service judged it; without one, the event is
    judged against its own time, as a replay does (so a future-dated event the service
    dead-lettered is applied: `refuse_stray_events` catches the far ones)."""
    decoder = Decoder(USAGE_TOPIC, SUPPORT_TOPIC, 64 * 1024, profile_topic=PROFILE_TOPIC)
    names = topic_names()
    decoded_events: list[tuple[int, Decoded]] = []
    rejections: list[str] = []
    rejected = 0

    def reject(number: int, reason: str) -> None:
        nonlocal rejected
        rejected += 1
        if len(rejections) < REJECTIONS_KEPT:
            rejections.append(f"{where}:{number}: {reason}")

    for number, line in enumerate(lines, start=1):
        if number == 1:
            line = line.removeprefix(codecs.BOM_UTF8)  # as Windows tools save UTF-8
        if not line.strip():
            continue
        try:
            wrapper = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            wrapped = _WRAPPED_NOT_JSON.match(line)
            if wrapped is not None and wrapped.group(1).decode() in names:
                # a record that is not JSON: the service dead-letters it
                reject(number, f"the value is not JSON ({_not_json(line, exc)})")
                continue
            raise EvaluationInputError(f"{where}:{number}: {_not_json(line, exc)}") from None
        try:
            topic, value = wrapper["topic"], wrapper["value"]
        except (KeyError, TypeError):
            raise EvaluationInputError(
                f'{where}:{number}: expected {{"topic": ..., "value": {{...}}}}'
            ) from None
        if topic not in names:
            known = ", ".join(sorted(names))
            raise EvaluationInputError(
                f"{where}:{number}: unknown topic {topic!r} (read: {known}; a deployment's "
                "own names as the service takes them: USAGE_TOPIC, SUPPORT_TOPIC, "
                "PROFILE_TOPIC)"
            )
        topic = names[topic]
        stamp = wrapper.get("timestamp")
        if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, int)):
            raise EvaluationInputError(
                f"{where}:{number}: timestamp must be the record's, in milliseconds"
            )
        raw = orjson.dumps(value)
        key = value.get("organization_id") if isinstance(value, dict) else None
        occurred = value.get("occurred_at") if isinstance(value, dict) else None
        timestamp_ms = stamp
        if timestamp_ms is None and isinstance(occurred, str):
            try:  # judged "not in the future" against its own time, as a replay does
                timestamp_ms = int(datetime.fromisoformat(occurred).timestamp() * 1000) + 1000
            except ValueError:
                timestamp_ms = None
        record = RawRecord(
            topic=topic,
            partition=0,
            offset=number,
            key=key.encode() if isinstance(key, str) else None,
            value=raw,
            timestamp_ms=timestamp_ms,
        )
        decoded = decoder.decode(record)
        if isinstance(decoded, Decoded):
            decoded_events.append((number, decoded))
        else:
            reject(number, f"{decoded.reason}: {decoded.detail}")
    # the service applies the log in event-time order across partitions (alignment)
    decoded_events.sort(key=lambda item: item[1].event.occurred_at)
    # and an id once: an export of the topics holds what producers sent twice, which
    # the service counts once, and a reused id's other payload, which it dead-letters
    # (`event_id_conflict`); the first applied keeps it
    applied: dict[UUID, bytes] = {}
    events: list[Event] = []
    duplicates = 0
    for number, item in decoded_events:
        digest = payload_digest(item)
        first = applied.setdefault(item.event.event_id, digest)
        if first is not digest:
            if first == digest:
                duplicates += 1
            else:
                reject(
                    number, f"event_id_conflict: {item.event.event_id} applied with another payload"
                )
            continue
        events.append(item.event)
    return _Decoded(events, rejected, duplicates, rejections)


def topic_names() -> dict[str, str]:
    """Each topic name an export may hold -> the contract's name the decoder reads it
    as: the contract's names, and a deployment's own as the service takes them
    (`USAGE_TOPIC`, `SUPPORT_TOPIC`, `PROFILE_TOPIC`; `kcat -f '%t'` writes the topic's
    real name: those were refused as unknown, review 37a M2)."""
    # the three variables alone: the whole of Settings reads .env and checks every other
    # setting (a DATABASE_URL the lab never uses would refuse the command, review 37c)
    names = {topic: topic for topic in (USAGE_TOPIC, SUPPORT_TOPIC, PROFILE_TOPIC)}
    for variable, topic in (
        ("USAGE_TOPIC", USAGE_TOPIC),
        ("SUPPORT_TOPIC", SUPPORT_TOPIC),
        ("PROFILE_TOPIC", PROFILE_TOPIC),
    ):
        if own := os.environ.get(variable):
            names[own] = topic
    return names


def refuse_stray_events(events: list[Event], where: str) -> None:
    """Refuse a log with usage or support events more than STRAY_DAYS outside the bulk
    of its times, naming them: the as-of points run from the first event to the last,
    for every organization."""
    times = sorted(event.occurred_at.timestamp() for event in _activity(events))
    cut = int(len(times) * STRAY_QUANTILE)
    low, high = times[cut] - STRAY_DAYS * DAY, times[len(times) - 1 - cut] + STRAY_DAYS * DAY
    stray = [
        event for event in _activity(events) if not low <= event.occurred_at.timestamp() <= high
    ]
    if stray:
        shown = ", ".join(f"{e.event_id} at {e.occurred_at.isoformat()}" for e in stray[:5])
        more = f" and {len(stray) - 5} more" if len(stray) > 5 else ""
        raise EvaluationInputError(
            f"{where}: {len(stray)} events lie more than {STRAY_DAYS:g} days outside the "
            f"bulk of the log ({_day(low + STRAY_DAYS * DAY)} to "
            f"{_day(high - STRAY_DAYS * DAY)}): {shown}{more}. A producer's clock? They "
            "would stretch every organization's as-of points; remove them from the export, "
            "export with the records' timestamps (the service refuses those dated ahead "
            "of theirs), or, if they are real (a pilot before the bulk), pass "
            "--keep-stray-events"
        )


def _day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).date().isoformat()


def _not_json(line: bytes, exc: orjson.JSONDecodeError) -> str:
    """Why `line` is not JSON, placed in the line (the parser counts the line as its
    first, and places a byte that is not UTF-8 at the line's start)."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"byte 0x{line[bad.start]:02x} at column {bad.start + 1} is not UTF-8: "
            "save the export as UTF-8"
        )
    reason = str(exc).rsplit(": line ", 1)[0]
    return f"column {exc.colno}: {reason}"


def _refused(exc: ImportRefused) -> EvaluationInputError:
    # one row a line: a file's 67 rows on one line were 6,494 characters (review 37a)
    rows = "\n  ".join(exc.lines())
    return EvaluationInputError(f"{exc}:\n  {rows}")


def parse_labels(text: str, where: str = "labels") -> dict[str, float | None]:
    """A labels CSV read as `healthscore import --labels` reads it (the same checks)."""
    try:
        labels = import_files.parse_labels(text, where)
    except ImportRefused as exc:
        raise _refused(exc) from None
    churned = {
        str(label.organization_id): label.churned_at.timestamp() if label.churned_at else None
        for label in labels
    }
    # in the file's order (the import sorts by id): the backtest lists organizations so
    rows = (
        row for row in list(csv.reader(io.StringIO(text, newline="")))[1:] if row and row[0].strip()
    )
    return {org: churned[org] for org in dict.fromkeys(str(UUID(row[0].strip())) for row in rows)}


def parse_profiles(text: str, where: str = "profiles") -> dict[str, OrgProfile]:
    """A profiles CSV read as `healthscore import --profiles` reads it (rows of one
    organization merged, the earliest times win); an export's times may be any."""
    try:
        profiles = import_files.parse_profiles(text, where, now=_ANY_TIME)
    except ImportRefused as exc:
        raise _refused(exc) from None
    return {
        str(profile.organization_id): OrgProfile(profile.created_at, profile.milestones)
        for profile in profiles
    }


def _csv(path: Path) -> str:
    try:
        return import_files.read_csv_text(path)
    except ImportRefused as exc:
        raise _refused(exc) from None


def load_log(
    events: Path,
    labels: Path | None,
    profiles: Path | None = None,
    labels_until: float | None = None,
    *,
    keep_stray_events: bool = False,
) -> LabelledLog:
    """A user's export. `labels_until` is how far the labels are known (default: the
    last event, or the latest churn in the labels if later: what an export and the
    billing labels taken the same day know): a horizon is evaluated only at as-of
    points it fits in, and a churn after it is not known. Without labels
    (`healthscore adapt` needs none) every organization is retained."""
    with events.open("rb") as handle:
        read = _decode_lines(handle, str(events))
    decoded = read.events
    if not any(_activity(decoded)):
        first = f" (rejected: {'; '.join(read.rejections)})" if read.rejections else ""
        raise EvaluationInputError(f"{events}: no valid usage or support events{first}")
    if not keep_stray_events:
        refuse_stray_events(decoded, str(events))
    churned = parse_labels(_csv(labels), str(labels)) if labels is not None else {}
    # each organization's first usage or support event (the log is in event-time order)
    first_seen: dict[str, float] = {}
    for event in _activity(decoded):
        first_seen.setdefault(str(event.organization_id), event.occurred_at.timestamp())
    seen = first_seen.keys()
    if churned and not seen & set(churned):
        # every organization would be taken as retained: the labels of another system,
        # or of another export, not a population without churn
        raise EvaluationInputError(
            f"{labels}: none of its {len(churned)} organizations has a usage or support "
            f"event in {events}: are the ids those of the same system?"
        )
    mismatches = _mismatches(first_seen, churned) if labels is not None else {}
    left_out = {*mismatches.get(WITHOUT_EVENTS, ()), *mismatches.get(CHURNED_BEFORE_EVENTS, ())}
    for org in left_out:
        del churned[org]
    if mismatches.get(CHURNED_BEFORE_EVENTS):
        gone = set(mismatches[CHURNED_BEFORE_EVENTS])
        decoded = [event for event in decoded if str(event.organization_id) not in gone]
    # an organization without a label is taken as retained; one with nothing but a
    # profile in the export was not seen, as a profiles CSV's row of it is not
    for org in seen - left_out:
        churned.setdefault(org, None)
    log = LabelledLog(
        events=decoded,
        churned_at=churned,
        profiles=parse_profiles(_csv(profiles), str(profiles)) if profiles else {},
        labels_until=0.0,
        rejected=read.rejected,
        duplicates=read.duplicates,
        rejections=read.rejections,
        source=str(events),
        labelled=labels is not None,
        mismatches=mismatches,
    )
    if labels_until is None:
        # a churn dated after now (a notice of a later end) is no knowledge of the time
        # up to it: --labels-until refuses a time after now, so does the default
        churns = [at for at in churned.values() if at is not None]
        labels_until = min(max([log.last_event_at, *churns]), time.time())
    log.labels_until = labels_until
    return log


# the kinds of disagreement between a labels file and its events (LabelledLog.mismatches)
WITHOUT_EVENTS = "labelled_without_events"
CHURNED_BEFORE_EVENTS = "churned_before_first_event"
WITHOUT_LABEL = "events_without_label"


def _mismatches(
    first_seen: dict[str, float], churned: dict[str, float | None]
) -> dict[str, list[str]]:
    """Where a labels file and its events disagree, each kind's ids (sorted).

    A labelled organization with no usage or support event cannot be judged: counted,
    it was a churner no alert could see (recall fell from 0.786 to 0.458 with 20 of
    them, review 37a) and it passed `fit`'s gate of enough held-out organizations. One
    whose churn comes before its first event (a churn of an earlier contract) has no
    as-of point before its churn: it was dropped from every figure while counted as
    judged. Both are left out, and said. One with events and no label row is taken as
    retained (a labels file of the churns alone is a valid form), and said too.
    `first_seen`: each organization's first usage or support event time."""
    found = {
        WITHOUT_EVENTS: sorted(org for org in churned if org not in first_seen),
        CHURNED_BEFORE_EVENTS: sorted(
            org
            for org, at in churned.items()
            if at is not None and org in first_seen and at < first_seen[org]
        ),
        WITHOUT_LABEL: sorted(org for org in first_seen if org not in churned),
    }
    return {kind: ids for kind, ids in found.items() if ids}


def from_population(population: Population, use_profiles: bool = True) -> LabelledLog:
    read = _decode_lines(iter_jsonl(population), "simulated")
    profiles = {
        org: OrgProfile(
            profile.created_at.timestamp(),
            {name: at.timestamp() for name, at in profile.milestones.items()},
        )
        for org, profile in population.profiles.items()
    }
    return LabelledLog(
        events=read.events,
        churned_at={
            org: at.timestamp() if at is not None else None
            for org, at in population.churned_at.items()
        },
        profiles=profiles if use_profiles else {},
        labels_until=population.labels_until,
        rejected=read.rejected,
        duplicates=read.duplicates,
        rejections=read.rejections,
        source=f"simulated (seed {population.config.seed})",
        population=population,
    )
