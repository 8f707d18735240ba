"""Real corrupt Kafka records, produced (and read) with aiokafka's pure-Python record code.

aiokafka's pure-Python record builder (`AIOKAFKA_NO_EXTENSIONS=1`) writes a
header key as `key.encode("utf-8")`, so a `str` subclass whose `encode`
returns invalid bytes puts them on the wire; the C builder would encode the
string itself. Since the switch is read when aiokafka is imported, this runs
in a child process: `python -m tests.utils.corrupt_records produce|read`
takes JSON on stdin and prints JSON.

`produce` sends every record before awaiting any, with a long linger, so the
records of one partition travel in one producer batch: the records after the
corrupt one share its batch. `read` reads a topic with the `SalvagingConsumer`
and the pure-Python reader (which raises `CorruptRecordException`, where the
C reader raises a bare `UnicodeDecodeError`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

BAD_KEY_BYTES = b"\xff\xfe"
REPO_ROOT = Path(__file__).resolve().parents[2]


class NotUtf8Key(str):
    """A header key whose encoding is not UTF-8 (what the pure-Python builder writes)."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return BAD_KEY_BYTES


@dataclass
class Outgoing:
    topic: str
    partition: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    # give the record one more header, first, whose key is not UTF-8
    corrupt_header: bool = False


async def produce_with_python_builder(bootstrap: str, records: list[Outgoing]) -> list[int]:
    """Produce `records` from a child process; their offsets, in order."""
    payload = orjson.dumps(
        {
            "bootstrap": bootstrap,
            "records": [
                {
                    "topic": r.topic,
                    "partition": r.partition,
                    "key": None if r.key is None else r.key.decode(),
                    "value": r.value.decode(),
                    "headers": [[k, v.decode()] for k, v in r.headers],
                    "corrupt_header": r.corrupt_header,
                }
                for r in records
            ],
        }
    )
    sent = await _in_child("produce", payload)
    assert [p for p, _ in sent] == [r.partition for r in records]
    return [offset for _, offset in sent]


async def read_with_python_reader(
    bootstrap: str, topic: str, expect: int
) -> list[tuple[int, int, str | None]]:
    """(partition, offset, corrupt) of the first `expect` records of `topic`, read by a
    `SalvagingConsumer` with aiokafka's pure-Python record reader, in a child process."""
    payload = orjson.dumps({"bootstrap": bootstrap, "topic": topic, "expect": expect})
    return [(p, o, c) for p, o, c in await _in_child("read", payload)]


async def _in_child(command: str, payload: bytes) -> Any:
    env = {**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), str(REPO_ROOT / "services"), env.get("PYTHONPATH", "")]
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.utils.corrupt_records",
        command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(REPO_ROOT),
    )
    out, err = await process.communicate(payload)
    if process.returncode != 0:
        raise AssertionError(f"{command} failed ({process.returncode}): {err.decode()}")
    return orjson.loads(out)


async def _produce(spec: dict[str, Any]) -> list[tuple[int, int]]:
    from aiokafka import AIOKafkaProducer
    from aiokafka.record.default_records import (
        DefaultRecordBatchBuilder,
        _DefaultRecordBatchBuilderPy,
    )
    from aiokafka.util import NO_EXTENSIONS

    assert NO_EXTENSIONS and DefaultRecordBatchBuilder is _DefaultRecordBatchBuilderPy
    producer = AIOKafkaProducer(
        bootstrap_servers=spec["bootstrap"],
        acks="all",
        enable_idempotence=False,
        linger_ms=1000,
    )
    await producer.start()
    try:
        futures = []
        for r in spec["records"]:
            headers: list[tuple[str, bytes]] = [(k, v.encode()) for k, v in r["headers"]]
            if r["corrupt_header"]:
                headers.insert(0, (NotUtf8Key("corrupt"), b"header-value"))
            futures.append(
                await producer.send(
                    r["topic"],
                    value=r["value"].encode(),
                    key=None if r["key"] is None else r["key"].encode(),
                    partition=r["partition"],
                    headers=headers or None,
                )
            )
        await producer.flush()
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metadata]


async def _read(spec: dict[str, Any]) -> list[tuple[int, int, str | None]]:
    import structlog
    from aiokafka.util import NO_EXTENSIONS

    from healthscore.service.kafka_salvage import CorruptRecordMonitor, SalvagingConsumer

    assert NO_EXTENSIONS
    # stdout carries the result
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    consumer = SalvagingConsumer(
        spec["topic"],
        monitor=CorruptRecordMonitor(),
        bootstrap_servers=spec["bootstrap"],
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[tuple[int, int, str | None]] = []
    try:
        for _ in range(150):  # bounded: at most 150 polls of up to 200 ms
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                got.extend((r.partition, r.offset, getattr(r, "corrupt", None)) for r in records)
            if len(got) >= spec["expect"]:
                break
    finally:
        await consumer.stop()
    return got


if __name__ == "__main__":
    work = {"produce": _produce, "read": _read}[sys.argv[1]]
    result = asyncio.run(work(orjson.loads(sys.stdin.buffer.read())))
    sys.stdout.buffer.write(orjson.dumps(result))
