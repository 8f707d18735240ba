"""`healthscore bench --levers`: micro-benchmarks of levers the service does not use.

Each compares the service's way with the candidate in the same process,
alternating them, and reports medians, so the figure is a ratio on the same
machine at the same moment:

- decode: the decoder (UTF-8 check, orjson, `model_validate`) against pydantic's
  `model_validate_json` on the raw bytes (followed by the same key checks), on
  the benchmark workload's records, malformed ones included; it also counts
  records the two judge differently.
- customer_health write: the batch upsert from unnest() arrays (as the service
  does it, asyncpg-prepared), the same without asyncpg's statement cache (an
  unprepared statement per batch), and COPY into a temporary table followed by
  INSERT ... SELECT ... ON CONFLICT, for a batch of existing organizations.
- broker fetch wait: produce-to-consume latency through the broker at about
  2,000 records/s with the service's `KAFKA_FETCH_MAX_WAIT_MS` default against
  aiokafka's (500 ms). Kafka answers a held fetch as soon as records arrive; the
  embedded broker holds it for a good part of the wait, which this shows.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from pydantic import BaseModel, ValidationError

from healthscore.config import Settings
from healthscore.contracts import SupportEvent, UsageEvent
from healthscore.service.ingest.decode import (
    Decoded,
    Decoder,
    RawRecord,
    Rejection,
    _canonical_uuid,
    _received_at,
    core_event,
    duplicate_key,
    validation_context,
)
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.store import sql
from healthscore_lab.simulator import Workload, WorkloadConfig

USAGE, SUPPORT = "usage", "support"


@dataclass
class LeverResult:
    name: str
    unit: str
    figures: dict[str, float]  # variant -> median per unit
    note: str = ""

    def render(self) -> str:
        base = next(iter(self.figures.values()))
        parts = [
            f"{variant} {value:.1f} {self.unit} ({value / base:.2f}x)"
            for variant, value in self.figures.items()
        ]
        return f"  {self.name}: " + "; ".join(parts) + (f"  [{self.note}]" if self.note else "")


# ------------------------------------------------------------------------ decode


class JsonModeDecoder:
    """The candidate: pydantic parses and validates the bytes in one call. A key twice
    in one object it would take silently (the last value), so it parses the bytes
    with orjson as well to ask `duplicate_key`, which needs the keys parsed."""

    def __init__(self, fallback: Decoder) -> None:
        self._models: dict[str, type[BaseModel]] = {USAGE: UsageEvent, SUPPORT: SupportEvent}
        self._fallback = fallback

    def decode(self, record: RawRecord) -> Decoded | Rejection:
        model = self._models[record.topic]
        key = _canonical_uuid(record.key) if record.key else None
        if key is None or record.value is None:
            return self._fallback.decode(record)
        try:
            body = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            return self._fallback.decode(record)
        if not isinstance(body, dict) or duplicate_key(record.value, body) is not None:
            return self._fallback.decode(record)
        try:
            event = model.model_validate_json(
                record.value, context=validation_context(*_received_at(record))
            )
        except ValidationError:
            # the reason a producer reads comes from the ordered checks
            return self._fallback.decode(record)
        assert isinstance(event, UsageEvent | SupportEvent)
        if key != event.organization_id:
            return self._fallback.decode(record)
        return Decoded.of(record, core_event(event))


def workload_records(events: int) -> list[RawRecord]:
    config = WorkloadConfig(
        organizations=max(1, events // 10),
        events=events,
        start=datetime.now(UTC) - timedelta(days=31),
    )
    now_ms = int(time.time() * 1000)
    return [
        RawRecord(USAGE if m.topic_kind == "usage" else SUPPORT, 0, i, m.key, m.value, now_ms)
        for i, m in enumerate(Workload(config).messages())
    ]


def _same(a: Decoded | Rejection, b: Decoded | Rejection) -> bool:
    if isinstance(a, Decoded) and isinstance(b, Decoded):
        return a.event == b.event
    if isinstance(a, Rejection) and isinstance(b, Rejection):
        return a.reason == b.reason
    return False


def decoders() -> tuple[Decoder, JsonModeDecoder]:
    """The service's decoder and the candidate, for records of topics USAGE and SUPPORT."""
    current = Decoder(USAGE, SUPPORT, 64 * 1024)
    return current, JsonModeDecoder(current)


def disagreements(records: list[RawRecord]) -> list[RawRecord]:
    """Records the candidate judges differently from the service's decoder."""
    current, candidate = decoders()
    return [r for r in records if not _same(current.decode(r), candidate.decode(r))]


def measure_decode(events: int = 30_000, rounds: int = 4) -> LeverResult:
    records = workload_records(events)
    current, candidate = decoders()
    variants: dict[str, Callable[[RawRecord], Decoded | Rejection]] = {
        "orjson + model_validate (service)": current.decode,
        "model_validate_json on bytes": candidate.decode,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, decode in variants.items():
            started = time.perf_counter()
            for record in records:
                decode(record)
            times[name].append((time.perf_counter() - started) / len(records) * 1e6)
    differ = len(disagreements(records))
    return LeverResult(
        "decode + validate per record",
        "us",
        {name: statistics.median(t) for name, t in times.items()},
        f"{len(records):,} records, {differ} judged differently",
    )


# --------------------------------------------------------- customer_health write

_HEALTH_COLUMNS = [
    ("organization_id", "uuid"),
    ("health_score", "float8"),
    ("engagement_score", "float8"),
    ("adoption_score", "float8"),
    ("milestone_score", "float8"),
    ("support_score", "float8"),
    ("growth_score", "float8"),
    ("churn_probability", "float8"),
    ("risk_factors", "text"),
    ("feature_usage", "text"),
    ("score_change_7d", "float8"),
    ("score_change_30d", "float8"),
    ("active_users_30d", "int"),
    ("open_interactions", "int"),
    ("milestones_achieved", "int"),
    ("last_activity_at", "timestamptz"),
    ("last_login_at", "timestamptz"),
    ("scored_at", "timestamptz"),
]
_TEMP_TABLE = (
    "CREATE TEMP TABLE health_in ("
    + ", ".join(f"{name} {kind}" for name, kind in _HEALTH_COLUMNS)
    + ") ON COMMIT DELETE ROWS"
)
_select, _, _rest = sql.UPSERT_CUSTOMER_HEALTH.partition("FROM unnest")
_UPSERT_FROM_TEMP = (
    _select.replace("$19", "$1")
    + "FROM health_in AS x\nON CONFLICT"
    + _rest.partition("ON CONFLICT")[2]
)
# the size of a real row: five explained risk factors, six features
_FACTORS = orjson.dumps(
    [
        {
            "factor": f"factor_{i}",
            "value": 12.5,
            "impact": -7.25,
            "detail": "logins fell from 14 to 3 per week against the 90-day baseline; " * 3,
        }
        for i in range(5)
    ]
).decode()
_FEATURES = orjson.dumps(
    {f"feature_{i}": {"count": 12, "last_used_at": "2026-11-01T10:00:00+00:00"} for i in range(6)}
).decode()


def _health_columns(orgs: list[uuid.UUID], rnd: random.Random) -> list[list[Any]]:
    n = len(orgs)
    now = datetime.now(UTC)

    def scores() -> list[float]:
        return [rnd.random() * 100 for _ in range(n)]

    return [
        orgs,
        *(scores() for _ in range(6)),
        [rnd.random() for _ in range(n)],  # churn probability
        [_FACTORS] * n,
        [_FEATURES] * n,
        *(scores() for _ in range(2)),  # score changes
        *([rnd.randrange(10) for _ in range(n)] for _ in range(3)),
        *([now] * n for _ in range(3)),
    ]


async def measure_health_write(
    url: str, organizations: int = 100_000, batch: int = 3_000, rounds: int = 20
) -> LeverResult:
    conn = await asyncpg.connect(url)
    unprepared = await asyncpg.connect(url, statement_cache_size=0)
    try:
        rnd = random.Random(7)
        orgs = [uuid.UUID(int=rnd.getrandbits(128), version=4) for _ in range(organizations)]
        await conn.execute(
            "INSERT INTO organizations (id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING", orgs
        )
        for start in range(0, organizations, 5_000):
            chunk = orgs[start : start + 5_000]
            await conn.execute(sql.UPSERT_CUSTOMER_HEALTH, *_health_columns(chunk, rnd), "bench")
        await conn.execute("VACUUM ANALYZE customer_health")
        await conn.execute(_TEMP_TABLE)
        names = [name for name, _ in _HEALTH_COLUMNS]

        async def via_unnest(cols: list[list[Any]]) -> None:
            async with conn.transaction():
                await conn.execute(sql.UPSERT_CUSTOMER_HEALTH, *cols, "bench")

        async def via_unprepared(cols: list[list[Any]]) -> None:
            async with unprepared.transaction():
                await unprepared.execute(sql.UPSERT_CUSTOMER_HEALTH, *cols, "bench")

        async def via_copy(cols: list[list[Any]]) -> None:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "health_in", records=list(zip(*cols, strict=True)), columns=names
                )
                await conn.execute(_UPSERT_FROM_TEMP, "bench")

        variants: dict[str, Callable[[list[list[Any]]], Awaitable[None]]] = {
            "unnest, prepared (service)": via_unnest,
            "unnest, unprepared": via_unprepared,
            "COPY to temp + INSERT SELECT": via_copy,
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(rounds):
            order = list(variants.items())
            if round_ % 2:
                order.reverse()
            for name, write in order:
                cols = _health_columns(sorted(rnd.sample(orgs, batch)), rnd)
                started = time.perf_counter()
                await write(cols)
                if round_ >= 2:  # the first rounds warm caches
                    times[name].append((time.perf_counter() - started) / batch * 1e6)
    finally:
        await conn.close()
        await unprepared.close()
    return LeverResult(
        "customer_health write per organization",
        "us",
        {name: statistics.median(t) for name, t in times.items()},
        f"batches of {batch:,} of {organizations:,} existing organizations",
    )


# ------------------------------------------------------------------ broker fetch wait


async def _fetch_latencies(
    kafka: KafkaConnection, topic: str, fetch_max_wait_ms: int, seconds: float
) -> list[float]:
    """Produce-to-consume milliseconds of records sent 20 every 10 ms (about 2,000/s)."""
    producer = kafka.producer(linger_ms=0)
    consumer = kafka.consumer(
        enable_auto_commit=False, group_id=None, fetch_max_wait_ms=fetch_max_wait_ms
    )
    await producer.start()
    await consumer.start()
    latencies: list[float] = []
    try:
        partitions = sorted(await producer.partitions_for(topic))
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        done = asyncio.Event()

        async def consume() -> None:
            while not done.is_set():
                batch = await consumer.getmany(timeout_ms=50)
                now = time.time()
                for records in batch.values():
                    latencies.extend((now - float(r.value or b"0")) * 1000 for r in records)

        reader = asyncio.create_task(consume())
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            sent = []
            for _ in range(20):
                n += 1
                sent.append(
                    await producer.send(topic, value=str(time.time()).encode(), key=b"%d" % n)
                )
            await asyncio.gather(*sent)
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)
        done.set()
        await reader
    finally:
        await consumer.stop()
        await producer.stop()
    return latencies


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure_fetch_wait(
    kafka: KafkaConnection, rounds: int = 2, seconds: float = 3.0
) -> list[LeverResult]:
    topic = f"levers.fetch.{uuid.uuid4().hex[:8]}"
    admin = kafka.admin()
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    finally:
        await admin.close()
    service_wait = Settings.model_fields["kafka_fetch_max_wait_ms"].default
    variants = {f"fetch wait {service_wait} ms": service_wait, "fetch wait 500 ms": 500}
    p50: dict[str, list[float]] = {name: [] for name in variants}
    p99: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, wait in variants.items():
            latencies = await _fetch_latencies(kafka, topic, wait, seconds)
            p50[name].append(_quantile(latencies, 0.5))
            p99[name].append(_quantile(latencies, 0.99))
    note = f"about 2,000 records/s for {seconds:g} s per round, {rounds} rounds alternating"
    return [
        LeverResult(
            "produce-to-consume p50",
            "ms",
            {n: statistics.median(v) for n, v in p50.items()},
            note,
        ),
        LeverResult(
            "produce-to-consume p99",
            "ms",
            {n: statistics.median(v) for n, v in p99.items()},
            note,
        ),
    ]


async def measure_levers(
    create_database: Callable[[], Awaitable[str]],
    drop_database: Callable[[], Awaitable[None]],
    kafka: KafkaConnection,
) -> list[LeverResult]:
    results = [measure_decode()]
    url = await create_database()
    try:
        results.append(await measure_health_write(url))
    finally:
        await drop_database()
    results.extend(await measure_fetch_wait(kafka))
    return results
