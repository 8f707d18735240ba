"""The read model while a replica catches up: how long the projector waits, and the
readiness check that allows for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from healthscore.service.ops.checks import readiness_checks
from healthscore.service.projector import Projector, catch_up_wait, feed_wait


@dataclass
class ProjectorAt:
    latest_staleness: float
    coalescing: float


async def read_model_check(staleness: float, coalescing: float) -> str | None:
    none = cast(Any, None)
    projector = cast(Projector, ProjectorAt(staleness, coalescing))
    checks = readiness_checks(none, none, none, projector, 120.0, none)
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
