"""The `healthscore bench` command line: options and the entry point.

Kept free of heavy imports: `build_parser` imports this for every command.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any


def _sizes(text: str) -> list[int]:
    values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("organization counts must be positive integers")
    return values


def add_arguments(p: Any) -> None:
    # the service's own defaults: the benchmark measures what a deployment runs
    from healthscore.config import Settings

    batching = Settings.model_fields
    p.add_argument("--events", type=int, default=200_000, help="events preloaded (throughput)")
    p.add_argument(
        "--organizations",
        type=_sizes,
        default=[20_000],
        help="organizations; a comma list (e.g. 1000,1000000) runs the throughput phase "
        "once per size and reports the ratio of the largest to the smallest",
    )
    p.add_argument(
        "--org-scaling",
        action="store_true",
        help="shorthand for --organizations 1000,1000000",
    )
    p.add_argument(
        "--prefill",
        type=_sizes,
        default=[],
        metavar="N[,N...]",
        help="also run the throughput phase over the smallest --organizations into tables "
        "already holding N other organizations (e.g. 1000000): the table size alone",
    )
    p.add_argument(
        "--baseline-events",
        type=int,
        default=20_000,
        help="events for the naive one-transaction-per-message baseline (0: skip)",
    )
    p.add_argument("--rate", type=float, default=5_000.0, help="offered rate of the latency phase")
    p.add_argument("--latency-seconds", type=float, default=15.0)
    p.add_argument("--alert-rate", type=float, default=20.0, help="alert triggers per second")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--batch-max-records", type=int, default=batching["batch_max_records"].default)
    p.add_argument("--batch-timeout-ms", type=int, default=batching["batch_timeout_ms"].default)
    p.add_argument("--pool-size", type=int, default=4)
    p.add_argument(
        "--service-processes",
        type=int,
        default=2,
        help="`healthscore serve` processes in the consumer group, splitting the partitions "
        "(the naive baseline runs as many); 2 uses both cores of a 2-core machine",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--skew",
        type=float,
        default=0.0,
        metavar="S",
        help="Zipf exponent of activity over organizations (e.g. 1.1: a few organizations "
        "send most events, as real usage does; 0: uniform)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="PSTATS",
        help="also run the throughput phase once under cProfile (service child process); "
        "writes PSTATS and a text summary beside it (.txt)",
    )
    p.add_argument(
        "--profile-latency",
        type=Path,
        metavar="PSTATS",
        help="run the latency phase's service processes under cProfile (live traffic: small "
        "batches, the projector and relay woken often); writes PSTATS and a text summary "
        "(.txt). cProfile slows the service: offer a rate it keeps up with under it",
    )
    p.add_argument(
        "--service-command",
        metavar="CMD",
        help="run this instead of `python -m healthscore.cli serve` (for A/B runs of a "
        "patched service; shell-split; `--no-migrate --no-sweep` are appended, and with "
        "--profile CMD must start with a Python script path)",
    )
    p.add_argument(
        "--levers",
        action="store_true",
        help="only run the lever micro-benchmarks (decode with model_validate_json; "
        "customer_health write: unnest vs unprepared vs COPY to a temp table)",
    )
    p.add_argument("--json-out", type=Path, metavar="PATH", help="write the results as JSON")
    p.add_argument("--keep-databases", action="store_true")
    p.add_argument("--work-dir", type=Path, help="where the service logs go (default: a temp dir)")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from healthscore.config import Settings
    from healthscore.service.kafka_clients import KafkaSecurity
    from healthscore_lab.bench.runner import BenchOptions, Stack, run_bench
    from healthscore_lab.devservices import resolve_services

    options = BenchOptions(
        events=args.events,
        organizations=[1_000, 1_000_000] if args.org_scaling else args.organizations,
        baseline_events=args.baseline_events,
        rate=args.rate,
        latency_seconds=args.latency_seconds,
        alert_rate=args.alert_rate,
        skip_latency=args.skip_latency,
        partitions=args.partitions,
        batch_max_records=args.batch_max_records,
        batch_timeout_ms=args.batch_timeout_ms,
        pool_size=args.pool_size,
        service_processes=args.service_processes,
        prefill=args.prefill,
        seed=args.seed,
        skew=args.skew,
        profile=args.profile.resolve() if args.profile else None,
        profile_latency=args.profile_latency.resolve() if args.profile_latency else None,
        keep_databases=args.keep_databases,
        work_dir=args.work_dir,
        service_command=shlex.split(args.service_command) if args.service_command else None,
    )
    settings = Settings()
    migration_url = settings.migration_database_url
    services = resolve_services(
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
    )
    try:
        stack = Stack(
            admin_url=migration_url.get_secret_value() if migration_url else services.database_url,
            bootstrap=services.kafka_bootstrap_servers,
            idempotence=services.broker_supports_idempotence and settings.kafka_idempotent_producer,
            kind=services.kind,
            kafka_security=KafkaSecurity.from_settings(settings),
            replication_factor=settings.topic_replication_factor,
            postgres_pid=services.postgres_pid,
            broker_pid=None if services.broker_process is None else services.broker_process.pid,
        )
        print(f"bench on {services.kind} services", flush=True)
        if args.levers:
            return _run_levers(stack, args.json_out)
        report = asyncio.run(run_bench(stack, options))
    finally:
        services.close()
    print(report.render(), flush=True)
    if args.json_out:
        args.json_out.write_bytes(report.to_json())
        print(f"wrote {args.json_out}")
    correct = all(t.correct for t in report.throughput) and (
        report.baseline is None or report.baseline.correct
    )
    return 0 if correct else 1


def _run_levers(stack: Any, json_out: Path | None) -> int:
    import asyncio
    import dataclasses
    import json
    import uuid

    from healthscore_lab.bench.levers import measure_levers
    from healthscore_lab.bench.runner import create_database, drop_database

    name = f"levers_{uuid.uuid4().hex[:12]}"
    results = asyncio.run(
        measure_levers(
            lambda: create_database(stack, name),
            lambda: drop_database(stack, name),
            stack.kafka,
        )
    )
    print("levers (median per unit; ratio to the service's way):")
    for result in results:
        print(result.render())
    if json_out:
        json_out.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
        print(f"wrote {json_out}")
    return 0
