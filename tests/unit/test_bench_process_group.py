"""The bench reads a consumer group of several service processes as one."""

from __future__ import annotations

from pathlib import Path

import orjson

from healthscore_lab.bench.runner import Child, CommitLog, GroupLog, _merge_naive_stats


def _write(path: Path, *entries: dict[str, object]) -> None:
    with path.open("ab") as f:
        for entry in entries:
            f.write(orjson.dumps(entry) + b"\n")


def _batch(ts: str, first: dict[str, int], nxt: dict[str, int], records: int) -> dict[str, object]:
    return {
        "event": "batch_committed",
        "timestamp": ts,
        "records": records,
        "applied": records,
        "replayed_skipped": 0,
        "offsets_from": first,
        "offsets": nxt,
    }


def test_group_log_merges_progress_batches_and_assignments(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    _write(
        a,
        {"event": "service_started"},
        {"event": "partitions_assigned", "partitions": ["u:0", "u:1"]},
        _batch("2026-11-26T05:00:01+00:00", {"u:0": 0}, {"u:0": 10}, 10),
        # u:1 moved to the other process after this process committed part of it
        _batch("2026-11-26T05:00:03+00:00", {"u:1": 0}, {"u:1": 4}, 4),
    )
    log = GroupLog([CommitLog(a), CommitLog(b)])
    log.poll()
    assert not log.started  # the second process has not said so yet
    _write(
        b,
        {"event": "service_started"},
        {"event": "partitions_assigned", "partitions": ["u:1"]},
        _batch("2026-11-26T05:00:02+00:00", {"u:1": 4}, {"u:1": 9}, 5),
    )
    log.poll()
    assert log.started
    assert log.assigned == {"u:0", "u:1"}
    assert log.next_offsets() == {"u:0": 10, "u:1": 9}
    assert log.progress == 19
    assert [batch.records for batch in log.batches] == [10, 5, 4]  # by commit time


def test_naive_stats_add_up_over_the_union_of_commit_spans() -> None:
    merged = _merge_naive_stats(
        [
            {"records": 10, "applied": 9, "first_commit": 5.0, "last_commit": 8.0},
            {"records": 7, "applied": 7, "first_commit": 4.0, "last_commit": 9.5},
            {"records": 0, "applied": 0, "first_commit": None, "last_commit": None},
        ]
    )
    assert merged == {"records": 17, "applied": 16, "first_commit": 4.0, "last_commit": 9.5}


def test_a_new_child_does_not_read_a_log_left_by_an_earlier_run(tmp_path: Path) -> None:
    path = tmp_path / "t1000-throughput-0.log"
    _write(path, _batch("2026-11-26T08:00:00+00:00", {"u:0": 0}, {"u:0": 3000}, 3000))
    child = Child(["true"], {}, path)
    log = CommitLog(child.log_path)
    log.poll()
    assert log.batches == []
