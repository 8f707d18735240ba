"""The lab's subcommands of `healthscore` (entry point group `healthscore.commands`)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from typing import Any

from healthscore.cli import (
    AddCommand,
    run,
    settings_from_args,
    with_services,
)
from healthscore.service.ops.logging import configure_logging
from healthscore.service.ops.serving import listening_socket
from healthscore_lab.devservices import resolve_services


def cmd_dev_services(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    data_dir = None if args.ephemeral else settings.state_dir.resolve() / "pgdata"
    # a closed terminal (SIGHUP) or `kill` (SIGTERM) stops them as Ctrl-C does, also
    # while they start; a process killed outright leaves it to PostgreSQL's keeper and
    # the broker's die_with_parent
    for sig in ENDING_SIGNALS:
        signal.signal(sig, _raise_interrupt)
    try:
        services = resolve_services(data_dir=data_dir)
    except KeyboardInterrupt:
        return 130
    try:
        for note in services.notes:
            print(f"# note: {note}", file=sys.stderr, flush=True)
        print(f"# {services.kind} services are up; paste these into another shell:")
        print(f"export DATABASE_URL='{services.database_url}'")
        print(f"export KAFKA_BOOTSTRAP_SERVERS='{services.kafka_bootstrap_servers}'")
        if not services.broker_supports_idempotence:
            print("export KAFKA_IDEMPOTENT_PRODUCER=false")
        print("# Ctrl-C stops them.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            _sleep()
    finally:
        services.close()
    return 0


# what ends a command in a terminal besides Ctrl-C: `kill` and a closed terminal
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _interrupt_as_ctrl_c(signum: int, frame: Any) -> None:
    """SIGTERM or SIGHUP taken as Ctrl-C: the demo then stops as Ctrl-C stops it, through
    whichever SIGINT handling is current (asyncio's runner cancels the demo, the
    dashboard stops serving, outside a loop KeyboardInterrupt)."""
    signal.raise_signal(signal.SIGINT)


def _sleep() -> None:
    import time

    while True:
        time.sleep(3600)


def _refuse_a_taken_dashboard_port(host: str, port: int) -> None:
    """The dashboard is served at the demo's end: say a taken API_PORT before the demo
    runs, in one line, not as uvicorn's tracebacks after it."""
    if port == 0:
        return  # any free port
    what, alternative = "the dashboard", ", or run the demo with --no-dashboard"
    listening_socket(host, port, what, "API_HOST", "API_PORT", alternative).close()


def cmd_demo(args: argparse.Namespace) -> int:
    from healthscore_lab.demo import DemoOptions, log_to_file, run_demo

    settings = settings_from_args(args)
    if args.dashboard:
        _refuse_a_taken_dashboard_port(settings.api_host, settings.api_port)
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
    # `kill` or a closed terminal end the demo as Ctrl-C does: its services stopped and
    # removed (a process killed outright leaves that to PostgreSQL's keeper)
    for sig in ENDING_SIGNALS:
        signal.signal(sig, _interrupt_as_ctrl_c)
    with log_to_file(log_path) as summary:  # a log that cannot be opened: refused here
        try:
            # a new embedded PostgreSQL each run (keep_data=False): the embedded broker
            # keeps its topics in memory only, so a kept database would hold offsets
            # beyond the new topics' ends
            with with_services(settings, keep_data=False) as (resolved, _services):
                return run(lambda: run_demo(resolved, options, summary))
        finally:
            print(f"full log: {log_path}")


def cmd_simulate(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from healthscore.service.kafka_clients import KafkaConnection
    from healthscore_lab.simulator import SimulationConfig, generate, produce

    settings = settings_from_args(args)
    if settings.kafka_bootstrap_servers is None:
        print(
            "error: set KAFKA_BOOTSTRAP_SERVERS (see `healthscore dev-services`)", file=sys.stderr
        )
        return 2
    config = SimulationConfig.ending_now(
        timedelta(days=args.span_days),
        organizations=args.organizations,
        events=args.events,
        seed=args.seed,
        duplicate_rate=args.duplicate_rate,
        malformed_rate=args.malformed_rate,
        profile_share=args.profile_share,
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
                profile_topic=settings.profile_topic,
            )
        finally:
            await producer.stop()
        print(
            f"sent {stats.sent} messages: {stats.valid} valid, {stats.duplicates} duplicates, "
            f"{stats.malformed} malformed, in {stats.seconds:.1f}s"
        )
        return 0

    return run(main)


def cmd_api_bench(args: argparse.Namespace) -> int:
    from healthscore_lab.api_bench import run

    configure_logging("WARNING", "console")
    return run(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from healthscore_lab.bench.command import run

    return run(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from healthscore_lab.evaluation.command import run_evaluate

    return run_evaluate(args)


def cmd_fit(args: argparse.Namespace) -> int:
    from healthscore_lab.evaluation.command import run_fit

    return run_fit(args)


def cmd_adapt(args: argparse.Namespace) -> int:
    from healthscore_lab.evaluation.command import run_adapt

    return run_adapt(args)


def _add_stream_options(p: Any, events: int, rate: float | None) -> None:
    p.add_argument("--organizations", type=int, default=200)
    p.add_argument("--events", type=int, default=events)
    p.add_argument("--rate", type=float, default=rate, help="messages per second")
    p.add_argument("--seed", type=int, default=7)


def register(add: AddCommand) -> None:
    """Add the lab's subcommands."""
    p = add(
        "dev-services",
        cmd_dev_services,
        "Start PostgreSQL and a Kafka-protocol broker (embedded, or containers where "
        "Docker runs), print their URLs, stay up until Ctrl-C.",
    )
    p.add_argument("--ephemeral", action="store_true", help="keep no data after stopping")

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
    p.add_argument(
        "--profile-share",
        type=float,
        default=0.0,
        help="share of organizations whose CRM profile (organization.profile.v1) is "
        "published during the stream, half of them twice (default 0)",
    )

    p = add(
        "api-bench",
        cmd_api_bench,
        "Benchmark the read API: p50/p95/p99 of every list sort and filter and of the "
        "organization page, N concurrent clients, 100,000 organizations, consumers writing.",
    )
    from healthscore_lab.api_bench import add_arguments as add_api_bench_arguments

    add_api_bench_arguments(p)
    p = add(
        "evaluate",
        cmd_evaluate,
        "Backtest the scoring model on a labelled event log (simulated, or your own export) "
        "through the service's pure core: ROC AUC, Brier score and reliability of the churn "
        "probability, alert precision, recall, lead time and false alerts, beside two "
        "baselines, on held-out organizations; a table, --json and --plots.",
    )
    from healthscore_lab.evaluation.command import (
        add_adapt_arguments,
        add_evaluate_arguments,
        add_fit_arguments,
    )

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
        "adapt",
        cmd_adapt,
        "Adapt the model's usage scales to a population's own usage volume from its event "
        "log alone (no churn labels needed) and write health_model.<version>.json; judged "
        "and refused like fit when the log has labels.",
    )
    add_adapt_arguments(p)
    p = add(
        "bench",
        cmd_bench,
        "Benchmark the real stack on this machine: throughput, latency, alert latency, "
        "RSS and rows per event, against a naive one-transaction-per-message baseline.",
    )
    from healthscore_lab.bench.command import add_arguments as add_bench_arguments

    add_bench_arguments(p)
