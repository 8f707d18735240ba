"""The one loop every background task runs in."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import pytest
from structlog.testing import capture_logs

from healthscore.service import periodic
from healthscore.service.ops.metrics import Metrics
from healthscore.service.periodic import AT_ONCE, every


def scripted(
    script: list[str], stop: asyncio.Event, hanging: asyncio.Event | None = None
) -> Callable[[], Awaitable[None]]:
    """A step that follows `script`: "fail" raises, "stop" sets `stop`, "hang" sets
    `hanging` and never returns (a statement waiting on a lock for ever), others return."""
    calls = 0

    async def step() -> None:
        nonlocal calls
        what = script[calls]
        calls += 1
        if what == "fail":
            raise RuntimeError("down")
        if what == "stop":
            stop.set()
        if what == "hang":
            assert hanging is not None
            hanging.set()
            await asyncio.Event().wait()

    return step


async def test_more_work_runs_again_at_once_and_failures_are_logged_and_retried() -> None:
    stop = asyncio.Event()
    calls: list[str] = []
    script = ["more", "more", "fail", "idle", "more", "stop"]

    async def step() -> float | None:
        what = script[len(calls)]
        calls.append(what)
        if what == "fail":
            raise RuntimeError("broker away")
        if what == "stop":
            stop.set()
        return AT_ONCE if what == "more" else None

    with capture_logs() as logs:
        await asyncio.wait_for(every(0.001, step, stop, "thing"), 5)
    assert calls == script
    assert [e["event"] for e in logs] == ["thing_failed"]
    assert logs[0]["error"] == "RuntimeError"


async def test_a_stop_cuts_the_pause_short() -> None:
    stop = asyncio.Event()

    async def idle() -> None:
        asyncio.get_running_loop().call_soon(stop.set)

    # an hour's interval: only the stop can end this quickly
    await asyncio.wait_for(every(3600.0, idle, stop, "never"), 5)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The timed pauses the loop asks for (none taken): a pause between steps, and a
    woken loop's least pause."""
    asked: list[float] = []

    async def pause(event: asyncio.Event, seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(periodic, "pause_unless_stopped", pause)
    return asked


async def test_failures_back_off_up_to_the_limit_and_a_success_resets_it(
    pauses: list[float],
) -> None:
    stop = asyncio.Event()
    step = scripted(["fail", "fail", "fail", "ok", "fail", "stop"], stop)

    with capture_logs():
        await asyncio.wait_for(every(0.01, step, stop, "thing", max_backoff=0.04), 5)
    # doubling while failing, capped; the interval after a success; doubling again;
    # the interval after the last step (a pause the stop cuts short)
    assert pauses == [0.02, 0.04, 0.04, 0.01, 0.02, 0.01]


async def test_a_step_may_ask_for_its_own_pause(pauses: list[float]) -> None:
    stop = asyncio.Event()
    calls = 0

    async def step() -> float:
        nonlocal calls
        calls += 1
        if calls == 2:
            stop.set()
        return 0.05

    await asyncio.wait_for(every(3600.0, step, stop, "short"), 5)
    # what the step asked for after each step, not the loop's hour
    assert calls == 2 and pauses == [0.05, 0.05]


async def test_a_wake_set_during_a_step_ends_the_next_pause_at_once() -> None:
    stop, wake = asyncio.Event(), asyncio.Event()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            wake.set()  # work announced while the step ran: not lost
        elif calls == 2:
            asyncio.get_running_loop().call_later(0.01, wake.set)  # announced later
        else:
            stop.set()

    # an hour's interval: only the wakes can end these pauses quickly
    await asyncio.wait_for(every(3600.0, step, stop, "woken", wake=wake), 5)
    assert calls == 3
    assert not wake.is_set()


async def test_a_woken_loop_still_pauses_at_least_its_minimum(pauses: list[float]) -> None:
    stop, wake = asyncio.Event(), asyncio.Event()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        wake.set()
        if calls == 2:
            stop.set()

    await asyncio.wait_for(every(3600.0, step, stop, "spaced", wake=wake, min_pause=0.05), 5)
    # woken during each step, and still its least pause after each
    assert calls == 2 and pauses == [0.05, 0.05]


async def test_a_failed_step_backs_off_whatever_wakes_it() -> None:
    stop, wake = asyncio.Event(), asyncio.Event()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        wake.set()
        raise RuntimeError("database away")

    asyncio.get_running_loop().call_later(0.2, stop.set)
    with capture_logs():
        await asyncio.wait_for(every(3600.0, step, stop, "failing", wake=wake), 5)
    assert calls == 1  # the wake did not cut the failure's pause short


async def test_each_steps_outcome_is_reported_and_counted() -> None:
    """The metrics hear of every step: a loop failing quietly shows as failed steps and
    an old last success, not only as log lines."""
    stop = asyncio.Event()
    metrics = Metrics()
    metrics.background_started("thing")
    heard: list[tuple[str, bool]] = []

    def on_step(name: str, failed: bool) -> None:
        heard.append((name, failed))
        metrics.background_step(name, failed)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"task": "thing", **labels})

    # started, nothing run yet: the series exist at 0
    assert sample("healthscore_background_steps_total", outcome="failed") == 0
    assert sample("healthscore_background_last_success_timestamp_seconds") == 0

    step = scripted(["fail", "fail", "ok", "stop"], stop)
    before = time.time()
    with capture_logs():
        await asyncio.wait_for(every(0.001, step, stop, "thing", on_step=on_step), 5)
    assert heard == [("thing", True), ("thing", True), ("thing", False), ("thing", False)]
    assert sample("healthscore_background_steps_total", outcome="failed") == 2
    assert sample("healthscore_background_steps_total", outcome="ok") == 2
    last = sample("healthscore_background_last_success_timestamp_seconds")
    assert last is not None and before <= last <= time.time()


def test_partitions_consumed_are_counted_per_input_topic() -> None:
    metrics = Metrics()
    metrics.consuming(["usage", "support"], [])
    metrics.consuming(["usage", "support"], [("usage", 0), ("usage", 3), ("support", 1)])

    def assigned(topic: str) -> float | None:
        return metrics.registry.get_sample_value(
            "healthscore_partitions_assigned", {"topic": topic}
        )

    assert (assigned("usage"), assigned("support")) == (2, 1)
    metrics.consuming(["usage", "support"], [("support", 1)])
    assert (assigned("usage"), assigned("support")) == (0, 1)


async def test_failures_in_a_row_and_a_step_that_never_returns_are_shown() -> None:
    """What the alert reads: failed steps one after another (one failure of a loop that
    runs hourly is not a failing loop), and the start of a step that hangs (it never
    fails, and never succeeds)."""
    stop = asyncio.Event()
    metrics = Metrics()
    metrics.background_started("thing")
    hanging = asyncio.Event()

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"task": "thing"})

    in_a_row: list[float | None] = []
    started_between_steps: list[float | None] = []

    def on_step(name: str, failed: bool) -> None:
        metrics.background_step(name, failed)
        in_a_row.append(sample("healthscore_background_failures_in_a_row"))
        started_between_steps.append(
            sample("healthscore_background_step_started_timestamp_seconds")
        )

    step = scripted(["fail", "ok", "fail", "fail", "hang"], stop, hanging)
    before = time.time()
    with capture_logs():
        loop = asyncio.create_task(
            every(
                0.001,
                step,
                stop,
                "thing",
                on_step=on_step,
                on_begin=metrics.background_step_began,
            )
        )
        await asyncio.wait_for(hanging.wait(), 5)
        assert in_a_row == [1, 0, 1, 2]
        assert started_between_steps == [0, 0, 0, 0]
        began = sample("healthscore_background_step_started_timestamp_seconds")
        assert began is not None and before <= began <= time.time()
        assert sample("healthscore_background_failures_in_a_row") == 2
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def test_a_failure_raised_while_handling_another_names_both() -> None:
    # a projector pass whose transaction the server ended (waiting on a lock) fails its
    # rollback on the closed connection: that error alone said nothing of the lock
    stop = asyncio.Event()

    class Closed(Exception):
        pass

    async def step() -> None:
        stop.set()
        try:
            raise TimeoutError("terminating connection due to transaction timeout")
        except TimeoutError:
            raise Closed("the underlying connection is closed") from None

    async def masked() -> None:
        stop.set()
        try:
            raise TimeoutError("terminating connection due to transaction timeout")
        except TimeoutError:
            raise Closed("the underlying connection is closed")  # noqa: B904

    with capture_logs() as logs:
        await asyncio.wait_for(every(0.001, masked, stop, "projection"), 5)
    [line] = logs
    assert line["event"] == "projection_failed"
    assert line["message"] == "the underlying connection is closed"
    assert line["during"] == "TimeoutError: terminating connection due to transaction timeout"
    stop.clear()
    with capture_logs() as logs:
        await asyncio.wait_for(every(0.001, step, stop, "projection"), 5)
    # `from None` still keeps the context (suppressed only from tracebacks): named too
    assert logs[0]["during"] is not None


async def test_a_timeout_is_not_said_to_happen_during_a_cancellation() -> None:
    # asyncio.timeout raises its TimeoutError from the CancelledError it sent
    stop = asyncio.Event()

    async def step() -> None:
        stop.set()
        async with asyncio.timeout(0.001):
            await asyncio.sleep(1)

    with capture_logs() as logs:
        await asyncio.wait_for(every(0.001, step, stop, "relay"), 5)
    assert logs[0]["error"] == "TimeoutError" and logs[0]["during"] is None
