"""`healthscore api-bench`: the read side under load, on the real stack.

1. tables holding N organizations (default 100,000), generated inside PostgreSQL:
   customer_health with 3-8 risk factors each (~1 KB of JSON), 14 daily score
   history rows, 3 milestones, interactions and alerts for some;
2. the API as its own process(es) (`healthscore api`, a LOGIN role in
   cs_dashboard, the signing key from the database), as in production;
3. the consumers writing meanwhile: `healthscore serve` fed a simulated stream
   at --write-rate events/s (new organizations, so customer_health grows and its
   indexes churn under the readers);
4. for each scenario (every sort and filter of the list, a second page, the
   organization page and its history), --clients concurrent closed-loop clients
   for --seconds, each request timed from send to the last byte by a minimal
   HTTP/1.1 client (keep-alive) so that the client's own cost stays small. The
   organization page and history are asked two ways: uniformly over 2,000
   organizations by one user, and as dashboard users ask them (`DashboardUser`):
   each client its own user, opening an organization of a small hot set (the
   first page of the at-risk list; or the at-risk organizations the consumers
   are writing) whose open page then refreshes itself --refreshes times before
   the user opens another;
5. the CPU time each scenario cost, from /proc: the API processes, the
   PostgreSQL backends of the API's login role, all of PostgreSQL, this load
   generator and the whole machine. Latency on a shared machine swings by a
   third from run to run; CPU per request is the steadier figure.

Prints p50/p95/p99 and CPU per request for each scenario and writes JSON
(--json-out). Nothing here is asserted: the figures go to docs/read-side.md with the
command that made them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlencode

import asyncpg

from healthscore.api.auth import issue_hs256
from healthscore.api.cache import MissReason, UnkeptReason
from healthscore.api.dev import DEV_LOGIN_ROLE, dev_login_url
from healthscore.config import Settings
from healthscore.service.kafka_clients import KafkaConnection
from healthscore.store import sql
from healthscore.store.migrate import apply_migrations
from healthscore_lab.devservices import die_with_parent, free_port, resolve_services
from healthscore_lab.simulator import SimulationConfig, generate, produce

FACTORS = (
    "inactivity",
    "low_activity",
    "few_logins",
    "few_active_users",
    "narrow_feature_adoption",
    "shallow_usage",
    "missing_milestones",
    "open_interactions",
    "negative_sentiment",
    "complaints",
    "weak_commercial_momentum",
    "contraction_signals",
)

# generated in PostgreSQL, in chunks of organizations; every statement reads $1 (the
# chunk's size) and writes rows for the organizations it creates
_PREFILL = """
WITH orgs AS (
    INSERT INTO organizations (id, name, plan)
    SELECT gen_random_uuid(), 'Bench Weddings ' || g, 'pro' FROM generate_series(1, $1) g
    RETURNING id
), scored AS (
    SELECT id, round((100 * power(random(), 0.7))::numeric, 2) AS s,
           (3 + floor(random() * 6))::int AS nfactors, random() AS r
    FROM orgs
), health AS (
    INSERT INTO customer_health (
        organization_id, health_score, engagement_score, adoption_score, milestone_score,
        support_score, growth_score, churn_probability, risk_factors, feature_usage,
        score_change_7d, score_change_30d, active_users_30d, open_interactions,
        milestones_achieved, last_activity_at, last_login_at, scored_at, score_model_version)
    SELECT id, s, s, least(100, s + 5), greatest(0, s - 5), s, s,
           round((1 / (1 + exp(-(4.5 - 10 * s / 100))))::numeric, 4),
           (SELECT jsonb_agg(jsonb_build_object(
                       'factor', ($2::text[])[1 + ((k * 7 + (r * 1000)::int) % 12)],
                       'value', round((random() * 30)::numeric, 1),
                       'impact', -round((random() * 12)::numeric, 2),
                       'detail', 'A sentence about this factor for the dashboard, as the '
                                 || 'scoring model writes it, with its measured value.')
                   ORDER BY k)
            FROM generate_series(1, nfactors) k),
           '{"forms": 12, "journeys": 3, "invoices": 7, "calendar": 20}',
           CASE WHEN r < 0.1 THEN NULL ELSE round((random() * 40 - 25)::numeric, 2) END,
           CASE WHEN r < 0.2 THEN NULL ELSE round((random() * 60 - 35)::numeric, 2) END,
           (random() * 8)::int, (random() * 3)::int, 3,
           now() - random() * interval '20 days', now() - random() * interval '20 days',
           now() - random() * interval '1 day', 'bench'
    FROM scored
    RETURNING organization_id
), history AS (
    INSERT INTO health_score_history (organization_id, scored_at, health_score,
                                      churn_probability, risk_level, components,
                                      score_model_version, cause)
    SELECT organization_id, now() - d * interval '1 day', 50 + d, 0.3, 'medium',
           '{"engagement": 50, "adoption": 60, "milestones": 40, "support": 70, "growth": 45}',
           'bench', 'events'
    FROM health, generate_series(0, 13) d
    RETURNING 1
), milestones AS (
    INSERT INTO success_milestones (organization_id, milestone_type, achieved_at,
                                    triggering_event_id, reward_type, reward_status)
    SELECT organization_id, m, now() - interval '30 days', gen_random_uuid(),
           CASE WHEN m = 'first_client_added' THEN 'badge' END,
           CASE WHEN m = 'first_client_added' THEN 'pending' END
    FROM health,
         unnest(ARRAY['onboarding_completed', 'profile_completed', 'first_client_added']) m
    RETURNING 1
), interactions AS (
    INSERT INTO support_interactions (id, organization_id, interaction_type, channel, status,
                                      priority, assigned_to, subject, opened_at,
                                      first_event_at, last_event_at)
    SELECT gen_random_uuid(), organization_id, 'technical_support', 'email',
           CASE WHEN random() < 0.3 THEN 'open' ELSE 'resolved' END, 'normal', $3::uuid,
           'Question about ' || md5(organization_id::text), now() - interval '3 days',
           now() - interval '3 days', now() - interval '2 days'
    FROM health WHERE random() < 0.5
    RETURNING 1
), alerts AS (
    INSERT INTO alert_outbox (alert_id, organization_id, kind, episode, payload, published_at)
    SELECT gen_random_uuid(), organization_id, 'risk_raised', 1,
           '{"health_score": 30, "risk_level": "high", "churn_probability": 0.6}', now()
    FROM health WHERE random() < 0.1
    RETURNING 1
)
SELECT (SELECT count(*) FROM history) + (SELECT count(*) FROM milestones)
       + (SELECT count(*) FROM interactions) + (SELECT count(*) FROM alerts)
"""
CHUNK = 10_000


@dataclass
class Scenario:
    name: str
    path: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    scenario: str
    requests: int
    errors: int
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    # CPU per request, microseconds: the API processes, and the PostgreSQL backends
    # serving them
    api_cpu_us: float | None = None
    pg_api_cpu_us: float | None = None
    # cores busy on average during the scenario: all of PostgreSQL (the consumer's
    # writes included), this load generator (the clients and the event producer), the
    # consumer (`healthscore serve`), the broker, the whole machine (other processes
    # than these included)
    pg_cores: float | None = None
    client_cores: float | None = None
    consumer_cores: float | None = None
    broker_cores: float | None = None
    machine_cores: float | None = None
    # the response cache's outcomes over the scenario, from the API processes' ops
    # ports' /metrics: hits (a kept answer, or a concurrent miss's shared answer) per
    # request, and the requests that ran statements
    cache_hit_ratio: float | None = None
    cache_misses: float | None = None
    cache_bypassed: float | None = None
    # the misses by reason (healthscore_api_cache_misses_total): no answer kept for the
    # key in that process, a version it read moved, a clock-bound answer's time up
    cache_misses_absent: float | None = None
    cache_misses_changed: float | None = None
    cache_misses_expired: float | None = None
    # list answers served lagging (within API_LIST_STALENESS_SECONDS of a change they do
    # not show), and those computed again in the background meanwhile
    cache_lagging: float | None = None
    cache_refreshes: float | None = None
    # answers computed but not kept, by why (healthscore_api_cache_unkept_total), and
    # answers pushed out by the cache's bounds
    cache_unkept_moved: float | None = None
    cache_unkept_not_serving: float | None = None
    cache_unkept_clock: float | None = None
    cache_evictions: float | None = None
    # dashboard scenarios: organizations in the hot set, and how many of them the
    # consumers wrote during the scenario
    hot_set: float | None = None
    hot_set_written: float | None = None
    # uniform scenarios: the pass that asked every target once of every API process
    # before the warm-up (each process's cache cold for each of them): its requests and
    # p95, what the first minutes after a replica starts look like
    cold_requests: float | None = None
    cold_p95_ms: float | None = None


@dataclass
class BenchSettings:
    organizations: int
    clients: int
    seconds: float
    write_rate: float
    api_processes: int
    pool_size: int
    cache_entries: int | None = None
    list_staleness: float | None = None
    refreshes: int = 4
    hot_set: int = 50
    only: list[str] = field(default_factory=list)


# --- a minimal HTTP/1.1 client: keep-alive GETs, Content-Length bodies -------------------


class Connection:
    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, target: str) -> int:
        return (await self.fetch(target))[0]

    async def fetch(self, target: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.token}\r\nAccept: application/json\r\n\r\n"
        )
        self.writer.write(request.encode())
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        return int(status_line.split()[1]), body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# what a client asks next
Visitor = Callable[[], str]


def uniform(targets: list[str]) -> Visitor:
    rng = random.Random()
    return lambda: rng.choice(targets)


class DashboardUser:
    """A dashboard user: opens an organization of the hot set (the at-risk list), whose
    page then refreshes itself `refreshes` times (every API_REFRESH_SECONDS on the real
    page; here back to back, as every client of this bench asks), then opens another.
    Its browser keeps one keep-alive connection, so one replica serves it (a
    Kubernetes Service balances connections, not requests)."""

    sticky = True

    def __init__(self, hot_set: list[str], path: Callable[[str], str], refreshes: int) -> None:
        self.hot_set, self.path, self.refreshes = hot_set, path, refreshes
        self.rng = random.Random()
        self.left = 0
        self.organization = ""

    def __call__(self) -> str:
        if self.left == 0:
            self.organization = self.rng.choice(self.hot_set)
            self.left = self.refreshes + 1
        self.left -= 1
        return self.path(self.organization)


async def _client(
    ports: list[int], token: str, visitor: Visitor, until: float, latencies: list[float]
) -> int:
    errors = 0
    connections = [Connection("127.0.0.1", port, token) for port in ports]
    rng = random.Random()
    # replicas behind a load balancer: by request, or one for the client's connection
    sticky = rng.choice(connections) if getattr(visitor, "sticky", False) else None
    try:
        while time.perf_counter() < until:
            conn = sticky or rng.choice(connections)
            target = visitor()
            start = time.perf_counter()
            try:
                status = await conn.get(target)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                conn.close()
                conn.writer = None
                errors += 1
                continue
            latencies.append((time.perf_counter() - start) * 1000)
            if status != 200:
                errors += 1
    finally:
        for conn in connections:
            conn.close()
    return errors


async def prime(
    ports: list[int], token: str, targets: list[str], clients: int
) -> tuple[int, float]:
    """Ask every target once of every API process, `clients` at a time: the requests
    and their p95 (ms)."""
    pending = [(port, target) for target in targets for port in ports]
    latencies: list[float] = []

    async def client() -> None:
        connections = {port: Connection("127.0.0.1", port, token) for port in ports}
        try:
            while pending:
                port, target = pending.pop()
                start = time.perf_counter()
                await connections[port].get(target)
                latencies.append((time.perf_counter() - start) * 1000)
        finally:
            for conn in connections.values():
                conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies), percentile(sorted(latencies) or [0.0], 0.95)


def percentile(ordered: list[float], p: float) -> float:
    """The `p` quantile of sorted latencies (ms), rounded to 0.1."""
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)


async def run_scenario(
    ports: list[int],
    name: str,
    clients: list[tuple[str, Visitor]],
    seconds: float,
    meter: CpuMeter | None = None,
) -> Result:
    """`clients`: each client's bearer token and what it asks."""
    latencies: list[float] = []
    before = meter.sample() if meter else None
    until = time.perf_counter() + seconds
    started = time.perf_counter()
    errors = await asyncio.gather(
        *(_client(ports, token, visitor, until, latencies) for token, visitor in clients)
    )
    elapsed = time.perf_counter() - started
    after = meter.sample() if meter else None
    ordered = sorted(latencies) or [0.0]

    return Result(
        scenario=name,
        requests=len(latencies),
        errors=sum(errors),
        per_second=round(len(latencies) / elapsed, 1),
        p50_ms=round(statistics.median(ordered), 1),
        p95_ms=percentile(ordered, 0.95),
        p99_ms=percentile(ordered, 0.99),
        max_ms=round(ordered[-1], 1),
        **cpu_figures(before, after, len(latencies)),
    )


# --- CPU time, from /proc ------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str]:
    # the command name may hold spaces and parentheses: split after the last ')'
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def _machine_busy_seconds() -> float:
    # the first line of /proc/stat: every CPU's ticks by state; idle and iowait are idle
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _TICKS


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far by each part of the stack (and the wall clock)."""

    at: float
    api: float
    pg_api: float
    pg_total: float
    client: float
    consumer: float
    broker: float
    machine: float


@dataclass
class CpuMeter:
    """Samples the API processes and PostgreSQL (when it runs on this machine)."""

    api_pids: list[int]
    postmaster: int | None
    consumer_pid: int | None = None
    broker_pid: int | None = None

    def sample(self) -> CpuSample | None:
        try:
            api = sum(_cpu_seconds(pid) for pid in self.api_pids)
            client = _cpu_seconds(os.getpid())
            machine = _machine_busy_seconds()
        except (OSError, ValueError, IndexError):
            return None
        consumer = broker = 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            consumer = _cpu_seconds(self.consumer_pid) if self.consumer_pid else 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            broker = _cpu_seconds(self.broker_pid) if self.broker_pid else 0.0
        pg_api = pg_total = 0.0
        if self.postmaster is not None:
            # exited backends are in the postmaster's reaped-children time
            with contextlib.suppress(OSError, ValueError, IndexError):
                pg_total = _cpu_seconds(self.postmaster, reaped_children=True)
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                with contextlib.suppress(OSError, ValueError, IndexError):
                    if int(_stat_fields(int(entry.name))[1]) != self.postmaster:
                        continue
                    seconds = _cpu_seconds(int(entry.name))
                    pg_total += seconds
                    # a backend's title: "postgres: <user> <database> <client> <state>"
                    title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").split()
                    if title[1:2] == [DEV_LOGIN_ROLE.encode()]:
                        pg_api += seconds
        return CpuSample(
            time.perf_counter(), api, pg_api, pg_total, client, consumer, broker, machine
        )


def cpu_figures(
    before: CpuSample | None, after: CpuSample | None, requests: int
) -> dict[str, float]:
    if before is None or after is None or requests == 0:
        return {}
    wall = after.at - before.at
    return {
        "api_cpu_us": round((after.api - before.api) / requests * 1e6),
        "pg_api_cpu_us": round((after.pg_api - before.pg_api) / requests * 1e6),
        "pg_cores": round((after.pg_total - before.pg_total) / wall, 2),
        "client_cores": round((after.client - before.client) / wall, 2),
        "consumer_cores": round((after.consumer - before.consumer) / wall, 2),
        "broker_cores": round((after.broker - before.broker) / wall, 2),
        "machine_cores": round((after.machine - before.machine) / wall, 2),
    }


async def _postmaster_pid(url: str) -> int | None:
    """The postmaster of the server behind `url`, when it runs on this machine."""
    conn = await asyncpg.connect(url)
    try:
        backend: int = await conn.fetchval("SELECT pg_backend_pid()")
        address = await conn.fetchval("SELECT inet_server_addr()")
        if address is not None and not str(address).startswith(("127.", "::1")):
            return None
        # while the backend lives: its parent is the postmaster
        try:
            return int(_stat_fields(backend)[1])
        except (OSError, ValueError, IndexError):
            return None
    finally:
        await conn.close()


# --- the stack ----------------------------------------------------------------------------


async def prefill(url: str, organizations: int, support_user: uuid.UUID) -> None:
    conn = await asyncpg.connect(url)
    try:
        done = 0
        while done < organizations:
            size = min(CHUNK, organizations - done)
            await conn.fetchval(_PREFILL, size, list(FACTORS), support_user)
            done += size
            print(f"  prefilled {done:,} organizations", flush=True)
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _users(url: str, dashboard_users: int) -> dict[str, uuid.UUID]:
    """The bench's admin and support user, and `dashboard_users` more admins
    (`dashboard-<n>`), one per client of the dashboard scenarios."""
    users = {"admin": uuid.uuid4(), "support": uuid.uuid4()}
    users |= {f"dashboard-{n}": uuid.uuid4() for n in range(dashboard_users)}
    conn = await asyncpg.connect(url)
    try:
        for name, user_id in users.items():
            role = "support" if name == "support" else "admin"
            await conn.execute(
                "INSERT INTO user_profiles (id, email, full_name, role) VALUES ($1, $2, $3, $4)",
                user_id,
                f"bench-{name}-{user_id.hex[:6]}@healthscore.invalid",
                f"Bench {name}",
                role,
            )
    finally:
        await conn.close()
    return users


async def _signing_key(url: str) -> tuple[int, str]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT key_id, encode(secret, 'hex') AS secret FROM app_signing_keys"
            " WHERE retired_at IS NULL ORDER BY key_id DESC LIMIT 1"
        )
    finally:
        await conn.close()
    assert row is not None
    return row["key_id"], row["secret"]


async def _sample_ids(url: str, count: int) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        # uniform over the table (TABLESAMPLE SYSTEM chose none of a small table's few
        # pages at times; a LIMIT on BERNOULLI keeps the first rows in table order)
        rows = await conn.fetch(
            "SELECT organization_id FROM customer_health ORDER BY random() LIMIT $1", count
        )
    finally:
        await conn.close()
    return [str(r["organization_id"]) for r in rows]


@contextlib.contextmanager
def _children(
    argvs: list[tuple[list[str], dict[str, str]]], logs: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for i, (argv, env) in enumerate(argvs):
            log = (logs / f"child-{i}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    argv,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                )
            )
        yield processes
    finally:
        stop_all(processes)


def inherited_environment() -> dict[str, str]:
    """This process's environment less its API and database settings (a child's own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "DATABASE"))}
    env.pop("MIGRATION_DATABASE_URL", None)
    return env


def stop_all(processes: list[subprocess.Popen[bytes]], within: float = 30) -> None:
    """SIGTERM each process still running, then wait for each; kill one that takes longer."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(within)
        except subprocess.TimeoutExpired:
            process.kill()


CACHE_OUTCOMES = ("hit", "lagging", "shared", "miss", "bypass")
MISS_REASONS: tuple[str, ...] = get_args(MissReason)
UNKEPT: tuple[str, ...] = get_args(UnkeptReason)
_COUNTERS = {
    **{f'healthscore_api_cache_requests_total{{outcome="{o}"}} ': o for o in CACHE_OUTCOMES},
    **{f'healthscore_api_cache_misses_total{{reason="{r}"}} ': f"miss_{r}" for r in MISS_REASONS},
    **{f'healthscore_api_cache_unkept_total{{reason="{r}"}} ': f"unkept_{r}" for r in UNKEPT},
    "healthscore_api_cache_evictions_total ": "evictions",
    "healthscore_api_cache_refreshes_total ": "refreshes",
}


async def cache_outcomes(ops_ports: list[int]) -> dict[str, float]:
    """The response cache's request counters, summed over the API processes (each one's
    exposition is on its ops port)."""
    totals = dict.fromkeys(_COUNTERS.values(), 0.0)
    for port in ops_ports:
        conn = Connection("127.0.0.1", port, "")
        try:
            status, body = await conn.fetch("/metrics")
        finally:
            conn.close()
        if status != 200:
            continue
        for line in body.decode().splitlines():
            for prefix, name in _COUNTERS.items():
                if line.startswith(prefix):
                    totals[name] += float(line[len(prefix) :])
    return totals


def cache_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float | int]:
    delta = {k: after[k] - before[k] for k in after}
    total = sum(delta[k] for k in CACHE_OUTCOMES)
    if total == 0:
        return {}
    return {
        "cache_hit_ratio": round((delta["hit"] + delta["lagging"] + delta["shared"]) / total, 3),
        "cache_lagging": int(delta["lagging"]),
        "cache_refreshes": int(delta["refreshes"]),
        "cache_misses": int(delta["miss"]),
        "cache_bypassed": int(delta["bypass"]),
        **{f"cache_misses_{r}": int(delta[f"miss_{r}"]) for r in MISS_REASONS},
        **{f"cache_unkept_{r}": int(delta[f"unkept_{r}"]) for r in UNKEPT},
        "cache_evictions": int(delta["evictions"]),
    }


async def _wait_ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
            conn = Connection("127.0.0.1", port, "")
            try:
                if await conn.get("/api/readyz") == 200:
                    return
            finally:
                conn.close()
        await asyncio.sleep(0.3)
    raise RuntimeError(f"the API on port {port} did not become ready")


def scenarios(ids: list[str]) -> list[tuple[str, list[str]]]:
    def org_list(**params: str) -> str:
        return "/api/v1/organizations?" + urlencode({"limit": "50", **params})

    return [
        ("list: churn_probability (default)", [org_list()]),
        ("list: sort=health_score", [org_list(sort="health_score")]),
        ("list: sort=score_change_7d", [org_list(sort="score_change_7d")]),
        ("list: health_status=at_risk", [org_list(health_status="at_risk")]),
        (
            "list: health_status=good, sort=health_score",
            [org_list(health_status="good", sort="health_score")],
        ),
        ("list: risk_level=high", [org_list(risk_level="high")]),
        ("list: factor=complaints", [org_list(factor="complaints")]),
        ("list: q=<id prefix>", [org_list(q=i[:4]) for i in ids[:200]]),
        (
            "list: q=<id prefix>, sort=health_score",
            [org_list(q=i[:4], sort="health_score") for i in ids[:200]],
        ),
        (
            "list: q=<id prefix>, sort=score_change_7d",
            [org_list(q=i[:4], sort="score_change_7d") for i in ids[:200]],
        ),
        # two digits: about 390 of 100,000 organizations each, pages of 50
        ("list: q=<2-digit id prefix>", [org_list(q=i[:2]) for i in ids[:200]]),
        # a name as staff type it: 12 or fewer organizations ("4217" starts 4217 and
        # 42170-42179), and a word every organization's name has (the worst case)
        (
            "list: name=<a name>",
            [org_list(name=f"bench {n * 397 % 99_000 + 1}") for n in range(200)],
        ),
        ("list: name=<a word of every name>", [org_list(name="weddings")]),
        ("organization page", [f"/api/v1/organizations/{i}" for i in ids]),
        ("organization history (30 days)", [f"/api/v1/organizations/{i}/history" for i in ids]),
    ]


def organization_page(organization: str) -> str:
    return f"/api/v1/organizations/{organization}"


def organization_history(organization: str) -> str:
    return f"/api/v1/organizations/{organization}/history"


async def _at_risk_list(port: int, token: str, size: int) -> list[str]:
    """The organizations of the at-risk list's first page, as the dashboard opens it."""
    conn = Connection("127.0.0.1", port, token)
    try:
        status, body = await conn.fetch(f"/api/v1/organizations?limit={size}")
    finally:
        conn.close()
    assert status == 200, body
    return [item["organization_id"] for item in json.loads(body)["items"]]


async def _written_at_risk(url: str, size: int) -> list[str]:
    """The organizations most likely to churn among those the consumers wrote in the
    last 10 s: an at-risk list whose every organization is being written."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT organization_id FROM customer_health"
            " WHERE updated_at > now() - interval '10 seconds'"
            " ORDER BY churn_probability DESC LIMIT $1",
            size,
        )
    finally:
        await conn.close()
    return [str(r["organization_id"]) for r in rows]


async def _written_since(url: str, organizations: list[str], since: datetime) -> int:
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM customer_health"
            " WHERE organization_id = ANY($1::uuid[]) AND updated_at >= $2",
            organizations,
            since,
        )
    finally:
        await conn.close()
    return count


async def _second_pages(port: int, token: str) -> list[str]:
    """Second pages of the default list, by the cursor the first page returns."""
    import http.client

    def fetch() -> str | None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(
            "GET", "/api/v1/organizations?limit=50", headers={"Authorization": f"Bearer {token}"}
        )
        body = json.loads(conn.getresponse().read())
        conn.close()
        cursor: str | None = body["next_cursor"]
        return cursor

    cursor = await asyncio.to_thread(fetch)
    return [f"/api/v1/organizations?{urlencode({'limit': '50', 'cursor': cursor or ''})}"]


async def run_api_bench(options: BenchSettings) -> dict[str, object]:
    settings = Settings()
    services = resolve_services(
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
    )
    logs = Path(".healthscore") / "api-bench"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        url = services.database_url
        print(f"{services.kind} PostgreSQL and broker; migrating", flush=True)
        await apply_migrations(url)
        users = await _users(url, options.clients)
        started = time.perf_counter()
        await prefill(url, options.organizations, users["support"])
        print(f"prefill: {time.perf_counter() - started:.0f}s", flush=True)
        key_id, secret = await _signing_key(url)
        login_url = await dev_login_url(url)
        jwt_secret = secrets.token_urlsafe(32)
        token = issue_hs256(jwt_secret, users["admin"], timedelta(hours=2))
        dashboard_tokens = [
            issue_hs256(jwt_secret, users[f"dashboard-{n}"], timedelta(hours=2))
            for n in range(options.clients)
        ]
        ports = [free_port() for _ in range(options.api_processes)]
        ops_ports = [free_port() for _ in range(options.api_processes)]
        base_env = inherited_environment()
        api_env = {
            **base_env,
            "API_DATABASE_URL": login_url,
            "API_DB_SIGNING_KEY_ID": str(key_id),
            "API_DB_SIGNING_KEY": secret,
            "API_JWT_SECRET": jwt_secret,
            "API_DATABASE_POOL_SIZE": str(options.pool_size),
            "LOG_LEVEL": "WARNING",
        }
        if options.cache_entries is not None:
            api_env["API_RESPONSE_CACHE_ENTRIES"] = str(options.cache_entries)
        if options.list_staleness is not None:
            api_env["API_LIST_STALENESS_SECONDS"] = str(options.list_staleness)
        suffix = uuid.uuid4().hex[:6]
        topics = {
            "USAGE_TOPIC": f"bench-usage-{suffix}",
            "SUPPORT_TOPIC": f"bench-support-{suffix}",
            "PROFILE_TOPIC": f"bench-profile-{suffix}",  # its own: never a real CRM's
            "ALERT_TOPIC": f"bench-alerts-{suffix}",
            "HEALTH_TOPIC": f"bench-health-{suffix}",
        }
        serve_env = {
            **base_env,
            **topics,
            "DATABASE_URL": url,
            "KAFKA_BOOTSTRAP_SERVERS": services.kafka_bootstrap_servers,
            # a broker given by the environment may refuse idempotence too (the setting)
            "KAFKA_IDEMPOTENT_PRODUCER": "true"
            if services.broker_supports_idempotence and settings.kafka_idempotent_producer
            else "false",
            "OPS_PORT": "0",
            "LOG_LEVEL": "WARNING",
        }
        command = [sys.executable, "-m", "healthscore.cli"]
        children = [
            ([*command, "api", "--port", str(port), "--ops-port", str(ops)], api_env)
            for port, ops in zip(ports, ops_ports, strict=True)
        ]
        if options.write_rate > 0:
            children.append(([*command, "serve", "--no-migrate", "--no-sweep"], serve_env))
        with _children(children, logs) as processes:
            for port in ports:
                await _wait_ready(port)
            meter = CpuMeter(
                [p.pid for p in processes[: len(ports)]],
                await _postmaster_pid(login_url),
                processes[len(ports)].pid if options.write_rate > 0 else None,
                services.broker_process.pid if services.broker_process else None,
            )
            ids = await _sample_ids(url, 2000)
            writer = None
            if options.write_rate > 0:
                writer = asyncio.create_task(_write(serve_env, options.write_rate))
                await asyncio.sleep(10)  # the consumer joins and starts writing
                # then applies what was produced before it joined, in large batches whose
                # statements announce whole tables: not the steady writing measured here
                live_after = await _wait_consumer_live(url, options.write_rate)
                print(f"consumer live after {live_after}", flush=True)
            second = await _second_pages(ports[0], token)
            results: list[Result] = []
            print(
                f"{options.clients} clients, {options.seconds:g}s per scenario, "
                f"{options.api_processes} API process(es), writes at {options.write_rate:g}/s",
                flush=True,
            )
            # (name, its clients, the targets asked uniformly: primed first)
            plan: list[tuple[str, Callable[[], Any], list[str]]] = [
                (name, _uniform_clients(token, targets, options.clients), targets)
                for name, targets in scenarios(ids)
            ]
            plan.insert(
                7,
                (
                    "list: second page (cursor)",
                    _uniform_clients(token, second, options.clients),
                    second,
                ),
            )
            for hot_name, hot_set in (
                ("at-risk list", lambda: _at_risk_list(ports[0], token, options.hot_set)),
                ("at risk, being written", lambda: _written_at_risk(url, options.hot_set)),
            ):
                for page_name, path in (
                    ("organization page", organization_page),
                    ("organization history", organization_history),
                ):
                    plan.append(
                        (
                            f"dashboard: {page_name} ({hot_name})",
                            _dashboard_clients(hot_set, path, dashboard_tokens, options.refreshes),
                            [],
                        )
                    )
            for name, make_clients, targets in plan:
                if options.only and not any(part in name for part in options.only):
                    continue
                clients, hot = await make_clients()
                if not clients or (name.startswith("dashboard") and not hot):
                    print(f"  {name}: skipped, its hot set is empty", flush=True)
                    continue
                # each uniform target asked of each process once: the steady state is
                # measured, not each process's first request for each of them (its cold
                # pass is reported beside it); the dashboard's users ask a hot set
                cold = await prime(ports, token, targets, options.clients) if targets else None
                # a short warm-up of each statement's plans and the pool
                await run_scenario(ports, name, clients, 1.0)
                cache_before = await cache_outcomes(ops_ports)
                started_at = datetime.now(UTC)
                result = await run_scenario(ports, name, clients, options.seconds, meter)
                for key, value in cache_figures(
                    cache_before, await cache_outcomes(ops_ports)
                ).items():
                    setattr(result, key, value)
                if cold is not None:
                    result.cold_requests, result.cold_p95_ms = cold
                if hot:
                    result.hot_set = len(hot)
                    result.hot_set_written = await _written_since(url, hot, started_at)
                results.append(result)
                print(
                    f"  {name:<46} p50 {result.p50_ms:7.1f}  p95 {result.p95_ms:7.1f}  "
                    f"p99 {result.p99_ms:7.1f} ms  {result.per_second:7.1f}/s  "
                    f"errors {result.errors}  CPU/request: API {result.api_cpu_us} us, "
                    f"PostgreSQL {result.pg_api_cpu_us} us; cores busy: PostgreSQL "
                    f"{result.pg_cores}, clients {result.client_cores}, consumer "
                    f"{result.consumer_cores}, broker {result.broker_cores}, "
                    f"machine {result.machine_cores}; cache hits {result.cache_hit_ratio}, "
                    f"misses {result.cache_misses} (absent {result.cache_misses_absent}, "
                    f"changed {result.cache_misses_changed}, expired "
                    f"{result.cache_misses_expired}); not kept: moved {result.cache_unkept_moved}, "
                    f"not serving {result.cache_unkept_not_serving}, clock "
                    f"{result.cache_unkept_clock}; "
                    f"evicted {result.cache_evictions}; lagging {result.cache_lagging}, "
                    f"refreshed {result.cache_refreshes}"
                    + (
                        f"; cold pass {result.cold_requests} requests, p95 {result.cold_p95_ms} ms"
                        if cold is not None
                        else ""
                    )
                    + (
                        f"; hot set {result.hot_set}, written {result.hot_set_written}"
                        if result.hot_set
                        else ""
                    ),
                    flush=True,
                )
            written = await _fetch_count(url)
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
        return {
            "when": datetime.now(UTC).isoformat(),
            "settings": asdict(options),
            "organizations_scored_after": written,
            "results": [asdict(r) for r in results],
        }
    finally:
        services.close()


Clients = tuple[list[tuple[str, Visitor]], list[str]]


def _uniform_clients(token: str, targets: list[str], count: int) -> Callable[[], Any]:
    """`count` clients of one user, each asking any of `targets` at random."""

    async def make() -> Clients:
        return [(token, uniform(targets)) for _ in range(count)], []

    return make


def _dashboard_clients(
    hot_set: Callable[[], Any], path: Callable[[str], str], tokens: list[str], refreshes: int
) -> Callable[[], Any]:
    """One client per dashboard user (token), each a DashboardUser over the hot set,
    taken when the scenario starts."""

    async def make() -> Clients:
        hot: list[str] = await hot_set()
        return [(token, DashboardUser(hot, path, refreshes)) for token in tokens], hot

    return make


async def _wait_consumer_live(
    url: str, rate: float, steady_seconds: int = 3, timeout: float = 120.0
) -> str:
    """Wait until the consumer applies about `rate` records a second, no more (a backlog)
    and no less, for `steady_seconds` seconds in a row, with the read model under 2 s
    behind; say how long that took."""
    started = time.monotonic()
    conn = await asyncpg.connect(url)
    try:
        steady = 0
        previous: int | None = None
        while time.monotonic() - started < timeout:
            applied = int(
                await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets")
            )
            staleness = float(await conn.fetchval(sql.READ_MODEL_STALENESS))
            if previous is not None:
                pace = applied - previous
                steady = steady + 1 if 0.5 * rate <= pace <= 1.5 * rate and staleness < 2 else 0
                if steady >= steady_seconds:
                    return f"{time.monotonic() - started:.1f} s"
            previous = applied
            await asyncio.sleep(1.0)
    finally:
        await conn.close()
    return f"more than {timeout:g} s (measuring anyway)"


async def _fetch_count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM customer_health")
    finally:
        await conn.close()
    return count


async def _write(env: dict[str, str], rate: float) -> None:
    """The consumers' input: a simulated stream over new organizations, at `rate`."""
    from healthscore.config import Settings

    settings = Settings.model_construct(
        **{
            **Settings().model_dump(),
            "kafka_bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"],
            "usage_topic": env["USAGE_TOPIC"],
            "support_topic": env["SUPPORT_TOPIC"],
        }
    )
    producer = KafkaConnection.from_settings(settings).producer(
        acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        config = SimulationConfig(
            start=datetime.now(UTC) - timedelta(days=30),
            organizations=20_000,
            events=int(rate * 3600),
            seed=14,
            span=timedelta(days=30),
        )
        await produce(
            generate(config), producer, env["USAGE_TOPIC"], env["SUPPORT_TOPIC"], rate=rate
        )
    finally:
        await producer.stop()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--organizations", type=int, default=100_000)
    p.add_argument("--clients", type=int, default=50, help="concurrent closed-loop clients")
    p.add_argument("--seconds", type=float, default=10.0, help="per scenario")
    p.add_argument(
        "--write-rate", type=float, default=1000.0, help="events/s the consumers apply meanwhile"
    )
    p.add_argument("--api-processes", type=int, default=2, help="API replicas, load-balanced")
    p.add_argument("--pool-size", type=int, default=10, help="connections per API process")
    p.add_argument(
        "--cache-entries",
        type=int,
        default=None,
        help="API_RESPONSE_CACHE_ENTRIES of the API processes (0: no response cache); "
        "unset: the setting's default",
    )
    p.add_argument(
        "--list-staleness",
        type=float,
        default=None,
        help="API_LIST_STALENESS_SECONDS of the API processes (0: exact lists); unset: the "
        "setting's default",
    )
    p.add_argument(
        "--refreshes",
        type=int,
        default=4,
        help="dashboard scenarios: refreshes of an open page before its user opens another "
        "(4: open a minute at API_REFRESH_SECONDS=15)",
    )
    p.add_argument(
        "--hot-set", type=int, default=50, help="dashboard scenarios: organizations in the hot set"
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only the scenarios whose name contains this (repeatable)",
    )
    p.add_argument("--json-out", type=Path)


def run(args: argparse.Namespace) -> int:
    options = BenchSettings(
        organizations=args.organizations,
        clients=args.clients,
        seconds=args.seconds,
        write_rate=args.write_rate,
        api_processes=args.api_processes,
        pool_size=args.pool_size,
        cache_entries=args.cache_entries,
        list_staleness=args.list_staleness,
        refreshes=args.refreshes,
        hot_set=args.hot_set,
        only=args.only,
    )
    report = asyncio.run(run_api_bench(options))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0
