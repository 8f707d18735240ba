"""The naive baseline: the service itself, one message per Postgres transaction.

This is how most tutorials write a Kafka-to-Postgres consumer: every message
is handled in a transaction of its own, which also writes the dashboard's
table, and messages are applied as they arrive. The baseline is the service's
own composition root (`healthscore.service.app.running`) in that per-message
variant (`per_message`): BATCH_MAX_RECORDS=1, the read model written in each
batch's transaction (no projector), every partition applied as it arrives (no
event-time alignment), offsets kept in PostgreSQL only (no Kafka commit, a
broker round trip per message), no relay and no sweep. So it writes exactly the same
effects with the same guarantees (stored offsets in the same transaction,
event-id dedupe, dead letters, rescoring, outbox alerts); only the unit of
work differs. The benchmark runs it as a child process:

    python -m healthscore_lab.bench.naive STATS.json

with the service's environment (DATABASE_URL, topics, CONSUMER_GROUP...).
On SIGTERM it stops and writes its counters and commit times to STATS.json.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

from healthscore.config import Settings
from healthscore.service.app import ServiceOptions, running
from healthscore.service.ops.logging import configure_logging

# no partition is ever this far behind its high watermark: all are live, none aligned
ALL_LIVE = 1 << 62

PER_MESSAGE = ServiceOptions(
    run_relay=False, run_sweep=False, read_model_in_transaction=True, commit_to_kafka=False
)


def per_message(settings: Settings) -> Settings:
    """`settings` for one message per batch, applied as it arrives."""
    return settings.model_copy(
        update={
            "batch_max_records": 1,
            "alignment_live_lag_records": ALL_LIVE,
            # as tutorials do: every message reads its organization's state
            "owned_states_max": 0,
        }
    )


async def run() -> dict[str, Any]:
    settings = per_message(Settings())
    # a log line per message would be a cost of its own: warnings and errors only
    configure_logging("WARNING", "json")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings, PER_MESSAGE) as service:
        print("naive_started", flush=True)
        await stop.wait()
    batches = service.outcomes
    return {
        "records": batches.records,
        "applied": batches.applied,
        "duplicates": batches.duplicates,
        "rejected": batches.rejected,
        "first_commit": batches.first_commit,
        "last_commit": batches.last_commit,
    }


def main() -> None:
    stats = asyncio.run(run())
    Path(sys.argv[1]).write_bytes(orjson.dumps(stats))


if __name__ == "__main__":
    main()
