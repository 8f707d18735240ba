"""What each committed batch leaves behind: its metrics, one canonical log line,
one line per rejected record, and a short history of summaries with totals."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator

import structlog

from healthscore.printable import escaped
from healthscore.service.ingest.pipeline import BatchOutcome
from healthscore.service.ops.metrics import Metrics

log = structlog.get_logger(__name__)

# the erased organizations a skip line names: a bulk offboarding whose organizations
# keep sending puts thousands in one batch (the metric counts every record)
ERASED_SAMPLE = 20
# the (topic, field name) pairs logged as unknown, at most, per topic: names are the
# producers' (one topic's many extra fields leave the others' to be told)
UNKNOWN_FIELDS_LOGGED = 200


def shown_key(key: bytes | None) -> str | None:
    """A message key for a log line, as `healthscore dead-letters` prints it (escaped,
    one line), at most 80 characters; a key may be megabytes: only its first KiB is read
    (the length said is that KiB's)."""
    return None if key is None else escaped(key[:1024], 80)


class BatchLog:
    def __init__(self, metrics: Metrics, keep: int = 200) -> None:
        self._metrics = metrics
        # the latest summaries (their rejections dropped: those hold the records)
        self.recent: deque[BatchOutcome] = deque(maxlen=keep)
        self._unknown_seen: dict[str, set[str]] = {}
        # since start: records handled (redeliveries skipped not counted), events
        # applied, duplicates, rejections; wall-clock times of the first and last
        # commit that handled a record
        self.records = 0
        self.applied = 0
        self.duplicates = 0
        self.rejected = 0
        self.first_commit: float | None = None
        self.last_commit: float | None = None

    def __iter__(self) -> Iterator[BatchOutcome]:
        return iter(list(self.recent))

    def record(self, outcome: BatchOutcome, duration: float) -> None:
        self._metrics.observe_batch(outcome, duration)
        for rejection in outcome.rejections:
            record = rejection.record
            log.warning(
                "message_rejected",
                reason=rejection.reason,
                detail=rejection.detail,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                # the message key: the organization, as the producer sent it
                key=shown_key(record.key),
                # what the dead letter does not say (interaction_org_mismatch: the owner)
                logged=rejection.logged or None,
            )
        for topic, names, partition, offset in outcome.unknown_field_samples:
            seen = self._unknown_seen.setdefault(topic, set())
            new = [n for n in names if n not in seen]
            if not new or len(seen) >= UNKNOWN_FIELDS_LOGGED:
                continue
            seen.update(new)
            # once per field name and topic in this process: a producer sending an extra
            # field sends it in every record
            log.warning(
                "unknown_fields",
                topic=topic,
                fields=new,
                partition=partition,
                offset=offset,
            )
        if outcome.erased_by_topic:
            # ids only: the records' content is what the erasure removed
            named = outcome.erased_organizations
            log.warning(
                "erased_organization_events_skipped",
                organizations=len(named),
                sample=named[:ERASED_SAMPLE],
                records=outcome.erased_by_topic,
            )
            # the summaries kept are bounded as the line is
            outcome.erased_organizations = named[:ERASED_SAMPLE]
        outcome.rejections = []
        self.recent.append(outcome)
        handled = outcome.records - outcome.skipped_replayed
        if handled > 0:
            self.records += handled
            self.applied += outcome.applied
            self.duplicates += outcome.duplicates
            self.rejected += sum(outcome.rejected.values())
            now = time.time()
            if self.first_commit is None:
                self.first_commit = now
            self.last_commit = now
        log.info(
            "batch_committed",
            records=outcome.records,
            passed_over=outcome.passed_over,
            applied=outcome.applied,
            duplicates=outcome.duplicates,
            replayed_skipped=outcome.skipped_replayed,
            rejected=outcome.rejected,
            organizations_rescored=outcome.organizations_rescored,
            states_held=outcome.states_held,
            states_read=outcome.states_read,
            states_changed_elsewhere=outcome.states_changed_elsewhere,
            projected_in_batch=outcome.projected_in_batch,
            milestones=outcome.milestones,
            alerts=outcome.alerts,
            offsets_from={f"{t}:{p}": o for (t, p), o in outcome.first_offsets.items()},
            offsets={f"{t}:{p}": o for (t, p), o in outcome.next_offsets.items()},
            # partitions the event-time alignment held back, from this offset on
            held_from={f"{t}:{p}": o for (t, p), o in outcome.held_from.items()},
            duration_ms=round(duration * 1000, 1),
            phases_ms=outcome.timings_ms,
        )
