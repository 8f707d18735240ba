"""A labelled event log: decoded events, churn labels and profiles.

Two sources: the labelled population simulator (`from_population`), or a user's
own export (`load_log`): JSON lines, each ``{"topic": ..., "value": {...}}`` in
log order, as exported from the input topics (profiles from
`organization.profile.v1` among them); a labels CSV
``organization_id,churned_at`` (empty when retained); optionally a profiles CSV
``organization_id,created_at,milestones`` (``name=achieved_at`` pairs joined
by ``;``). Every event goes through the service's own decoder (the contract's
rules); rejected ones are counted and left out, as the service dead-letters them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson

from healthscore.contracts.enums import MilestoneType
from healthscore.core.events import Event, ProfileEvent
from healthscore.errors import HealthscoreError
from healthscore.service.ingest.decode import Decoded, Decoder, RawRecord
from healthscore_lab.simulator.labelled import Population, iter_jsonl

USAGE_TOPIC = "product.usage.v1"
SUPPORT_TOPIC = "support.interactions.v1"
PROFILE_TOPIC = "organization.profile.v1"
DAY = 86_400.0


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
    source: str = ""
    population: Population | None = None  # the ground truth, when simulated (the oracle)
    labelled: bool = True  # False: no labels were given (every organization taken as retained)

    @property
    def first_event_at(self) -> float:
        """The first usage or support event's time (a profile is not activity)."""
        return next(_activity(self.events)).occurred_at.timestamp()

    @property
    def last_event_at(self) -> float:
        return next(_activity(reversed(self.events))).occurred_at.timestamp()


def _activity(events: Iterable[Event]) -> Iterator[Event]:
    return (event for event in events if not isinstance(event, ProfileEvent))


def _decode_lines(lines: Iterable[bytes], where: str) -> tuple[list[Event], int]:
    decoder = Decoder(USAGE_TOPIC, SUPPORT_TOPIC, 64 * 1024, profile_topic=PROFILE_TOPIC)
    events: list[Event] = []
    rejected = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            wrapper = orjson.loads(line)
            topic, value = wrapper["topic"], wrapper["value"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise EvaluationInputError(
                f'{where}:{number}: expected {{"topic": ..., "value": {{...}}}}'
            ) from None
        if topic not in (USAGE_TOPIC, SUPPORT_TOPIC, PROFILE_TOPIC):
            raise EvaluationInputError(f"{where}:{number}: unknown topic {topic!r}")
        raw = orjson.dumps(value)
        key = value.get("organization_id") if isinstance(value, dict) else None
        occurred = value.get("occurred_at") if isinstance(value, dict) else None
        timestamp_ms = None
        if isinstance(occurred, str):
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
            events.append(decoded.event)
        else:
            rejected += 1
    # the service applies the log in event-time order across partitions (alignment)
    events.sort(key=lambda event: event.occurred_at)
    return events, rejected


def _parse_time(text: str, where: str) -> float:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise EvaluationInputError(f"{where}: not an RFC 3339 time: {text!r}") from None
    if moment.tzinfo is None:
        raise EvaluationInputError(f"{where}: time without an offset: {text!r}")
    return moment.timestamp()


def parse_labels(text: str, where: str = "labels") -> dict[str, float | None]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["organization_id", "churned_at"]:
        raise EvaluationInputError(f"{where}:1: expected the header organization_id,churned_at")
    labels: dict[str, float | None] = {}
    for number, row in enumerate(reader, start=2):
        if not row:
            continue
        org = row[0].strip()
        churned = row[1].strip() if len(row) > 1 else ""
        labels[org] = _parse_time(churned, f"{where}:{number}") if churned else None
    return labels


def parse_profiles(text: str, where: str = "profiles") -> dict[str, OrgProfile]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:3]] != [
        "organization_id",
        "created_at",
        "milestones",
    ]:
        raise EvaluationInputError(
            f"{where}:1: expected the header organization_id,created_at,milestones"
        )
    known = {m.value for m in MilestoneType}
    profiles: dict[str, OrgProfile] = {}
    for number, row in enumerate(reader, start=2):
        if not row:
            continue
        here = f"{where}:{number}"
        created = row[1].strip() if len(row) > 1 else ""
        milestones: dict[str, float] = {}
        for pair in (row[2] if len(row) > 2 else "").split(";"):
            if not pair.strip():
                continue
            name, _, at = pair.partition("=")
            if name.strip() not in known:
                raise EvaluationInputError(f"{here}: unknown milestone {name.strip()!r}")
            milestones[name.strip()] = _parse_time(at, here)
        profiles[row[0].strip()] = OrgProfile(
            _parse_time(created, here) if created else None, milestones
        )
    return profiles


def load_log(
    events: Path,
    labels: Path | None,
    profiles: Path | None = None,
    labels_until: float | None = None,
) -> LabelledLog:
    """A user's export. `labels_until` (default: the last event + 30 days) is how far
    the labels are known: a horizon is evaluated only at as-of points it fits in.
    Without labels (`healthscore adapt` needs none) every organization is retained."""
    with events.open("rb") as handle:
        decoded, rejected = _decode_lines(handle, str(events))
    if not any(_activity(decoded)):
        raise EvaluationInputError(f"{events}: no valid usage or support events")
    churned = parse_labels(labels.read_text(), str(labels)) if labels is not None else {}
    # an organization without a label is taken as retained; one with nothing but a
    # profile in the export was not seen, as a profiles CSV's row of it is not
    for event in _activity(decoded):
        churned.setdefault(str(event.organization_id), None)
    log = LabelledLog(
        events=decoded,
        churned_at=churned,
        profiles=parse_profiles(profiles.read_text(), str(profiles)) if profiles else {},
        labels_until=0.0,
        rejected=rejected,
        source=str(events),
        labelled=labels is not None,
    )
    log.labels_until = labels_until if labels_until is not None else log.last_event_at + 30 * DAY
    return log


def from_population(population: Population, use_profiles: bool = True) -> LabelledLog:
    events, rejected = _decode_lines(iter_jsonl(population), "simulated")
    profiles = {
        org: OrgProfile(
            profile.created_at.timestamp(),
            {name: at.timestamp() for name, at in profile.milestones.items()},
        )
        for org, profile in population.profiles.items()
    }
    return LabelledLog(
        events=events,
        churned_at={
            org: at.timestamp() if at is not None else None
            for org, at in population.churned_at.items()
        },
        profiles=profiles if use_profiles else {},
        labels_until=population.labels_until,
        rejected=rejected,
        source=f"simulated (seed {population.config.seed})",
        population=population,
    )
