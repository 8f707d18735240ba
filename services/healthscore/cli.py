"""The `healthscore` command: the service's subcommands, and those other
installed distributions register through the `healthscore.commands` entry point
group (the lab adds demo, simulate, bench, api-bench, evaluate, fit and
dev-services)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from pydantic import SecretStr, ValidationError

from healthscore.config import Settings
from healthscore.errors import MigrationError, StartupRefused
from healthscore.service.gctuning import tune_garbage_collector
from healthscore.service.ops.logging import configure_logging

COMMANDS_GROUP = "healthscore.commands"
LOCAL_SERVICES_GROUP = "healthscore.local_services"

AddCommand = Callable[[str, Callable[[argparse.Namespace], int], str], Any]


class LocalServices(Protocol):
    """PostgreSQL and a Kafka-protocol broker started for this process."""

    database_url: str
    kafka_bootstrap_servers: str
    broker_supports_idempotence: bool
    # what to tell the person who started them (a left-over server stopped, stored
    # progress set back for a new broker)
    notes: list[str]

    def close(self) -> None: ...


def start_local_services(
    database_url: str | None = None,
    kafka_bootstrap_servers: str | None = None,
    data_dir: Path | None = None,
) -> LocalServices:
    """Services from the `healthscore.local_services` entry point (the lab's embedded ones)."""
    found = list(entry_points(group=LOCAL_SERVICES_GROUP))
    if not found:
        raise StartupRefused(
            "set DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS (embedded services for development "
            "come with the lab: pip install -e '.[dev]')"
        )
    start: Callable[..., LocalServices] = found[0].load()
    services = start(
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap_servers,
        data_dir=data_dir,
    )
    for note in getattr(services, "notes", ()):
        print(f"note: {note}", file=sys.stderr, flush=True)
    return services


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = SecretStr(args.database_url)
    if getattr(args, "bootstrap_servers", None):
        overrides["kafka_bootstrap_servers"] = args.bootstrap_servers
    # validated like the environment's values (a copy with them would not be)
    return Settings(**overrides)


def administrator_url(settings: Settings, args: argparse.Namespace) -> SecretStr | None:
    """The URL of a command that changes the schema or the progress: `--database-url`
    when given (the database the operator named on the command line), else
    MIGRATION_DATABASE_URL, else DATABASE_URL."""
    if getattr(args, "database_url", None):
        return settings.database_url
    return settings.migration_database_url or settings.database_url


@contextlib.contextmanager
def with_services(
    settings: Settings, keep_data: bool = True
) -> Iterator[tuple[Settings, LocalServices | None]]:
    """The configured services, or embedded ones when URLs are not given.

    `keep_data`: the embedded PostgreSQL keeps its data in STATE_DIR/pgdata;
    without it, in a temporary directory removed at the end.
    """
    if settings.database_url is not None and settings.kafka_bootstrap_servers is not None:
        yield settings, None
        return
    services = start_local_services(
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        data_dir=settings.state_dir.resolve() / "pgdata" if keep_data else None,
    )
    try:
        update: dict[str, Any] = {
            "database_url": SecretStr(services.database_url),
            "kafka_bootstrap_servers": services.kafka_bootstrap_servers,
        }
        if not services.broker_supports_idempotence:
            update["kafka_idempotent_producer"] = False
        yield settings.model_copy(update=update), services
    finally:
        services.close()


def run(main: Callable[[], Coroutine[Any, Any, int]], event_loop: str = "asyncio") -> int:
    try:
        with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
            return runner.run(main())
    except KeyboardInterrupt:
        return 130


def loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop (libuv; a faster event loop and socket I/O) where asked and installed."""
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise SystemExit("error: EVENT_LOOP=uvloop but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


async def wait_for_signal(on_signal: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)


def cmd_migrate(args: argparse.Namespace) -> int:
    from healthscore.store.db import database_tls
    from healthscore.store.migrate import (
        apply_migrations,
        missing_marks,
        plan_migrations,
        summary,
    )

    settings = settings_from_args(args)
    url = administrator_url(settings, args)
    if url is None:
        print(
            "error: set DATABASE_URL (or MIGRATION_DATABASE_URL), e.g. from "
            "`healthscore dev-services`",
            file=sys.stderr,
        )
        return 2

    async def plan() -> int:
        try:
            pending = await plan_migrations(url.get_secret_value(), tls=database_tls(settings))
        except MigrationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not pending:
            print("nothing to apply (up to date)")
            # what the history cannot say: a restore into a new server drops these
            for line in await missing_marks(url.get_secret_value(), tls=database_tls(settings)):
                print(f"but {line}")
            return 0
        print(f"would apply {len(pending)} migration(s), in this order:")
        for migration in pending:
            print(f"  {migration.file_name}: {summary(migration)}")
        print("what each costs on a big database: docs/operations.md, Upgrading")
        return 0

    async def main() -> int:
        if args.plan:
            return await plan()
        # a line as each migration begins and ends, and for each wait: a long one on a
        # big table, or one waiting for a lock, is seen in the job's log as it happens
        try:
            applied = await apply_migrations(
                url.get_secret_value(), tls=database_tls(settings), report=_print_flushed
            )
        except MigrationError as exc:
            # one line, as serve says it: the job's log showed a traceback ending in it
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none (up to date)'}")
        return 0

    return run(main)


def _print_flushed(line: str) -> None:
    print(line, flush=True)


def _log_migration(line: str) -> None:
    import structlog

    structlog.get_logger("healthscore.store.migrate").info("migration_progress", detail=line)


def cmd_serve(args: argparse.Namespace) -> int:
    from healthscore.service.app import ServiceOptions, serve_until
    from healthscore.store.db import database_tls
    from healthscore.store.migrate import apply_migrations

    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)

    async def main(settings: Settings) -> int:
        if args.migrate:
            url = administrator_url(settings, args)  # --database-url's, when given
            assert url is not None
            try:
                await apply_migrations(
                    url.get_secret_value(),
                    tls=database_tls(settings),
                    report=_log_migration,
                )
            except MigrationError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        full_gc_every_batches = tune_garbage_collector(
            settings.gc_young_threshold, settings.gc_full_every_batches
        )
        options = ServiceOptions(
            run_sweep=not args.no_sweep,
            full_gc_every_batches=full_gc_every_batches,
        )
        # a signal during start-up cancels the start (serve_until)
        stop = asyncio.Event()
        await wait_for_signal(stop.set)
        try:
            stopped = await serve_until(stop, settings, options)
        except StartupRefused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not stopped:
            # what still runs of the start would hold the event loop's shutdown too
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 0

    with with_services(settings) as (resolved, _services):
        return run(lambda: main(resolved), settings.event_loop)


def cmd_replay(args: argparse.Namespace) -> int:
    from healthscore.service.replay import replay

    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)
    if settings.database_url is None or settings.kafka_bootstrap_servers is None:
        print(
            "error: replay needs DATABASE_URL (an empty database) and KAFKA_BOOTSTRAP_SERVERS",
            file=sys.stderr,
        )
        return 2

    async def main() -> int:
        full_gc_every_batches = tune_garbage_collector(
            settings.gc_young_threshold, settings.gc_full_every_batches
        )
        try:
            result = await replay(
                settings,
                publish_alerts=args.publish_alerts,
                timeout=args.timeout or None,
                full_gc_every_batches=full_gc_every_batches,
                sweep=not args.no_sweep,
                resume=args.resume,
            )
        except TimeoutError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"replayed {result.events_applied} events into {result.organizations} "
            f"organizations, {result.alerts} alerts in the outbox, "
            f"{result.silence_days} organization-days last scored in silence, "
            f"{result.seconds:.1f}s"
        )
        return 0

    return run(main)


# how long `healthscore lag` waits for PostgreSQL, then for the lag's reads
LAG_COMMAND_TIMEOUT_SECONDS = 15.0


def cmd_lag(args: argparse.Namespace) -> int:
    import asyncpg
    from aiokafka.errors import KafkaError

    from healthscore.service.kafka_clients import KafkaConnection
    from healthscore.service.ops.lag import consumer_lag
    from healthscore.store.db import connect, database_tls

    settings = settings_from_args(args)
    if settings.database_url is None or settings.kafka_bootstrap_servers is None:
        print("error: set DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    group = args.group or settings.consumer_group
    url = settings.database_url.get_secret_value()

    async def main() -> int:
        role = {"role": settings.database_role} if settings.database_role else {}
        # a diagnostic in an incident: which side does not answer, said within seconds
        # (a frozen PostgreSQL took asyncpg's 60 s and printed "TimeoutError: ")
        side = "PostgreSQL (DATABASE_URL)"
        try:
            async with asyncio.timeout(LAG_COMMAND_TIMEOUT_SECONDS):
                conn = await connect(url, database_tls(settings), server_settings=role)
            try:
                side = "PostgreSQL or the brokers"
                async with asyncio.timeout(LAG_COMMAND_TIMEOUT_SECONDS):
                    lags = await consumer_lag(
                        KafkaConnection.from_settings(settings),
                        conn,
                        group,
                        settings.input_topics,
                    )
            finally:
                conn.terminate()
        except TimeoutError:
            print(
                f"error: cannot measure lag: {side} did not answer within "
                f"{LAG_COMMAND_TIMEOUT_SECONDS:g}s",
                file=sys.stderr,
            )
            return 2
        except (OSError, asyncpg.PostgresError, KafkaError) as exc:
            print(f"error: cannot measure lag: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
        total = sum(p.lag for p in lags)
        if args.json:
            print(
                json.dumps(
                    {
                        "group": group,
                        "total_lag": total,
                        "partitions": [
                            {
                                "topic": p.topic,
                                "partition": p.partition,
                                "high_watermark": p.high_watermark,
                                "stored_offset": p.stored_offset,
                                "lag": p.lag,
                            }
                            for p in lags
                        ],
                    }
                )
            )
        else:
            print(f"{'topic':<32} {'partition':>9} {'high':>10} {'stored':>10} {'lag':>10}")
            for p in lags:
                stored = "-" if p.stored_offset is None else str(p.stored_offset)
                print(
                    f"{p.topic:<32} {p.partition:>9} {p.high_watermark:>10} "
                    f"{stored:>10} {p.lag:>10}"
                )
            print(f"total lag of group {group}: {total}")
        if args.max_lag is not None and total > args.max_lag:
            print(f"lag {total} is above --max-lag {args.max_lag}", file=sys.stderr)
            return 1
        return 0

    return run(main)


def cmd_offsets_reset(args: argparse.Namespace) -> int:
    import asyncpg
    from aiokafka.errors import KafkaError

    from healthscore.service.kafka_clients import KafkaConnection
    from healthscore.service.offsets_reset import Mode, OffsetsResetError, run_offsets_reset
    from healthscore.store.db import database_tls

    settings = settings_from_args(args)
    url = administrator_url(settings, args)
    if url is None or settings.kafka_bootstrap_servers is None:
        print(
            "error: set DATABASE_URL (or MIGRATION_DATABASE_URL) and KAFKA_BOOTSTRAP_SERVERS "
            "of the service whose offsets to reset",
            file=sys.stderr,
        )
        return 2
    if args.partition is not None and args.partition < 0:
        print("error: --partition must be 0 or more", file=sys.stderr)
        return 2
    if args.to_offset is not None and args.to_offset < 0:
        print("error: --to-offset must be 0 or more", file=sys.stderr)
        return 2
    mode: Mode = "earliest" if args.to_earliest else "latest" if args.to_latest else "offset"
    bootstrap = settings.kafka_bootstrap_servers
    database_url = url.get_secret_value()

    async def main() -> int:
        try:
            return await run_offsets_reset(
                database_url,
                KafkaConnection.from_settings(settings, bootstrap),
                args.group or settings.consumer_group,
                args.topic or settings.input_topics,
                args.partition,
                mode,
                args.to_offset,
                apply=args.yes,
                tls=database_tls(settings),
                topics_named=bool(args.topic),
            )
        except OffsetsResetError as exc:
            print(f"error: {exc}", file=sys.stderr)
        except asyncpg.InsufficientPrivilegeError as exc:
            print(
                f"error: {exc}: set MIGRATION_DATABASE_URL to a role allowed to change "
                "consumer_offsets (the one that applies migrations)",
                file=sys.stderr,
            )
        except (OSError, asyncpg.PostgresError, KafkaError) as exc:
            print(f"error: cannot reset offsets: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2

    return run(main)


def cmd_erase(args: argparse.Namespace) -> int:
    import asyncpg
    from aiokafka.errors import KafkaError

    from healthscore.service.erasure import (
        ERASE_PAGE,
        ERASER_ROLE,
        ErasureRefused,
        erase_organizations,
        format_erasure,
        parse_organization_ids,
    )
    from healthscore.service.kafka_clients import KafkaConnection
    from healthscore.store import erasure, sql
    from healthscore.store.db import connect, database_tls

    settings = settings_from_args(args)
    url = administrator_url(settings, args)
    if url is None:
        print(
            "error: set DATABASE_URL (or MIGRATION_DATABASE_URL, --database-url)", file=sys.stderr
        )
        return 2
    try:
        given = dict.fromkeys(parse_organization_ids(args.organization or []))
        for path in args.file or []:
            with open(path, encoding="utf-8") as handle:
                given.update(
                    dict.fromkeys(parse_organization_ids(handle.read().splitlines(), path))
                )
        ids = list(given)
    except ErasureRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not ids and not args.list:
        print("error: give --organization ID (repeatable), --file FILE or --list", file=sys.stderr)
        return 2
    if ids and args.yes and settings.kafka_bootstrap_servers is None:
        print(
            "error: set KAFKA_BOOTSTRAP_SERVERS: the health feed gets a tombstone record for "
            "each erased organization",
            file=sys.stderr,
        )
        return 2

    async def publish_feed_tombstones(done: list[Any]) -> None:
        # after the erasure committed: the projector cannot publish it again (its queue
        # entries and customer_health row are gone), so nothing lands after this record
        producer = KafkaConnection.from_settings(settings).producer(
            acks="all", enable_idempotence=settings.kafka_idempotent_producer
        )
        try:
            await producer.start()
            sent = [
                await producer.send(settings.health_topic, key=str(org).encode(), value=None)
                for org in done
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    async def main() -> int:
        try:
            conn = await connect(
                url.get_secret_value(),
                database_tls(settings),
                server_settings={"role": ERASER_ROLE},
            )
        except (OSError, asyncpg.PostgresError) as exc:
            hint = ""
            if isinstance(exc, asyncpg.InsufficientPrivilegeError):
                hint = f" (GRANT {ERASER_ROLE} TO the login that runs it)"
            print(f"error: cannot connect as {ERASER_ROLE}: {exc}{hint}", file=sys.stderr)
            return 2
        erased: list[Any] = []
        owed_since: list[Any] = []
        # the page's organizations whose first step committed (`--yes`)
        half_done: list[Any] = []

        def note_first_step(result: Any) -> None:
            if args.yes:
                half_done.append(result.organization_id)

        try:
            if args.list:
                unfinished = 0
                for row in await conn.fetch(erasure.ERASED):
                    finished = row["completed_at"]
                    unfinished += finished is None
                    print(
                        f"{row['organization_id']}\t{row['erased_at'].isoformat()}\t"
                        f"{row['erased_by']}\t{row['rows_removed']}\t"
                        f"{'unfinished' if finished is None else finished.isoformat()}"
                    )
                if unfinished:
                    print(
                        f"warning: {unfinished} erasure(s) unfinished (the command was "
                        "interrupted between its steps; their health feed tombstones may be "
                        "missing too): run `healthscore erase --yes` again for those ids",
                        file=sys.stderr,
                    )
            for start in range(0, len(ids), ERASE_PAGE):
                page = ids[start : start + ERASE_PAGE]
                half_done.clear()
                for result in await erase_organizations(
                    conn, page, apply=args.yes, on_first_step=note_first_step
                ):
                    for line in format_erasure(result, args.yes):
                        print(line)
                    if args.yes:
                        erased.append(result.organization_id)
                        owed_since.append(result.tombstone_owed_since)
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"error: erasure stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(
                f"  {len(erased)} of {len(ids)} erased; run the same command again "
                "(an erased organization is skipped quickly)",
                file=sys.stderr,
            )
            if half_done:
                # their first steps committed: rows and dead letters gone, tombstones
                # recorded and owed (the service publishes them); event ids not yet
                print(
                    f"  {len(half_done)} more erased but unfinished (their event ids not "
                    "yet removed; `erase --list` shows them): the same command finishes "
                    "them",
                    file=sys.stderr,
                )
            return 2
        finally:
            await conn.close()
        if erased:
            try:
                await publish_feed_tombstones(erased)
            except KafkaError as exc:
                print(
                    f"error: erased, but the health feed tombstones were not published "
                    f"({type(exc).__name__}: {exc}): they are owed "
                    "(health_feed_tombstones_owed) and the running service publishes them "
                    "once its broker takes them; or run the same command again",
                    file=sys.stderr,
                )
                return 2
            try:
                conn = await connect(
                    url.get_secret_value(),
                    database_tls(settings),
                    server_settings={"role": ERASER_ROLE},
                )
                try:
                    # only the entries this run owed, not one the service owed again since
                    await conn.execute(sql.FEED_TOMBSTONES_PUBLISHED, erased, owed_since)
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError) as exc:
                # published: the service publishes them once more, which is harmless
                print(
                    f"warning: tombstones published, but not marked so "
                    f"({type(exc).__name__}): the service publishes them again",
                    file=sys.stderr,
                )
            print(
                f"{len(erased)} organization(s) erased; health feed tombstones published to "
                f"{settings.health_topic}"
            )
        elif ids:
            print("dry run: nothing removed; run again with --yes to erase")
        return 0

    return run(main)


async def _service_connection(settings: Settings) -> Any:
    """One connection to DATABASE_URL running as the service's role; None (said) if refused."""
    import asyncpg

    from healthscore.store.db import connect, database_tls

    assert settings.database_url is not None
    role = {"role": settings.database_role} if settings.database_role else {}
    try:
        return await connect(
            settings.database_url.get_secret_value(), database_tls(settings), server_settings=role
        )
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"error: cannot connect: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def cmd_import(args: argparse.Namespace) -> int:

    from datetime import UTC, datetime

    from aiokafka.errors import KafkaError

    from healthscore.service.imports import (
        ImportRefused,
        apply_profiles,
        import_labels,
        parse_labels,
        parse_profiles,
        profile_records,
        read_csv_text,
    )
    from healthscore.service.kafka_clients import KafkaConnection

    settings = settings_from_args(args)
    if args.profiles is None and args.labels is None:
        print("error: give --profiles FILE and/or --labels FILE", file=sys.stderr)
        return 2
    publish = args.publish and args.profiles is not None
    if settings.database_url is None and (args.labels is not None or not publish):
        print("error: set DATABASE_URL", file=sys.stderr)
        return 2
    if publish and settings.kafka_bootstrap_servers is None:
        print("error: --publish needs KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    known_until = args.labels_until
    if known_until is not None and known_until.tzinfo is None:
        print("error: --labels-until needs an offset (e.g. 2026-03-01T00:00:00Z)", file=sys.stderr)
        return 2
    if known_until is not None and known_until > now:
        # nobody knows now who churns later: every raise of a retained organization
        # would be labelled retained at once, and a notice of a later end taken as a churn
        print(
            f"error: --labels-until {known_until.isoformat()} is after the import's time "
            f"{now.isoformat()}: the labels can be complete only up to now",
            file=sys.stderr,
        )
        return 2
    try:  # every file checked before anything is applied
        profiles = (
            parse_profiles(read_csv_text(args.profiles), str(args.profiles), now)
            if args.profiles
            else []
        )
        labels = (
            parse_labels(read_csv_text(args.labels), str(args.labels), known_until or now)
            if args.labels
            else []
        )
    except ImportRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        for line in exc.lines():
            print(f"  {line}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def publish_profiles() -> None:
        producer = KafkaConnection.from_settings(settings).producer(
            acks="all", enable_idempotence=settings.kafka_idempotent_producer
        )
        try:
            await producer.start()
            sent = [
                await producer.send(settings.profile_topic, key=key, value=value)
                for key, value in profile_records(profiles, now)
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        empty = len(profiles) - len(sent)
        print(
            f"profiles: {len(profiles)} organizations in {args.profiles}, "
            f"{len(sent)} published to {settings.profile_topic}"
            + (
                f" ({empty} with neither a creation time nor a milestone: not sent)"
                if empty
                else ""
            )
        )

    async def main() -> int:
        if publish and profiles:
            try:
                await publish_profiles()
            except KafkaError as exc:
                print(f"error: cannot publish: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 2
        if args.labels is not None and not labels:
            print(f"labels: no organization in {args.labels} (nothing imported)")
        if not labels and (publish or not profiles):
            return 0
        conn = await _service_connection(settings)
        if conn is None:
            return 2
        try:
            if profiles and not publish:
                changed = await apply_profiles(
                    conn, profiles, settings.silence_rescore_after_seconds, page=args.page_size
                )
                print(
                    f"profiles: {len(profiles)} organizations in {args.profiles}, "
                    f"{changed} states changed (queued for the read model)"
                )
            if labels:
                until = known_until or now
                await import_labels(conn, labels, until, page=args.page_size)
                churned = sum(1 for label in labels if label.churned_at is not None)
                print(
                    f"labels: {len(labels)} organizations in {args.labels} ({churned} churned), "
                    f"known until {until.isoformat()}"
                )
        finally:
            await conn.close()
        return 0

    return run(main)


def cmd_shadow_report(args: argparse.Namespace) -> int:

    from healthscore.core.scoring.model import ScoreModel, load_model
    from healthscore.errors import ModelConfigError
    from healthscore.service.shadow import compare_shadow, format_comparison, recorded_otherwise

    settings = settings_from_args(args)
    if settings.database_url is None:
        print("error: set DATABASE_URL", file=sys.stderr)
        return 2
    candidate = args.candidate
    if candidate is None and settings.shadow_model_path is None:
        print("error: give --candidate VERSION or set SHADOW_MODEL_PATH", file=sys.stderr)
        return 2
    # as `serve` says it: the setting, its file, why
    named = [("MODEL_PATH", settings.model_path)]
    if args.candidate is None and settings.shadow_model_path is not None:
        named.append(("SHADOW_MODEL_PATH", settings.shadow_model_path))
    models: dict[str, ScoreModel] = {}
    for name, path in named:
        try:
            models[name] = load_model(path)
        except (ModelConfigError, OSError) as exc:
            print(f"error: {name}={path} is not a usable model: {exc}", file=sys.stderr)
            return 2
    live = models["MODEL_PATH"].version
    shadow = models.get("SHADOW_MODEL_PATH")
    if shadow is not None:
        candidate = shadow.version

    async def main() -> int:
        conn = await _service_connection(settings)
        if conn is None:
            return 2
        try:
            report = await compare_shadow(conn, candidate, args.organization)
            differ = await recorded_otherwise(conn, shadow) if shadow is not None else []
        finally:
            await conn.close()
        if differ:
            # the scorer refuses this file (shadow_model_version_reused): the rows are
            # those of the candidate first scored under the version
            print(
                f"warning: SHADOW_MODEL_PATH's {candidate} is not the candidate these rows "
                f"were scored by (settings differ: {', '.join(differ)}); give it a version "
                "of its own",
                file=sys.stderr,
            )
        if report.organizations_scored == 0:
            # an empty comparison would read as "the candidate changes nothing"
            print(
                f"error: no shadow scores of the candidate {candidate}: no replica has "
                "scored with it as SHADOW_MODEL_PATH",
                file=sys.stderr,
            )
            return 1
        if args.json:
            print(json.dumps({"live_model": live, **report.as_json()}, indent=2))
        else:
            print(format_comparison(report, live))
        return 0

    return run(main)


def cmd_state(args: argparse.Namespace) -> int:
    """Print an organization's stored state as JSON: the column is MessagePack, which
    psql shows as hex."""
    import msgspec

    from healthscore.store.states import erased_among, state_of

    settings = settings_from_args(args)
    if settings.database_url is None:
        print("error: set DATABASE_URL", file=sys.stderr)
        return 2

    async def main() -> int:
        conn = await _service_connection(settings)
        if conn is None:
            return 2
        try:
            state, row = await state_of(conn, str(args.organization))
            erased = row is None and bool(await erased_among(conn, [str(args.organization)]))
        finally:
            await conn.close()
        if erased:
            print(
                f"error: organization {args.organization} was erased (healthscore erase "
                "--list): its events are skipped",
                file=sys.stderr,
            )
            return 1
        if row is None:
            print(f"error: no state stored for organization {args.organization}", file=sys.stderr)
            return 1
        document = {
            "organization_id": str(args.organization),
            "health_version": row["health_version"],
            "last_event_at": row["last_event_at"],
            "rescore_due_at": row["rescore_due_at"],
            "updated_at": row["updated_at"],
            "state": state,
        }
        print(msgspec.json.format(msgspec.json.encode(document), indent=2).decode())
        return 0

    return run(main)


def cmd_episodes_left_open(args: argparse.Namespace) -> int:
    """The risk episodes an old database published and a rebuilt one does not continue."""
    import asyncpg
    from pydantic import SecretStr

    from healthscore.service.episodes import OpenEpisode, format_left_open, left_open
    from healthscore.store import sql

    settings = settings_from_args(args)
    if settings.database_url is None:
        print("error: set DATABASE_URL (the new database)", file=sys.stderr)
        return 2
    old_settings = settings.model_copy(update={"database_url": SecretStr(args.old_database_url)})

    async def open_episodes(of: Settings, include_unpublished: bool) -> list[OpenEpisode] | None:
        conn = await _service_connection(of)
        if conn is None:
            return None
        try:
            rows = await conn.fetch(sql.OPEN_EPISODES, include_unpublished)
        except (OSError, asyncpg.PostgresError) as exc:
            which = "the old database" if of is old_settings else "the new database"
            print(
                f"error: cannot read {which}'s alerts: {type(exc).__name__}: {exc}", file=sys.stderr
            )
            return None
        finally:
            await conn.close()
        return [
            OpenEpisode(
                r["organization_id"], r["episode_id"], r["kind"], r["risk_level"], r["scored_at"]
            )
            for r in rows
        ]

    async def main() -> int:
        # the old database: what the notification service was sent; the new one: every
        # alert the replay decided (the switch marks them sent without sending them)
        old = await open_episodes(old_settings, include_unpublished=False)
        new = await open_episodes(settings, include_unpublished=True)
        if old is None or new is None:
            return 2
        found = left_open(old, new)
        for line in format_left_open(found):
            print(line)
        elsewhere = sum(1 for row in found if row.new is not None)
        print(
            f"{len(found)} of {len(old)} open episode(s) left open: "
            f"{len(found) - elsewhere} not at risk in the new database, {elsewhere} in "
            "another episode",
            file=sys.stderr,
        )
        return 0

    return run(main)


def cmd_export_organization(args: argparse.Namespace) -> int:
    """A subject-access request: every row held of one organization, as JSON."""
    import asyncpg
    import orjson

    from healthscore.service.subject_access import SubjectAccessRefused, export_organization
    from healthscore.store.db import connect, database_tls

    settings = settings_from_args(args)
    url = administrator_url(settings, args)
    if url is None:
        print(
            "error: set MIGRATION_DATABASE_URL (or DATABASE_URL, --database-url)", file=sys.stderr
        )
        return 2

    async def main() -> int:
        try:
            conn = await connect(url.get_secret_value(), database_tls(settings))
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"error: cannot connect: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
        try:
            document = await export_organization(conn, args.organization)
        except SubjectAccessRefused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except asyncpg.PostgresError as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
        finally:
            await conn.close()
        text = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
        if args.out:
            # personal data: readable by its owner only, whatever the file was before,
            # and never through a link someone left at that name
            try:
                fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            except OSError as exc:
                print(f"error: {args.out}: {exc.strerror}", file=sys.stderr)
                return 2
            with os.fdopen(fd, "wb") as out:
                try:
                    os.fchmod(fd, 0o600)  # before anything is written: another's file
                except OSError as exc:  # is refused whole, not emptied
                    print(f"error: {args.out}: {exc.strerror}", file=sys.stderr)
                    return 2
                out.truncate(0)
                out.write(text)
        else:
            sys.stdout.buffer.write(text)
        counts = {name: len(rows) for name, rows in document["tables"].items() if rows}
        counts.update({name: len(rows) for name, rows in document["dead_letters"].items() if rows})
        shown = ", ".join(f"{name} {count}" for name, count in counts.items()) or "no rows"
        erased = " (erased: only the erasure's records are left)" if document["erased"] else ""
        print(f"organization {args.organization}: {shown}{erased}", file=sys.stderr)
        return 0

    return run(main)


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """Print the dead letters of the input topics' dead-letter topics, from their start."""
    from aiokafka.errors import KafkaError

    from healthscore.dead_letter_reader import Selection, read_dead_letters, report
    from healthscore.service.ingest.decode import PIPELINE_REASONS, REASONS
    from healthscore.service.kafka_clients import KafkaConnection

    settings = settings_from_args(args)
    if settings.kafka_bootstrap_servers is None:
        print(
            "error: set KAFKA_BOOTSTRAP_SERVERS (the demo and `healthscore dev-services` "
            "print theirs)",
            file=sys.stderr,
        )
        return 2
    if args.limit < 1:
        print("error: --limit must be 1 or more", file=sys.stderr)
        return 2
    known = {*REASONS, *PIPELINE_REASONS}
    unknown = sorted(set(args.reason or ()) - known)
    if unknown:
        print(
            f"error: no dead letter has the reason {', '.join(unknown)}: the reasons are "
            f"{', '.join(sorted(known))}",
            file=sys.stderr,
        )
        return 2
    if args.source_partition is not None and args.source_offset is None:
        print("error: --source-partition goes with --source-offset", file=sys.stderr)
        return 2
    selection = Selection(
        args.limit,
        newest=args.newest,
        reasons=frozenset(args.reason or ()),
        source_partition=args.source_partition,
        source_offset=args.source_offset,
    )
    sources = {
        "usage": settings.usage_topic,
        "support": settings.support_topic,
        "profile": settings.profile_topic,
    }
    chosen = args.topic or list(sources)
    topics = [sources[name] + settings.dlq_suffix for name in chosen]

    async def main() -> int:
        kafka = KafkaConnection.from_settings(settings)
        try:
            readings = [await read_dead_letters(kafka, topic, selection) for topic in topics]
        except KafkaError as exc:
            print(
                f"error: cannot read the dead-letter topics: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
            return 2
        for line in report(readings, selection):
            print(line)
        return 0

    return run(main)


def cmd_api(args: argparse.Namespace) -> int:
    from healthscore.api.server import (
        dev_config,
        print_sign_in,
        serve_until,
        stop_on_signals,
        wait_stopped,
    )
    from healthscore.api.state import ApiConfig, ApiConfigError, database_reachable
    from healthscore.store.db import database_tls
    from healthscore.store.migrate import apply_migrations

    settings = settings_from_args(args)
    overrides: dict[str, Any] = {}
    if args.dev and args.database_url:
        # --dev provisions with the migration URL: the one given here, not the environment's
        overrides["migration_database_url"] = SecretStr(args.database_url)
    if args.host is not None:
        overrides["api_host"] = args.host
    if args.port is not None:
        overrides["api_port"] = args.port
    if args.ops_port is not None:
        overrides["api_ops_port"] = args.ops_port
    settings = settings.model_copy(update=overrides)
    configure_logging(settings.log_level, settings.log_format)

    async def main(settings: Settings) -> int:
        identity = None
        if args.dev:
            if args.migrate:
                url = administrator_url(settings, args)
                assert url is not None
                await apply_migrations(url.get_secret_value(), tls=database_tls(settings))
            config, identity = await dev_config(settings)
        try:
            if not args.dev:
                config = ApiConfig.from_settings(settings)
            await database_reachable(config)
        except ApiConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        stop = asyncio.Event()
        stop_on_signals(stop)
        listening = await serve_until(
            config, settings.api_host, settings.api_port, stop, ops_port=settings.api_ops_port
        )
        print_sign_in(listening.api, identity)
        await wait_stopped()
        return 0

    if not args.dev or settings.database_url is not None:
        return run(lambda: main(settings), settings.event_loop)
    # --dev without DATABASE_URL: the embedded PostgreSQL of `serve` (same data directory);
    # the API needs no broker
    services = start_local_services(
        kafka_bootstrap_servers="unused:9092", data_dir=settings.state_dir.resolve() / "pgdata"
    )
    try:
        resolved = settings.model_copy(update={"database_url": SecretStr(services.database_url)})
        return run(lambda: main(resolved), settings.event_loop)
    finally:
        services.close()


def cmd_export_contracts(args: argparse.Namespace) -> int:
    from healthscore.contracts.export import default_schema_dir, stale_files, write_all

    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale: {', '.join(stale)}; run `healthscore export-contracts`", file=sys.stderr)
            return 1
        print(f"up to date: {default_schema_dir()}")
        return 0
    for path in write_all():
        print(f"wrote {path}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register_service_commands(add: AddCommand) -> None:
    """The service's own subcommands."""
    p = add("migrate", cmd_migrate, "Apply schema migrations to DATABASE_URL.")
    p.add_argument(
        "--database-url",
        help="the database to migrate (overrides MIGRATION_DATABASE_URL and DATABASE_URL; "
        "needs rights to create roles)",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="only say what it would apply (each file and what it is for), or why it "
        "would refuse; takes no lock and changes nothing",
    )

    p = add(
        "serve",
        cmd_serve,
        "Run the consumers, outbox relay and silence sweep. Without DATABASE_URL and "
        "KAFKA_BOOTSTRAP_SERVERS, embedded services are started first.",
    )
    p.add_argument(
        "--database-url",
        help="override DATABASE_URL; also the database migrated before start (over "
        "MIGRATION_DATABASE_URL, as with `migrate --database-url`)",
    )
    p.add_argument("--bootstrap-servers")
    p.add_argument(
        "--no-migrate",
        dest="migrate",
        action="store_false",
        help="do not apply migrations before starting",
    )
    p.add_argument("--no-sweep", action="store_true", help="do not run the silence sweep")

    p = add(
        "lag",
        cmd_lag,
        "Print per-partition consumer lag (high watermark minus the offset stored in "
        "PostgreSQL) without the service running; exit 1 above --max-lag, 2 when it "
        "cannot be measured.",
    )
    p.add_argument("--group", help="consumer group (default: CONSUMER_GROUP)")
    p.add_argument("--max-lag", type=int, help="exit 1 when the total lag is above this")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "offsets-reset",
        cmd_offsets_reset,
        "Move the offsets the service keeps in PostgreSQL, e.g. after an input topic was "
        "recreated while the database survived. Prints the change per partition; applies "
        "it (in one transaction) only with --yes. Stop the service first, or restart it "
        "right after.",
    )
    p.add_argument("--database-url", help="override MIGRATION_DATABASE_URL / DATABASE_URL")
    p.add_argument("--bootstrap-servers", help="override KAFKA_BOOTSTRAP_SERVERS")
    p.add_argument("--group", help="consumer group (default: CONSUMER_GROUP)")
    p.add_argument(
        "--topic",
        action="append",
        help="input topic, repeatable (default: USAGE_TOPIC, SUPPORT_TOPIC and PROFILE_TOPIC)",
    )
    p.add_argument("--partition", type=int, help="only this partition (default: all)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--to-earliest",
        action="store_true",
        help="delete the stored offsets: the service reads each partition from its log start "
        "(already applied events found again are skipped as duplicates while their ids are "
        "remembered, DEDUPE_RETENTION_DAYS)",
    )
    target.add_argument(
        "--to-latest",
        action="store_true",
        help="store each partition's high watermark: the records before it are skipped and "
        "their events are NEVER applied",
    )
    target.add_argument(
        "--to-offset",
        type=int,
        metavar="N",
        help="store offset N (must lie within the log) for the selected partitions",
    )
    p.add_argument("--yes", action="store_true", help="apply the change (without it: a dry run)")

    p = add(
        "erase",
        cmd_erase,
        "Erase organizations (offboarding, a GDPR art. 17 request): their state, score "
        "history, interactions, milestones, read model row, alerts (one not yet published "
        "never is), outcomes, labels, shadow rows, event ids and dead letters not yet "
        "published; a "
        "tombstone keeps later events, replays and every writer from bringing them back, "
        "and the health feed gets a tombstone record. Prints what it removes per table; "
        "acts only with --yes, one transaction per organization. Safe while serve runs. "
        "Runs as healthscore_eraser (the login must be a member).",
    )
    p.add_argument("--database-url", help="override MIGRATION_DATABASE_URL / DATABASE_URL")
    p.add_argument("--bootstrap-servers", help="override KAFKA_BOOTSTRAP_SERVERS")
    p.add_argument(
        "--organization", action="append", metavar="ID", help="organization id, repeatable"
    )
    p.add_argument(
        "--file",
        action="append",
        metavar="FILE",
        help="a file of organization ids, one a line (blank lines and # comments skipped)",
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="print the erased organizations (id, when, by whom, rows removed), tab-separated",
    )
    p.add_argument("--yes", action="store_true", help="erase (without it: a dry run)")

    p = add(
        "export-contracts",
        cmd_export_contracts,
        "Write the JSON Schema of every message, the AsyncAPI document, and the read API's "
        "OpenAPI document and TypeScript types to schema/contracts/.",
    )
    p.add_argument("--check", action="store_true", help="only check that the files are current")

    p = add(
        "replay",
        cmd_replay,
        "Rebuild all derived state from the input topics into the empty DATABASE_URL.",
    )
    p.add_argument(
        "--publish-alerts",
        action="store_true",
        help="also publish the rebuilt alerts and health feed (off: they stay in the "
        "database); refused while the live service's consumer group has members",
    )
    p.add_argument(
        "--no-sweep",
        action="store_true",
        help="no silence rescorings (to match a live run that was served with --no-sweep)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on with the interrupted replay DATABASE_URL holds (killed, timed out or "
        "stopped) from the offsets it committed, instead of refusing a non-empty database",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="give up (keeping what was applied: --resume goes on) when the end of the "
        "topics is not reached within this long (default 3600; 0: no limit)",
    )
    p = add(
        "import",
        cmd_import,
        "Import what a CRM knows: --profiles (organization_id,created_at,milestones: account "
        "creation and milestones reached before the stream, `name=time` pairs joined by `;`) "
        "into organization state, --labels (organization_id,churned_at, empty when retained) "
        "for the live alert outcomes. Every row is checked first: any bad row, nothing applied.",
    )
    p.add_argument("--database-url", help="override DATABASE_URL")
    p.add_argument("--profiles", type=Path, metavar="FILE.csv", help="organization profiles")
    p.add_argument(
        "--publish",
        action="store_true",
        help="send the profiles to PROFILE_TOPIC (organization.profile.v1) for the service to "
        "apply, instead of writing them into the database: in the log, a replay keeps them",
    )
    p.add_argument("--labels", type=Path, metavar="FILE.csv", help="churn labels")
    p.add_argument(
        "--labels-until",
        type=datetime.fromisoformat,
        metavar="TIME",
        help="the labels are complete up to this time (RFC 3339; default: now)",
    )
    p.add_argument(
        "--page-size",
        type=_positive_int,
        default=500,
        help="rows applied per transaction (default 500)",
    )

    p = add(
        "shadow-report",
        cmd_shadow_report,
        "Which alert episodes the shadow (candidate) model would add, drop or move against "
        "the live one, and by how many days, per organization and in aggregate.",
    )
    p.add_argument("--database-url", help="override DATABASE_URL")
    p.add_argument(
        "--candidate", metavar="VERSION", help="candidate version (default: SHADOW_MODEL_PATH's)"
    )
    p.add_argument("--organization", type=UUID, help="only this organization")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add(
        "state",
        cmd_state,
        "Print an organization's stored scoring state (aggregates, daily scores, alert "
        "episode) as JSON, with its version and silence due time.",
    )
    p.add_argument("organization", type=UUID, metavar="ORGANIZATION_ID")
    p.add_argument("--database-url", help="override DATABASE_URL")

    p = add(
        "episodes-left-open",
        cmd_episodes_left_open,
        "After a replay into a new database (a model change): the risk episodes the old "
        "database published and left open that the new one does not continue (out of "
        "risk there, or in an episode of another id), tab-separated: organization, the "
        "episode's id, its level, when last scored, the new database's state. Nothing "
        "closes them on the alert topic: hand the list to the notification team.",
    )
    p.add_argument(
        "--old-database-url", required=True, help="the database the live service used until now"
    )
    p.add_argument("--database-url", help="the new database (default DATABASE_URL)")

    p = add(
        "export-organization",
        cmd_export_organization,
        "A subject-access request (GDPR art. 15): every row held of one organization in "
        "PostgreSQL (state decoded, interactions, history, milestones, alerts, profiles, "
        "event ids, its dead letters) as JSON, and where else its data lives. Runs "
        "as the administrator's login (MIGRATION_DATABASE_URL): row-level security hides "
        "rows from any other, and it refuses one.",
    )
    p.add_argument("organization", type=UUID, metavar="ORGANIZATION_ID")
    p.add_argument("--database-url", help="override MIGRATION_DATABASE_URL / DATABASE_URL")
    p.add_argument("--out", metavar="FILE", help="write it to FILE (mode 0600), not stdout")

    p = add(
        "dead-letters",
        cmd_dead_letters,
        "Print the records the service rejected: each dead letter of <topic>.dlq from its "
        "start (reason, detail, source topic, partition and offset, rejection time, key "
        "and value, escaped), up to --limit per topic; reads with the Kafka settings, "
        "commits nothing.",
    )
    p.add_argument(
        "--topic",
        action="append",
        choices=["usage", "support", "profile"],
        help="the source topic whose dead letters to read (USAGE_TOPIC, SUPPORT_TOPIC, "
        "PROFILE_TOPIC; repeatable; default: all three)",
    )
    p.add_argument(
        "--limit", type=int, default=20, help="dead letters shown per topic (default 20)"
    )
    p.add_argument(
        "--newest",
        action="store_true",
        help="the latest --limit (by rejection time), not the first: in an incident the "
        "oldest are likely fixed already",
    )
    p.add_argument(
        "--reason",
        action="append",
        help="only dead letters of this x-error-reason, e.g. invalid_json (repeatable; "
        "reads the whole topic)",
    )
    p.add_argument(
        "--source-offset",
        type=int,
        help="only the dead letter of the source record at this offset (with "
        "--source-partition, of that partition; reads the whole topic)",
    )
    p.add_argument("--source-partition", type=int, help="with --source-offset")
    p.add_argument("--bootstrap-servers", help="override KAFKA_BOOTSTRAP_SERVERS")

    p = add(
        "api",
        cmd_api,
        "Serve the read API and the customer-success dashboard on API_HOST:API_PORT "
        "(a process of its own, scaled apart from the consumers).",
    )
    p.add_argument("--database-url", help="override DATABASE_URL (with --dev: the migration URL)")
    p.add_argument("--host", help="override API_HOST")
    p.add_argument("--port", type=int, help="override API_PORT (0: any free port)")
    p.add_argument("--ops-port", type=int, help="override API_OPS_PORT (0: any free port)")
    p.add_argument(
        "--dev",
        action="store_true",
        help="development sign-in: apply migrations, create or reuse an admin, a support and a "
        "member profile, print a sign-in link for each (embedded PostgreSQL without "
        "DATABASE_URL)",
    )
    p.add_argument(
        "--no-migrate",
        dest="migrate",
        action="store_false",
        help="with --dev: do not apply migrations first",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="healthscore",
        description="Real-time customer health scoring: Kafka events in, scores and alerts out.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> Any:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    register_service_commands(add)
    for extension in entry_points(group=COMMANDS_GROUP):
        register: Callable[[AddCommand], None] = extension.load()
        register(add)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except StartupRefused as exc:  # e.g. replay's service on a taken OPS_PORT
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # Settings(): a setting the environment got wrong
        for error in exc.errors():
            # the message only, not the value: a URL setting's would show its password
            name = "_".join(str(part) for part in error["loc"]).upper()
            print(f"error: {name}: {error['msg']}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
