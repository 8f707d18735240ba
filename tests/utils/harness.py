"""Run the real service against the test's database and topics.

`running_service` starts it in-process (fast, for scripted scenarios);
`ServiceProcess` runs `healthscore serve` as a child process so fault tests
can SIGKILL or SIGSTOP it for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr

from healthscore.config import Settings
from healthscore.service.app import Components, ServiceOptions, running
from healthscore.service.erasure import Erasure, erase_organization
from healthscore_lab.devservices import start_embedded_broker


@dataclass
class Topics:
    usage: str
    support: str
    alerts: str
    health: str
    profile: str

    @property
    def dlq_usage(self) -> str:
        return self.usage + ".dlq"

    @property
    def dlq_support(self) -> str:
        return self.support + ".dlq"

    @property
    def dlq_profile(self) -> str:
        return self.profile + ".dlq"


async def make_topics(bootstrap: str, partitions: int = 4) -> Topics:
    suffix = uuid.uuid4().hex[:8]
    names = Topics(
        usage=f"usage.{suffix}",
        support=f"support.{suffix}",
        alerts=f"alerts.{suffix}",
        health=f"health.{suffix}",
        profile=f"profile.{suffix}",
    )
    await create_topics(bootstrap, names, partitions)
    return names


async def create_topics(bootstrap: str, names: Topics, partitions: int) -> None:
    """Every topic of `names` (the inputs, outputs and dead-letter topics) on `bootstrap`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(t, partitions, 1)
                for t in (
                    names.usage,
                    names.support,
                    names.alerts,
                    names.health,
                    names.profile,
                    names.dlq_usage,
                    names.dlq_support,
                    names.dlq_profile,
                )
            ]
        )
    finally:
        await admin.close()


# A new group's first join on the embedded broker waits out about a session timeout
# (its rebalance timeout, which aiokafka sets to it), so every service start costs one.
# Short, but with margin over an event loop busy in a batch: a member silent this long
# is dropped from the group, and tests that want one session to pass wait it out.
SESSION_TIMEOUT_MS = 1500


# HEALTH_FEED_LATE_RECORD_SECONDS of the tests' services
LATE_RECORD_SECONDS = 5.0


def service_settings(
    database_url: str, bootstrap: str, topics: Topics, group: str | None = None, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "database_url": SecretStr(database_url),
        "kafka_bootstrap_servers": bootstrap,
        "kafka_idempotent_producer": False,
        "usage_topic": topics.usage,
        "support_topic": topics.support,
        "profile_topic": topics.profile,
        "alert_topic": topics.alerts,
        "health_topic": topics.health,
        "consumer_group": group or f"g-{uuid.uuid4().hex[:8]}",
        "batch_timeout_ms": 50,
        # tests feed a few records at a time and wait for them: no pacing between batches
        "batch_min_interval_ms": 0,
        "relay_interval_seconds": 0.05,
        "ops_port": 0,
        "kafka_session_timeout_ms": SESSION_TIMEOUT_MS,
        # a stop in a broker pause owes the feed it could not follow up: due soon here,
        # so that the fault tests' check of the feed does not wait two minutes for it
        "health_feed_late_record_seconds": LATE_RECORD_SECONDS,
        # the sweep takes what is due at once: tests wait for its rescorings right after
        # the batches (test_backfill_behind_the_watermark sets its own)
        "silence_settle_seconds": 0.0,
    }
    values.update(extra)
    return Settings.model_construct(**{**Settings().model_dump(), **values})


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings, options: ServiceOptions | None = None
) -> AsyncIterator[Components]:
    async with running(
        settings, options or ServiceOptions(run_sweep=False, create_topics=False)
    ) as service:
        yield service


async def make_producer(bootstrap: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    return producer


async def produce_json(
    producer: AIOKafkaProducer,
    topic: str,
    events: Iterable[dict[str, Any]],
    key_field: str = "organization_id",
) -> int:
    futures = []
    for event in events:
        futures.append(
            await producer.send(
                topic, value=orjson.dumps(event), key=str(event[key_field]).encode()
            )
        )
    await asyncio.gather(*futures)
    return len(futures)


def never(_records: list[Any]) -> bool:
    """`consume_all`'s `done` for "read until the timeout": a check that nothing comes."""
    return False


async def consume_all(
    bootstrap: str,
    topic: str,
    expect: int = 0,
    timeout: float = 30.0,
    settle: float = 0.0,
    done: Callable[[list[Any]], bool] | None = None,
) -> list[Any]:
    """Read a topic from the beginning until `expect` records (or `done(records)`),
    then `settle` seconds more and until a poll comes back empty."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
            finished = done(records) if done is not None else len(records) >= expect
            if finished:
                if settle_until is None:
                    settle_until = time.monotonic() + settle
                if time.monotonic() >= settle_until and not batch:
                    break
    finally:
        await consumer.stop()
    return records


async def wait_for(
    database_url: str, query: str, predicate: Any, timeout: float = 30.0, *args: Any
) -> Any:
    """Poll a query (as superuser) until predicate(value) holds; return the value."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while time.monotonic() < deadline:
        conn = await asyncpg.connect(database_url)
        try:
            value = await conn.fetchval(query, *args)
        finally:
            await conn.close()
        if predicate(value):
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting on {query!r}; last value {value!r}")


async def fetchval(database_url: str, query: str, *args: Any) -> Any:
    """One value from a short-lived connection (the timeout: a restarting server)."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def erase_now(database_url: str, organization: uuid.UUID) -> Erasure:
    """`organization` erased (`--yes`) by a session of healthscore_eraser."""
    eraser = await asyncpg.connect(database_url, server_settings={"role": "healthscore_eraser"})
    try:
        return await erase_organization(eraser, organization, apply=True)
    finally:
        await eraser.close()


async def fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Every row of a query, from a short-lived connection."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


# a schema no record's value matches: the topic refuses every record
REFUSES_EVERY_RECORD: dict[str, Any] = {
    "type": "object",
    "properties": {"value": {"type": "object", "required": ["never-sent"]}},
    "required": ["value"],
}


def _refusing(registry: Path, topic: str, schema: dict[str, Any]) -> Path:
    """`registry` made a schema registry in which `topic` takes what `schema` allows."""
    registry.mkdir()
    (registry / f"{topic}.json").write_bytes(orjson.dumps(schema))
    return registry


@contextlib.asynccontextmanager
async def broker_refusing(
    registry: Path,
    refusing: str,
    topics: Iterable[str],
    partitions: int,
    schema: dict[str, Any] = REFUSES_EVERY_RECORD,
) -> AsyncIterator[str]:
    """A broker of its own (its address) on which `refusing` refuses every record while
    up (a JSON schema no value matches: an ACL, a schema the broker enforces), or those
    `schema` does not allow, with `refusing` and `topics` created; `registry`: an empty
    directory for the schema."""
    bootstrap, broker = start_embedded_broker(schema_registry=_refusing(registry, refusing, schema))
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            names = {refusing, *topics}
            await admin.create_topics([NewTopic(n, partitions, 1) for n in sorted(names)])
        finally:
            await admin.close()
        yield bootstrap
    finally:
        broker.terminate()
        broker.wait()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def ops_get(port: int, path: str) -> tuple[int, str]:
    """The status and body a local HTTP server (a service's ops port) answers `path`."""
    return await asyncio.to_thread(_get, port, path)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


class ServiceProcess:
    """`healthscore serve` as a child process, killable for real."""

    def __init__(self, settings: Settings, extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: str | None = None

    def env(self) -> dict[str, str]:
        s = self.settings
        assert s.database_url is not None
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": s.database_url.get_secret_value(),
                "KAFKA_BOOTSTRAP_SERVERS": str(s.kafka_bootstrap_servers),
                "KAFKA_IDEMPOTENT_PRODUCER": "false",
                "USAGE_TOPIC": s.usage_topic,
                "SUPPORT_TOPIC": s.support_topic,
                "PROFILE_TOPIC": s.profile_topic,
                "ALERT_TOPIC": s.alert_topic,
                "HEALTH_TOPIC": s.health_topic,
                "CONSUMER_GROUP": s.consumer_group,
                "BATCH_MAX_RECORDS": str(s.batch_max_records),
                "BATCH_TIMEOUT_MS": str(s.batch_timeout_ms),
                "BATCH_MIN_INTERVAL_MS": str(s.batch_min_interval_ms),
                "KAFKA_SESSION_TIMEOUT_MS": str(s.kafka_session_timeout_ms),
                "RELAY_INTERVAL_SECONDS": str(s.relay_interval_seconds),
                "HEALTH_FEED_LATE_RECORD_SECONDS": str(s.health_feed_late_record_seconds),
                "SILENCE_SETTLE_SECONDS": str(s.silence_settle_seconds),
                "OPS_PORT": str(s.ops_port),
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "INFO",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, log_path: str) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "healthscore.cli", "serve", "--no-migrate", "--no-sweep"],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None
