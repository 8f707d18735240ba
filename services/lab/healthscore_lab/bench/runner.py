"""`healthscore bench`: the real stack on this machine, measured.

Phases (each on its own fresh database and topics unless said otherwise):

1. throughput: preload N events over M organizations (the simulator's mix,
   `simulator.workload`) into the input topics, *then* start `healthscore serve`
   as a child process and time it from its first to its last batch commit
   (read from its `batch_committed` log lines). Its RSS is sampled with
   psutil and its VmHWM read before it stops; pg_stat_user_tables deltas
   give the rows written per event. Optionally under cProfile. With several
   `--organizations` sizes, one throughput run per size.
2. latency (same database and topics as the last throughput run, so the
   organizations exist): restart the service, produce at a fixed offered
   rate with occurred_at = record timestamp = now, and match every produced
   record (partition, offset) to the batch commit that covered it: exact
   per-event produce-to-commit latency. A few events per second are alert
   triggers (a brand-new organization opening a cancellation request); the
   alert topic is consumed and each trigger's alert latency is
   alert consumed - trigger produced.
3. baseline: the naive one-transaction-per-message consumer
   (`bench.naive`) on fewer events and a fresh database.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import platform
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer, TopicPartition

from healthscore.compiled import core_build
from healthscore.config import Settings
from healthscore.core.scoring.model import V2_MODEL_PATH, load_model
from healthscore.service.kafka_admin import COMPACTED, ensure_topics
from healthscore.service.kafka_clients import KafkaConnection, KafkaSecurity
from healthscore.store import sql
from healthscore.store.dburl import with_database
from healthscore.store.migrate import apply_migrations
from healthscore_lab.bench import cpu
from healthscore_lab.bench.prefill import prefill_organizations
from healthscore_lab.bench.report import (
    BaselineResult,
    BenchReport,
    LatencyResult,
    ThroughputResult,
    percentile,
    profile_summary,
)
from healthscore_lab.devservices import die_with_parent
from healthscore_lab.simulator import (
    LiveStream,
    SimulatedMessage,
    Workload,
    WorkloadConfig,
    produce,
)


class BenchError(RuntimeError):
    pass


# The latency phase's producer lingers as product services' producers do (Kafka's
# own producer defaults to 5 ms since 4.0), instead of sending every event as its
# own request: on this machine that load generator took CPU from the service it
# measures. The linger counts in the measured latency (each event's time is taken
# before it is sent).
LIVE_PRODUCER_LINGER_MS = 5


@dataclass
class BenchOptions:
    events: int = 200_000
    organizations: list[int] = field(default_factory=lambda: [20_000])
    baseline_events: int = 20_000
    rate: float = 5_000.0
    latency_seconds: float = 15.0
    alert_rate: float = 20.0
    skip_latency: bool = False
    partitions: int = 4
    # the service's own defaults: the benchmark measures what a deployment runs
    batch_max_records: int = Settings.model_fields["batch_max_records"].default
    batch_timeout_ms: int = Settings.model_fields["batch_timeout_ms"].default
    pool_size: int = 4
    seed: int = 7
    profile: Path | None = None
    # the latency phase's service processes under cProfile (a pstats path)
    profile_latency: Path | None = None
    keep_databases: bool = False
    drain_timeout: float = 900.0
    work_dir: Path | None = None
    verbose: bool = True
    # the service's command line instead of `python -m healthscore.cli serve`
    # (A/B runs of a patched service); --no-migrate --no-sweep are appended
    service_command: list[str] | None = None
    # `healthscore serve` processes in the consumer group (the naive baseline
    # gets as many): partition-parallel batches, one core each
    service_processes: int = 2
    # extra throughput runs over the smallest organization count, into tables
    # already holding this many other organizations (bench.prefill)
    prefill: list[int] = field(default_factory=list)
    # Zipf exponent of how activity spreads over organizations (0: uniform)
    skew: float = 0.0


@dataclass
class Stack:
    """Where the bench runs: a superuser URL (to create databases) and a broker."""

    admin_url: str
    bootstrap: str
    idempotence: bool
    kind: str
    # the children get the security settings through the environment they inherit
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    replication_factor: int = 1
    # for CPU per event (None where the services are not processes of this machine)
    postgres_pid: int | None = None
    broker_pid: int | None = None

    @property
    def kafka(self) -> KafkaConnection:
        return KafkaConnection(self.bootstrap, self.kafka_security)


@dataclass
class _Phase:
    name: str
    database: str
    url: str
    topics: dict[str, str]
    group: str


# --------------------------------------------------------------------------- children


@dataclass
class _Batch:
    ts: float
    records: int
    applied: int
    redelivered: int
    first: dict[str, int]
    next: dict[str, int]
    duration: float = 0.0  # seconds the batch took, from the handler's call to its commit
    # organization states the batch started from: held since the last batch, read, changed
    states: tuple[int, int, int] = (0, 0, 0)


class CommitLog:
    """Tails a service's JSON log: batch commits, assignments, start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._partial = b""
        self.batches: list[_Batch] = []
        self.assigned: set[str] = set()
        self.started = False
        self.errors: list[str] = []

    def poll(self) -> None:
        data = b""
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as f:
            f.seek(self._pos)
            data = f.read()
            self._pos += len(data)
        if not data:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not line.startswith(b"{"):
                if b"Error" in line or b"Traceback" in line:
                    self.errors.append(line.decode(errors="replace")[:300])
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            event = entry.get("event")
            if event == "batch_committed":
                self.batches.append(
                    _Batch(
                        ts=datetime.fromisoformat(entry["timestamp"]).timestamp(),
                        records=int(entry["records"]),
                        applied=int(entry["applied"]),
                        redelivered=int(entry.get("replayed_skipped", 0)),
                        first=entry.get("offsets_from") or {},
                        next=entry.get("offsets") or {},
                        duration=float(entry.get("duration_ms", 0.0)) / 1000,
                        states=(
                            int(entry.get("states_held", 0)),
                            int(entry.get("states_read", 0)),
                            int(entry.get("states_changed_elsewhere", 0)),
                        ),
                    )
                )
            elif event == "partitions_assigned":
                self.assigned.update(entry.get("partitions", []))
            elif event == "service_started":
                self.started = True
            elif entry.get("level") in ("error", "critical"):
                self.errors.append(str(entry)[:300])


class Child:
    """A child process whose peak RSS is followed (VmRSS samples, VmHWM at the end)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        # a log left in a reused --work-dir by an earlier run would be read as
        # this child's batches (log names repeat across runs)
        log_path.unlink(missing_ok=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_rss = 0
        self.current_rss = 0
        self.timeline: list[tuple[float, float]] = []  # (seconds since start, RSS MB)
        self._sampling = threading.Event()
        self._thread: threading.Thread | None = None
        self._terminated = False

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        self._sampling.set()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        began = time.monotonic()
        last = -1.0
        while self._sampling.is_set() and self.alive:
            self._read_status()
            now = time.monotonic() - began
            if now - last >= 1.0:
                self.timeline.append((round(now, 1), round(self.current_rss / 2**20, 1)))
                last = now
            time.sleep(0.1)

    def _read_status(self) -> None:
        """Linux /proc: VmRSS now, VmHWM (the peak RSS the kernel saw)."""
        assert self.process is not None
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith(("VmHWM:", "VmRSS:")):
                    value = int(line.split()[1]) * 1024
                    self.peak_rss = max(self.peak_rss, value)
                    if line.startswith("VmRSS:"):
                        self.current_rss = value

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss / (1024 * 1024)

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM), once: a second SIGTERM while it shuts down, after
        its own handler is gone, kills it where it stands (half-way through writing its
        cProfile output, say)."""
        if self.process is None or self._terminated or self.process.poll() is not None:
            return
        self._read_status()
        self._terminated = True
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 120.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._sampling.clear()
        if self._thread is not None:
            self._thread.join(2)


class GroupLog:
    """The commit logs of every process of a consumer group, read as one."""

    def __init__(self, logs: list[CommitLog]) -> None:
        self.logs = logs

    def poll(self) -> None:
        for log in self.logs:
            log.poll()

    @property
    def batches(self) -> list[_Batch]:
        return sorted((b for log in self.logs for b in log.batches), key=lambda b: b.ts)

    @property
    def started(self) -> bool:
        return all(log.started for log in self.logs)

    @property
    def assigned(self) -> set[str]:
        return set().union(*(log.assigned for log in self.logs))

    def next_offsets(self) -> dict[str, int]:
        """Per partition, the furthest next offset any process committed."""
        done: dict[str, int] = {}
        for log in self.logs:
            for b in log.batches:
                for key, value in b.next.items():
                    done[key] = max(done.get(key, 0), int(value))
        return done

    @property
    def progress(self) -> int:
        """Records committed, counted by stored offsets (redeliveries count once)."""
        return sum(self.next_offsets().values())


class ChildGroup:
    """Several children run as one: alive while all are, RSS per process."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children

    def start(self) -> None:
        for child in self.children:
            child.start()

    @property
    def alive(self) -> bool:
        return all(child.alive for child in self.children)

    @property
    def pids(self) -> list[int]:
        return [c.process.pid for c in self.children if c.process is not None]

    @property
    def peak_rss_mb(self) -> float:
        """The largest peak of any one process (each is a service instance)."""
        return max(child.peak_rss_mb for child in self.children)

    @property
    def total_peak_rss_mb(self) -> float:
        """The sum of the processes' peaks: an upper bound of their RSS together."""
        return sum(child.peak_rss_mb for child in self.children)

    @property
    def timeline(self) -> list[tuple[float, float]]:
        return self.children[0].timeline

    def exited_logs(self) -> str:
        return ", ".join(str(c.log_path) for c in self.children if not c.alive)

    def stop(self, timeout: float = 120.0) -> None:
        for child in self.children:  # all at once, then each waited for
            child.terminate()
        for child in self.children:
            child.stop(timeout)


def _child_env(stack: Stack, phase: _Phase, options: BenchOptions) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("MIGRATION_DATABASE_URL", "DATABASE_ROLE"):
        env.pop(name, None)
    env.update(
        {
            "DATABASE_URL": phase.url,
            "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
            "KAFKA_IDEMPOTENT_PRODUCER": "true" if stack.idempotence else "false",
            "USAGE_TOPIC": phase.topics["usage"],
            "SUPPORT_TOPIC": phase.topics["support"],
            "PROFILE_TOPIC": phase.topics["profile"],
            "ALERT_TOPIC": phase.topics["alerts"],
            "HEALTH_TOPIC": phase.topics["health"],
            "CONSUMER_GROUP": phase.group,
            "BATCH_MAX_RECORDS": str(options.batch_max_records),
            "BATCH_TIMEOUT_MS": str(options.batch_timeout_ms),
            "DATABASE_POOL_SIZE": str(options.pool_size),
            "TOPIC_PARTITIONS": str(options.partitions),
            "OPS_PORT": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
    )
    return env


def _service_argv(profile: Path | None, command: list[str] | None = None) -> list[str]:
    serve = ["serve", "--no-migrate", "--no-sweep"]
    if command:
        head = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else []
        return [*head, *command, *serve[1:]]
    if profile is None:
        return [sys.executable, "-m", "healthscore.cli", *serve]
    return [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "healthscore.cli", *serve]


def _nth(profile: Path | None, i: int) -> Path | None:
    """The i-th process's cProfile output: PSTATS for the first, PSTATS.i after."""
    if profile is None or i == 0:
        return profile
    return profile.with_name(f"{profile.name}.{i}")


def _merge_profiles(profile: Path, count: int) -> None:
    """Add the other processes' profiles into the first one's file."""
    others = [p for i in range(1, count) if (p := _nth(profile, i)) and p.exists()]
    if not others:
        return
    stats = pstats.Stats(str(profile))
    for other in others:
        stats.add(str(other))
        other.unlink()
    stats.dump_stats(str(profile))


def _merge_naive_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Several naive consumers as one: counts add up, the commit span is the union."""
    firsts = [s["first_commit"] for s in stats if s.get("first_commit")]
    lasts = [s["last_commit"] for s in stats if s.get("last_commit")]
    return {
        "records": sum(s["records"] for s in stats),
        "applied": sum(s["applied"] for s in stats),
        "first_commit": min(firsts, default=None),
        "last_commit": max(lasts, default=None),
    }


def _latency_model_path() -> str:
    """The latency phase's model: MODEL_PATH if set, else v2. The alert triggers are
    cancellation requests of new organizations, which v2 raises at once and v3 (the
    default) holds until the risk persists: the alert latency measured is the
    pipeline's, so it runs v2's rule."""
    return os.environ.get("MODEL_PATH") or str(V2_MODEL_PATH)


async def _wait_until(
    predicate: Any, timeout: float, what: str, child: ChildGroup | None = None, every: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return
        if child is not None and not child.alive:
            raise BenchError(f"{what}: a child process exited (see {child.exited_logs()})")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(every)


# --------------------------------------------------------------------------- database


async def create_database(stack: Stack, name: str) -> str:
    conn = await asyncpg.connect(stack.admin_url)
    try:
        # the name is generated here, never input
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    url = with_database(stack.admin_url, name)
    await apply_migrations(url)
    return url


async def drop_database(stack: Stack, name: str) -> None:
    conn = await asyncpg.connect(stack.admin_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


async def _fetchval(url: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


_TABLE_STATS = """
SELECT relname, n_tup_ins + n_tup_upd AS written, n_tup_ins AS inserted
FROM pg_stat_user_tables
"""


async def _table_stats(url: str) -> dict[str, tuple[int, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(_TABLE_STATS)
    finally:
        await conn.close()
    return {r["relname"]: (int(r["written"]), int(r["inserted"])) for r in rows}


async def _rows_written(
    url: str, before: dict[str, tuple[int, int]], min_processed_inserts: int
) -> dict[str, int]:
    """Deltas of n_tup_ins + n_tup_upd; waits for the exited backends' stats to land."""
    after: dict[str, tuple[int, int]] = {}
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        after = await _table_stats(url)
        inserted = (
            after.get("processed_events", (0, 0))[1] - before.get("processed_events", (0, 0))[1]
        )
        if inserted >= min_processed_inserts:
            break
        await asyncio.sleep(0.25)
    return {
        name: written - before.get(name, (0, 0))[0]
        for name, (written, _) in after.items()
        if written - before.get(name, (0, 0))[0]
    }


# --------------------------------------------------------------------------- bench


class Bench:
    def __init__(self, stack: Stack, options: BenchOptions) -> None:
        self.stack = stack
        self.options = options
        self.run_id = uuid.uuid4().hex[:8]
        self.work_dir = options.work_dir or Path(tempfile.mkdtemp(prefix="healthscore-bench-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.databases: list[str] = []
        self.start = datetime.now(UTC) - timedelta(days=30)

    def say(self, text: str) -> None:
        if self.options.verbose:
            print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    async def _phase(self, name: str) -> _Phase:
        database = f"bench_{self.run_id}_{name}"
        url = await create_database(self.stack, database)
        self.databases.append(database)
        prefix = f"bench.{self.run_id}.{name}"
        topics = {
            "usage": f"{prefix}.usage",
            "support": f"{prefix}.support",
            "alerts": f"{prefix}.alerts",
            "health": f"{prefix}.health",
            # no profiles are sent: the service subscribes to an empty third topic, as
            # a deployment without a CRM feed does
            "profile": f"{prefix}.profile",
        }
        await ensure_topics(
            self.stack.kafka,
            [
                topics["usage"],
                topics["support"],
                topics["profile"],
                topics["usage"] + ".dlq",
                topics["support"] + ".dlq",
                topics["profile"] + ".dlq",
                topics["alerts"],
                topics["health"],
            ],
            self.options.partitions,
            self.stack.replication_factor,
            configs={topics["health"]: COMPACTED},
        )
        return _Phase(name, database, url, topics, f"bench-{self.run_id}-{name}")

    async def _producer(self, linger_ms: int) -> AIOKafkaProducer:
        producer = self.stack.kafka.producer(
            acks="all",
            enable_idempotence=self.stack.idempotence,
            linger_ms=linger_ms,
            max_batch_size=256 * 1024,
        )
        await producer.start()
        return producer

    async def _preload(self, phase: _Phase, messages: Iterable[SimulatedMessage]) -> float:
        producer = await self._producer(linger_ms=20)
        try:
            stats = await produce(
                messages, producer, phase.topics["usage"], phase.topics["support"]
            )
        finally:
            await producer.stop()
        return stats.seconds

    def _config(self, organizations: int, events: int) -> WorkloadConfig:
        return WorkloadConfig(
            organizations=organizations,
            events=events,
            start=self.start,
            seed=self.options.seed,
            span=timedelta(days=30) - timedelta(minutes=5),
            skew=self.options.skew,
        )

    async def _start_service(
        self, phase: _Phase, label: str, profile: Path | None = None
    ) -> tuple[ChildGroup, GroupLog, float]:
        count = max(1, self.options.service_processes)
        env = _child_env(self.stack, phase, self.options)
        if label == "latency":
            env["MODEL_PATH"] = _latency_model_path()
        if profile is not None:
            # cProfile sees the time asyncio's loop waits in epoll (the summary's
            # idle line); under uvloop that wait is in C and lands on coroutines
            env["EVENT_LOOP"] = "asyncio"
        children: list[Child] = []
        for i in range(count):
            children.append(
                Child(
                    _service_argv(_nth(profile, i), self.options.service_command),
                    env,
                    self.work_dir / f"{phase.name}-{label}-{i}.log",
                )
            )
        child = ChildGroup(children)
        started = time.time()
        child.start()
        log = GroupLog([CommitLog(c.log_path) for c in children])
        want = 2 * self.options.partitions

        async def ready() -> bool:
            log.poll()
            return log.started and len(log.assigned) >= want

        try:
            await _wait_until(ready, 120, f"the service ({label}) to start", child)
        except BaseException:
            child.stop()
            raise
        return child, log, started

    # ------------------------------------------------------------------ throughput

    async def throughput(
        self, organizations: int, profile: Path | None, prefill: int = 0
    ) -> tuple[ThroughputResult, _Phase, WorkloadConfig]:
        o = self.options
        name = f"{'p' if profile else 't'}{organizations}" + (f"f{prefill}" if prefill else "")
        phase = await self._phase(name)
        if prefill:
            self.say(f"prefilling {prefill:,} other organizations ...")
            began = time.perf_counter()
            await prefill_organizations(phase.url, prefill)
            self.say(f"prefilled in {time.perf_counter() - began:.0f}s")
        config = self._config(organizations, o.events)
        workload = Workload(config)
        self.say(f"preloading {o.events:,} events over {organizations:,} organizations ...")
        produce_seconds = await self._preload(phase, workload.messages())
        counts = workload.counts
        self.say(f"preloaded {counts.messages:,} messages in {produce_seconds:.1f}s; serving")
        before = await _table_stats(phase.url)
        child, log, started = await self._start_service(phase, "throughput", profile)
        stack = self.stack
        cpu_start = cpu.sample(child.pids, stack.postgres_pid, stack.broker_pid)
        try:

            async def drained() -> bool:
                log.poll()
                return log.progress >= counts.messages

            await _wait_until(drained, o.drain_timeout, "the service to drain", child, 0.2)

            async def projected() -> bool:
                return bool(
                    await _fetchval(
                        phase.url, "SELECT NOT EXISTS (SELECT 1 FROM read_model_pending)"
                    )
                )

            # the read model reflects every applied event: the end of the run
            await _wait_until(projected, o.drain_timeout, "the read model to catch up", child, 0.1)
            projected_at = time.time()
            used = cpu.sample(child.pids, stack.postgres_pid, stack.broker_pid).minus(cpu_start)
        finally:
            child.stop()
        log.poll()
        # the prefilled organizations came with one processed event id each
        processed = (
            int(await _fetchval(phase.url, "SELECT count(*) FROM processed_events")) - prefill
        )
        rows = await _rows_written(phase.url, before, counts.valid)
        batches = sorted(log.batches, key=lambda b: b.ts)
        first, last = batches[0], batches[-1]
        span = last.ts - first.ts
        total_records = sum(b.records for b in batches)
        redelivered = sum(b.redelivered for b in batches)
        fresh_records = total_records - redelivered
        applied = sum(b.applied for b in batches)
        if span > 0:
            msg_rate = (fresh_records - (first.records - first.redelivered)) / span
            event_rate = (applied - first.applied) / span
        else:  # one batch: time it from the service start instead
            span = max(last.ts - started, 1e-9)
            msg_rate, event_rate = fresh_records / span, applied / span
        written = sum(rows.values())
        whole_span = max(projected_at - first.ts, 1e-9) if span > 0 else projected_at - started

        result = ThroughputResult(
            organizations=organizations,
            events=counts.valid,
            messages=counts.messages,
            duplicates=counts.duplicates,
            malformed=counts.malformed,
            organizations_touched=len(counts.organizations_seen),
            produce_seconds=produce_seconds,
            batches=len(batches),
            committed_records=fresh_records,
            redelivered_records=redelivered,
            applied=applied,
            seconds_first_to_last_commit=span,
            messages_per_second=msg_rate,
            events_per_second=event_rate,
            drain_seconds=last.ts - started,
            mean_batch_records=total_records / len(batches),
            processed_events_rows=processed,
            correct=processed == counts.valid and applied == counts.valid,
            rows_written=rows,
            rows_written_per_event=written / max(1, counts.valid),
            peak_rss_mb=child.peak_rss_mb,
            peak_rss_total_mb=child.total_peak_rss_mb,
            prefilled_organizations=prefill,
            rss_timeline_mb=child.timeline,
            profiled=profile is not None,
            events_per_second_read_model=(applied - (first.applied if span > 0 else 0))
            / whole_span,
            read_model_lag_seconds=max(0.0, projected_at - last.ts),
            cpu_us_per_event_service=_per_event_us(used.service, applied),
            cpu_us_per_event_postgres=_per_event_us(used.postgres, applied),
            cpu_us_per_event_broker=_per_event_us(used.broker, applied),
            skew=o.skew,
            organization_states=tuple(sum(b.states[i] for b in batches) for i in range(3)),
        )
        self.say(
            f"throughput: {event_rate:,.0f} events/s over {span:.1f}s, "
            f"{len(batches)} batches, correct={result.correct}"
        )
        return result, phase, config

    # ------------------------------------------------------------------ latency

    async def _settle_promotion(self, phase: _Phase, child: ChildGroup) -> None:
        """Wait until the read model shows every organization under the latency phase's
        model and nothing is queued: the service promotes what the throughput phase
        scored under another model (`service.promotion`), and that backlog is not
        live traffic, so the live measurement starts once it is done."""
        version = load_model(Path(_latency_model_path())).version
        conn = await asyncpg.connect(phase.url)
        began = time.perf_counter()
        try:

            async def promoted() -> bool:
                return bool(
                    await conn.fetchval(
                        "SELECT NOT EXISTS (SELECT 1 FROM customer_health "
                        "WHERE score_model_version <> $1) "
                        "AND NOT EXISTS (SELECT 1 FROM read_model_pending)",
                        version,
                    )
                )

            await _wait_until(promoted, self.options.drain_timeout, "the model promotion", child)
        finally:
            await conn.close()
        self.say(f"latency: read model on {version} after {time.perf_counter() - began:.1f}s")

    async def latency(self, phase: _Phase, config: WorkloadConfig) -> LatencyResult:
        o = self.options
        child, log, _ = await self._start_service(phase, "latency", o.profile_latency)
        try:
            await self._settle_promotion(phase, child)
        except BaseException:
            child.stop()
            raise
        live = LiveStream(config)
        # the measuring consumer must not add latency of its own: the embedded broker
        # holds a fetch for a good part of its wait even when records arrive
        consumer = self.stack.kafka.consumer(
            enable_auto_commit=False, group_id=None, fetch_max_wait_ms=10
        )
        await consumer.start()
        producer = await self._producer(linger_ms=LIVE_PRODUCER_LINGER_MS)
        received: dict[str, float] = {}
        triggers: dict[str, int] = {}
        staleness: list[float] = []
        stop = asyncio.Event()
        try:
            await consumer.topics()
            parts = consumer.partitions_for_topic(phase.topics["alerts"]) or set()
            tps = [TopicPartition(phase.topics["alerts"], p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)

            async def watch() -> None:
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=20)
                    now = time.time()
                    for records in batch.values():
                        for record in records:
                            alert = orjson.loads(record.value)
                            org = alert.get("organization_id")
                            if org in triggers and org not in received:
                                received[org] = now

            async def sample_staleness() -> None:
                # the age of the oldest change the read model does not show yet, as
                # the service's own gauge measures it, while the live events flow
                conn = await asyncpg.connect(phase.url)
                try:
                    while not stop.is_set():
                        staleness.append(float(await conn.fetchval(sql.READ_MODEL_STALENESS)))
                        await asyncio.sleep(0.1)
                finally:
                    await conn.close()

            watcher = asyncio.create_task(watch())
            sampler = asyncio.create_task(sample_staleness())
            self.say(
                f"latency: producing at {o.rate:,.0f}/s for {o.latency_seconds:.0f}s "
                f"({o.alert_rate:g} alert triggers/s) ..."
            )
            sends: list[tuple[asyncio.Future[Any], int]] = []
            every = max(1, round(o.rate / o.alert_rate)) if o.alert_rate > 0 else 0
            topic = {"usage": phase.topics["usage"], "support": phase.topics["support"]}
            stack = self.stack
            stack_start = cpu.sample(child.pids, stack.postgres_pid, stack.broker_pid)
            machine_start = cpu.machine()
            began = time.perf_counter()
            while (elapsed := time.perf_counter() - began) < o.latency_seconds:
                due = int(elapsed * o.rate) - len(sends)
                for _ in range(due):
                    now_ms = int(time.time() * 1000)
                    if every and len(sends) % every == every // 2:
                        message = live.alert_trigger(now_ms)
                        assert message.organization_id is not None
                        triggers[message.organization_id] = now_ms
                    else:
                        message = live.next(now_ms)
                    future = await producer.send(
                        topic[message.topic_kind],
                        value=message.value,
                        key=message.key,
                        timestamp_ms=now_ms,
                    )
                    sends.append((future, now_ms))
                await asyncio.sleep(0.002)
            produced_seconds = time.perf_counter() - began
            stack_used = cpu.sample(child.pids, stack.postgres_pid, stack.broker_pid).minus(
                stack_start
            )
            machine_used = cpu.machine().minus(machine_start)
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            metas = await asyncio.gather(*(f for f, _ in sends))
            target: dict[str, int] = {}
            for meta in metas:
                key = f"{meta.topic}:{meta.partition}"
                target[key] = max(target.get(key, 0), meta.offset + 1)

            async def caught_up() -> bool:
                log.poll()
                done = log.next_offsets()
                return all(done.get(k, 0) >= v for k, v in target.items())

            await _wait_until(
                caught_up, max(120, 10 * o.latency_seconds), "the latency events", child, 0.1
            )

            async def alerted() -> bool:
                return len(received) >= len(triggers)

            with contextlib.suppress(BenchError):
                await _wait_until(alerted, 30, "the alerts", child, 0.05)
            stop.set()
            await watcher
        finally:
            stop.set()
            await producer.stop()
            await consumer.stop()
            child.stop()
        log.poll()
        # exact per-event commit time: the batch whose offset range holds the record
        ranges: dict[str, list[tuple[int, int, float, float]]] = {}
        for b in log.batches:
            for key, first in b.first.items():
                ranges.setdefault(key, []).append((int(first), int(b.next[key]), b.ts, b.duration))
        for spans in ranges.values():
            spans.sort()
        latencies: list[float] = []
        before_batch: list[float] = []
        in_batch: list[float] = []
        unmatched = 0
        # sorts after every span that starts at the same offset
        after_spans = (sys.maxsize, float("inf"), float("inf"))
        for meta, (_, sent_ms) in zip(metas, sends, strict=True):
            spans = ranges.get(f"{meta.topic}:{meta.partition}", [])
            i = bisect.bisect_right(spans, (meta.offset, *after_spans)) - 1
            if i >= 0 and spans[i][0] <= meta.offset < spans[i][1]:
                _, _, committed, took = spans[i]
                latencies.append((committed - sent_ms / 1000) * 1000)
                before_batch.append((committed - took - sent_ms / 1000) * 1000)
                in_batch.append(took * 1000)
            else:
                unmatched += 1
        alert_ms = [
            (received[o_] - ms / 1000) * 1000 for o_, ms in triggers.items() if o_ in received
        ]
        result = LatencyResult(
            offered_rate=o.rate,
            seconds=o.latency_seconds,
            produced=len(sends),
            achieved_rate=len(sends) / produced_seconds,
            committed_matched=len(latencies),
            unmatched=unmatched,
            p50_ms=percentile(latencies, 50),
            p95_ms=percentile(latencies, 95),
            p99_ms=percentile(latencies, 99),
            before_batch_p50_ms=percentile(before_batch, 50),
            before_batch_p99_ms=percentile(before_batch, 99),
            in_batch_p50_ms=percentile(in_batch, 50),
            in_batch_p99_ms=percentile(in_batch, 99),
            max_ms=max(latencies, default=None),
            alert_triggers=len(triggers),
            alerts_received=len(alert_ms),
            alert_p50_ms=percentile(alert_ms, 50),
            alert_p99_ms=percentile(alert_ms, 99),
            alert_max_ms=max(alert_ms, default=None),
            peak_rss_mb=child.peak_rss_mb,
            staleness_p50_s=percentile(staleness, 50),
            staleness_p99_s=percentile(staleness, 99),
            staleness_max_s=max(staleness, default=None),
            cpu_us_per_event_service=_per_event_us(stack_used.service, len(sends)),
            cpu_us_per_event_postgres=_per_event_us(stack_used.postgres, len(sends)),
            cpu_us_per_event_broker=_per_event_us(stack_used.broker, len(sends)),
            machine_busy_cores=round(machine_used.busy / produced_seconds, 2),
            machine_steal_cores=round(machine_used.steal / produced_seconds, 2),
        )
        self.say(
            f"latency: p99 {result.p99_ms}ms, alert p99 {result.alert_p99_ms}ms "
            f"({len(alert_ms)}/{len(triggers)} alerts)"
        )
        return result

    # ------------------------------------------------------------------ baseline

    async def baseline(self, organizations: int) -> BaselineResult:
        o = self.options
        phase = await self._phase("naive")
        workload = Workload(self._config(organizations, o.baseline_events))
        self.say(f"baseline: preloading {o.baseline_events:,} events ...")
        await self._preload(phase, workload.messages())
        counts = workload.counts
        count = max(1, o.service_processes)
        stats_paths = [self.work_dir / f"naive-stats-{i}.json" for i in range(count)]
        env = _child_env(self.stack, phase, o)
        child = ChildGroup(
            [
                Child(
                    [sys.executable, "-m", "healthscore_lab.bench.naive", str(stats_path)],
                    env,
                    self.work_dir / f"naive-{i}.log",
                )
                for i, stats_path in enumerate(stats_paths)
            ]
        )
        child.start()
        self.say("baseline: naive consumer running ...")
        try:

            async def drained() -> bool:
                done = await _fetchval(
                    phase.url,
                    "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets "
                    "WHERE consumer_group = $1",
                    phase.group,
                )
                return int(done) >= counts.messages

            await _wait_until(drained, o.drain_timeout, "the naive consumer", child, 0.25)
        finally:
            child.stop()
        stats = _merge_naive_stats([orjson.loads(p.read_bytes()) for p in stats_paths])
        processed = int(await _fetchval(phase.url, "SELECT count(*) FROM processed_events"))
        seconds = max(1e-9, (stats["last_commit"] or 0) - (stats["first_commit"] or 0))
        result = BaselineResult(
            events=counts.valid,
            messages=counts.messages,
            records=stats["records"],
            applied=stats["applied"],
            seconds=seconds,
            messages_per_second=(stats["records"] - 1) / seconds,
            events_per_second=max(0, stats["applied"] - 1) / seconds,
            processed_events_rows=processed,
            correct=processed == counts.valid,
        )
        self.say(f"baseline: {result.messages_per_second:,.0f} messages/s")
        return result

    async def cleanup(self) -> None:
        if self.options.keep_databases:
            return
        for name in self.databases:
            with contextlib.suppress(Exception):
                await drop_database(self.stack, name)


async def run_bench(stack: Stack, options: BenchOptions) -> BenchReport:
    if options.events < 1:
        raise ValueError("--events must be at least 1")
    bench = Bench(stack, options)
    report = BenchReport(
        machine={
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "services": stack.kind,
            # as installed here: `--service-command` may run another build
            "core": core_build(),
        },
        settings={
            "partitions": options.partitions,
            "batch_max_records": options.batch_max_records,
            "batch_timeout_ms": options.batch_timeout_ms,
            "pool_size": options.pool_size,
            "service_processes": options.service_processes,
            "seed": options.seed,
        },
    )
    try:
        last: tuple[_Phase, WorkloadConfig] | None = None
        for organizations in options.organizations:
            result, phase, config = await bench.throughput(organizations, None)
            report.throughput.append(result)
            last = (phase, config)
        for prefill in options.prefill:
            result, _, _ = await bench.throughput(min(options.organizations), None, prefill)
            report.throughput.append(result)
        if options.profile is not None:
            profile_path = options.profile
            result, _, _ = await bench.throughput(options.organizations[-1], profile_path)
            report.throughput.append(result)
            report.profile_path = str(profile_path)
            _merge_profiles(profile_path, options.service_processes)
            report.profile_summary = profile_summary(profile_path)
            profile_path.with_suffix(".txt").write_text(report.profile_summary)
        if not options.skip_latency and last is not None:
            report.latency = await bench.latency(*last)
            if options.profile_latency is not None:
                _merge_profiles(options.profile_latency, options.service_processes)
                summary = profile_summary(options.profile_latency)
                options.profile_latency.with_suffix(".txt").write_text(summary)
        if options.baseline_events > 0:
            report.baseline = await bench.baseline(options.organizations[-1])
    finally:
        await bench.cleanup()
    return report


def _per_event_us(seconds: float | None, events: int) -> float | None:
    """CPU seconds over `events` events, in microseconds per event."""
    return None if seconds is None else seconds * 1e6 / max(1, events)
