"""`healthscore`: migrate, dev-services, serve, api, demo, simulate, replay, evaluate, fit."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from pydantic import SecretStr

from healthscore.config import Settings
from healthscore.devservices import Services, resolve_services
from healthscore.errors import StartupRefused
from healthscore.gctuning import tune_garbage_collector
from healthscore.ops.logging import configure_logging


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = SecretStr(args.database_url)
    if getattr(args, "bootstrap_servers", None):
        overrides["kafka_bootstrap_servers"] = args.bootstrap_servers
    settings = Settings()
    return settings.model_copy(update=overrides) if overrides else settings


@contextlib.contextmanager
def _with_services(
    settings: Settings, keep_data: bool = True
) -> Iterator[tuple[Settings, Services | None]]:
    """The configured services, or embedded ones when URLs are not given.

    `keep_data`: the embedded PostgreSQL keeps its data in STATE_DIR/pgdata;
    without it, in a temporary directory removed at the end.
    """
    if settings.database_url is not None and settings.kafka_bootstrap_servers is not None:
        yield settings, None
        return
    services = resolve_services(
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


def _run(main: Callable[[], Coroutine[Any, Any, int]], event_loop: str = "asyncio") -> int:
    try:
        with asyncio.Runner(loop_factory=_loop_factory(event_loop)) as runner:
            return runner.run(main())
    except KeyboardInterrupt:
        return 130


def _loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
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


async def _wait_for_signal(on_signal: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)


def cmd_migrate(args: argparse.Namespace) -> int:
    from healthscore.db import database_tls
    from healthscore.migrate import apply_migrations

    settings = _settings(args)
    url = settings.migration_database_url or settings.database_url
    if url is None:
        print(
            "error: set DATABASE_URL (or MIGRATION_DATABASE_URL), e.g. from "
            "`healthscore dev-services`",
            file=sys.stderr,
        )
        return 2

    async def main() -> int:
        applied = await apply_migrations(url.get_secret_value(), tls=database_tls(settings))
        print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none (up to date)'}")
        return 0

    return _run(main)


def cmd_dev_services(args: argparse.Namespace) -> int:
    settings = _settings(args)
    data_dir = None if args.ephemeral else settings.state_dir.resolve() / "pgdata"
    services = resolve_services(data_dir=data_dir)
    try:
        print(f"# {services.kind} services are up; paste these into another shell:")
        print(f"export DATABASE_URL='{services.database_url}'")
        print(f"export KAFKA_BOOTSTRAP_SERVERS='{services.kafka_bootstrap_servers}'")
        if not services.broker_supports_idempotence:
            print("export KAFKA_IDEMPOTENT_PRODUCER=false")
        print("# Ctrl-C stops them.", flush=True)
        signal.signal(signal.SIGTERM, _raise_interrupt)
        with contextlib.suppress(KeyboardInterrupt):
            _sleep()
    finally:
        services.close()
    return 0


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _sleep() -> None:
    import time

    while True:
        time.sleep(3600)


def cmd_serve(args: argparse.Namespace) -> int:
    from healthscore.app import Service, ServiceOptions
    from healthscore.db import database_tls
    from healthscore.migrate import apply_migrations

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)

    async def main(settings: Settings) -> int:
        if args.migrate:
            url = settings.migration_database_url or settings.database_url
            assert url is not None
            await apply_migrations(url.get_secret_value(), tls=database_tls(settings))
        full_gc_every_batches = tune_garbage_collector(
            settings.gc_young_threshold, settings.gc_full_every_batches
        )
        options = ServiceOptions(
            run_sweep=not args.no_sweep,
            full_gc_every_batches=full_gc_every_batches,
        )
        service = Service(settings, options)
        await _wait_for_signal(service.request_stop)
        try:
            try:
                await service.start()
                await service.wait()
            finally:
                await service.stop()  # also after a failed start: closes what it opened
        except StartupRefused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0

    with _with_services(settings) as (resolved, _services):
        return _run(lambda: main(resolved), settings.event_loop)


def cmd_demo(args: argparse.Namespace) -> int:
    from healthscore.demo import DemoOptions, log_to_file, run_demo

    settings = _settings(args)
    if "ops_port" not in settings.model_fields_set:
        settings = settings.model_copy(update={"ops_port": 0})  # any free port
    options = DemoOptions(
        organizations=args.organizations,
        events=args.events,
        rate=args.rate,
        seed=args.seed,
        owns_database=settings.database_url is None,
        owns_broker=settings.kafka_bootstrap_servers is None,
    )
    options.dashboard = args.dashboard
    log_path = settings.state_dir.resolve() / "demo.log"
    try:
        # a new embedded PostgreSQL each run (keep_data=False): the embedded broker
        # keeps its topics in memory only, so a kept database would hold offsets
        # beyond the new topics' ends
        with (
            log_to_file(log_path) as summary,
            _with_services(settings, keep_data=False) as (resolved, _services),
        ):
            return _run(lambda: run_demo(resolved, options, summary))
    finally:
        print(f"full log: {log_path}")


def cmd_simulate(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from healthscore.kafka_clients import KafkaConnection
    from healthscore.simulator import SimulationConfig, generate, produce

    settings = _settings(args)
    if settings.kafka_bootstrap_servers is None:
        print(
            "error: set KAFKA_BOOTSTRAP_SERVERS (see `healthscore dev-services`)", file=sys.stderr
        )
        return 2
    span = timedelta(days=args.span_days)
    config = SimulationConfig(
        start=datetime.now(UTC) - span,
        organizations=args.organizations,
        events=args.events,
        seed=args.seed,
        span=span - timedelta(minutes=1),
        duplicate_rate=args.duplicate_rate,
        malformed_rate=args.malformed_rate,
    )

    async def main() -> int:
        producer = KafkaConnection.from_settings(settings).producer(
            acks="all",
            enable_idempotence=settings.kafka_idempotent_producer,
        )
        await producer.start()
        try:
            stats = await produce(
                generate(config),
                producer,
                settings.usage_topic,
                settings.support_topic,
                rate=args.rate,
            )
        finally:
            await producer.stop()
        print(
            f"sent {stats.sent} messages: {stats.valid} valid, {stats.duplicates} duplicates, "
            f"{stats.malformed} malformed, in {stats.seconds:.1f}s"
        )
        return 0

    return _run(main)


def cmd_replay(args: argparse.Namespace) -> int:
    from healthscore.replay import replay

    settings = _settings(args)
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
        result = await replay(
            settings,
            publish_alerts=args.publish_alerts,
            full_gc_every_batches=full_gc_every_batches,
            sweep=not args.no_sweep,
        )
        print(
            f"replayed {result.events_applied} events into {result.organizations} "
            f"organizations, {result.alerts} alerts in the outbox, "
            f"{result.silence_rescorings} silence rescorings, {result.seconds:.1f}s"
        )
        return 0

    return _run(main)


def cmd_lag(args: argparse.Namespace) -> int:
    import asyncpg
    from aiokafka.errors import KafkaError

    from healthscore.db import connect, database_tls
    from healthscore.kafka_clients import KafkaConnection
    from healthscore.ops.lag import consumer_lag

    settings = _settings(args)
    if settings.database_url is None or settings.kafka_bootstrap_servers is None:
        print("error: set DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    group = args.group or settings.consumer_group
    url = settings.database_url.get_secret_value()

    async def main() -> int:
        role = {"role": settings.database_role} if settings.database_role else {}
        try:
            conn = await connect(url, database_tls(settings), server_settings=role)
            try:
                lags = await consumer_lag(
                    KafkaConnection.from_settings(settings),
                    conn,
                    group,
                    [settings.usage_topic, settings.support_topic],
                )
            finally:
                await conn.close()
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

    return _run(main)


def cmd_offsets_reset(args: argparse.Namespace) -> int:
    import asyncpg
    from aiokafka.errors import KafkaError

    from healthscore.db import database_tls
    from healthscore.kafka_clients import KafkaConnection
    from healthscore.offsets_reset import Mode, OffsetsResetError, run_offsets_reset

    settings = _settings(args)
    url = (
        settings.database_url  # --database-url
        if args.database_url
        else settings.migration_database_url or settings.database_url
    )
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
                args.topic or [settings.usage_topic, settings.support_topic],
                args.partition,
                mode,
                args.to_offset,
                apply=args.yes,
                tls=database_tls(settings),
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

    return _run(main)


def cmd_api(args: argparse.Namespace) -> int:
    from healthscore.api.server import (
        dev_config,
        print_sign_in,
        serve_until,
        stop_on_signals,
        wait_stopped,
    )
    from healthscore.api.state import ApiConfig, ApiConfigError
    from healthscore.db import database_tls
    from healthscore.migrate import apply_migrations

    settings = _settings(args)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["api_host"] = args.host
    if args.port is not None:
        overrides["api_port"] = args.port
    settings = settings.model_copy(update=overrides)
    configure_logging(settings.log_level, settings.log_format)

    async def main(settings: Settings) -> int:
        identity = None
        if args.dev:
            if args.migrate:
                url = settings.migration_database_url or settings.database_url
                assert url is not None
                await apply_migrations(url.get_secret_value(), tls=database_tls(settings))
            config, identity = await dev_config(settings)
        else:
            try:
                config = ApiConfig.from_settings(settings)
            except ApiConfigError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        stop = asyncio.Event()
        stop_on_signals(stop)
        address = await serve_until(config, settings.api_host, settings.api_port, stop)
        print_sign_in(address, identity)
        await wait_stopped()
        return 0

    if not args.dev or settings.database_url is not None:
        return _run(lambda: main(settings), settings.event_loop)
    # --dev without DATABASE_URL: the embedded PostgreSQL of `serve` (same data directory);
    # the API needs no broker
    services = resolve_services(
        kafka_bootstrap_servers="unused:9092", data_dir=settings.state_dir.resolve() / "pgdata"
    )
    try:
        resolved = settings.model_copy(update={"database_url": SecretStr(services.database_url)})
        return _run(lambda: main(resolved), settings.event_loop)
    finally:
        services.close()


def cmd_api_bench(args: argparse.Namespace) -> int:
    from healthscore.api.bench import run

    configure_logging("WARNING", "console")
    return run(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from healthscore.bench.command import run

    return run(args)


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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from healthscore.evaluation.command import run_evaluate

    return run_evaluate(args)


def cmd_fit(args: argparse.Namespace) -> int:
    from healthscore.evaluation.command import run_fit

    return run_fit(args)


def _add_stream_options(p: Any, events: int, rate: float | None) -> None:
    p.add_argument("--organizations", type=int, default=200)
    p.add_argument("--events", type=int, default=events)
    p.add_argument("--rate", type=float, default=rate, help="messages per second")
    p.add_argument("--seed", type=int, default=7)


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

    p = add("migrate", cmd_migrate, "Apply schema migrations to DATABASE_URL.")
    p.add_argument("--database-url", help="override DATABASE_URL (needs rights to create roles)")

    p = add(
        "dev-services",
        cmd_dev_services,
        "Start PostgreSQL and a Kafka-protocol broker (embedded, or containers where "
        "Docker runs), print their URLs, stay up until Ctrl-C.",
    )
    p.add_argument("--ephemeral", action="store_true", help="keep no data after stopping")

    p = add(
        "serve",
        cmd_serve,
        "Run the consumers, outbox relay and silence sweep. Without DATABASE_URL and "
        "KAFKA_BOOTSTRAP_SERVERS, embedded services are started first.",
    )
    p.add_argument("--database-url")
    p.add_argument("--bootstrap-servers")
    p.add_argument(
        "--no-migrate",
        dest="migrate",
        action="store_false",
        help="do not apply migrations before starting",
    )
    p.add_argument("--no-sweep", action="store_true", help="do not run the silence sweep")

    p = add(
        "demo",
        cmd_demo,
        "Start everything (new embedded services unless URLs are set, migrations, the "
        "service, the simulator) and show scores changing and alerts appearing. Every run "
        "starts clean; the service's log goes to STATE_DIR/demo.log.",
    )
    _add_stream_options(p, events=20_000, rate=4000.0)
    p.add_argument(
        "--no-dashboard",
        dest="dashboard",
        action="store_false",
        help="end after the stream instead of serving the dashboard until Ctrl-C",
    )

    p = add("simulate", cmd_simulate, "Produce a synthetic event stream to the input topics.")
    _add_stream_options(p, events=10_000, rate=None)
    p.add_argument("--span-days", type=int, default=30)
    p.add_argument("--duplicate-rate", type=float, default=0.01)
    p.add_argument("--malformed-rate", type=float, default=0.001)

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
        help="input topic, repeatable (default: USAGE_TOPIC and SUPPORT_TOPIC)",
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
        help="also publish the rebuilt alerts (off: they stay in the outbox)",
    )
    p.add_argument(
        "--no-sweep",
        action="store_true",
        help="no silence rescorings (to match a live run that was served with --no-sweep)",
    )
    p = add(
        "api",
        cmd_api,
        "Serve the read API and the customer-success dashboard on API_HOST:API_PORT "
        "(a process of its own, scaled apart from the consumers).",
    )
    p.add_argument("--database-url", help="override DATABASE_URL (with --dev: the migration URL)")
    p.add_argument("--host", help="override API_HOST")
    p.add_argument("--port", type=int, help="override API_PORT (0: any free port)")
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
    p = add(
        "api-bench",
        cmd_api_bench,
        "Benchmark the read API: p50/p95/p99 of every list sort and filter and of the "
        "organization page, N concurrent clients, 100,000 organizations, consumers writing.",
    )
    from healthscore.api.bench import add_arguments as add_api_bench_arguments

    add_api_bench_arguments(p)
    p = add(
        "evaluate",
        cmd_evaluate,
        "Backtest the scoring model on a labelled event log (simulated, or your own export) "
        "through the service's pure core: ROC AUC, Brier score and reliability of the churn "
        "probability, alert precision, recall, lead time and false alerts, beside two "
        "baselines, on held-out organizations; a table, --json and --plots.",
    )
    from healthscore.evaluation.command import add_evaluate_arguments, add_fit_arguments

    add_evaluate_arguments(p)
    p = add(
        "fit",
        cmd_fit,
        "Fit the model's weights, scales, churn calibration and alert settings from a "
        "labelled event log (training organizations only) and write health_model.<version>"
        ".json with its held-out figures; refuses one that evaluates worse than the current "
        "model on the held-out organizations.",
    )
    add_fit_arguments(p)
    p = add(
        "bench",
        cmd_bench,
        "Benchmark the real stack on this machine: throughput, latency, alert latency, "
        "RSS and rows per event, against a naive one-transaction-per-message baseline.",
    )
    from healthscore.bench.command import add_arguments as add_bench_arguments

    add_bench_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except StartupRefused as exc:  # e.g. replay's service on a taken OPS_PORT
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
