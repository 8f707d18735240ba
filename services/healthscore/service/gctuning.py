"""Garbage-collector settings for the long-running batch processes.

A full batch (thousands of records) allocates hundreds of thousands of container
objects (records, contract models, states, row tuples) that live until the batch
commits. With CPython's default thresholds (700, 10, 10) they trigger a young
collection every few hundred allocations and a full collection every few
batches, in the middle of a batch, each walking every object the batch holds
(a tenth of a run's time; the figures are in docs/performance.md, "Levers measured"). So `serve` and
`replay` freeze what start-up
built, raise the young threshold, switch the automatic full collection off and
run one themselves between batches, every few batches, when little is alive.

Full collections must not stop altogether: without them the processes' RSS
kept climbing although they find almost no cyclic garbage. Nor when no records
come (a quiet night, a replica without partitions, a consumer dropped from its
group): the background loops' garbage is cyclic too (the lag gauge's fetches leave
aiokafka's fetched buffers in cycles, ~10 kB each), and a young collection waits for
50,000 allocations, not bytes; a soak measured +21.6 MB of it (tracemalloc) in nine
minutes of a consumer without partitions (docs/bench/twenty-sixth-2026-12-06/soak/).
So a full collection also runs when none has for FULL_COLLECTION_MAX_INTERVAL_SECONDS
(`step`, a background loop of `serve`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

# older generations are scanned after this many collections of the younger one
_MIDDLE_THRESHOLD = 20
# the automatic full collection, effectively off: FullCollectionPacer runs it
_OLD_THRESHOLD = 1_000_000
# with no full collection paced by records for this long, the background loop runs one
# (a few tens of ms over what a quiet process holds; under traffic it never comes due)
FULL_COLLECTION_MAX_INTERVAL_SECONDS = 60.0


def tune_garbage_collector(young_threshold: int, full_every_batches: int) -> int:
    """Freeze start-up objects and raise the thresholds (`young_threshold` 0: leave all).

    Returns how often the process must run a full collection itself
    (`FullCollectionPacer`): `full_every_batches` when tuned, 0 when not.
    """
    if young_threshold <= 0:
        return 0
    gc.collect()
    # modules, pydantic schemas, the score model: never garbage, never scanned again
    gc.freeze()
    gc.set_threshold(young_threshold, _MIDDLE_THRESHOLD, _OLD_THRESHOLD)
    return full_every_batches


class FullCollectionPacer:
    """Runs a full collection after every `every_batches` full batches' worth of records
    (`batch_records` each; 0: never).

    Paced by records, not by batches: a live consumer's batches hold tens of records
    and come several times a second, and a full collection after every third of them
    stalled the consumer many times a second; the garbage a collection finds grows with
    the records handled, whatever the batch sizes.
    """

    def __init__(
        self,
        every_batches: int,
        batch_records: int = 1,
        max_interval: float = FULL_COLLECTION_MAX_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_batches = every_batches
        self._batch_records = max(1, batch_records)
        self._every_records = every_batches * self._batch_records
        self.max_interval = max_interval
        self._clock = clock
        self._last = clock()
        self.records = 0
        self.collections = 0
        # of them, run by `step` (no records for max_interval)
        self.timed_collections = 0

    def after_batch(self, records: int | None = None) -> None:
        """After a batch of `records` (None: a full batch)."""
        if self.every_batches <= 0:
            return
        self.records += self._batch_records if records is None else records
        if self.records >= self._every_records:
            self.records = 0
            self._collect()

    async def step(self) -> float | None:
        """A background loop's step: a full collection when none ran for `max_interval`
        seconds; returns the pause until the next one may be due."""
        if self.every_batches <= 0 or self.max_interval <= 0:
            return None
        due_in = self._last + self.max_interval - self._clock()
        if due_in > 0:
            return due_in
        self._collect()
        self.timed_collections += 1
        return self.max_interval

    def _collect(self) -> None:
        gc.collect()
        self.collections += 1
        self._last = self._clock()
