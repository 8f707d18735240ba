"""Faults in combination: a seeded random schedule of them over replicas of one group.

Two or three `healthscore serve` processes share one consumer group and consume
a simulated stream (duplicates, poison records of `healthscore_lab.poison`, CRM
profiles) that is produced at a steady rate while a random schedule of faults
runs. The schedule comes from a seed alone; the faults start at their times
whatever the others are doing, so they overlap: a rebalance while PostgreSQL
restarts, a SIGKILL while another replica is frozen, the broker paused during a
takeover. The replicas always align by event time (ALIGNMENT_LIVE_LAG_RECORDS=0),
so a kill often cuts a replica holding records back (`service/holdback.py`).

The faults (`FAULT_KINDS`): SIGKILL a replica and start it again; freeze one
(SIGSTOP, then SIGCONT) for less than the session and idle-transaction limits, or
for more than them; crash-restart PostgreSQL; pause the broker; add a replica;
remove one (SIGTERM). A fault that needs a replica nobody else is faulting and
finds none is skipped (reported).

At the end, every replica running and caught up: the stored offsets at the end
of every partition, every valid event applied once and the state the oracle
(tests/faults/oracle.py) computes from the stream alone, each poison record
dead-lettered (at least once, by its source coordinates) with the reason the
corpus gives it, the read model and the health feed equal to the stored states,
alert ids unique, the outbox fully published and exactly what the alert topic
carries. The seed is printed, and added to a failure; `CHAOS_SEED` (and
`CHAOS_FAULTS`) replay one.

A known failure that is not the service's: the embedded broker (tansu 0.6.0) can
keep naming a member that left (LeaveGroup acknowledged) as the leader of the
generation it answers every later JoinGroup with (long seed 1597: the leader was
elected just before a broker pause and stopped after it); every SyncGroup then
fails with REBALANCE_IN_PROGRESS and no replica holds partitions again. The
catch-up wait fails naming the group's state and which replicas started;
aiokafka's group coordinator logger at DEBUG (the service logs libraries from
WARNING) shows the loop. Its cause, tansu's LeaveGroup of a forming group keeping the
leaving member as leader, is reproduced on its own in test_group_leader_leaves.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from healthscore_lab.devservices import Services
from tests.faults.oracle import simulated_stream
from tests.faults.test_crash_recovery import (
    check_alert_topic,
    check_database,
    check_poison_dead_lettered,
    check_read_model,
    wait_published,
)
from tests.utils.fault_tools import log_events, log_tail
from tests.utils.faults import Produced, end_offsets, produce_recorded
from tests.utils.harness import (
    ServiceProcess,
    fetchval,
    make_producer,
    make_topics,
    ops_get,
    service_settings,
)

pytestmark = pytest.mark.faults

# PostgreSQL ends a replica's session idling this long inside a transaction, or whose
# transaction lasted this long (a replica frozen mid-batch holds its offset rows until)
IDLE_LIMIT_SECONDS = 3
TIME_LIMIT_SECONDS = 8
# the group drops a silent member after this; the schedule's freezes are cut to it
SESSION_TIMEOUT_MS = 3000

# what `serve` prints before it exits (code 2) when a dependency is away at start-up
STARTUP_UNREACHABLE = (
    "error: cannot connect to PostgreSQL at DATABASE_URL",
    "error: cannot reach the Kafka brokers",
)

FAULT_KINDS = (
    "kill",
    "freeze_short",
    "freeze_long",
    "postgres_restart",
    "broker_pause",
    "add_replica",
    "remove_replica",
)


@dataclass(frozen=True)
class ChaosPlan:
    seed: int
    faults: int
    events: int
    span_seconds: float  # the stream is produced over this long; the faults start within it
    organizations: int = 120
    replicas: int = 2  # at the start; add/remove keep it within 1..max_replicas
    max_replicas: int = 3
    duplicate_rate: float = 0.03
    malformed_rate: float = 0.004
    profile_share: float = 0.2
    batch_max_records: int = 300
    drain_timeout: float = 120.0
    kinds: tuple[str, ...] = FAULT_KINDS


# CI's form leaves out the graceful leave (`remove_replica`): its LeaveGroup is what the
# embedded broker's stale-leader stall (above) follows, and CI failed on it once in a
# run beside the other tests (seed 20261205); the long form keeps every kind
SHORT = ChaosPlan(
    seed=20261205,
    faults=6,
    events=4_000,
    span_seconds=20.0,
    kinds=tuple(kind for kind in FAULT_KINDS if kind != "remove_replica"),
)
# CHAOS_SEEDS="21 34": the long form on those seeds (a replay)
LONG_SEEDS = tuple(
    int(seed) for seed in os.environ.get("CHAOS_SEEDS", "1 2 3 5 8 13 21 34").split()
)


def long_plan(seed: int) -> ChaosPlan:
    return ChaosPlan(seed=seed, faults=16, events=15_000, span_seconds=60.0, drain_timeout=240.0)


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the schedule starts
    kind: str
    seconds: float  # how long: down, frozen, paused (kill: until the restart)


def fault_schedule(plan: ChaosPlan) -> list[Fault]:
    """The faults of `plan.seed`: kinds, start times and lengths; deterministic."""
    kinds = plan.kinds
    rng = random.Random(plan.seed)
    faults = []
    deck: list[str] = []
    for _ in range(plan.faults):
        if not deck:  # every kind once, in a random order, before any comes again
            deck = rng.sample(kinds, len(kinds))
        kind = deck.pop()
        seconds = {
            "kill": rng.uniform(0.0, 3.0),
            # below the session timeout and the idle limit: nothing notices but latency
            "freeze_short": rng.uniform(
                0.3, 0.8 * min(SESSION_TIMEOUT_MS / 1000, IDLE_LIMIT_SECONDS)
            ),
            # beyond both, and often beyond the transaction time limit
            "freeze_long": rng.uniform(IDLE_LIMIT_SECONDS + 2, TIME_LIMIT_SECONDS + 4),
            "postgres_restart": rng.uniform(0.5, 3.0),
            "broker_pause": rng.uniform(1.0, 8.0),
            "add_replica": 0.0,
            "remove_replica": 0.0,
        }[kind]
        at = rng.uniform(0.05, 0.9) * plan.span_seconds
        faults.append(Fault(round(at, 2), kind, round(seconds, 2)))
    return sorted(faults, key=lambda f: f.at)


@dataclass
class Replica:
    name: str
    process: ServiceProcess
    log_path: str
    member: bool = True  # meant to be running (not removed)
    busy: bool = False  # a fault holds it
    expected_down: bool = False  # killed or being stopped by the test

    restarts: int = 0  # by the test as the orchestrator: refused to start, dependency away

    def check(self) -> None:
        """Fail if it exited, unless it refused to start because PostgreSQL or the
        broker was away (exit code 2 and the one line saying so): the orchestrator
        restarts such a replica (docs/operations.md), and so does this."""
        if not self.member or self.expected_down or self.process.alive:
            return
        assert self.process.process is not None
        # what it printed after its last JSON log line (the error may span lines)
        lines = log_tail(self.log_path, 2000).strip().splitlines()
        last = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith("{")), -1)
        said = lines[last + 1] if last + 1 < len(lines) else ""
        refused = self.process.process.returncode == 2 and said.startswith(STARTUP_UNREACHABLE)
        assert refused, f"{self.name} exited:\n{log_tail(self.log_path)}"
        self.restarts += 1
        self.process.start(self.log_path)


@dataclass
class Chaos:
    """The running replicas and what the faults did to them."""

    settings_env: dict[str, str]
    settings: Any
    tmp_path: Path
    services: Services
    rng: random.Random
    plan: ChaosPlan
    replicas: list[Replica] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # what each fault did, in end order
    postgres_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    broker_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def start_replica(self) -> Replica:
        name = f"r{len(self.replicas)}"
        process = ServiceProcess(self.settings, self.settings_env)
        replica = Replica(name, process, str(self.tmp_path / f"{name}.log"))
        process.start(replica.log_path)
        self.replicas.append(replica)
        return replica

    def members(self) -> list[Replica]:
        return [r for r in self.replicas if r.member]

    def pick(self) -> Replica | None:
        """A running replica no other fault holds (chosen by the seeded generator)."""
        free = [r for r in self.members() if not r.busy and r.process.alive]
        if not free:
            return None
        replica = free[self.rng.randrange(len(free))]
        replica.busy = True
        return replica

    def check(self) -> None:
        for replica in self.replicas:
            replica.check()

    async def run(self, fault: Fault) -> None:
        what = await getattr(self, fault.kind)(fault)
        self.done.append(f"{fault.at:.1f}s {fault.kind} {fault.seconds:.1f}s: {what}")

    async def kill(self, fault: Fault) -> str:
        replica = self.pick()
        if replica is None:
            return "skipped (no free replica)"
        assert replica.process.process is not None
        replica.expected_down = True
        # the event-time alignment held records back in its last batch: the kill drops them
        committed = log_events(replica.log_path, "batch_committed")
        holding = bool(committed and committed[-1].get("held_from"))
        await asyncio.to_thread(replica.process.kill)
        await asyncio.sleep(fault.seconds)
        replica.process.start(replica.log_path)
        replica.expected_down = False
        replica.busy = False
        return f"{replica.name} killed{' holding records back' if holding else ''}, restarted"

    async def freeze_short(self, fault: Fault) -> str:
        return await self._freeze(fault)

    async def freeze_long(self, fault: Fault) -> str:
        return await self._freeze(fault)

    async def _freeze(self, fault: Fault) -> str:
        replica = self.pick()
        if replica is None:
            return "skipped (no free replica)"
        assert replica.process.process is not None
        pid = replica.process.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(fault.seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
            replica.busy = False
        return f"{replica.name} frozen"

    async def postgres_restart(self, fault: Fault) -> str:
        if self.services.postgres_server is None:
            return "skipped (not the embedded PostgreSQL)"
        async with self.postgres_lock:
            restart = asyncio.ensure_future(
                asyncio.to_thread(self.services.restart_postgres, "immediate", fault.seconds)
            )
            try:
                await asyncio.shield(restart)
            except asyncio.CancelledError:
                await restart  # the thread goes on: the server must be back before the end
                raise
        return "PostgreSQL crash-stopped and started again"

    async def broker_pause(self, fault: Fault) -> str:
        if self.services.broker_process is None:
            return "skipped (not the embedded broker)"
        pid = self.services.broker_process.pid
        async with self.broker_lock:
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(fault.seconds)
            finally:
                os.kill(pid, signal.SIGCONT)
        return "broker paused"

    async def add_replica(self, fault: Fault) -> str:
        if len(self.members()) >= self.plan.max_replicas:
            return "skipped (at the most replicas)"
        return f"{self.start_replica().name} started"

    async def remove_replica(self, fault: Fault) -> str:
        if len(self.members()) <= 1:
            return "skipped (the last replica)"
        replica = self.pick()
        if replica is None:
            return "skipped (no free replica)"
        replica.member = False
        replica.expected_down = True
        await asyncio.to_thread(replica.process.terminate)
        return f"{replica.name} stopped (SIGTERM)"

    def stop_all(self) -> None:
        for replica in self.replicas:
            if replica.process.process is not None and replica.process.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(replica.process.process.pid, signal.SIGCONT)
            replica.process.kill()
        if self.services.broker_process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.services.broker_process.pid, signal.SIGCONT)


async def test_faults_in_combination_short(
    services: Services, migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    plan = SHORT
    if "CHAOS_SEED" in os.environ:  # replay a seed a failure printed
        plan = dataclasses.replace(
            plan,
            seed=int(os.environ["CHAOS_SEED"]),
            faults=int(os.environ.get("CHAOS_FAULTS", plan.faults)),
        )
    await run_chaos(services, migrated_database, kafka_bootstrap, tmp_path, plan)


@pytest.mark.slow
@pytest.mark.parametrize("seed", LONG_SEEDS)
async def test_faults_in_combination_long(
    services: Services, migrated_database: str, kafka_bootstrap: str, tmp_path: Path, seed: int
) -> None:
    await run_chaos(services, migrated_database, kafka_bootstrap, tmp_path, long_plan(seed))


async def run_chaos(
    services: Services, database_url: str, bootstrap: str, tmp_path: Path, plan: ChaosPlan
) -> None:
    schedule = fault_schedule(plan)
    print(f"chaos seed {plan.seed}:", [f"{f.at}s {f.kind} {f.seconds}s" for f in schedule])
    # a fault these services cannot take is said, not run as "skipped" under a pass
    available = {
        "postgres_restart": services.postgres_server is not None,
        "broker_pause": services.broker_process is not None,
    }
    unavailable = sorted({f.kind for f in schedule if not available.get(f.kind, True)})
    if unavailable:
        pytest.skip(f"chaos faults {unavailable} need the embedded PostgreSQL and broker")
    try:
        await _run_chaos(services, database_url, bootstrap, tmp_path, plan, schedule)
    except BaseException as exc:
        exc.add_note(f"chaos seed {plan.seed} ({plan.faults} faults): replay with CHAOS_SEED")
        raise


async def _run_chaos(
    services: Services,
    database_url: str,
    bootstrap: str,
    tmp_path: Path,
    plan: ChaosPlan,
    schedule: list[Fault],
) -> None:
    started = time.monotonic()
    topics = await make_topics(bootstrap, partitions=4)
    group = f"chaos-{uuid.uuid4().hex[:8]}"
    settings = service_settings(
        database_url,
        bootstrap,
        topics,
        group=group,
        batch_max_records=plan.batch_max_records,
        kafka_session_timeout_ms=SESSION_TIMEOUT_MS,
    )
    messages, oracle = simulated_stream(plan, timedelta(days=20))
    env = {
        "TRANSACTION_IDLE_LIMIT_SECONDS": str(IDLE_LIMIT_SECONDS),
        "TRANSACTION_TIME_LIMIT_SECONDS": str(TIME_LIMIT_SECONDS),
        # always align by event time: batches hold records back (`holdback`)
        "ALIGNMENT_LIVE_LAG_RECORDS": "0",
    }
    chaos = Chaos(env, settings, tmp_path, services, random.Random(plan.seed * 7919), plan)
    producer = await make_producer(bootstrap)
    produced: list[Produced] = []
    tasks: list[asyncio.Task[None]] = []
    production: asyncio.Task[list[Produced]] | None = None
    try:
        for _ in range(plan.replicas):
            chaos.start_replica()
        await _wait_assigned(chaos, 90.0)
        production = asyncio.create_task(
            produce_recorded(
                producer, messages, topics, rate=len(messages) / plan.span_seconds, log=produced
            )
        )
        origin = time.monotonic()
        for fault in schedule:
            delay = origin + fault.at - time.monotonic()
            while delay > 0:
                chaos.check()
                await asyncio.sleep(min(delay, 0.2))
                delay = origin + fault.at - time.monotonic()
            tasks.append(asyncio.create_task(chaos.run(fault)))
        while not all(t.done() for t in tasks):
            chaos.check()
            await asyncio.sleep(0.2)
        for task in tasks:
            task.result()  # a fault that failed fails the test
        await asyncio.wait_for(production, plan.drain_timeout)
        ends = end_offsets(produced)
        assert sum(ends.values()) == len(messages)

        # every replica running and caught up
        await _wait_caught_up(chaos, database_url, group, ends, plan.drain_timeout)
        conn = await asyncpg.connect(database_url)
        try:
            await wait_published(conn, plan.drain_timeout, check=chaos.check)
            await check_database(conn, oracle)
            projected = await check_read_model(conn, bootstrap, topics, plan.drain_timeout)
            alerts = await check_alert_topic(conn, bootstrap, topics)
            twice = await conn.fetch(
                "SELECT alert_id, count(*) FROM alert_outbox GROUP BY 1 HAVING count(*) > 1"
            )
            assert not twice, f"alert ids twice in the outbox: {twice[:5]}"
        finally:
            await conn.close()
        dead, copies = await check_poison_dead_lettered(bootstrap, topics, produced)
        await check_replicas_ready(chaos, 30.0)
    finally:
        for task in tasks:
            task.cancel()
        if production is not None and not production.done():
            production.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, *([production] if production else []))
        chaos.stop_all()
        await producer.stop()

    summary = {
        "seed": plan.seed,
        "messages": len(messages),
        "distinct_events": len(oracle.event_ids),
        "duplicates": oracle.duplicates,
        "poison": oracle.malformed,
        "dead_letters": dead,
        "dead_letter_copies": copies,
        "alerts": alerts,
        "projected_organizations": projected,
        "replicas": len(chaos.replicas),
        "restarts_after_refused_start": sum(r.restarts for r in chaos.replicas),
        "batches_committed": sum(
            len(log_events(r.log_path, "batch_committed")) for r in chaos.replicas
        ),
        "batches_retried": sum(
            len(log_events(r.log_path, "batch_failed_will_retry")) for r in chaos.replicas
        ),
        "batches_holding_back": sum(
            sum(bool(e.get("held_from")) for e in log_events(r.log_path, "batch_committed"))
            for r in chaos.replicas
        ),
        "seconds": round(time.monotonic() - started, 1),
    }
    print("chaos faults:", *chaos.done, sep="\n  ")
    print("chaos:", json.dumps(summary))
    # the faults happened: every restart and pause scheduled (nothing skips them here),
    # and at least one kill or freeze of a replica (one may find no free replica)
    ran = [entry.split()[1] for entry in chaos.done if "skipped" not in entry]
    for kind in ("postgres_restart", "broker_pause"):
        assert ran.count(kind) == [f.kind for f in schedule].count(kind), chaos.done
    assert {"kill", "freeze_short", "freeze_long"} & set(ran), chaos.done


async def _wait_assigned(chaos: Chaos, timeout: float) -> None:
    """Until every replica started so far holds partitions (a first assignment each)."""
    deadline = time.monotonic() + timeout
    while not all(log_events(r.log_path, "partitions_assigned") for r in chaos.replicas):
        chaos.check()
        assert time.monotonic() < deadline, "a replica never got its partitions"
        await asyncio.sleep(0.2)


async def _wait_caught_up(
    chaos: Chaos,
    database_url: str,
    group: str,
    ends: dict[tuple[str, int], int],
    timeout: float,
) -> None:
    """Until the stored offsets are at the end of every partition (a restarting
    server is retried); they must not pass it."""
    deadline = time.monotonic() + timeout
    stored: dict[str, int] = {}
    want = {f"{t}:{p}": n for (t, p), n in ends.items()}
    while time.monotonic() < deadline:
        chaos.check()
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            stored = json.loads(
                await fetchval(
                    database_url,
                    "SELECT coalesce(jsonb_object_agg(topic || ':' || partition, next_offset),"
                    " '{}')::text FROM consumer_offsets WHERE consumer_group = $1",
                    group,
                )
            )
        if all(stored.get(tp, 0) >= end for tp, end in want.items()):
            assert stored == want, (stored, want)
            return
        await asyncio.sleep(0.2)
    tails = "\n".join(f"{r.name}:\n{log_tail(r.log_path, 1500)}" for r in chaos.members())
    started = {r.name: bool(log_events(r.log_path, "service_started")) for r in chaos.members()}
    raise AssertionError(
        f"offsets {stored} never reached {want}; the group: {await describe_group(chaos, group)}; "
        f"members started: {started}:\n{tails}"
    )


async def describe_group(chaos: Chaos, group: str) -> Any:
    """What the group coordinator says of the group (state, members), for a failure."""
    admin = AIOKafkaAdminClient(bootstrap_servers=chaos.settings.kafka_bootstrap_servers)
    try:
        await admin.start()
        coordinator = await admin.find_coordinator(group)
        return [
            (d[2], d[3], d[4], [m[:3] for m in d[5]])  # state, protocol type, protocol, members
            for response in await admin.describe_consumer_groups([group], coordinator)
            for d in response.groups
        ]
    except Exception as exc:  # a diagnosis only
        return repr(exc)
    finally:
        await admin.close()


async def check_replicas_ready(chaos: Chaos, timeout: float) -> None:
    """Every replica running says it is ready (/readyz): it consumes partitions it
    knows it holds (one whose assignment failed half-way did not say so)."""
    waiting: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while True:
        chaos.check()
        waiting = {}
        for replica in chaos.members():
            started = log_events(replica.log_path, "service_started")
            assert started, f"{replica.name} never started:\n{log_tail(replica.log_path)}"
            status, body = await ops_get(int(started[-1]["ops_port"]), "/readyz")
            if status != 200:
                waiting[replica.name] = body
        if not waiting or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert not waiting, f"replicas not ready: {waiting}"
