"""The serve/replay garbage-collector settings: applied, reversible, cycles still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from healthscore.service.gctuning import FullCollectionPacer, tune_garbage_collector


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_raises_the_young_threshold_and_freezes_startup_objects(restore_gc: None) -> None:
    assert tune_garbage_collector(50_000, 3) == 3
    young, middle, old = gc.get_threshold()
    assert (young, middle) == (50_000, 20)
    assert old >= 1_000_000  # full collections are the pacer's job
    assert gc.get_freeze_count() > 0


def test_zero_keeps_the_interpreter_defaults(restore_gc: None) -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    assert tune_garbage_collector(0, 3) == 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_reference_cycles_made_after_tuning_are_still_collected(restore_gc: None) -> None:
    tune_garbage_collector(1_000, 3)
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    # live objects beyond the young threshold start a collection by themselves
    survivors = [_Node() for _ in range(1_500)]
    del survivors
    assert gone() is None


def _record_collections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The generations gc.collect is called with from now on (it collects nothing)."""
    runs: list[int] = []

    def collect(generation: int = 2) -> int:
        runs.append(generation)
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    return runs


@pytest.mark.parametrize(
    ("every_batches", "batches", "expected"), [(3, 7, 2), (1, 4, 4), (0, 10, 0)]
)
def test_pacer_runs_a_full_collection_every_nth_batch(
    monkeypatch: pytest.MonkeyPatch, every_batches: int, batches: int, expected: int
) -> None:
    runs = _record_collections(monkeypatch)
    pacer = FullCollectionPacer(every_batches)
    for _ in range(batches):
        pacer.after_batch()
    assert runs == [2] * expected
    assert pacer.collections == expected


def test_pacer_counts_records_so_small_live_batches_collect_rarely(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = _record_collections(monkeypatch)
    pacer = FullCollectionPacer(3, batch_records=3000)
    for _ in range(89):  # 89 live batches of 100 records: 8,900 < 3 x 3,000
        pacer.after_batch(100)
    assert runs == []
    pacer.after_batch(100)
    assert runs == [2]
    pacer.after_batch(3000)
    pacer.after_batch(3000)
    assert runs == [2]
    pacer.after_batch()  # a full batch
    assert runs == [2, 2]


async def test_pacer_collects_after_its_interval_without_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No records (a quiet night, no partitions): the loop's step collects once the
    interval has passed since the last collection, whichever ran it."""
    runs = _record_collections(monkeypatch)
    now = [0.0]
    pacer = FullCollectionPacer(3, batch_records=100, max_interval=60.0, clock=lambda: now[0])
    now[0] = 59.0
    assert await pacer.step() == pytest.approx(1.0)
    assert runs == []
    now[0] = 60.0
    assert await pacer.step() == 60.0
    assert runs == [2] and pacer.timed_collections == 1
    now[0] = 100.0
    pacer.after_batch()  # traffic: collections between batches...
    pacer.after_batch()
    pacer.after_batch()
    assert runs == [2, 2]
    now[0] = 150.0
    assert await pacer.step() == pytest.approx(10.0)  # ...put the timed one off
    assert runs == [2, 2] and pacer.timed_collections == 1


async def test_an_untuned_collector_needs_no_timed_collections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = _record_collections(monkeypatch)
    now = [1000.0]
    pacer = FullCollectionPacer(0, max_interval=60.0, clock=lambda: now[0])
    now[0] += 3600
    assert await pacer.step() is None
    assert runs == []
