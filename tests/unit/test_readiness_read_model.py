"""The read model while a replica catches up: how long the projector waits, and the
readiness check that allows for it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from healthscore.service.ops.checks import readiness_checks
from healthscore.service.projector import CatchUpHolds, Projector, catch_up_wait, feed_wait


@dataclass
class ProjectorAt:
    latest_staleness: float
    coalescing: float


async def read_model_check(staleness: float, coalescing: float) -> str | None:
    none = cast(Any, None)
    projector = cast(Projector, ProjectorAt(staleness, coalescing))
    checks = readiness_checks(none, none, none, projector, 120.0, none, none)
    return await checks["read_model"]()


async def test_live_replica_further_behind_than_the_maximum_is_not_ready() -> None:
    assert await read_model_check(100.0, 0.0) is None
    problem = await read_model_check(121.0, 0.0)
    assert problem is not None
    assert "121 s behind" in problem


async def test_coalescing_while_catching_up_is_not_being_behind() -> None:
    assert await read_model_check(230.0, 120.0) is None
    problem = await read_model_check(241.0, 120.0)
    assert problem is not None
    assert "120 s of it coalescing" in problem


def test_the_projector_waits_only_for_a_backlog_longer_than_the_threshold() -> None:
    # live traffic and bursts: projected at once
    assert catch_up_wait(0.0, after=10.0, window=120.0) == 0.0
    assert catch_up_wait(9.9, after=10.0, window=120.0) == 0.0
    # a backlog: as long as it takes to apply, at most the window
    assert catch_up_wait(10.0, after=10.0, window=120.0) == 10.0
    assert catch_up_wait(300.0, after=10.0, window=120.0) == 120.0


def test_a_transaction_waits_for_the_feed_less_than_postgresqls_idle_limit() -> None:
    # the default limit (60 s) leaves the waits as they are
    assert feed_wait(10.0, idle_limit=60.0) == 10.0
    assert feed_wait(2.0, idle_limit=60.0) == 2.0
    # a short limit: half of it, so the session is never ended while the feed is awaited
    assert feed_wait(10.0, idle_limit=3.0) == 1.5
    assert feed_wait(2.0, idle_limit=3.0) == 1.5
    # no limit
    assert feed_wait(10.0, idle_limit=0.0) == 10.0


def test_a_change_is_held_as_long_as_the_wait_when_it_was_queued() -> None:
    holds = CatchUpHolds(sample_every=1.0)
    # the backlog shrinks as fast as time passes: 120 s at the start, 20 s at 100 s
    for now in range(0, 100):
        holds.hold(float(now), 120.0 - now)
    # the current wait would take what was queued before 80 s; each change queued since
    # the start still waits its own, longer, wait: nothing is due before 120 s
    assert holds.hold(100.0, 20.0) == 100.0
    assert holds.hold(110.0, 10.0) == 110.0
    # at 120 s every change queued so far has waited its own wait
    assert holds.hold(120.0, 10.0) == 10.0  # what was queued in the last 10 s: its wait
    # live again: everything queued is taken at once, and a new catch-up starts afresh
    assert holds.hold(121.0, 0.0) == 0.0
    assert holds.hold(122.0, 30.0) == 0.0


def test_under_a_steady_wait_the_hold_is_that_wait() -> None:
    holds = CatchUpHolds(sample_every=1.0)
    assert holds.hold(0.0, 30.0) == 0.0  # queued before the catch-up began: due
    assert holds.hold(10.0, 30.0) == 10.0
    for now in range(11, 200):
        assert holds.hold(float(now), 30.0) == min(30.0, float(now))
    # the samples older than the newest due one are dropped
    assert len(holds._samples) <= 32


def test_a_wait_that_grows_holds_the_new_changes_longer_only() -> None:
    holds = CatchUpHolds(sample_every=1.0)
    for now in range(0, 40):
        holds.hold(float(now), 10.0)
    # the backlog grows: changes queued from now on wait 60 s, the older ones 10 s
    for now in range(40, 50):
        assert holds.hold(float(now), 60.0) == 10.0  # the 10 s changes keep flowing
    # every 10 s change (queued until 40 s) is taken by 50 s; the 60 s ones wait theirs
    for now in range(50, 100):
        assert holds.hold(float(now), 60.0) == now - 40.0
    assert holds.hold(100.0, 60.0) == 60.0
    assert holds.hold(130.0, 60.0) == 60.0


@dataclass
class HandlerAt:
    failing_since: float | None
    failing_batches: int
    last_failure: str
    last_failed_at: float


async def batches_check(handler: HandlerAt) -> str | None:
    none = cast(Any, None)
    checks = readiness_checks(none, none, none, none, 120.0, none, cast(Any, handler))
    return await checks["batches"]()


async def test_batches_failing_for_a_while_make_a_replica_unready_until_stale() -> None:
    now = time.monotonic()
    # failing for a minute, the last failure just now: not ready
    failing = HandlerAt(now - 60, 12, "UndefinedColumnError: x", now)
    problem = await batches_check(failing)
    assert problem is not None and "12 batches in a row" in problem and "x" in problem
    # too few, or too short, or none failing: ready
    assert await batches_check(HandlerAt(now - 60, 2, "e", now)) is None
    assert await batches_check(HandlerAt(now - 5, 5, "e", now)) is None
    assert await batches_check(HandlerAt(None, 0, "", 0.0)) is None
    # the last failure long ago and none since (its partitions went elsewhere): ready
    assert await batches_check(HandlerAt(now - 600, 12, "e", now - 300)) is None
