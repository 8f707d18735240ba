"""CPU time per record of the decoder: the msgspec fast path against pydantic alone.

    PYTHONPATH=services python -m tests.bench.decode_cpu [--events 50000] [--rounds 5]

Decodes the simulator's stream (record timestamps = event times, as
`simulator.produce` sends them) with `Decoder(fast=True)` and
`Decoder(fast=False)` in alternating rounds of the same process, and reports
each path's CPU microseconds per record (process time, median of the rounds)
and their ratio. As in `serve`: the garbage collector tuned by
`tune_garbage_collector` with the default settings (`--default-gc` leaves
CPython's), records decoded in batches of `--batch` whose results live until
the batch ends, a full collection after every third batch (counted).
No assertion: the figures are for the report.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from datetime import UTC, datetime, timedelta

from healthscore.config import Settings
from healthscore.service.gctuning import FullCollectionPacer, tune_garbage_collector
from healthscore.service.ingest.decode import Decoded, Decoder, RawRecord
from healthscore_lab.simulator import SimulationConfig, generate, to_ms

USAGE = "product.usage.v1"
SUPPORT = "support.interactions.v1"


def stream(events: int, organizations: int, seed: int) -> list[RawRecord]:
    end = datetime(2025, 3, 14, tzinfo=UTC)
    span = timedelta(days=30)
    config = SimulationConfig(
        start=end - span, organizations=organizations, events=events, seed=seed, span=span
    )
    records: list[RawRecord] = []
    timestamp_ms: int | None = None
    for offset, message in enumerate(generate(config)):
        if message.occurred_at is not None:
            timestamp_ms = to_ms(message.occurred_at)
        topic = USAGE if message.topic_kind == "usage" else SUPPORT
        records.append(RawRecord(topic, 0, offset, message.key, message.value, timestamp_ms))
    return records


def cpu_per_record(
    decoder: Decoder, records: list[RawRecord], batch: int, full_every: int
) -> float:
    gc.collect()
    pacer = FullCollectionPacer(full_every)
    started = time.process_time()
    for start in range(0, len(records), batch):
        results = [decoder.decode(record) for record in records[start : start + batch]]
        del results
        pacer.after_batch()
    return (time.process_time() - started) / len(records) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--organizations", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--batch", type=int, default=Settings.model_fields["batch_max_records"].default
    )
    parser.add_argument("--default-gc", action="store_true")
    args = parser.parse_args()

    records = stream(args.events, args.organizations, args.seed)
    fast = Decoder(USAGE, SUPPORT, 64 * 1024, fast=True)
    slow = Decoder(USAGE, SUPPORT, 64 * 1024, fast=False)
    accepted = sum(isinstance(fast.decode(r), Decoded) for r in records)  # also warms up
    slow.decode(records[0])
    fast.fallbacks = 0
    defaults = Settings.model_fields
    full_every = 0
    if not args.default_gc:
        full_every = tune_garbage_collector(
            defaults["gc_young_threshold"].default, defaults["gc_full_every_batches"].default
        )

    timings: dict[str, list[float]] = {"pydantic": [], "msgspec": []}
    for _ in range(args.rounds):
        timings["pydantic"].append(cpu_per_record(slow, records, args.batch, full_every))
        timings["msgspec"].append(cpu_per_record(fast, records, args.batch, full_every))
    pydantic = statistics.median(timings["pydantic"])
    msgspec = statistics.median(timings["msgspec"])
    usage = sum(r.topic == USAGE for r in records)
    print(
        f"{len(records)} records ({usage} usage, {len(records) - usage} support), "
        f"{accepted} valid; fast path left {fast.fallbacks // args.rounds} per round to pydantic"
    )
    for name, values in timings.items():
        rounds = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:9s} {statistics.median(values):6.2f} CPU us/record  (rounds: {rounds})")
    print(f"ratio     {msgspec / pydantic:.3f} (msgspec / pydantic), {pydantic / msgspec:.2f}x")


if __name__ == "__main__":
    main()
