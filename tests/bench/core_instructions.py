"""One round of the edge or of the core, for counting instructions under valgrind.

CPU time on a shared machine varies by tens of percent between runs; the
number of instructions does not. Count a run of one round and a run of three,
and take half the difference (imports, the simulator and the warm-up cancel
out):

    PYTHONHASHSEED=0 PYTHONPATH=services:services/lab valgrind --tool=cachegrind \\
        --cache-sim=no python -m tests.bench.core_instructions core 1 3000
    ... core 3 3000      (then: (Ir of 3 rounds - Ir of 1 round) / 2 / records)

MODE is `edge` (the decoder, `payload_digest` of every event, the payloads of
the alerts a core pass raised) or `core` (the alignment and
`compute_batch_effects` from empty states over the decoded batches); a fourth
argument `silence` rescores silence as `serve` does. Records: the stream of
tests.bench.core_cpu (EVENTS events, one organization per 50), batches of 3,000.
"""

from __future__ import annotations

import sys
from typing import Any

from healthscore.core.alignment import align
from healthscore.core.effects import RaisedAlert, compute_batch_effects
from healthscore.core.interactions import InteractionRecord
from healthscore.core.scoring.model import default_model
from healthscore.core.scoring.state import OrganizationState
from healthscore.service.ingest.decode import Decoded, Decoder, Rejection
from healthscore.service.ingest.pipeline import payload_digest
from healthscore.store.effects_writer import alert_payload
from tests.bench.core_cpu import stream
from tests.bench.decode_cpu import SUPPORT, USAGE

BATCH = 3000


def main() -> None:
    mode, rounds, events = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    step = 6 * 3600.0 if sys.argv[4:] == ["silence"] else None
    records = stream(events, max(1, events // 50), 7)
    model = default_model()
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024)
    batches: list[list[Decoded | Rejection]] = [
        [decoder.decode(r) for r in records[i : i + BATCH]] for i in range(0, len(records), BATCH)
    ]

    def core_round() -> list[RaisedAlert]:
        states: dict[str, OrganizationState] = {}
        interactions: dict[str, InteractionRecord] = {}
        seen: set[Any] = set()
        alerts: list[RaisedAlert] = []
        for items in batches:
            events = []
            for item in align(items, None).applied:
                if isinstance(item, Decoded) and item.event.event_id not in seen:
                    seen.add(item.event.event_id)
                    events.append(item.event)
            alerts += compute_batch_effects(events, states, interactions, model, step).alerts
        return alerts

    alerts = core_round()

    def edge_round() -> None:
        fresh = Decoder(USAGE, SUPPORT, 64 * 1024)
        for i in range(0, len(records), BATCH):
            items = [fresh.decode(r) for r in records[i : i + BATCH]]
            [payload_digest(item) for item in items if isinstance(item, Decoded)]
        [alert_payload(alert) for alert in alerts]

    for _ in range(rounds):
        if mode == "core":
            core_round()
        else:
            edge_round()
    print(f"{len(records)} records, {len(alerts)} alerts")


if __name__ == "__main__":
    main()
