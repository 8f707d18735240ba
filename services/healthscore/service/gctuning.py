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
kept climbing although they find almost no cyclic garbage.
"""

from __future__ import annotations

import gc

# older generations are scanned after this many collections of the younger one
_MIDDLE_THRESHOLD = 20
# the automatic full collection, effectively off: FullCollectionPacer runs it
_OLD_THRESHOLD = 1_000_000


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

    def __init__(self, every_batches: int, batch_records: int = 1) -> None:
        self.every_batches = every_batches
        self._batch_records = max(1, batch_records)
        self._every_records = every_batches * self._batch_records
        self.records = 0
        self.collections = 0

    def after_batch(self, records: int | None = None) -> None:
        """After a batch of `records` (None: a full batch)."""
        if self.every_batches <= 0:
            return
        self.records += self._batch_records if records is None else records
        if self.records >= self._every_records:
            self.records = 0
            gc.collect()
            self.collections += 1
