"""CPU time per record of the hot path without I/O: decode, digest, align, compute.

    PYTHONPATH=services:services/lab python -m tests.bench.core_cpu [--events 20000] [--rounds 5]

Runs the simulator's stream (record timestamps = event times, as
`simulator.produce` sends them) through what a batch does between the fetch
and the database, in batches of `--batch` records: the decoder (fast path),
`payload_digest` of every decoded event, the event-time alignment, the pure
core (`compute_batch_effects`, with silence rescoring as `serve` runs it
unless `--no-silence`) and
the alert payloads of the alerts it raises. Each round starts from empty
states; the figures are process-time microseconds per record, median of the
rounds (and the fastest round: on a busy machine the least disturbed), for
the edge (decode + digest + alert payloads), the core (alignment + effects)
and both. The garbage collector is tuned as in `serve`.
No assertion: the figures are for the report.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from msgspec.structs import replace

from healthscore.config import Settings
from healthscore.core.alignment import align
from healthscore.core.effects import compute_batch_effects
from healthscore.core.interactions import InteractionRecord
from healthscore.core.scoring.model import ScoreModel, default_model
from healthscore.core.scoring.state import OrganizationState
from healthscore.service.gctuning import FullCollectionPacer, tune_garbage_collector
from healthscore.service.ingest.decode import Decoded, Decoder, RawRecord
from healthscore.service.ingest.pipeline import payload_digest
from healthscore.store.effects_writer import alert_payload
from tests.bench.decode_cpu import SUPPORT, USAGE
from tests.bench.decode_cpu import stream as decode_stream


def stream(events: int, organizations: int, seed: int) -> list[RawRecord]:
    """decode_cpu's stream, usage on partition 0 and support on partition 1 (as the
    alignment sees two topics)."""
    return [
        replace(record, partition=0 if record.topic == USAGE else 1)
        for record in decode_stream(events, organizations, seed)
    ]


def one_round(
    records: list[RawRecord],
    model: ScoreModel,
    batch: int,
    full_every: int,
    step: float | None,
) -> tuple[float, float, int]:
    """(edge seconds, core seconds, alerts) of one pass over `records`."""
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024)
    states: dict[str, OrganizationState] = {}
    interactions: dict[str, InteractionRecord] = {}
    seen: set[object] = set()
    pacer = FullCollectionPacer(full_every)
    edge = core = 0.0
    alerts = 0
    gc.collect()
    for start in range(0, len(records), batch):
        t0 = time.process_time()
        items = [decoder.decode(record) for record in records[start : start + batch]]
        digests = [payload_digest(item) for item in items if isinstance(item, Decoded)]
        t1 = time.process_time()
        alignment = align(items, None)
        events = []
        for item in alignment.applied:
            if isinstance(item, Decoded) and item.event.event_id not in seen:
                seen.add(item.event.event_id)  # the database's dedupe, outside the timing
                events.append(item.event)
        effects = compute_batch_effects(events, states, interactions, model, step)
        t2 = time.process_time()
        payloads = [alert_payload(alert) for alert in effects.alerts]
        t3 = time.process_time()
        edge += (t1 - t0) + (t3 - t2)
        core += t2 - t1
        alerts += len(payloads)
        del items, digests, alignment, events, effects, payloads
        pacer.after_batch()
    return edge, core, alerts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--organizations", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    defaults = Settings.model_fields
    parser.add_argument("--batch", type=int, default=defaults["batch_max_records"].default)
    parser.add_argument(
        "--no-silence", action="store_true", help="no silence rescoring (`serve --no-sweep`)"
    )
    args = parser.parse_args()

    records = stream(args.events, args.organizations, args.seed)
    model = default_model()
    step = None if args.no_silence else float(defaults["silence_rescore_after_seconds"].default)
    full_every = tune_garbage_collector(
        defaults["gc_young_threshold"].default, defaults["gc_full_every_batches"].default
    )
    one_round(records[:2000], model, args.batch, full_every, step)  # warm up
    edges: list[float] = []
    cores: list[float] = []
    alerts = 0
    for _ in range(args.rounds):
        edge, core, alerts = one_round(records, model, args.batch, full_every, step)
        edges.append(edge / len(records) * 1e6)
        cores.append(core / len(records) * 1e6)
    totals = [e + c for e, c in zip(edges, cores, strict=True)]
    print(f"{len(records)} records, batches of {args.batch}, {alerts} alerts per round")
    for name, values in (("edge", edges), ("core", cores), ("total", totals)):
        rounds = " ".join(f"{v:.2f}" for v in values)
        print(
            f"{name:6s} {statistics.median(values):6.2f} CPU us/record, "
            f"min {min(values):6.2f}  (rounds: {rounds})"
        )


if __name__ == "__main__":
    main()
