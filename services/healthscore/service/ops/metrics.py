"""Prometheus metrics, one registry per service instance (tests run several)."""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from healthscore.service.ingest.pipeline import BatchOutcome

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 20000)


def observe_each(histogram: Histogram, amounts: list[float]) -> None:
    """`histogram.observe(amount)` for each of `amounts` (finite), in one increment per
    bucket: a batch observes one latency per record, and `observe` takes two locked
    increments and a walk over the buckets for each (about 0.8 us a record).

    The histogram's value objects are prometheus_client's own (`_sum`, `_buckets`,
    `_upper_bounds`, as `observe` uses them); tests/unit/test_metrics_observe_each.py
    keeps the exposition equal to observing one by one (the sum up to float rounding).
    """
    if not amounts:
        return
    histogram._raise_if_not_observable()  # type: ignore[no-untyped-call]
    ordered = sorted(amounts)
    histogram._sum.inc(math.fsum(ordered))
    below = 0  # amounts in the buckets before this one (bucket i: the first bound >= amount)
    for bucket, bound in zip(histogram._buckets, histogram._upper_bounds, strict=True):
        upto = bisect_right(ordered, bound, lo=below)
        if upto > below:
            bucket.inc(upto - below)
            below = upto
        if below == len(ordered):
            break


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "healthscore_events_consumed_total",
            "Records fetched from an input topic and handled in a committed batch.",
            ["topic"],
            registry=r,
        )
        self.events_applied = Counter(
            "healthscore_events_applied_total",
            "Valid, new events whose effects were committed.",
            ["topic"],
            registry=r,
        )
        self.events_deduplicated = Counter(
            "healthscore_events_deduplicated_total",
            "Valid events skipped because their event_id was already processed.",
            ["topic"],
            registry=r,
        )
        self.events_redelivered = Counter(
            "healthscore_events_redelivered_total",
            "Records skipped because their offset was already committed in PostgreSQL.",
            ["topic"],
            registry=r,
        )
        self.events_erased_skipped = Counter(
            "healthscore_events_erased_skipped_total",
            "Records of erased organizations (healthscore erase), skipped: neither applied "
            "nor dead-lettered.",
            ["topic"],
            registry=r,
        )
        self.events_with_unknown_fields = Counter(
            "healthscore_events_with_unknown_fields_total",
            "Records read (applied, or duplicates) that carried top-level fields the "
            "contract does not name "
            "(ignored: a misspelled field is lost; the unknown_fields log line names them).",
            ["topic"],
            registry=r,
        )
        self.events_dead_lettered = Counter(
            "healthscore_events_dead_lettered_total",
            "Records sent to the DLQ, by rejection reason.",
            ["topic", "reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "healthscore_batch_size_records",
            "Records per committed batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            "healthscore_batch_duration_seconds",
            "Time from receiving a batch to its database commit.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.produce_to_commit = Histogram(
            "healthscore_produce_to_commit_seconds",
            "Kafka record timestamp (producer time) to the commit of its effects, for "
            "records that passed the contract.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.corrupt_records = Counter(
            "healthscore_corrupt_records_total",
            "Kafka records the client could not parse, salvaged and dead-lettered "
            "(each source offset counted once per process).",
            ["topic"],
            registry=r,
        )
        self.batch_failures = Counter(
            "healthscore_batch_failures_total",
            "Batches that failed and were fetched again.",
            registry=r,
        )
        self.read_model_staleness = Gauge(
            "healthscore_read_model_staleness_seconds",
            "Age of the oldest organization change not yet projected into customer_health "
            "and the health feed (0 when the projector is caught up).",
            registry=r,
        )
        self.read_model_staleness_target = Gauge(
            "healthscore_read_model_staleness_target_seconds",
            "READ_MODEL_STALENESS_TARGET_SECONDS: the freshness the read model is run for "
            "(the alert rules compare the staleness with it).",
            registry=r,
        )
        self.read_model_coalescing = Gauge(
            "healthscore_read_model_coalescing_seconds",
            "How long the projector leaves a change queued to project it with the "
            "organization's later ones: while the consumer's backlog takes over "
            "READ_MODEL_CATCH_UP_AFTER_SECONDS to apply, that time, at most "
            "READ_MODEL_CATCH_UP_WINDOW_SECONDS; 0 for live traffic (the staleness alert "
            "allows for it).",
            registry=r,
        )
        self.health_feed_owed_age = Gauge(
            "healthscore_health_feed_owed_age_seconds",
            "Age of the oldest customer_health row whose customer.health.v1 record the "
            "broker did not acknowledge (health_feed_owed), or of an erased organization's "
            "feed tombstone not published yet (health_feed_tombstones_owed); 0 when none is "
            "owed.",
            registry=r,
        )
        self.read_model_projected = Counter(
            "healthscore_read_model_projected_total",
            "customer_health rows written by the projector (one per organization per pass).",
            registry=r,
        )
        self.read_model_requeues = Counter(
            "healthscore_read_model_requeues_total",
            "Follow-ups (one per pass or batch) of health-feed records that outlived what "
            "sent them (a projector pass or live batch that did not commit, or records "
            "given up on after the feed wait) and that the broker took: queued (their "
            "organizations, for a pass to publish their newest score after the late "
            "records), failed (PostgreSQL away through every attempt), deferred (a stop "
            "came first: their organizations owed, republished after "
            "HEALTH_FEED_LATE_RECORD_SECONDS) or cut (by a stop, not owed); "
            "the feed may show an older score of those failed or cut until they change.",
            ["outcome"],
            registry=r,
        )
        for outcome in ("queued", "failed", "deferred", "cut"):
            # at 0 from the start: the first failure shows in increase()
            self.read_model_requeues.labels(outcome)
        self.projection_duration = Histogram(
            "healthscore_projection_duration_seconds",
            "Duration of one projector pass (one page of organizations).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.offset_gaps = Counter(
            "healthscore_offset_gaps_total",
            "Batches that started past a partition's stored offset (records fetched but "
            "not handed over); the partition was sought back, nothing committed.",
            ["topic"],
            registry=r,
        )
        self.partitions_refused = Gauge(
            "healthscore_partition_refused",
            "1 while a partition is not consumed because its stored offset lies outside "
            "the log (above the high watermark or below the log start).",
            ["topic", "partition"],
            registry=r,
        )
        self.framework_errors = Counter(
            "healthscore_framework_errors_total",
            "Errors the consumer framework logged (its consume loop, a failed fetch).",
            ["source"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "healthscore_consumer_lag_records",
            "High watermark minus the next offset stored in PostgreSQL.",
            ["topic", "partition"],
            registry=r,
        )
        self.partition_stalled = Gauge(
            "healthscore_partition_stalled_seconds",
            "How long a partition with records to consume has gone without its stored "
            "offset moving (0: it moves, or has nothing to consume).",
            ["topic", "partition"],
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "healthscore_outbox_backlog_alerts",
            "Alerts committed but not yet published.",
            registry=r,
        )
        self.outbox_oldest_age = Gauge(
            "healthscore_outbox_oldest_unsent_age_seconds",
            "Age of the oldest unpublished alert (0 when none).",
            registry=r,
        )
        self.dead_letters_pending = Gauge(
            "healthscore_dead_letters_pending",
            "Dead letters committed to the outbox and not yet published to their "
            "dead-letter topics (exact up to 100,000, beyond that PostgreSQL's estimate).",
            registry=r,
        )
        self.dead_letters_oldest_age = Gauge(
            "healthscore_dead_letters_oldest_pending_age_seconds",
            "Age of the oldest unpublished dead letter (0 when none).",
            registry=r,
        )
        self.notification_queue_usage = Gauge(
            "healthscore_notification_queue_usage",
            "Fraction of PostgreSQL's notification queue in use (0..1; "
            "pg_notification_queue_usage). A session that LISTENs and idles in a "
            "transaction pins it; full, every transaction that notifies (the consumers' "
            "batches, through the read model's announcements) fails at commit.",
            registry=r,
        )
        self.dead_letters_published = Counter(
            "healthscore_dead_letters_published_total",
            "Dead letters the relay published, by source topic.",
            ["topic"],
            registry=r,
        )
        self.dead_letters_withheld_kept = Gauge(
            "healthscore_dead_letters_withheld_kept",
            "Rows of dead_letters_withheld: records their dead-letter topic refused, kept "
            "for an operator to read and delete (refreshed every 5 s; counted up to "
            "100,000).",
            registry=r,
        )
        self.dead_letters_withheld = Counter(
            "healthscore_dead_letters_withheld_total",
            "Dead letters their topic refused for their content alone, published as a "
            "stand-in without the record (kept in dead_letters_withheld), by source topic.",
            ["topic"],
            registry=r,
        )
        self.alerts_raised = Counter(
            "healthscore_alerts_raised_total",
            "Alerts written to the outbox, by kind.",
            ["kind"],
            registry=r,
        )
        self.alerts_published = Counter(
            "healthscore_alerts_published_total",
            "Alerts published to Kafka, by kind.",
            ["kind"],
            registry=r,
        )
        self.organizations_by_band = Gauge(
            "healthscore_organizations",
            "Organizations by health band.",
            ["health_status"],
            registry=r,
        )
        self.organizations_by_risk = Gauge(
            "healthscore_organizations_by_risk",
            "Organizations by risk level.",
            ["risk_level"],
            registry=r,
        )
        self.milestones = Counter(
            "healthscore_milestones_achieved_total",
            "Milestones achieved.",
            registry=r,
        )
        self.sweep_runs = Counter(
            "healthscore_sweep_runs_total",
            "Silence sweep pages run.",
            registry=r,
        )
        self.sweep_duration = Histogram(
            "healthscore_sweep_duration_seconds",
            "Duration of one sweep page.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.event_ids_purged = Counter(
            "healthscore_event_ids_purged_total",
            "Event ids forgotten past the dedupe window (DEDUPE_RETENTION_DAYS).",
            registry=r,
        )
        self.score_history_purged = Counter(
            "healthscore_score_history_purged_total",
            "Score history rows deleted past HISTORY_RETENTION_DAYS.",
            registry=r,
        )
        self.event_ids_oldest_age = Gauge(
            "healthscore_event_ids_oldest_age_seconds",
            "Age of the oldest event id kept for deduplication (by when it was applied), "
            "as of this replica's last purge; 0 on a replica that does not purge.",
            registry=r,
        )
        self.dedupe_retention = Gauge(
            "healthscore_dedupe_retention_seconds",
            "The dedupe window this replica purges event ids after (DEDUPE_RETENTION_DAYS).",
            registry=r,
        )
        self.organization_states = Counter(
            "healthscore_organization_states_total",
            "Organization states a batch started from: held by the consumer since its last "
            "batch (held), read from PostgreSQL (read), or found changed by another writer "
            "and computed again under lock (changed_elsewhere).",
            ["source"],
            registry=r,
        )
        self.partitions_assigned = Gauge(
            "healthscore_partitions_assigned",
            "Input partitions this replica consumes now: assigned to it and not refused "
            "(healthscore_partition_refused).",
            ["topic"],
            registry=r,
        )
        self.background_steps = Counter(
            "healthscore_background_steps_total",
            "Steps of the background loops (relay, projection, sweep, gauge_refresh, ...) "
            "by outcome: ok, or failed (logged as <task>_failed and run again).",
            ["task", "outcome"],
            registry=r,
        )
        self.background_last_success = Gauge(
            "healthscore_background_last_success_timestamp_seconds",
            "Unix time of each background loop's last step that did not fail (0: none "
            "since the process started).",
            ["task"],
            registry=r,
        )
        self.background_failures_in_a_row = Gauge(
            "healthscore_background_failures_in_a_row",
            "Steps of each background loop that failed one after another since its last "
            "step that did not (0: the last one did not fail).",
            ["task"],
            registry=r,
        )
        self.ready = Gauge(
            "healthscore_ready",
            "1 while /readyz answers 200 (computed when scraped: a stuck checker reads 0).",
            registry=r,
        )
        self.readiness_check_failed = Gauge(
            "healthscore_readiness_check_failed",
            "1 while the latest readiness round found the check failing (its reason is in "
            "/readyz and the readiness_changed log line), else 0.",
            ["check"],
            registry=r,
        )
        self.background_step_started = Gauge(
            "healthscore_background_step_started_timestamp_seconds",
            "Unix time the step each background loop runs now began (0: between steps); "
            "a step that never returns shows as an old start.",
            ["task"],
            registry=r,
        )
        self.rebalances = Counter(
            "healthscore_rebalances_total",
            "Partition assignment changes.",
            ["change"],
            registry=r,
        )

        # score quality (issue 13): live alert outcomes, the shadow model, promotion
        self.alert_episodes = Gauge(
            "healthscore_alert_episodes",
            "Live alert episodes (risk_raised) by outcome: churned or retained within 60 days, "
            "or pending while not known yet.",
            ["outcome"],
            registry=r,
        )
        self.alert_precision = Gauge(
            "healthscore_alert_precision",
            "Churned episodes over labelled episodes (NaN while none is labelled).",
            registry=r,
        )
        self.churned_organizations = Gauge(
            "healthscore_churned_organizations",
            "Organizations the service scored that churned (support stream or labels).",
            registry=r,
        )
        self.churned_organizations_alerted = Gauge(
            "healthscore_churned_organizations_alerted",
            "Of those, the ones with a risk_raised in the 60 days before their churn.",
            registry=r,
        )
        self.alert_lead_time = Gauge(
            "healthscore_alert_lead_time_seconds",
            "Time from the first risk_raised (within 60 days before) to the churn, over the "
            "alerted churned organizations: its 25th, 50th and 75th percentiles (NaN while "
            "there is none).",
            ["percentile"],
            registry=r,
        )
        self.usage_volume_ratio = Gauge(
            "healthscore_usage_volume_ratio",
            "A sample of organizations' usage volume (median of each usage measure over "
            "those active within 7 days) over the live model's usage_reference, for the "
            "measures the model judges by; NaN otherwise. Far from 1 for long: "
            "`healthscore adapt`.",
            ["measure", "model"],
            registry=r,
        )
        self.usage_volume_sampled = Gauge(
            "healthscore_usage_volume_sampled_organizations",
            "Organizations active within 7 days in the last usage volume sample.",
            registry=r,
        )
        self.build_info = Gauge(
            "healthscore_build_info",
            "1, labelled with the service's version, the newest migration it ships "
            "(`schema`: which release a replica runs, as a rollout moves) and how its "
            "scoring core runs: compiled (mypyc, as the wheel build makes it where a C "
            "compiler exists) or pure_python (the same results, more CPU per event).",
            ["version", "schema", "core"],
            registry=r,
        )
        self.shadow_info = Gauge(
            "healthscore_shadow_model_info",
            "1 for the candidate model being scored in the shadow (SHADOW_MODEL_PATH).",
            ["candidate", "live"],
            registry=r,
        )
        self.shadow_organizations = Gauge(
            "healthscore_shadow_organizations_scored",
            "Organizations the candidate model has scored.",
            registry=r,
        )
        self.shadow_scored = Counter(
            "healthscore_shadow_scored_total",
            "Scores the candidate model computed.",
            registry=r,
        )
        self.shadow_raises = Gauge(
            "healthscore_shadow_raises",
            "Raises (episodes) compared, by model (live or candidate), since the candidate's "
            "first score of each organization.",
            ["model"],
            registry=r,
        )
        self.shadow_episode_changes = Gauge(
            "healthscore_shadow_episode_changes",
            "Episodes the candidate would add, drop or move (matched within 14 days).",
            ["change"],
            registry=r,
        )
        self.shadow_median_move = Gauge(
            "healthscore_shadow_median_move_seconds",
            "Median move of the moved episodes (negative: the candidate earlier; NaN while "
            "none moved).",
            registry=r,
        )
        self.organizations_on_other_model = Gauge(
            "healthscore_organizations_on_other_model_version",
            "Organizations whose read model is still scored by another model version than the "
            "live one (a promotion re-projects them).",
            registry=r,
        )

    def background_started(self, task: str) -> None:
        """A loop that runs from now on: its series exist before its first step ends
        (a step that hangs or never succeeds shows as 0, not as nothing)."""
        for outcome in ("ok", "failed"):
            self.background_steps.labels(task, outcome)
        self.background_last_success.labels(task)
        self.background_failures_in_a_row.labels(task)
        self.background_step_started.labels(task)

    def follow_readiness(self, status: Callable[[], tuple[int, object]]) -> None:
        """`healthscore_ready` read from `status` (`ReadinessChecker.status`) when scraped:
        a checker that stopped finishing rounds reads not ready, as /readyz does."""
        self.ready.set_function(lambda: float(status()[0] == 200))

    def readiness_round(self, checks: Mapping[str, str]) -> None:
        """A readiness round's outcome: each check "ok" or why not."""
        for check, outcome in checks.items():
            self.readiness_check_failed.labels(check).set(0 if outcome == "ok" else 1)

    def background_step_began(self, task: str) -> None:
        self.background_step_started.labels(task).set(time.time())

    def background_step(self, task: str, failed: bool) -> None:
        """A step ended (`failed`: it raised)."""
        self.background_step_started.labels(task).set(0)
        self.background_steps.labels(task, "failed" if failed else "ok").inc()
        if failed:
            self.background_failures_in_a_row.labels(task).inc()
        else:
            self.background_failures_in_a_row.labels(task).set(0)
            self.background_last_success.labels(task).set(time.time())

    def consuming(self, topics: Iterable[str], partitions: Iterable[tuple[str, int]]) -> None:
        """The input partitions this replica consumes now, counted per topic (every
        input topic shown, with 0 when it has none)."""
        counts = dict.fromkeys(topics, 0)
        for topic, _ in partitions:
            counts[topic] = counts.get(topic, 0) + 1
        for topic, count in counts.items():
            self.partitions_assigned.labels(topic).set(count)

    def observe_batch(self, outcome: BatchOutcome, duration: float) -> None:
        if outcome.records:  # a batch of transaction markers alone is no batch of records
            self.batch_size.observe(outcome.records)
            self.batch_duration.observe(duration)
        for topic, count in outcome.consumed_by_topic.items():
            self.events_consumed.labels(topic).inc(count)
        for topic, count in outcome.applied_by_topic.items():
            self.events_applied.labels(topic).inc(count)
        for topic, count in outcome.duplicates_by_topic.items():
            self.events_deduplicated.labels(topic).inc(count)
        for topic, count in outcome.redelivered_by_topic.items():
            self.events_redelivered.labels(topic).inc(count)
        for topic, count in outcome.erased_by_topic.items():
            self.events_erased_skipped.labels(topic).inc(count)
        for topic, count in outcome.unknown_fields_by_topic.items():
            self.events_with_unknown_fields.labels(topic).inc(count)
        for rejection in outcome.rejections:
            self.events_dead_lettered.labels(rejection.record.topic, rejection.reason).inc()
        for kind, count in outcome.alerts.items():
            self.alerts_raised.labels(kind).inc(count)
        if outcome.milestones:
            self.milestones.inc(outcome.milestones)
        states = self.organization_states
        states.labels("held").inc(outcome.states_held)
        states.labels("read").inc(outcome.states_read)
        states.labels("changed_elsewhere").inc(outcome.states_changed_elsewhere)
        now_ms = time.time() * 1000
        observe_each(
            self.produce_to_commit,
            [max(0.0, (now_ms - ts) / 1000) for ts in outcome.record_timestamps_ms],
        )
