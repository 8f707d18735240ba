"""`healthscore demo`: everything at once, on the embedded services.

Starts the service in this process, feeds it a synthetic stream, and prints
the dashboard's view (organizations by band, the riskiest ones with their
top reasons) while churn-risk alerts arrive on the alert topic.

Every run starts clean: unless DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS are set,
the PostgreSQL and the broker are new and removed at the end (the broker keeps
its topics in memory only, so a kept database would hold offsets beyond the new
topics' ends). What is set is used as it is, and the demo says so. The service's
log goes to a file; the screen gets a summary of the rejected messages.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from collections import Counter
from collections.abc import Iterator, MutableMapping
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO, cast
from urllib.parse import quote, urlsplit, urlunsplit
from uuid import uuid5

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from healthscore.config import Settings
from healthscore.errors import StartupRefused
from healthscore.service.app import Components, ServiceOptions, running
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.service.offsets_reset import read_log_bounds
from healthscore.store.db import DatabaseTLS, connect, database_tls
from healthscore.store.dburl import redact
from healthscore.store.migrate import apply_migrations
from healthscore.store.offsets_reset import selected_offsets
from healthscore_lab.simulator import SimulationConfig, generate, produce

BANDS_QUERY = """
SELECT health_status, count(*) AS n FROM customer_health GROUP BY 1 ORDER BY 1
"""
RISKIEST_QUERY = """
SELECT organization_id, health_score, health_status, churn_probability, risk_level,
       risk_factors::text AS risk_factors
FROM customer_health ORDER BY health_score ASC LIMIT $1
"""
# the lowest-scored organizations that miss milestones: the ones whose score a CRM's
# history moves most. It may lower it: two years of tenure make every milestone
# expected by now, which the earlier ones the profile adds do not all make up for
PROFILE_CANDIDATES_QUERY = """
SELECT organization_id, health_score FROM customer_health
WHERE risk_factors @> '[{"factor": "missing_milestones"}]'
ORDER BY health_score ASC LIMIT $1
"""
SCORES_QUERY = """
SELECT organization_id, health_score FROM customer_health WHERE organization_id = ANY($1::uuid[])
"""
# what the demo's CRM knows of them: old accounts that reached these long ago
PROFILE_MILESTONES = (
    "onboarding_completed",
    "profile_completed",
    "first_client_added",
    "first_form_created",
    "first_email_sent",
)
# The service's own login (not the server's superuser): the production posture
# (deploy/), so the service has nothing to warn about. The server quotes both.
DEMO_LOGIN = "healthscore_demo"
LOGIN_STATEMENT = """
SELECT format(
    CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)
         THEN 'ALTER ROLE %I LOGIN PASSWORD %L'
         ELSE 'CREATE ROLE %I LOGIN PASSWORD %L IN ROLE healthscore_writer' END,
    $1::text, $2::text)
"""


@dataclass
class DemoOptions:
    organizations: int = 200
    events: int = 20_000
    rate: float = 4000.0
    seed: int = 7
    span_days: int = 30
    settle_seconds: float = 5.0
    # the most the demo waits for the silence sweep, the read model and the alert relay
    # to have caught up before the profiles and before the final dashboard
    settle_timeout_seconds: float = 60.0
    top: int = 8
    profiles: int = 3  # organizations whose history a CRM publishes at the end
    # the demo's own services (started for this run, removed after it)
    owns_database: bool = True
    owns_broker: bool = True
    dashboard: bool = True  # serve the dashboard at the end, until Ctrl-C


@dataclass
class LogSummary:
    """What the service logged, condensed for the screen (a structlog processor)."""

    # reason -> the rejected records (topic, partition, offset): a retried batch
    # logs its rejections again
    rejected: dict[str, set[tuple[str, int, int]]] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    other: Counter[str] = field(default_factory=Counter)
    # the log file's path and, once a write failed (a full disk), why
    log_path: Path | None = None
    log_failure: str | None = None

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        name = str(event.get("event"))
        if name == "message_rejected":
            reason = str(event.get("reason"))
            where = (
                str(event.get("topic")),
                int(event.get("partition", -1)),
                int(event.get("offset", -1)),
            )
            self.rejected.setdefault(reason, set()).add(where)
            self.examples.setdefault(reason, str(event.get("detail", "")))
        elif method in ("warning", "error", "critical", "exception"):
            self.other[name] += 1
        return event

    def lines(self) -> list[str]:
        total = sum(len(v) for v in self.rejected.values())
        out: list[str] = []
        if total:
            out.append(
                f"rejected messages: {total}, each sent to its topic's dead-letter topic "
                "(<topic>.dlq); the service went on"
            )
            for reason, records in sorted(self.rejected.items(), key=lambda kv: -len(kv[1])):
                # pydantic's prefix says nothing to a reader
                example = self.examples[reason].replace("Value error, ", "")
                if len(example) > 160:
                    example = example[:157] + "..."
                out.append(f"  {reason:<24} {len(records):>5}  e.g. {example}")
        else:
            out.append("rejected messages: none")
        if self.other:
            worst = ", ".join(f"{name} x{n}" for name, n in self.other.most_common(5))
            out.append(f"warnings and errors in the log: {worst}")
        if self.log_failure is not None:
            out.append(
                f"the log is incomplete: writing {self.log_path} failed ({self.log_failure}); "
                "free space there or set STATE_DIR to another directory"
            )
        return out


class _LogFile:
    """The demo's log file, whose first refused write (a full disk) ends the log, said
    once on stderr, instead of raising out of every log call of the service."""

    def __init__(self, file: TextIO, summary: LogSummary) -> None:
        self._file = file
        self._summary = summary

    def _failed(self, exc: OSError) -> None:
        if self._summary.log_failure is None:
            self._summary.log_failure = exc.strerror or str(exc)
            print(
                f"warning: the demo's log {self._summary.log_path} cannot be written "
                f"({self._summary.log_failure}); the demo goes on without it",
                file=sys.stderr,
                flush=True,
            )

    def write(self, text: str) -> int:
        if self._summary.log_failure is None:
            try:
                return self._file.write(text)
            except OSError as exc:
                self._failed(exc)
        return len(text)

    def flush(self) -> None:
        if self._summary.log_failure is None:
            try:
                self._file.flush()
            except OSError as exc:
                self._failed(exc)


@contextmanager
def log_to_file(path: Path) -> Iterator[LogSummary]:
    """The service's log (JSON lines, INFO and up) into `path`, not onto the screen."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file = path.open("w", encoding="utf-8")
    except OSError as exc:
        raise StartupRefused(
            f"the demo cannot write its log {path} ({exc.strerror or exc}): set STATE_DIR "
            "to a writable directory"
        ) from exc
    summary = LogSummary(log_path=path)
    try:
        # write and flush are all structlog's printer and logging's handler use
        _configure(cast(TextIO, _LogFile(file, summary)), summary)
        yield summary
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
        try:
            file.close()
        except OSError as exc:  # what the full disk did not take: already said
            _LogFile(file, summary)._failed(exc)


def _configure(file: TextIO, summary: LogSummary) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            summary,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=file),
        cache_logger_on_first_use=False,
    )
    # the libraries' own log (aiokafka, uvicorn, asyncio) into the same file
    logging.basicConfig(level=logging.WARNING, stream=file, force=True)


async def _watch_alerts(
    settings: Settings, stop: asyncio.Event, seen: list[dict[str, Any]]
) -> None:
    consumer = KafkaConnection.from_settings(settings).consumer(
        settings.alert_topic,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    alert = orjson.loads(record.value)
                    seen.append(alert)
                    reasons = ", ".join(f["factor"] for f in alert["risk_factors"][:3])
                    print(
                        f"  ALERT {alert['kind']:<15} org {alert['organization_id'][:8]} "
                        f"score {alert['health_score']:5.1f} risk {alert['risk_level']:<8} "
                        f"because: {reasons}",
                        flush=True,
                    )
    finally:
        await consumer.stop()


async def _print_dashboard(database_url: str, top: int, tls: DatabaseTLS = None) -> None:
    conn = await connect(database_url, tls)
    try:
        bands = await conn.fetch(BANDS_QUERY)
        riskiest = await conn.fetch(RISKIEST_QUERY, top)
    finally:
        await conn.close()
    print("  organizations by band: " + ", ".join(f"{r['health_status']}={r['n']}" for r in bands))
    print(f"  lowest {top} scores (organization, score, band, churn probability, top reasons):")
    for row in riskiest:
        factors = orjson.loads(row["risk_factors"])[:2]
        why = "; ".join(f"{f['factor']} ({f['impact']:+.1f})" for f in factors)
        print(
            f"    {str(row['organization_id'])[:8]}  {float(row['health_score']):5.1f} "
            f"{row['health_status']:<9} p(churn)={float(row['churn_probability']):.2f}  {why}"
        )


async def _publish_profiles(
    settings: Settings,
    producer: AIOKafkaProducer,
    database_url: str,
    tls: DatabaseTLS,
    count: int,
    wait_seconds: float = 15.0,
) -> None:
    """Publish what a CRM knows of a few organizations the stream takes for new and
    short of milestones (`organization.profile.v1`), and show their scores move."""
    conn = await connect(database_url, tls)
    try:
        before = {
            r["organization_id"]: float(r["health_score"])
            for r in await conn.fetch(PROFILE_CANDIDATES_QUERY, count)
        }
        if not before:
            return
        now = datetime.now(UTC)
        created = now - timedelta(days=730)
        for organization in before:
            profile = {
                "event_id": str(uuid5(organization, "demo-crm-profile")),
                "organization_id": str(organization),
                "created_at": created.isoformat(),
                "milestones": {
                    name: (created + timedelta(days=20 * (i + 1))).isoformat()
                    for i, name in enumerate(PROFILE_MILESTONES)
                },
                "occurred_at": now.isoformat(),
            }
            await producer.send(
                settings.profile_topic, key=str(organization).encode(), value=orjson.dumps(profile)
            )
        await producer.flush()
        after: dict[Any, float] = {}
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while asyncio.get_running_loop().time() < deadline:
            rows = await conn.fetch(SCORES_QUERY, list(before))
            after = {r["organization_id"]: float(r["health_score"]) for r in rows}
            if all(after.get(o) != score for o, score in before.items()):
                break
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
    print(
        f"profiles from the CRM ({settings.profile_topic}): accounts since "
        f"{created.date()} with {len(PROFILE_MILESTONES)} milestones reached before the stream"
    )
    print(
        "  a profile can lower a score: an older account is expected to have reached more "
        "milestones by now, and those it adds may not make up for that (docs/operations.md, "
        '"Profiles")'
    )
    for organization, score in before.items():
        print(f"    {str(organization)[:8]}  {score:5.1f} -> {after.get(organization, score):5.1f}")


# what is still to be done before the dashboard holds still: organizations queued for
# the read model, and alerts not yet published
UNSETTLED_QUERY = """
SELECT (SELECT count(*) FROM read_model_pending)
     + (SELECT count(*) FROM alert_outbox WHERE published_at IS NULL)
"""


async def _settle(service: Components, database_url: str, tls: DatabaseTLS, timeout: float) -> bool:
    """Make the silence sweep's rescorings due below the log's watermark now (the sweep
    loop would make them within SWEEP_INTERVAL_SECONDS, a minute after the dashboard was
    printed), then wait for the read model and the alert relay to catch up. The
    watermark moves only with new events: the scores then hold until the next ones.
    False when that did not happen within `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if service.sweep is not None:
        try:
            await asyncio.wait_for(service.sweep.drain(), timeout)
        except TimeoutError:
            return False
    conn = await connect(database_url, tls)
    try:
        while await conn.fetchval(UNSETTLED_QUERY):
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    await asyncio.sleep(0.5)  # the alert watcher prints what the relay just published
    return True


def _shown_url(url: str) -> str:
    """The URL as it is when it holds no password (the demo's own server), else redacted."""
    return redact(url) if urlsplit(url).password else url


def _reach_lines(settings: Settings, admin_url: str) -> list[str]:
    """How a producer, `healthscore dead-letters` or a person reaches the demo's services
    from another shell while it runs."""
    lines = [
        "  from another shell while the demo runs:",
        f"    export KAFKA_BOOTSTRAP_SERVERS='{settings.kafka_bootstrap_servers}'",
    ]
    if not settings.kafka_idempotent_producer:
        lines.append("    export KAFKA_IDEMPOTENT_PRODUCER=false")
    shown = _shown_url(admin_url)
    hidden = " (its password not shown)" if shown != admin_url else ""
    lines.append(f"    export DATABASE_URL='{shown}'{hidden}")
    lines.append("    healthscore dead-letters --topic usage   # what the service rejected")
    return lines


async def _create_demo_login(admin_url: str) -> str:
    """A LOGIN role in healthscore_writer on the demo's own server; its URL."""
    password = secrets.token_hex(16)
    conn = await connect(admin_url, None)  # the demo's own embedded server
    try:
        await conn.execute(await conn.fetchval(LOGIN_STATEMENT, DEMO_LOGIN, password))
    finally:
        await conn.close()
    parts = urlsplit(admin_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{DEMO_LOGIN}:{quote(password)}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def _offsets_beyond_the_log(admin_url: str, settings: Settings) -> list[str]:
    """Stored offsets of a kept database that the (new) topics cannot continue from."""
    assert settings.kafka_bootstrap_servers is not None
    topics = settings.input_topics
    starts, ends = await read_log_bounds(KafkaConnection.from_settings(settings), topics)
    conn = await connect(admin_url, database_tls(settings))
    try:
        stored = await selected_offsets(conn, settings.consumer_group, topics, None)
    finally:
        await conn.close()
    # a missing topic is created empty when the service starts
    return [
        f"{topic}:{partition} stored {offset}, log {starts.get((topic, partition), 0)}.."
        f"{ends.get((topic, partition), 0)}"
        for (topic, partition), offset in sorted(stored.items())
        if not starts.get((topic, partition), 0) <= offset <= ends.get((topic, partition), 0)
    ]


async def run_demo(
    settings: Settings, options: DemoOptions, summary: LogSummary | None = None
) -> int:
    assert settings.database_url is not None
    admin_url = (settings.migration_database_url or settings.database_url).get_secret_value()
    if options.owns_database and options.owns_broker:
        print(
            "services: a new PostgreSQL and Kafka-protocol broker for this run, removed "
            "when it ends (every run starts clean)"
        )
    else:
        if not options.owns_database:
            print(
                f"database: DATABASE_URL as it is ({redact(admin_url)}): scores, alerts and "
                "stored offsets of earlier runs stay"
            )
        if not options.owns_broker:
            print(
                f"broker: KAFKA_BOOTSTRAP_SERVERS as it is ({settings.kafka_bootstrap_servers}): "
                "records of earlier runs stay in its topics"
            )
    tls = database_tls(settings)
    applied = await apply_migrations(admin_url, tls=tls)
    print(
        f"database schema: {len(applied)} migration(s) applied"
        if applied
        else "database schema: up to date"
    )
    if options.owns_database:
        service_url = await _create_demo_login(admin_url)
        settings = settings.model_copy(
            update={
                "database_url": SecretStr(service_url),
                "migration_database_url": SecretStr(admin_url),
            }
        )
    else:
        beyond = await _offsets_beyond_the_log(admin_url, settings)
        if beyond:
            way_out = (
                "the demo's own broker is new each run (its topics live in memory): unset "
                "DATABASE_URL (a new database each run too), point it at an empty database, "
                "or also set KAFKA_BOOTSTRAP_SERVERS to a broker that keeps its topics"
                if options.owns_broker
                else "point DATABASE_URL at an empty database, or run `healthscore "
                "offsets-reset --to-earliest` (see docs/operations.md)"
            )
            print(
                f"error: the database keeps offsets of consumer group {settings.consumer_group!r} "
                f"outside the topics' logs ({'; '.join(beyond[:3])}"
                f"{'; ...' if len(beyond) > 3 else ''}), so the service would not consume "
                f"them: {way_out}",
                file=sys.stderr,
            )
            return 1
    stop = asyncio.Event()
    alerts: list[dict[str, Any]] = []
    watcher: asyncio.Task[None] | None = None
    producer: AIOKafkaProducer | None = None
    async with AsyncExitStack() as stack:
        try:
            service = await stack.enter_async_context(
                running(settings, ServiceOptions(run_sweep=True))
            )
        except StartupRefused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            ops_url = f"http://{settings.ops_host}:{service.ops_port}"
            print(f"service: running, ops endpoints on {ops_url}/metrics (and /readyz)")
            for line in _reach_lines(settings, admin_url):
                print(line)
            structlog.get_logger(__name__).info(
                "demo_services",
                ops_url=ops_url,
                kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
                kafka_idempotent_producer=settings.kafka_idempotent_producer,
                database_url=_shown_url(admin_url),
            )
            watcher = asyncio.create_task(_watch_alerts(settings, stop, alerts))
            producer = KafkaConnection.from_settings(settings).producer(
                acks="all", enable_idempotence=False
            )
            await producer.start()
            start = datetime.now(UTC) - timedelta(days=options.span_days)
            config = SimulationConfig(
                start=start,
                organizations=options.organizations,
                events=options.events,
                seed=options.seed,
                span=timedelta(days=options.span_days) - timedelta(minutes=1),
            )
            print(
                f"producing {options.events} events for {options.organizations} organizations "
                f"at {options.rate:.0f}/s ..."
            )
            send = asyncio.create_task(
                produce(
                    generate(config),
                    producer,
                    settings.usage_topic,
                    settings.support_topic,
                    rate=options.rate,
                )
            )
            while not send.done():
                await asyncio.sleep(2.0)
                await _print_dashboard(admin_url, 3, tls)
            stats = await send
            print(
                f"produced {stats.sent} messages ({stats.duplicates} duplicates and "
                f"{stats.malformed} bad ones on purpose) in {stats.seconds:.1f}s"
            )
            await asyncio.sleep(options.settle_seconds)  # let the last batches and alerts land
            # the profiles' "before" is the score the sweep's rescorings left
            await _settle(service, admin_url, tls, options.settle_timeout_seconds)
            await _publish_profiles(settings, producer, admin_url, tls, options.profiles)
            settled = await _settle(service, admin_url, tls, options.settle_timeout_seconds)
            if settled:
                print(
                    "final dashboard (the stream's end, with the silence sweep's rescorings "
                    "of quiet organizations made: it changes only with new events):"
                )
            else:
                print(
                    "dashboard now (the silence sweep or the read model has not caught up "
                    f"within {options.settle_timeout_seconds:.0f}s: scores and alerts may "
                    "still change):"
                )
            await _print_dashboard(admin_url, options.top, tls)
            print(f"alerts received: {len(alerts)}")
            if options.dashboard:
                from healthscore.api.server import run_dashboard

                await run_dashboard(settings)  # the service keeps scoring meanwhile
        finally:
            stop.set()
            if watcher is not None:
                await watcher
            if producer is not None:
                await producer.stop()
    if summary is not None:
        for line in summary.lines():
            print(line)
    return 0
