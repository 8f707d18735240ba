"""CPU time per record of consuming alone: the floor under any consumer of this design.

    PYTHONPATH=services:services/lab:. python -m tests.bench.consume_cpu \
        [--events 200000] [--organizations 20000] [--rounds 3]

Starts the embedded broker, produces the simulator's stream (real bytes, keyed by
organization, 8 partitions per topic as the benchmark), then in alternating rounds of
the same process reads the whole log back with the service's consumer settings
(`KafkaConnection.consumer`, `getmany` of `BATCH_MAX_RECORDS`) and measures this
process's CPU and the broker's per record:

- fetch: aiokafka's fetch and record parsing, nothing more;
- fetch + decode: the same, each record turned into the service's `RawRecord`
  (`consumers.to_raw`) and decoded (`Decoder`, the msgspec fast path), as a batch
  starts in `serve`.

With `tests.bench.core_cpu` (the pure core's CPU per record) and the PostgreSQL
statements' cost per row (docs/performance.md), this bounds what the service's Python
can cost per event before it writes anything (docs/performance.md, "The floor under
the hot-path targets"). The garbage collector is tuned as in `serve`. No assertion:
the figures are for the report.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from healthscore.config import Settings
from healthscore.service.consumers import to_raw
from healthscore.service.gctuning import FullCollectionPacer, tune_garbage_collector
from healthscore.service.ingest.decode import Decoded, Decoder
from healthscore.service.kafka_clients import KafkaConnection
from healthscore_lab.bench.cpu import process_cpu_seconds
from healthscore_lab.devservices import start_embedded_broker, stop_process
from tests.bench.decode_cpu import SUPPORT, USAGE, stream

PARTITIONS = 8
# a read that gets nothing for this long has lost records: the figures would be wrong
IDLE_LIMIT_SECONDS = 30.0


async def produce(kafka: KafkaConnection, events: int, organizations: int, seed: int) -> int:
    admin = kafka.admin()
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, num_partitions=PARTITIONS, replication_factor=1) for t in (USAGE, SUPPORT)]
        )
    finally:
        await admin.close()
    producer = kafka.producer(linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    sent = 0
    try:
        pending = []
        for record in stream(events, organizations, seed):
            pending.append(
                await producer.send(
                    record.topic,
                    key=record.key,
                    value=record.value,
                    timestamp_ms=record.timestamp_ms,
                )
            )
            if len(pending) >= 5_000:
                await asyncio.gather(*pending)
                pending.clear()
            sent += 1
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def read_all(
    kafka: KafkaConnection,
    expected: int,
    decoder: Decoder | None,
    broker_pid: int,
    batch: int,
    full_every: int,
) -> tuple[float, float]:
    """Read the whole log once; (this process's, the broker's) CPU us per record."""
    defaults = Settings.model_fields
    consumer = kafka.consumer(
        enable_auto_commit=False,
        group_id=None,
        max_poll_records=batch,
        isolation_level="read_committed",
        max_partition_fetch_bytes=defaults["kafka_max_partition_fetch_bytes"].default,
        fetch_max_wait_ms=defaults["kafka_fetch_max_wait_ms"].default,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in (USAGE, SUPPORT) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        gc.collect()
        pacer = FullCollectionPacer(full_every, batch)
        own, broker = time.process_time(), process_cpu_seconds(broker_pid)
        seen = 0
        idle_since = time.monotonic()
        while seen < expected:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=batch)
            records: list[Any] = [r for rs in fetched.values() for r in rs]
            if records:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > IDLE_LIMIT_SECONDS:
                raise RuntimeError(f"read {seen} of {expected} records, then nothing")
            seen += len(records)
            if decoder is not None:
                results = [decoder.decode(to_raw(r)) for r in records]
                del results
            del records, fetched
            pacer.after_batch()
        if seen != expected:
            raise RuntimeError(f"read {seen} records of the {expected} produced")
        own = time.process_time() - own
        broker = process_cpu_seconds(broker_pid) - broker
    finally:
        await consumer.stop()
    return own / expected * 1e6, broker / expected * 1e6


async def run(args: argparse.Namespace) -> None:
    address, broker = start_embedded_broker()
    try:
        kafka = KafkaConnection(bootstrap_servers=address)
        sent = await produce(kafka, args.events, args.organizations, args.seed)
        decoder = Decoder(USAGE, SUPPORT, 64 * 1024, fast=True)
        accepted = sum(
            isinstance(decoder.decode(r), Decoded)
            for r in stream(min(args.events, 2_000), args.organizations, args.seed)
        )
        defaults = Settings.model_fields
        full_every = tune_garbage_collector(
            defaults["gc_young_threshold"].default, defaults["gc_full_every_batches"].default
        )
        variants: dict[str, Decoder | None] = {"fetch": None, "fetch + decode": decoder}
        own: dict[str, list[float]] = {name: [] for name in variants}
        at_broker: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, dec in variants.items():
                mine, theirs = await read_all(kafka, sent, dec, broker.pid, args.batch, full_every)
                own[name].append(mine)
                at_broker[name].append(theirs)
        print(
            f"{sent} records in {2 * PARTITIONS} partitions "
            f"({accepted} of the first 2,000 events' records valid), batches of {args.batch}"
        )
        for name in variants:
            rounds = " ".join(f"{v:.2f}" for v in own[name])
            print(
                f"{name:15s} consumer {statistics.median(own[name]):6.2f} CPU us/record "
                f"(rounds: {rounds}); broker {statistics.median(at_broker[name]):6.2f}"
            )
    finally:
        stop_process(broker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--organizations", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--batch", type=int, default=Settings.model_fields["batch_max_records"].default
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
