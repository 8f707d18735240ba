"""What `healthscore offsets-reset` plans, from log bounds and stored offsets."""

from __future__ import annotations

import pytest

from healthscore.service.offsets_reset import OffsetsResetError, format_plan, plan_reset

U, S = "usage", "support"
# a recreated usage topic (2 partitions, short logs); support trimmed by retention
STARTS = {(U, 0): 0, (U, 1): 0, (S, 0): 40}
ENDS = {(U, 0): 7, (U, 1): 3, (S, 0): 90}
STORED = {(U, 0): 500, (U, 1): 2, (S, 0): 10, (U, 5): 44}


def test_to_earliest_deletes_every_selected_row() -> None:
    plan = plan_reset("g", [U, S], None, "earliest", None, STARTS, ENDS, STORED)
    after = {(p.topic, p.partition): p.after for p in plan.partitions}
    assert after == {(S, 0): None, (U, 0): None, (U, 1): None, (U, 5): None}
    notes = {(p.topic, p.partition): p.note for p in plan.partitions}
    assert notes[(U, 0)] == "stored offset is above the high watermark; reads all 7 record(s)"
    assert notes[(U, 1)] == "reads 2 record(s) again"
    assert notes[(S, 0)] == "stored offset is below the log start; reads all 50 record(s)"
    assert notes[(U, 5)] == "not on the broker: row deleted"
    assert plan.skipped_records == 0


def test_to_latest_stores_high_watermarks_and_counts_what_is_skipped() -> None:
    plan = plan_reset("g", [U, S], None, "latest", None, STARTS, ENDS, STORED)
    after = {(p.topic, p.partition): p.after for p in plan.partitions}
    # a partition missing from the broker keeps its row
    assert after == {(S, 0): 90, (U, 0): 7, (U, 1): 3, (U, 5): 44}
    # 7 of the recreated partition, 1 of usage:1, 50 of support:0 (from its log start)
    assert plan.skipped_records == 7 + 1 + 50
    assert [p.partition for p in plan.changes if p.topic == U] == [0, 1]


def test_to_offset_within_the_log_for_one_partition() -> None:
    plan = plan_reset("g", [U], 1, "offset", 1, STARTS, ENDS, STORED)
    assert [(p.topic, p.partition, p.before, p.after) for p in plan.partitions] == [(U, 1, 2, 1)]
    assert plan.partitions[0].note == "reads 1 record(s) again"


def test_to_offset_outside_a_log_is_refused() -> None:
    with pytest.raises(OffsetsResetError, match=r"lies outside the log of usage:1 \(0\.\.3\)"):
        plan_reset("g", [U], None, "offset", 5, STARTS, ENDS, STORED)


def test_partitions_without_a_row_start_at_the_log_start() -> None:
    plan = plan_reset("g", [S], None, "latest", None, {(S, 1): 0}, {(S, 1): 12}, {})
    (row,) = plan.partitions
    assert (row.before, row.after, row.note) == (None, 12, "skips 12 record(s): never applied")
    lines = format_plan(plan)
    assert lines[0] == "offsets-reset --to-latest of consumer group 'g':"
    assert lines[2].split() == ["support", "1", "0", "12", "-", "->", "12", *row.note.split()]


def test_an_empty_partition_without_a_row_stays_without_one() -> None:
    plan = plan_reset("g", [S], None, "latest", None, {(S, 1): 0}, {(S, 1): 0}, {})
    (row,) = plan.partitions
    assert (row.before, row.after, row.note) == (None, None, "unchanged")
    assert plan.changes == []
    recreated = plan_reset("g", [S], None, "earliest", None, {(S, 1): 0}, {(S, 1): 0}, {(S, 1): 9})
    assert recreated.partitions[0].note == "stored offset is above the high watermark; log is empty"


def test_a_topic_or_partition_nowhere_is_refused_not_nothing_to_change() -> None:
    """A mistyped name (the runbook's skip of a poison record names both) exits 2."""
    with pytest.raises(OffsetsResetError, match=r"topic 'usgae' is not on the broker"):
        plan_reset("g", ["usgae"], None, "latest", None, STARTS, ENDS, STORED)
    with pytest.raises(OffsetsResetError, match=r"support has no partition 3 \(partitions .*: 0\)"):
        plan_reset("g", [S], 3, "offset", 50, STARTS, ENDS, STORED)
    # a partition only stored (its topic recreated smaller) is still the command's to reset
    plan = plan_reset("g", [U], 5, "earliest", None, STARTS, ENDS, STORED)
    assert [(p.partition, p.after) for p in plan.partitions] == [(5, None)]


def test_the_service_topics_by_default_may_not_exist_yet() -> None:
    """No --topic: the input topics, one perhaps never created (nothing to change)."""
    plan = plan_reset("g", [U, S, "profiles"], None, "latest", None, STARTS, ENDS, STORED, False)
    assert {p.topic for p in plan.partitions} == {U, S}
    fresh = plan_reset("g", [U, S], None, "earliest", None, {}, {}, {}, False)
    assert fresh.partitions == []
    # a partition none of them has is still refused
    with pytest.raises(OffsetsResetError, match=r"no topic of usage, support has a partition 7"):
        plan_reset("g", [U, S], 7, "earliest", None, STARTS, ENDS, STORED, False)
