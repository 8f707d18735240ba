"""Soak harness: real `serve` and `api` processes for many minutes of varied traffic.

`python -m tests.utils.soak --minutes 20 --out /tmp/soak` (PYTHONPATH=services:services/lab:.)
starts an embedded PostgreSQL and broker, migrates, and runs under `tests.utils.soak_probe`
(RSS, live objects by type, tracemalloc growth between two snapshots after warm-up):

- `serve` A (the probed one, silence sweep on) for the whole run;
- `healthscore api` (probed) with clients asking list pages (varied filters, sorts,
  searches), organization pages and histories (erased ones among them), the ops pages;
- a producer: rounds of simulated usage, support and profile records, each round over
  organizations never seen before, with duplicates and malformed records (dead letters),
  quiet for `quiet_seconds` from `quiet_from` of the run on (a night: no records);
- every `rebalance_every` seconds a second `serve` joins for `rebalance_for` seconds and
  leaves (partition rebalances both ways);
- `healthscore erase` of a few organizations every `erase_every` seconds;
- a crash-restart of PostgreSQL at half time.

Writes the probes' files, the children's logs and `summary.json` / `summary.txt` (growth
of RSS and object counts from the end of warm-up to the end) into `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg

from healthscore.api.auth import issue_hs256
from healthscore.api.dev import dev_login_url
from healthscore.store.migrate import apply_migrations
from healthscore_lab.api_bench import (
    Connection,
    _sample_ids,
    _signing_key,
    _users,
    inherited_environment,
    stop_all,
)
from healthscore_lab.devservices import Services, die_with_parent, free_port, resolve_services
from healthscore_lab.simulator import SimulationConfig, generate
from healthscore_lab.simulator.kafka import produce
from tests.utils.harness import Topics, make_producer, make_topics


@dataclass
class SoakOptions:
    minutes: float = 20.0
    out: Path = Path("/tmp/soak")
    rate: float = 400.0  # produced messages per second
    round_events: int = 20_000  # one round's messages, over organizations of its own
    round_organizations: int = 1_500
    sample_seconds: float = 20.0
    warmup_seconds: float | None = None  # default: a quarter of the run, at most 5 minutes
    rebalance_every: float = 240.0
    rebalance_for: float = 60.0
    erase_every: float = 150.0
    restart_postgres: bool = True
    api: bool = True
    api_clients: int = 2
    tracemalloc: bool = True
    # a quiet spell (no records produced: a night) from this fraction of the run on
    quiet_from: float = 0.55
    quiet_seconds: float = 240.0


@dataclass
class Counts:
    produced: int = 0
    rounds: int = 0
    api_requests: int = 0
    api_statuses: dict[str, int] = field(default_factory=dict)
    erased: int = 0
    rebalances: int = 0
    postgres_restarts: int = 0
    ops_requests: int = 0
    # when the quiet spell began and ended (seconds from the start; -1: it did not)
    quiet_from_s: float = -1.0
    quiet_to_s: float = -1.0


def _probe_env(options: SoakOptions, warmup: float, total: float) -> dict[str, str]:
    env = {"SOAK_OUT": str(options.out), "SOAK_SAMPLE_SECONDS": str(options.sample_seconds)}
    if options.tracemalloc:
        env |= {
            "SOAK_TRACE_AT": str(warmup - options.sample_seconds),
            "SOAK_TRACE_FIRST": str(warmup),
            "SOAK_TRACE_SECOND": str(total - 2 * options.sample_seconds),
        }
    return env


@contextlib.contextmanager
def _children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        stop_all(started)


def _start(
    argv: list[str], env: dict[str, str], log: Path, started: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    started.append(process)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def _http_get(port: int, target: str, token: str = "") -> int:
    conn = Connection("127.0.0.1", port, token)
    try:
        return await conn.get(target)
    finally:
        conn.close()


async def _wait_http(port: int, target: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
            if await _http_get(port, target) == 200:
                return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"nothing answered 200 on port {port} {target}")


def serve_environment(url: str, bootstrap: str, topics: Topics, group: str) -> dict[str, str]:
    """A `serve` child's environment: on `url` and `bootstrap`, reading and writing
    `topics` as consumer group `group`, logging JSON."""
    return {
        **inherited_environment(),
        "DATABASE_URL": url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_IDEMPOTENT_PRODUCER": "false",
        "USAGE_TOPIC": topics.usage,
        "SUPPORT_TOPIC": topics.support,
        "PROFILE_TOPIC": topics.profile,
        "ALERT_TOPIC": topics.alerts,
        "HEALTH_TOPIC": topics.health,
        "CONSUMER_GROUP": group,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }


async def _produce_rounds(
    bootstrap: str, topics: Topics, options: SoakOptions, until: float, counts: Counts
) -> None:
    producer = await make_producer(bootstrap)
    try:
        seed = 1000
        started = time.monotonic()
        quiet = started + options.quiet_from * (until - started)
        while time.monotonic() < until:
            now = time.monotonic()
            if quiet <= now < quiet + options.quiet_seconds:
                if counts.quiet_from_s < 0:
                    counts.quiet_from_s = round(now - started, 1)
                counts.quiet_to_s = round(now - started, 1)
                await asyncio.sleep(1)
                continue
            seed += 1
            config = SimulationConfig.ending_now(
                timedelta(days=20),
                organizations=options.round_organizations,
                events=options.round_events,
                seed=seed,
                duplicate_rate=0.03,
                malformed_rate=0.005,
                support_share=0.1,
                profile_share=0.2,
            )
            messages = list(generate(config))
            stats = await produce(
                messages,
                producer,
                topics.usage,
                topics.support,
                rate=options.rate,
                profile_topic=topics.profile,
            )
            counts.produced += len(messages)
            counts.rounds += 1
            del stats
    finally:
        await producer.stop()


def _list(**params: str) -> str:
    return "/api/v1/organizations?" + urlencode({"limit": "50", **params})


async def _api_client(
    port: int, token: str, url: str, until: float, counts: Counts, seed: int
) -> None:
    rng = random.Random(seed)
    conn = Connection("127.0.0.1", port, token)
    ids: list[str] = []
    refreshed = 0.0
    try:
        while time.monotonic() < until:
            if time.monotonic() - refreshed > 30:
                with contextlib.suppress(OSError, asyncpg.PostgresError):
                    ids = await _sample_ids(url, 200) or ids
                refreshed = time.monotonic()
            some = rng.choice(ids) if ids else str(uuid.uuid4())
            target = rng.choice(
                [
                    _list(),
                    _list(sort="health_score"),
                    _list(sort="score_change_7d", health_status="at_risk"),
                    _list(risk_level="high"),
                    _list(factor="complaints"),
                    _list(q=some[: rng.randint(2, 6)]),
                    _list(q=uuid.uuid4().hex[:4]),
                    f"/api/v1/organizations/{some}",
                    f"/api/v1/organizations/{some}/history",
                    f"/api/v1/organizations/{uuid.uuid4()}",
                    "/",
                ]
            )
            try:
                if rng.random() < 0.1:  # now and then a new connection, closed after one request
                    status = await _http_get(port, target, token)
                else:
                    status, _ = await conn.fetch(target)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                conn.close()
                conn.writer = None
                counts.api_statuses["error"] = counts.api_statuses.get("error", 0) + 1
                await asyncio.sleep(0.5)
                continue
            counts.api_requests += 1
            key = str(status)
            counts.api_statuses[key] = counts.api_statuses.get(key, 0) + 1
            await asyncio.sleep(rng.uniform(0.0, 0.05))
    finally:
        conn.close()


async def _ops_client(ports: list[int], until: float, counts: Counts) -> None:
    rng = random.Random(5)
    while time.monotonic() < until:
        for port in ports:
            target = rng.choice(
                ["/metrics", f"/metrics?x={rng.randint(0, 10**6)}", "/readyz", "/healthz"]
            )
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
                await _http_get(port, target)
                counts.ops_requests += 1
        await asyncio.sleep(2)


async def _erase_some(
    env: dict[str, str], url: str, options: SoakOptions, until: float, counts: Counts, log: Path
) -> None:
    while time.monotonic() + options.erase_every < until:
        await asyncio.sleep(options.erase_every)
        try:
            ids = await _sample_ids(url, 3)
        except (OSError, asyncpg.PostgresError):
            continue
        args = [a for i in ids for a in ("--organization", i)]
        with log.open("ab") as out:
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "healthscore.cli", "erase", *args, "--yes"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if done.returncode == 0:
            counts.erased += len(ids)


def read_samples(path: Path) -> list[dict[str, Any]]:
    """A probe's samples (`probe-<pid>.jsonl`), in order."""
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def summarize(out: Path, names: dict[int, str], warmup: float) -> dict[str, Any]:
    """Each probed process's growth from the first sample after warm-up to the last."""
    result: dict[str, Any] = {}
    for pid, name in names.items():
        path = out / f"probe-{pid}.jsonl"
        if not path.exists():
            continue
        samples = read_samples(path)
        after = [s for s in samples if s["t"] >= warmup]
        if len(after) < 2:
            continue
        first, last = after[0], after[-1]
        types = set(first["types"]) | set(last["types"])
        growth = sorted(
            ((t, last["types"].get(t, 0) - first["types"].get(t, 0)) for t in types),
            key=lambda item: -abs(item[1]),
        )
        result[name] = {
            "pid": pid,
            "from_s": first["t"],
            "to_s": last["t"],
            "rss_mb": [round(s["rss_kb"] / 1024, 1) for s in samples],
            "rss_mb_from_to": [round(first["rss_kb"] / 1024, 1), round(last["rss_kb"] / 1024, 1)],
            "rss_mb_max_after_warmup": round(max(s["rss_kb"] for s in after) / 1024, 1),
            "objects_from_to": [first["objects"], last["objects"]],
            "top_growth": [
                {"type": t, "from": first["types"].get(t, 0), "to": last["types"].get(t, 0)}
                for t, g in growth[:25]
                if g
            ],
        }
    return result


def render(summary: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, s in summary.items():
        if not isinstance(s, dict) or "rss_mb_from_to" not in s:
            continue
        lines.append(
            f"{name} (pid {s['pid']}), t={s['from_s']:.0f}s..{s['to_s']:.0f}s: RSS "
            f"{s['rss_mb_from_to'][0]} -> {s['rss_mb_from_to'][1]} MB "
            f"(max {s['rss_mb_max_after_warmup']}), live objects {s['objects_from_to'][0]:,} "
            f"-> {s['objects_from_to'][1]:,}"
        )
        for g in s["top_growth"][:15]:
            lines.append(
                f"    {g['to'] - g['from']:+7d}  {g['from']:7d} -> {g['to']:7d}  {g['type']}"
            )
    lines.append(json.dumps(summary.get("counts", {})))
    return "\n".join(lines)


async def run_soak(options: SoakOptions, services: Services) -> dict[str, Any]:
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    total = options.minutes * 60
    warmup = options.warmup_seconds
    if warmup is None:
        warmup = min(total / 4, 300.0)
    url = services.database_url
    bootstrap = services.kafka_bootstrap_servers
    await apply_migrations(url)
    topics = await make_topics(bootstrap, partitions=8)
    base = inherited_environment()
    serve_env = {
        **serve_environment(url, bootstrap, topics, "soak"),
        "SWEEP_INTERVAL_SECONDS": "20",
    }
    probe = _probe_env(options, warmup, total)
    counts = Counts()
    names: dict[int, str] = {}
    started = time.monotonic()
    until = started + total
    with _children() as children:
        serve_ops = free_port()
        serve = _start(
            ["-m", "tests.utils.soak_probe", "serve", "--no-migrate"],
            {**serve_env, **probe, "OPS_PORT": str(serve_ops)},
            out / "serve-a.log",
            children,
        )
        names[serve.pid] = "serve"
        ops_ports = [serve_ops]
        tasks: list[asyncio.Task[Any]] = []
        if options.api:
            users = await _users(url, 0)
            key_id, secret = await _signing_key(url)
            login_url = await dev_login_url(url)
            jwt_secret = secrets.token_urlsafe(32)
            token = issue_hs256(jwt_secret, users["admin"], timedelta(hours=12))
            api_port, api_ops = free_port(), free_port()
            api_env = {
                **base,
                **probe,
                "API_DATABASE_URL": login_url,
                "API_DB_SIGNING_KEY_ID": str(key_id),
                "API_DB_SIGNING_KEY": secret,
                "API_JWT_SECRET": jwt_secret,
                "LOG_LEVEL": "WARNING",
            }
            api = _start(
                [
                    "-m",
                    "tests.utils.soak_probe",
                    "api",
                    "--port",
                    str(api_port),
                    "--ops-port",
                    str(api_ops),
                ],
                api_env,
                out / "api.log",
                children,
            )
            names[api.pid] = "api"
            ops_ports.append(api_ops)
            await _wait_http(api_port, "/api/readyz")
            tasks += [
                asyncio.create_task(_api_client(api_port, token, url, until, counts, seed=n))
                for n in range(options.api_clients)
            ]
        tasks.append(
            asyncio.create_task(_produce_rounds(bootstrap, topics, options, until, counts))
        )
        tasks.append(asyncio.create_task(_ops_client(ops_ports, until, counts)))
        erase_env = {**serve_env, "LOG_FORMAT": "json"}
        tasks.append(
            asyncio.create_task(
                _erase_some(erase_env, url, options, until, counts, out / "erase.log")
            )
        )
        restarted = not options.restart_postgres
        next_join = started + options.rebalance_every
        while time.monotonic() < until:
            await asyncio.sleep(1)
            for t in tasks:
                if t.done() and t.exception() is not None:
                    raise RuntimeError("a soak task failed") from t.exception()
            if serve.poll() is not None:
                raise RuntimeError(f"serve exited with {serve.returncode}")
            now = time.monotonic()
            if now >= next_join and now + options.rebalance_for + 30 < until:
                second = _start(
                    ["-m", "healthscore.cli", "serve", "--no-migrate", "--no-sweep"],
                    {**serve_env, "OPS_PORT": "0"},
                    out / f"serve-b-{counts.rebalances}.log",
                    children,
                )
                await asyncio.sleep(options.rebalance_for)
                _stop(second)
                counts.rebalances += 1
                next_join = time.monotonic() + options.rebalance_every
            if not restarted and now - started >= total / 2:
                await asyncio.to_thread(services.restart_postgres, "immediate", 2.0)
                counts.postgres_restarts += 1
                restarted = True
        await asyncio.gather(*tasks, return_exceptions=True)
    summary = summarize(out, names, warmup)
    summary["counts"] = asdict(counts)
    summary["options"] = {k: str(v) for k, v in asdict(options).items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.txt").write_text(render(summary) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--out", type=Path, default=Path("/tmp/soak"))
    p.add_argument("--rate", type=float, default=400.0)
    p.add_argument("--sample-seconds", type=float, default=20.0)
    p.add_argument("--warmup-seconds", type=float)
    p.add_argument("--no-api", action="store_true")
    p.add_argument("--api-clients", type=int, default=2, help="concurrent API clients")
    p.add_argument("--no-tracemalloc", action="store_true")
    args = p.parse_args(argv)
    options = SoakOptions(
        minutes=args.minutes,
        out=args.out,
        rate=args.rate,
        sample_seconds=args.sample_seconds,
        warmup_seconds=args.warmup_seconds,
        api=not args.no_api,
        api_clients=args.api_clients,
        tracemalloc=not args.no_tracemalloc,
    )
    services = resolve_services(prefer_containers=False)
    try:
        summary = asyncio.run(run_soak(options, services))
    finally:
        services.close()
    print(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
