"""Benchmark results: the figures, the targets, a table, JSON, a profile summary."""

from __future__ import annotations

import io
import math
import pstats
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson


def percentile(values: Sequence[float], q: float) -> float | None:
    """Exact nearest-rank percentile (q in 0..100) of `values`."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class ThroughputResult:
    organizations: int
    events: int  # valid, distinct events generated
    messages: int  # everything produced: + duplicates + malformed
    duplicates: int
    malformed: int
    organizations_touched: int
    produce_seconds: float
    batches: int
    committed_records: int  # records committed for the first time (offset moved past them)
    redelivered_records: int  # records fetched again after their commit (skipped by offset)
    applied: int
    seconds_first_to_last_commit: float
    messages_per_second: float  # records committed after the first commit / (last - first)
    events_per_second: float  # the same, counting applied (valid, new) events only
    drain_seconds: float  # service start to the last commit
    mean_batch_records: float
    processed_events_rows: int
    correct: bool
    rows_written: dict[str, int] = field(default_factory=dict)
    rows_written_per_event: float = 0.0
    peak_rss_mb: float = 0.0  # the largest of any one service process
    peak_rss_total_mb: float = 0.0  # the processes' peaks added up
    rss_timeline_mb: list[tuple[float, float]] = field(default_factory=list)  # process 0
    profiled: bool = False
    prefilled_organizations: int = 0  # other organizations already in the tables
    # until the read model (customer_health) reflects every applied event
    events_per_second_read_model: float = 0.0
    read_model_lag_seconds: float = 0.0  # last commit -> projection caught up
    # CPU microseconds per applied event over the run (service start -> read model caught up)
    cpu_us_per_event_service: float | None = None
    cpu_us_per_event_postgres: float | None = None
    cpu_us_per_event_broker: float | None = None
    skew: float = 0.0  # Zipf exponent of the organizations' activity (0: uniform)
    # organization states the batches started from: held by the consumer, read, changed
    # by another writer (summed over the batches)
    organization_states: tuple[int, ...] = (0, 0, 0)

    @property
    def cpu_us_per_event(self) -> float | None:
        parts = (
            self.cpu_us_per_event_service,
            self.cpu_us_per_event_postgres,
            self.cpu_us_per_event_broker,
        )
        return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)


@dataclass
class LatencyResult:
    offered_rate: float
    seconds: float
    produced: int
    achieved_rate: float
    committed_matched: int
    unmatched: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    alert_triggers: int
    alerts_received: int
    alert_p50_ms: float | None
    alert_p99_ms: float | None
    alert_max_ms: float | None
    peak_rss_mb: float = 0.0
    # produce -> start of the batch that applied the event (producer, broker,
    # fetch, linger, the batch before it, alignment hold), and that batch's run
    before_batch_p50_ms: float | None = None
    before_batch_p99_ms: float | None = None
    in_batch_p50_ms: float | None = None
    in_batch_p99_ms: float | None = None
    # the read model's staleness (age of the oldest unprojected change), sampled
    # every 0.1 s while the live events were produced
    staleness_p50_s: float | None = None
    staleness_p99_s: float | None = None
    staleness_max_s: float | None = None
    # over the production window: CPU microseconds per produced event of the service
    # processes, PostgreSQL and the broker (comparable across runs, unlike the
    # percentiles), and the cores the whole machine was busy and had stolen by its host
    cpu_us_per_event_service: float | None = None
    cpu_us_per_event_postgres: float | None = None
    cpu_us_per_event_broker: float | None = None
    machine_busy_cores: float | None = None
    machine_steal_cores: float | None = None


@dataclass
class BaselineResult:
    events: int
    messages: int
    records: int
    applied: int
    seconds: float
    messages_per_second: float
    events_per_second: float
    processed_events_rows: int
    correct: bool


@dataclass
class BenchReport:
    machine: dict[str, Any]
    settings: dict[str, Any]
    throughput: list[ThroughputResult] = field(default_factory=list)
    latency: LatencyResult | None = None
    baseline: BaselineResult | None = None
    profile_path: str | None = None
    profile_summary: str | None = None

    def _plain_runs(self) -> list[ThroughputResult]:
        """Throughput runs neither profiled nor prefilled, fewest organizations first."""
        runs = [t for t in self.throughput if not t.profiled and not t.prefilled_organizations]
        return sorted(runs, key=lambda t: t.organizations)

    @property
    def headline(self) -> ThroughputResult | None:
        """The largest-organization plain run (else any run)."""
        runs = self._plain_runs() or self.throughput
        return max(runs, key=lambda t: t.organizations) if runs else None

    @property
    def table_scaling(self) -> tuple[float, ThroughputResult, ThroughputResult] | None:
        """The same stream into the most prefilled tables over the least prefilled."""
        head = self._plain_runs()
        if not head:
            return None
        same = [
            t
            for t in self.throughput
            if not t.profiled and t.organizations == head[0].organizations
        ]
        same.sort(key=lambda t: t.prefilled_organizations)
        if len(same) < 2 or same[0].messages_per_second <= 0:
            return None
        low, high = same[0], same[-1]
        return high.messages_per_second / low.messages_per_second, high, low

    @property
    def speedup(self) -> float | None:
        head = self.headline
        if head is None or self.baseline is None or self.baseline.messages_per_second <= 0:
            return None
        return head.messages_per_second / self.baseline.messages_per_second

    @property
    def org_scaling(self) -> float | None:
        """Throughput at the most organizations over throughput at the fewest."""
        runs = self._plain_runs()
        if len(runs) < 2 or runs[0].messages_per_second <= 0:
            return None
        return runs[-1].messages_per_second / runs[0].messages_per_second

    @property
    def peak_rss_mb(self) -> float:
        values = [t.peak_rss_mb for t in self.throughput]
        if self.latency is not None:
            values.append(self.latency.peak_rss_mb)
        return max(values, default=0.0)

    def targets(self) -> list[tuple[str, str, bool | None]]:
        """(target, measured, met?) — None when not measured in this run."""
        rows: list[tuple[str, str, bool | None]] = []
        head = self.headline
        if head is not None:
            full = head.events >= 1_000_000 and head.organizations >= 100_000
            scope = (
                f"({head.events:,} events, {head.organizations:,} orgs"
                f"{'' if full else '; smaller than the target run'})"
            )
            rows.append(
                (
                    ">= 20,000 events/s until the read model reflects them (1M events, 100k orgs)",
                    f"{head.events_per_second_read_model:,.0f} events/s {scope}; ingest only "
                    f"{head.events_per_second:,.0f}",
                    head.events_per_second_read_model >= 20_000 and head.correct,
                )
            )
            total = head.cpu_us_per_event
            rows.append(
                (
                    "whole-stack CPU <= 100 us per event",
                    _us(total),
                    None if total is None else total <= 100,
                )
            )
            service = head.cpu_us_per_event_service
            rows.append(
                (
                    "service Python <= 20 us per event",
                    _us(service),
                    None if service is None else service <= 20,
                )
            )
            rows.append(
                (
                    "rows written per event <= 1.5",
                    f"{head.rows_written_per_event:.2f}",
                    head.rows_written_per_event <= 1.5,
                )
            )
        speed = self.speedup
        rows.append(
            (
                ">= 25x the naive baseline",
                "not run" if speed is None else f"{speed:.1f}x",
                None if speed is None else speed >= 25,
            )
        )
        lat = self.latency
        if lat is None:
            rows.append(("p99 event-to-commit < 250 ms at 5,000/s", "not run", None))
            rows.append(("p99 alert latency < 500 ms", "not run", None))
            rows.append(("p99 read-model staleness < 2 s", "not run", None))
        else:
            rows.append(
                (
                    f"p99 event-to-commit < 250 ms at {lat.offered_rate:,.0f}/s offered",
                    _ms(lat.p99_ms),
                    None if lat.p99_ms is None else lat.p99_ms < 250,
                )
            )
            rows.append(
                (
                    "p99 alert latency < 500 ms",
                    _ms(lat.alert_p99_ms),
                    None if lat.alert_p99_ms is None else lat.alert_p99_ms < 500,
                )
            )
            rows.append(
                (
                    "p99 read-model staleness < 2 s",
                    "not sampled"
                    if lat.staleness_p99_s is None
                    else f"{lat.staleness_p99_s:.2f} s",
                    None if lat.staleness_p99_s is None else lat.staleness_p99_s < 2,
                )
            )
        scaling = self.org_scaling
        runs = self._plain_runs()
        rows.append(
            (
                "throughput at 1M orgs within 20% of 1k orgs",
                "not run (one size)"
                if scaling is None
                else f"{scaling:.2f} ({runs[-1].organizations:,} vs {runs[0].organizations:,})",
                None if scaling is None else scaling >= 0.8,
            )
        )
        table = self.table_scaling
        if table is not None:
            ratio, high, low = table
            rows.append(
                (
                    "same stream, bigger tables: within 20%",
                    f"{ratio:.2f} ({high.prefilled_organizations:,} vs "
                    f"{low.prefilled_organizations:,} other orgs in the tables, "
                    f"{low.organizations:,} in the stream)",
                    ratio >= 0.8,
                )
            )
        rows.append(
            ("service RSS < 300 MB", f"{self.peak_rss_mb:.0f} MB peak", self.peak_rss_mb < 300)
        )
        return rows

    def to_json(self) -> bytes:
        data = asdict(self)
        data["speedup_vs_naive"] = self.speedup
        data["org_scaling_ratio"] = self.org_scaling
        table = self.table_scaling
        data["table_scaling_ratio"] = None if table is None else table[0]
        data["peak_rss_mb"] = self.peak_rss_mb
        data["targets"] = [{"target": t, "measured": m, "met": ok} for t, m, ok in self.targets()]
        return orjson.dumps(data, option=orjson.OPT_INDENT_2)

    def render(self) -> str:
        out = io.StringIO()
        w = out.write
        w("\n== healthscore bench ==\n")
        w(
            "machine: "
            + ", ".join(f"{k}={v}" for k, v in self.machine.items())
            + "\nsettings: "
            + ", ".join(f"{k}={v}" for k, v in self.settings.items())
            + "\n\n"
        )
        for t in self.throughput:
            w(
                f"throughput{' (under cProfile)' if t.profiled else ''}: "
                f"{t.events:,} events ({t.messages:,} messages: {t.duplicates:,} duplicates, "
                f"{t.malformed:,} malformed) over {t.organizations:,} organizations "
                f"({t.organizations_touched:,} touched)"
                + (
                    f", {t.prefilled_organizations:,} other organizations prefilled"
                    if t.prefilled_organizations
                    else ""
                )
                + "\n"
            )
            rows = [
                ("CPU per applied event, whole stack", _us(t.cpu_us_per_event)),
                (
                    "  service / PostgreSQL / broker",
                    f"{_us(t.cpu_us_per_event_service)} / {_us(t.cpu_us_per_event_postgres)} / "
                    f"{_us(t.cpu_us_per_event_broker)}",
                ),
                (
                    "events/s until the read model reflects them",
                    f"{t.events_per_second_read_model:,.0f} (read model caught up "
                    f"{t.read_model_lag_seconds:.1f} s after the last commit)",
                ),
                ("events/s sustained (applied, first->last commit)", f"{t.events_per_second:,.0f}"),
                ("messages/s sustained", f"{t.messages_per_second:,.0f}"),
                ("first->last commit", f"{t.seconds_first_to_last_commit:.2f} s"),
                ("service start -> drained", f"{t.drain_seconds:.2f} s"),
                ("batches / mean records per batch", f"{t.batches} / {t.mean_batch_records:,.0f}"),
                (
                    "records fetched again after commit (skipped)",
                    f"{t.redelivered_records:,}"
                    f" ({100 * t.redelivered_records / max(1, t.messages):.1f}% extra)",
                ),
                ("preload (produce) time", f"{t.produce_seconds:.1f} s"),
                ("DB rows written per event", f"{t.rows_written_per_event:.2f}"),
                (
                    "organization states held / read / changed elsewhere",
                    " / ".join(f"{n:,}" for n in t.organization_states),
                ),
                (
                    "peak service RSS per process / all processes",
                    f"{t.peak_rss_mb:.0f} MB / {t.peak_rss_total_mb:.0f} MB",
                ),
                ("service RSS over time, process 0 (s: MB)", _timeline(t.rss_timeline_mb)),
                (
                    "correct (processed_events == distinct valid ids)",
                    f"{t.correct} ({t.processed_events_rows:,} rows, {t.applied:,} applied)",
                ),
            ]
            _table(w, rows)
            if t.rows_written:
                per = ", ".join(
                    f"{name}={n / max(1, t.events):.2f}"
                    for name, n in sorted(t.rows_written.items(), key=lambda x: -x[1])
                    if n
                )
                w(f"  rows/event by table: {per}\n")
            w("\n")
        lat = self.latency
        if lat is not None:
            w(
                f"latency at {lat.offered_rate:,.0f}/s offered for {lat.seconds:.0f} s "
                f"(achieved {lat.achieved_rate:,.0f}/s, {lat.produced:,} events):\n"
            )
            _table(
                w,
                [
                    (
                        "event-to-commit p50 / p95 / p99 / max",
                        f"{_ms(lat.p50_ms)} / {_ms(lat.p95_ms)} / {_ms(lat.p99_ms)} / "
                        f"{_ms(lat.max_ms)}",
                    ),
                    (
                        "of which before its batch began, p50 / p99",
                        f"{_ms(lat.before_batch_p50_ms)} / {_ms(lat.before_batch_p99_ms)}",
                    ),
                    (
                        "of which its batch's run, p50 / p99",
                        f"{_ms(lat.in_batch_p50_ms)} / {_ms(lat.in_batch_p99_ms)}",
                    ),
                    (
                        "events matched to a commit",
                        f"{lat.committed_matched:,} ({lat.unmatched} unmatched)",
                    ),
                    (
                        "alert latency p50 / p99 / max",
                        f"{_ms(lat.alert_p50_ms)} / {_ms(lat.alert_p99_ms)} / "
                        f"{_ms(lat.alert_max_ms)}",
                    ),
                    ("alerts received / triggers", f"{lat.alerts_received} / {lat.alert_triggers}"),
                    (
                        "read-model staleness p50 / p99 / max",
                        " / ".join(
                            "-" if v is None else f"{v:.2f} s"
                            for v in (lat.staleness_p50_s, lat.staleness_p99_s, lat.staleness_max_s)
                        ),
                    ),
                    (
                        "CPU per event: service / PostgreSQL / broker",
                        " / ".join(
                            "-" if v is None else f"{v:.0f} us"
                            for v in (
                                lat.cpu_us_per_event_service,
                                lat.cpu_us_per_event_postgres,
                                lat.cpu_us_per_event_broker,
                            )
                        ),
                    ),
                    (
                        "machine cores busy / stolen by the host",
                        " / ".join(
                            "-" if v is None else f"{v:.2f}"
                            for v in (lat.machine_busy_cores, lat.machine_steal_cores)
                        ),
                    ),
                    ("peak service RSS", f"{lat.peak_rss_mb:.0f} MB"),
                ],
            )
            w("\n")
        base = self.baseline
        if base is not None:
            w(f"naive baseline (one transaction per message), {base.events:,} events:\n")
            _table(
                w,
                [
                    ("messages/s", f"{base.messages_per_second:,.0f}"),
                    ("events/s (applied)", f"{base.events_per_second:,.0f}"),
                    ("correct", f"{base.correct} ({base.processed_events_rows:,} rows)"),
                ],
            )
            speed = self.speedup
            if speed is not None:
                w(f"  HEADLINE: batch service / naive = {speed:.1f}x\n")
            w("\n")
        w("targets:\n")
        for target, measured, ok in self.targets():
            mark = "n/a " if ok is None else ("MET " if ok else "MISS")
            w(f"  [{mark}] {target:<52} {measured}\n")
        if self.profile_summary:
            w("\nprofile (service process, throughput phase):\n")
            w(self.profile_summary)
            w(f"\n(full pstats: {self.profile_path})\n")
        return out.getvalue()


def _timeline(samples: list[tuple[float, float]], points: int = 6) -> str:
    if not samples:
        return "-"
    step = max(1, len(samples) // (points - 1))
    picked = samples[::step]
    if picked[-1] != samples[-1]:
        picked.append(samples[-1])
    return ", ".join(f"{t:.0f}s: {mb:.0f}" for t, mb in picked)


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} us"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _table(w: Any, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        w(f"  {key:<{width}}  {value}\n")


# --------------------------------------------------------------------------- profile

# (area, predicate on "filename:function") in order; first match wins
_AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle (event loop waiting in epoll)", ("select.epoll", "selectors.py")),
    ("JSON decode + contract validation", ("ingest/decode.py", "pydantic", "orjson.loads")),
    ("state (de)serialization", ("scoring/state.py", "msgspec")),
    (
        "scoring + effects (pure core)",
        ("scoring/", "ingest/effects.py", "interactions.py", "milestones.py", "bands.py"),
    ),
    ("SQL parameter prep (effects_writer, records)", ("store/", "orjson.dumps", "uuid.py")),
    ("asyncpg (protocol, encode/decode)", ("asyncpg",)),
    ("pipeline + handler glue", ("ingest/pipeline.py", "consumers.py", "ingest/dlq.py")),
    ("aiokafka (fetch, record parsing)", ("aiokafka", "kafka/")),
    ("faststream", ("faststream",)),
    ("outbox relay", ("outbox.py",)),
    ("logging + metrics", ("structlog", "prometheus_client", "ops/")),
    ("asyncio machinery", ("asyncio/",)),
)


def _area(filename: str, function: str) -> str:
    text = f"{filename}:{function}"
    for name, needles in _AREAS:
        if any(n in text for n in needles):
            return name
    return "other"


def profile_summary(path: Path, top: int = 25) -> str:
    """Where the service's time went: by area, then the top functions."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_area: dict[str, float] = {}
    total = 0.0
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        area = _area(filename, function)
        by_area[area] = by_area.get(area, 0.0) + tottime
        total += tottime
    idle = by_area.get(_AREAS[0][0], 0.0)
    busy = max(total - idle, 1e-9)
    out = io.StringIO()
    out.write(f"  total {total:.1f} s of profiled time, {busy:.1f} s busy (not in epoll)\n")
    out.write(f"  {'area (self time)':<48} {'seconds':>8} {'% busy':>7}\n")
    for area, seconds in sorted(by_area.items(), key=lambda x: -x[1]):
        share = "" if area == _AREAS[0][0] else f"{100 * seconds / busy:6.1f}%"
        out.write(f"  {area:<48} {seconds:8.2f} {share:>7}\n")
    for sort in ("tottime", "cumulative"):
        buffer = io.StringIO()
        ps = pstats.Stats(str(path), stream=buffer)
        ps.strip_dirs().sort_stats(sort).print_stats(top)
        text = buffer.getvalue()
        start = text.find("   ncalls")
        out.write(f"\n  top {top} by {sort}:\n")
        out.write(text[start:] if start >= 0 else text)
    return out.getvalue()
