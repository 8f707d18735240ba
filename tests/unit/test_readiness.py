"""The background readiness checker, with plain async functions as checks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from healthscore.service.ops.metrics import Metrics
from healthscore.service.ops.readiness import CHECKER, ReadinessChecker, ReadinessResult
from healthscore.service.periodic import every
from tests.utils.fakes import Counted, FakeClock


async def test_all_checks_ok_is_ready() -> None:
    checker = ReadinessChecker({"a": Counted(), "b": Counted()}, interval=1, timeout=1)
    await checker.check_once()
    status, body = checker.status()
    assert status == 200
    assert body["status"] == "ready"
    assert body["checks"] == {"a": "ok", "b": "ok"}
    assert body["failed"] == []
    assert body["checked_at"] and body["age_seconds"] >= 0


async def test_a_failed_check_is_named_with_its_reason() -> None:
    async def hangs() -> None:
        await asyncio.sleep(3600)

    async def raises() -> None:
        raise ConnectionRefusedError("connection refused")

    checker = ReadinessChecker(
        {
            "postgres": raises,
            "kafka": hangs,
            "partitions": Counted("no input partitions assigned to this process (yet)"),
            "fine": Counted(),
        },
        interval=1,
        timeout=0.05,
    )
    await checker.check_once()
    status, body = checker.status()
    assert status == 503
    assert body["status"] == "not ready"
    assert body["failed"] == ["postgres", "kafka", "partitions"]
    assert body["checks"]["postgres"] == "ConnectionRefusedError: connection refused"
    assert body["checks"]["kafka"] == "no answer within 0.05s"
    assert body["checks"]["partitions"] == "no input partitions assigned to this process (yet)"
    assert body["checks"]["fine"] == "ok"


async def test_not_ready_before_the_first_round() -> None:
    check = Counted()
    checker = ReadinessChecker({"a": check}, interval=1, timeout=1)
    status, body = checker.status()
    assert status == 503
    assert body["failed"] == [CHECKER]
    assert check.calls == 0


async def test_reading_the_status_never_runs_a_check() -> None:
    check = Counted()
    checker = ReadinessChecker({"a": check}, interval=1, timeout=1)
    await checker.check_once()
    for _ in range(1000):
        assert checker.status()[0] == 200
    assert check.calls == 1


async def test_a_stale_result_is_not_ready() -> None:
    clock = FakeClock()
    checker = ReadinessChecker({"a": Counted()}, interval=2, timeout=1, clock=clock)
    assert checker.stale_after == 7  # 3 intervals + the timeout
    await checker.check_once()
    clock.now += 7
    assert checker.status()[0] == 200
    clock.now += 0.5
    status, body = checker.status()
    assert status == 503
    assert body["failed"] == [CHECKER]
    assert body["checks"]["a"] == "ok"  # what the last round saw, still shown
    assert "stuck" in body["checks"][CHECKER]
    assert body["age_seconds"] == 7.5
    await checker.check_once()  # a fresh round makes it ready again
    assert checker.status()[0] == 200


async def test_checks_run_concurrently() -> None:
    """A round takes as long as its slowest check, not the sum: here the first
    check can only finish once the second has started."""
    second_started = asyncio.Event()

    async def first() -> None:
        await second_started.wait()

    async def second() -> None:
        second_started.set()

    checker = ReadinessChecker({"first": first, "second": second}, interval=1, timeout=5)
    result = await checker.check_once()
    assert result.failed == []


async def test_the_latest_round_wins() -> None:
    check = Counted("down")
    checker = ReadinessChecker({"a": check}, interval=1, timeout=1)
    await checker.check_once()
    assert checker.status()[0] == 503
    check.answer = None
    await checker.check_once()
    assert checker.status()[0] == 200
    check.answer = "down again"
    await checker.check_once()
    status, body = checker.status()
    assert (status, body["checks"]["a"]) == (503, "down again")


async def test_run_checks_on_an_interval_until_stopped() -> None:
    third = asyncio.Event()
    calls = 0

    async def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            third.set()

    checker = ReadinessChecker({"a": check}, interval=0.01, timeout=1)
    stop = asyncio.Event()
    task = asyncio.create_task(every(checker.interval, checker.step, stop, "readiness_round"))
    await asyncio.wait_for(third.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert calls == checker.rounds >= 3
    assert checker.status()[0] == 200


async def test_run_survives_a_round_that_raises() -> None:
    rounds = 0

    class Broken(ReadinessChecker):
        async def check_once(self) -> ReadinessResult:
            nonlocal rounds
            rounds += 1
            if rounds == 1:
                raise RuntimeError("a bug")
            return await super().check_once()

    checked = asyncio.Event()

    async def check() -> None:
        checked.set()

    checker = Broken({"a": check}, interval=0.01, timeout=1)
    stop = asyncio.Event()
    task = asyncio.create_task(every(checker.interval, checker.step, stop, "readiness_round"))
    await asyncio.wait_for(checked.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert rounds >= 2 and checker.status()[0] == 200


async def test_not_ready_checks_again_sooner() -> None:
    """Start-up before the partitions are assigned: the next round comes after
    `retry_interval`, not a whole interval."""
    third_round = asyncio.Event()
    calls = 0

    async def partitions() -> str | None:
        nonlocal calls
        calls += 1
        if calls < 3:
            return "no input partitions assigned to this process (yet)"
        third_round.set()
        return None

    # an hour's interval: only the short retries can bring the third round
    checker = ReadinessChecker({"partitions": partitions}, 3600, 1, retry_interval=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(every(checker.interval, checker.step, stop, "readiness_round"))
    await asyncio.wait_for(third_round.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert checker.status()[0] == 200
    assert ReadinessChecker({}, interval=2, timeout=1).retry_interval == 0.5
    assert ReadinessChecker({}, interval=0.2, timeout=1).retry_interval == 0.2


def test_interval_and_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReadinessChecker({}, interval=0, timeout=1)
    with pytest.raises(ValueError):
        ReadinessChecker({}, interval=1, timeout=0)


async def test_the_metrics_say_what_readyz_says() -> None:
    """Where no orchestrator reads /readyz (Compose), the alert rules read these: each
    check's failure per round, and readiness itself computed when scraped, so that a
    stuck checker reads not ready as /readyz answers."""
    clock = FakeClock()
    metrics = Metrics()
    failing = Counted("no input partitions assigned to this process (yet)")
    checker = ReadinessChecker(
        {"postgres": Counted(), "partitions": failing},
        interval=2,
        timeout=1,
        clock=clock,
        on_result=lambda result: metrics.readiness_round(result.checks),
    )
    metrics.follow_readiness(checker.status)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels or None)

    assert sample("healthscore_ready") == 0.0  # no round yet
    await checker.check_once()
    assert sample("healthscore_readiness_check_failed", check="partitions") == 1.0
    assert sample("healthscore_readiness_check_failed", check="postgres") == 0.0
    assert sample("healthscore_ready") == 0.0
    failing.answer = None
    await checker.check_once()
    assert sample("healthscore_readiness_check_failed", check="partitions") == 0.0
    assert sample("healthscore_ready") == 1.0
    clock.now += 7.5  # no round since: stuck
    assert sample("healthscore_ready") == 0.0


async def test_a_check_whose_cancellation_never_finishes_does_not_hold_the_round() -> None:
    # a query cancelled on a PostgreSQL that stopped answering: the pool gives the
    # connection back only once the server answers the cancel request (asyncpg shields
    # that wait); asyncio.wait_for waited for it, and no round finished again
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def frozen_server() -> None:
        nonlocal calls
        calls += 1
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.shield(release.wait())
            raise

    clock = FakeClock()
    checker = ReadinessChecker(
        {"postgres": frozen_server, "kafka": Counted()}, interval=1, timeout=0.05, clock=clock
    )
    await asyncio.wait_for(checker.check_once(), 2)
    status, body = checker.status()
    assert status == 503
    assert body["failed"] == ["postgres"]
    assert body["checks"]["postgres"] == "no answer within 0.05s"
    # the next rounds report it by name with how long it has gone unanswered, and do
    # not start another query beside the one still waiting
    clock.now += 30
    await asyncio.wait_for(checker.check_once(), 2)
    assert checker.status()[1]["checks"]["postgres"] == "no answer for 30s (limit 0.05s)"
    assert calls == 1
    release.set()


async def test_a_slow_check_answers_in_a_later_round() -> None:
    answer = asyncio.Event()

    async def slow() -> str | None:
        await answer.wait()
        return None

    checker = ReadinessChecker({"postgres": slow}, interval=1, timeout=0.05)
    await checker.check_once()
    assert checker.status()[0] == 503
    answer.set()
    await checker.check_once()
    assert checker.status()[0] == 200


async def test_a_check_that_ends_cancelled_is_failed_and_close_cancels_those_waiting() -> None:
    # a CancelledError from the task's result() ended the readiness loop (review 36d)
    async def cancels() -> None:
        raise asyncio.CancelledError

    never = asyncio.Event()
    running: list[asyncio.Task[Any]] = []

    async def hangs() -> None:
        running.append(asyncio.current_task())  # type: ignore[arg-type]
        await never.wait()

    checker = ReadinessChecker({"postgres": cancels, "kafka": hangs}, interval=1, timeout=0.05)
    await checker.check_once()
    assert checker.status()[1]["checks"] == {
        "postgres": "cancelled",
        "kafka": "no answer within 0.05s",
    }
    [task] = running
    checker.close()
    await asyncio.sleep(0)
    assert task.cancelled()
    # the next round starts the check again: nothing waits on the cancelled run
    await checker.check_once()
    assert len(running) == 2


async def test_a_round_cancelled_while_it_waits_leaves_its_checks_to_close() -> None:
    never = asyncio.Event()
    running: list[asyncio.Task[Any]] = []

    async def hangs() -> None:
        running.append(asyncio.current_task())  # type: ignore[arg-type]
        await never.wait()

    checker = ReadinessChecker({"postgres": hangs}, interval=1, timeout=10)
    round_ = asyncio.ensure_future(checker.check_once())
    await asyncio.sleep(0.01)
    round_.cancel()  # the service stops in the middle of a round
    with pytest.raises(asyncio.CancelledError):
        await round_
    [task] = running
    checker.close()
    await asyncio.sleep(0)
    assert task.cancelled()
