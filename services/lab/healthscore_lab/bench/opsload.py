"""What the ops endpoints cost the consumer: a backlog drained with and without
a crowd of clients hammering /metrics and /readyz.

Each run gets a fresh database and topics, preloads the same workload
(`simulator.workload`, same seed), starts one `healthscore serve` process and
reads its CPU time (utime + stime from /proc/<pid>/stat) from the moment it
logs `service_started` to the moment the backlog is drained; the events it
applied in that window come from its `batch_committed` lines. In the loaded
runs a separate process (`hammer`) keeps `--clients` keep-alive HTTP clients
asking, back to back, half for /metrics and half for /readyz, from before
the service starts until it has drained.

The figure is CPU seconds per applied event, loaded over quiet, from runs
interleaved quiet/loaded/loaded/quiet... so drift of the machine hits both.
CPU time, not wall time: the clients and the other services compete for the
same cores and would show up in wall time however cheap the endpoints are.

Drain runs spread by several percent from one to the next on a shared
machine, so first (`--idle-seconds`) one service with nothing to consume is
measured over equal windows without, with and again without the clients:
the ops server's own cost, as a share of one core and per answered request.

    python -m healthscore_lab.bench.opsload run --events 60000 --rounds 2

`--service-env PYTHONPATH=/path/to/other/services` runs another version of
the service (an A/B against an earlier commit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from healthscore_lab.bench.runner import (
    Bench,
    BenchError,
    BenchOptions,
    Child,
    ChildGroup,
    CommitLog,
    GroupLog,
    Stack,
    _child_env,
    _service_argv,
    _wait_until,
)
from healthscore_lab.devservices import free_port
from healthscore_lab.simulator import Workload

PATHS = ("/metrics", "/readyz")


# --------------------------------------------------------------------------- the clients


@dataclass
class PathStats:
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    # answers other than 200 after this path first answered 200 (start-up excluded)
    not_ok_after_ok: int = 0
    seen_ok: bool = False
    first_answer: float = 0.0
    last_answer: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "requests": self.requests,
            "statuses": self.statuses,
            "errors": self.errors,
            "not_ok_after_ok": self.not_ok_after_ok,
            "answering_seconds": round(self.last_answer - self.first_answer, 3),
            "p50_ms": round(_pct(lat, 0.50), 2),
            "p99_ms": round(_pct(lat, 0.99), 2),
            "max_ms": round(lat[-1], 2) if lat else 0.0,
        }


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


async def _client(port: int, path: str, stats: PathStats, stop: asyncio.Event) -> None:
    """One keep-alive HTTP/1.1 client asking for `path` back to back."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)  # not listening yet
            continue
        try:
            while not stop.is_set():
                began = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                if not status_line:
                    break
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                now = time.perf_counter()
                stats.latencies_ms.append((now - began) * 1000)
                stats.first_answer = stats.first_answer or now
                stats.last_answer = now
                status = status_line.split()[1].decode()
                stats.requests += 1
                stats.statuses[status] = stats.statuses.get(status, 0) + 1
                if status == "200":
                    stats.seen_ok = True
                elif stats.seen_ok:
                    stats.not_ok_after_ok += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            stats.errors += 1
            await asyncio.sleep(0.05)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def hammer(port: int, clients: int) -> dict[str, Any]:
    """Run until SIGTERM/SIGINT; what was asked and answered, per path."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(HAMMER_READY, flush=True)  # a SIGTERM from now on ends it with its summary
    stats = {path: PathStats() for path in PATHS}
    began = time.monotonic()
    tasks = [
        asyncio.create_task(
            _client(port, PATHS[i % len(PATHS)], stats[PATHS[i % len(PATHS)]], stop)
        )
        for i in range(clients)
    ]
    await stop.wait()
    seconds = time.monotonic() - began
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    summary: dict[str, Any] = {path: s.summary() for path, s in stats.items()}
    summary["seconds"] = round(seconds, 2)
    return summary


# --------------------------------------------------------------------------- one run


@dataclass
class OpsLoadRun:
    label: str  # "quiet" or "loaded"
    events_applied: int  # in the measured window
    cpu_seconds: float  # of the service process, in the measured window
    wall_seconds: float
    correct: bool  # every valid event applied exactly once
    clients: dict[str, Any] = field(default_factory=dict)  # the hammer's summary

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_seconds / max(1, self.events_applied) * 1e6

    @property
    def events_per_second(self) -> float:
        return self.events_applied / max(1e-9, self.wall_seconds)

    @property
    def not_ready_after_ready(self) -> int:
        """/readyz answers other than 200 once it had answered 200: a flap, not start-up."""
        return int(self.clients.get("/readyz", {}).get("not_ok_after_ok", 0))

    @property
    def requests(self) -> int:
        return sum(int(self.clients.get(p, {}).get("requests", 0)) for p in PATHS)


@dataclass
class IdleResult:
    """One service process with nothing to consume: CPU over equal windows
    without, with, and again without the clients. The ops server's own cost,
    free of the consumer's run-to-run spread."""

    seconds: float  # each window
    quiet_cpu_seconds: list[float]  # the windows before and after
    loaded_cpu_seconds: float
    requests: int  # answered in the loaded window (about)
    clients: dict[str, Any] = field(default_factory=dict)

    @property
    def extra_core_share(self) -> float:
        """Extra CPU while the clients ask, as a share of one core."""
        quiet = statistics.mean(self.quiet_cpu_seconds)
        return (self.loaded_cpu_seconds - quiet) / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        quiet = statistics.mean(self.quiet_cpu_seconds)
        return (self.loaded_cpu_seconds - quiet) * 1e6 / max(1, self.requests)


@dataclass
class OpsLoadReport:
    runs: list[OpsLoadRun]
    settings: dict[str, Any]
    idle: IdleResult | None = None

    def _median(self, label: str, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in self.runs if r.label == label))

    @property
    def cpu_ratio(self) -> float:
        """CPU per applied event, loaded over quiet (medians)."""
        return self._median("loaded", "cpu_us_per_event") / self._median(
            "quiet", "cpu_us_per_event"
        )

    @property
    def pair_ratios(self) -> list[float]:
        quiet = [r for r in self.runs if r.label == "quiet"]
        loaded = [r for r in self.runs if r.label == "loaded"]
        return [
            lo.cpu_us_per_event / q.cpu_us_per_event for q, lo in zip(quiet, loaded, strict=False)
        ]

    @property
    def rate_ratio(self) -> float:
        return self._median("loaded", "events_per_second") / self._median(
            "quiet", "events_per_second"
        )

    @property
    def cpu_us_per_request(self) -> float:
        """The service's extra CPU per answered request, from the loaded runs."""
        quiet = self._median("quiet", "cpu_us_per_event")
        extra = [
            (r.cpu_seconds * 1e6 - quiet * r.events_applied) / r.requests
            for r in self.runs
            if r.label == "loaded" and r.requests
        ]
        return statistics.median(extra) if extra else 0.0

    def render(self) -> str:
        lines = [
            f"ops endpoints under load: {self.settings}",
            f"{'run':<8} {'events':>8} {'cpu s':>7} {'cpu us/event':>13} {'events/s':>9} "
            f"{'requests':>9} {'req/s':>7} {'503 after ready':>15}  answers",
        ]
        for r in self.runs:
            seconds = max(
                (float(r.clients[p]["answering_seconds"]) for p in PATHS if p in r.clients),
                default=0.0,
            )
            answers = {p: r.clients[p]["statuses"] for p in PATHS if p in r.clients}
            lat = {
                p: f"p50 {r.clients[p]['p50_ms']} ms, p99 {r.clients[p]['p99_ms']} ms"
                for p in PATHS
                if p in r.clients
            }
            lines.append(
                f"{r.label:<8} {r.events_applied:>8,} {r.cpu_seconds:>7.2f} "
                f"{r.cpu_us_per_event:>13.1f} {r.events_per_second:>9,.0f} {r.requests:>9,} "
                f"{(r.requests / seconds if seconds else 0):>7,.0f} {r.not_ready_after_ready:>15,}"
                f"  {answers or ''} {lat or ''}" + ("" if r.correct else "  INCORRECT")
            )
        lines.append(
            f"CPU per applied event, loaded / quiet: {self.cpu_ratio:.3f} "
            f"(pairs: {', '.join(f'{x:.3f}' for x in self.pair_ratios)}); "
            f"events/s loaded / quiet: {self.rate_ratio:.3f}; "
            f"service CPU per answered request ~{self.cpu_us_per_request:.0f} us"
        )
        if self.idle is not None:
            i = self.idle
            lines.append(
                f"idle service, {i.seconds:g} s windows: CPU "
                f"{', '.join(f'{c:.3f}' for c in i.quiet_cpu_seconds)} s without the clients, "
                f"{i.loaded_cpu_seconds:.3f} s with them ({i.requests:,} requests answered): "
                f"{i.extra_core_share:.2%} of one core, ~{i.cpu_us_per_request:.0f} us per request"
            )
        return "\n".join(lines)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "settings": self.settings,
                "runs": [{**asdict(r), "cpu_us_per_event": r.cpu_us_per_event} for r in self.runs],
                "cpu_ratio": self.cpu_ratio,
                "pair_ratios": self.pair_ratios,
                "rate_ratio": self.rate_ratio,
                "cpu_us_per_request": self.cpu_us_per_request,
                "idle": None
                if self.idle is None
                else {
                    **asdict(self.idle),
                    "extra_core_share": self.idle.extra_core_share,
                    "cpu_us_per_request": self.idle.cpu_us_per_request,
                },
            },
            option=orjson.OPT_INDENT_2,
        )


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # after the command: state is field 3, utime 14 and stime 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _cpu_over(pid: int, seconds: float) -> float:
    """CPU seconds process `pid` uses over the next `seconds`."""
    began = process_cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return process_cpu_seconds(pid) - began


@dataclass
class OpsLoadOptions:
    events: int = 60_000
    organizations: int = 5_000
    clients: int = 20
    rounds: int = 2  # quiet/loaded pairs
    partitions: int = 4
    seed: int = 7
    work_dir: Path | None = None
    service_env: dict[str, str] = field(default_factory=dict)
    verbose: bool = True
    idle_seconds: float = 15.0  # 0: no idle measurement


class OpsLoadBench:
    def __init__(self, stack: Stack, options: OpsLoadOptions) -> None:
        self.options = options
        work_dir = options.work_dir or Path(tempfile.mkdtemp(prefix="healthscore-opsload-"))
        self.bench = Bench(
            stack,
            BenchOptions(
                events=options.events,
                organizations=[options.organizations],
                partitions=options.partitions,
                seed=options.seed,
                work_dir=work_dir,
                service_processes=1,
                verbose=options.verbose,
            ),
        )

    async def run(self) -> OpsLoadReport:
        runs: list[OpsLoadRun] = []
        idle: IdleResult | None = None
        try:
            if self.options.idle_seconds > 0:
                idle = await self.idle(self.options.idle_seconds)
            for i in range(self.options.rounds):
                # quiet, loaded, loaded, quiet, ...: a drift of the machine over
                # the session favours neither
                order = ("quiet", "loaded") if i % 2 == 0 else ("loaded", "quiet")
                for label in order:
                    runs.append(await self.one(label, i))
        finally:
            await self.bench.cleanup()
        o = self.options
        return OpsLoadReport(
            runs,
            {
                "events": o.events,
                "organizations": o.organizations,
                "clients": o.clients,
                "rounds": o.rounds,
                "partitions": o.partitions,
                "cpus": os.cpu_count(),
            },
            idle,
        )

    def _service(self, phase: Any, name: str) -> tuple[Child, ChildGroup, GroupLog, int]:
        bench = self.bench
        port = free_port()
        env = {**_child_env(bench.stack, phase, bench.options), **self.options.service_env}
        env["OPS_PORT"] = str(port)
        child = Child(_service_argv(None), env, bench.work_dir / f"opsload-{name}-service.log")
        return child, ChildGroup([child]), GroupLog([CommitLog(child.log_path)]), port

    async def idle(self, seconds: float) -> IdleResult:
        """CPU of a service with nothing to consume, without/with/without the clients."""
        bench = self.bench
        phase = await bench._phase("opsidle")
        child, group, log, port = self._service(phase, "idle")
        clients_out = bench.work_dir / "opsload-idle-clients.json"
        clients_out.unlink(missing_ok=True)
        group.start()
        try:
            assert child.process is not None
            pid = child.process.pid

            async def assigned() -> bool:
                log.poll()
                return log.started and bool(log.assigned)

            await _wait_until(assigned, 120, "the idle service to start", group, 0.05)
            await asyncio.sleep(2)  # start-up settles (first readiness rounds, gauges)
            quiet_before = await _cpu_over(pid, seconds)
            clients = await _start_clients(port, self.options.clients, clients_out)
            try:
                await asyncio.sleep(1)  # connected, and the turn queue full
                loaded = await _cpu_over(pid, seconds)
            finally:
                _stop_clients(clients)
            quiet_after = await _cpu_over(pid, seconds)
        finally:
            group.stop()
        summary = orjson.loads(clients_out.read_bytes())
        answered = sum(int(summary[p]["requests"]) for p in PATHS)
        # the clients also asked during their 1 s warm-up: count the window's share
        span = max(float(summary[p]["answering_seconds"]) for p in PATHS) or seconds
        requests = round(answered * min(1.0, seconds / span))
        result = IdleResult(seconds, [quiet_before, quiet_after], loaded, requests, summary)
        bench.say(
            f"idle: {result.extra_core_share:.2%} of one core with the clients, "
            f"~{result.cpu_us_per_request:.0f} us per request"
        )
        return result

    async def one(self, label: str, index: int) -> OpsLoadRun:
        bench, o = self.bench, self.options
        phase = await bench._phase(f"ops{label[0]}{index}")
        workload = Workload(bench._config(o.organizations, o.events))
        await bench._preload(phase, workload.messages())
        counts = workload.counts
        child, group, log, port = self._service(phase, f"{label}-{index}")
        work_dir = bench.work_dir
        clients: subprocess.Popen[bytes] | None = None
        clients_out = work_dir / f"opsload-{label}-{index}-clients.json"
        clients_out.unlink(missing_ok=True)
        if label == "loaded":  # asking before the server listens: no start-up race
            clients = await _start_clients(port, o.clients, clients_out)
        try:
            group.start()
            assert child.process is not None
            pid = child.process.pid

            async def started() -> bool:
                log.poll()
                return log.started

            await _wait_until(started, 120, f"the service ({label}) to start", group, 0.02)
            cpu0, wall0 = process_cpu_seconds(pid), time.time()

            async def drained() -> bool:
                log.poll()
                return log.progress >= counts.messages

            await _wait_until(drained, 900, f"the service ({label}) to drain", group, 0.05)
            cpu1, wall1 = process_cpu_seconds(pid), time.time()
        finally:
            if clients is not None:
                _stop_clients(clients)
            group.stop()
        log.poll()
        batches = log.batches
        applied_in_window = sum(b.applied for b in batches if b.ts >= wall0)
        applied = sum(b.applied for b in batches)
        summary: dict[str, Any] = {}
        if clients is not None:
            if not clients_out.exists():
                raise BenchError("the HTTP clients wrote no summary")
            summary = orjson.loads(clients_out.read_bytes())
        last = max((b.ts for b in batches), default=wall1)
        run = OpsLoadRun(
            label=label,
            events_applied=applied_in_window,
            cpu_seconds=cpu1 - cpu0,
            wall_seconds=max(1e-9, min(wall1, last) - wall0),
            correct=applied == counts.valid,
            clients=summary,
        )
        bench.say(
            f"{label} #{index}: {run.events_applied:,} events in the window, "
            f"{run.cpu_seconds:.2f} CPU s, {run.cpu_us_per_event:.1f} us/event, "
            f"{run.requests:,} requests"
        )
        return run


HAMMER_READY = "hammering"


async def _start_clients(port: int, count: int, out: Path) -> subprocess.Popen[bytes]:
    """The hammer, once it takes a SIGTERM as the end of its run: stopped before (its
    imports take seconds on a loaded machine), it died without its summary."""
    process = _spawn_hammer(port, count, out)
    assert process.stdout is not None
    try:
        async with asyncio.timeout(120):
            line = await asyncio.to_thread(process.stdout.readline)
    except BaseException:
        process.kill()
        raise
    if line.strip() != HAMMER_READY.encode():
        process.kill()
        raise RuntimeError(f"the hammer did not start: {line!r} (exit {process.wait()})")
    return process


def _spawn_hammer(port: int, count: int, out: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "healthscore_lab.bench.opsload", "hammer", "--port", str(port)]
    argv += ["--clients", str(count), "--out", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE)


def _stop_clients(clients: subprocess.Popen[bytes]) -> None:
    clients.send_signal(signal.SIGTERM)
    try:
        clients.wait(30)
    except subprocess.TimeoutExpired:
        clients.kill()
        clients.wait(10)


async def run_opsload(stack: Stack, options: OpsLoadOptions) -> OpsLoadReport:
    return await OpsLoadBench(stack, options).run()


# --------------------------------------------------------------------------- command line


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME=VALUE")
    return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m healthscore_lab.bench.opsload")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="quiet and loaded runs, interleaved; prints the ratio")
    p.add_argument("--events", type=int, default=60_000)
    p.add_argument("--organizations", type=int, default=5_000)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2, help="quiet/loaded pairs")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=15.0,
        help="first, an idle service's CPU over windows this long without/with/without "
        "the clients (0: skip)",
    )
    p.add_argument("--work-dir", type=Path)
    p.add_argument("--json-out", type=Path)
    p.add_argument(
        "--service-env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the service, e.g. PYTHONPATH (another version of it)",
    )
    h = sub.add_parser("hammer", help="the HTTP clients of a loaded run (internal)")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--clients", type=int, default=20)
    h.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "hammer":
        # uvloop where installed: the clients ask as fast as they can
        from healthscore.cli import loop_factory

        with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
            summary = runner.run(hammer(args.port, args.clients))
        args.out.write_bytes(orjson.dumps(summary))
        return 0

    from healthscore.config import Settings
    from healthscore_lab.devservices import resolve_services

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
            idempotence=services.broker_supports_idempotence,
            kind=services.kind,
        )
        options = OpsLoadOptions(
            events=args.events,
            organizations=args.organizations,
            clients=args.clients,
            rounds=args.rounds,
            partitions=args.partitions,
            work_dir=args.work_dir,
            service_env=dict(args.service_env),
            idle_seconds=args.idle_seconds,
        )
        report = asyncio.run(run_opsload(stack, options))
    finally:
        services.close()
    print(report.render(), flush=True)
    if args.json_out:
        args.json_out.write_bytes(report.to_json())
    return 0 if all(r.correct for r in report.runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
