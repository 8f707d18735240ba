"""`serve_until`: a stop during start-up cancels the start, within a bound.

The service itself is replaced by stand-ins for `running` whose start ends, never ends
but can be cancelled, or never ends and refuses to be cancelled (as aiokafka's close
waiting for a group request the broker holds): the control flow only. The real service
under a held start is tests/integration/test_graceful_shutdown.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from healthscore.config import Settings
from healthscore.errors import StartupRefused
from healthscore.service import app

_hanging: list[asyncio.Future[None]] = []


def _running(start: str, trace: list[str]) -> Any:
    @contextlib.asynccontextmanager
    async def running(settings: Any, options: Any = None) -> AsyncIterator[None]:
        trace.append("starting")
        try:
            if start.startswith("refused"):
                raise StartupRefused("no broker")
            if start == "held":
                await asyncio.Event().wait()  # a start that never ends
            elif start == "stuck":
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    # its stop waits on something that does not come (shielded)
                    hang = asyncio.ensure_future(asyncio.sleep(3600))
                    trace.append("hangs")
                    _hanging.append(hang)
                    await asyncio.shield(hang)
            trace.append("up")
            yield
        finally:
            if start == "refused while cleaning up":
                await asyncio.sleep(0.5)  # a producer's flush, a pool's close
            if start == "slow to stop":
                await asyncio.sleep(0.35)  # a step of the stop that waits on a dead broker
            if start == "never stops":
                hang = asyncio.ensure_future(asyncio.sleep(3600))
                _hanging.append(hang)
                await asyncio.shield(hang)  # a step that waits for good, cancelled or not
            trace.append("stopped")

    return running


async def _serve(
    monkeypatch: pytest.MonkeyPatch, start: str, stop_after: float
) -> tuple[bool, list[str], list[str]]:
    trace: list[str] = []
    monkeypatch.setattr(app, "running", _running(start, trace))
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(stop_after, stop.set)
    with capture_logs() as logs:
        stopped = await asyncio.wait_for(
            app.serve_until(stop, Settings(), stop_within=0.5), timeout=10
        )
    return stopped, trace, [str(entry["event"]) for entry in logs]


async def test_a_started_service_stops_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    stopped, trace, events = await _serve(monkeypatch, "ends", 0.1)
    assert stopped
    assert trace == ["starting", "up", "stopped"]
    assert events == []


async def _stop_of_a_running(
    monkeypatch: pytest.MonkeyPatch, start: str
) -> tuple[bool, list[str], list[Any]]:
    monkeypatch.setattr(app, "STOP_REPORT_SECONDS", 0.1)
    trace: list[str] = []
    monkeypatch.setattr(app, "running", _running(start, trace))
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)
    with capture_logs() as logs:
        stopped = await asyncio.wait_for(
            app.serve_until(stop, Settings(), stop_within=0.6), timeout=10
        )
    return stopped, trace, [e for e in logs if str(e["event"]).startswith("stop_")]


async def test_a_stop_that_takes_long_names_where_it_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a stop with the broker killed hung in CI with nothing logged after the signal
    stopped, trace, logs = await _stop_of_a_running(monkeypatch, "slow to stop")
    assert stopped
    assert trace == ["starting", "up", "stopped"]
    [slow] = logs
    assert slow["event"] == "stop_slow" and slow["seconds"] == 0.1
    # the step itself: inside the context manager the task shows only as __aexit__
    assert any(
        t.startswith("async generator _running.<locals>.running: ")
        and "running (test_serve_until.py:" in t
        for t in slow["tasks"]
    ), slow


async def test_a_stop_that_does_not_end_is_given_up_after_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stopped, trace, logs = await _stop_of_a_running(monkeypatch, "never stops")
    assert not stopped  # the process exits without it
    assert trace == ["starting", "up"]
    assert [(e["event"], e["seconds"]) for e in logs] == [
        ("stop_slow", 0.1),
        ("stop_not_finished", 0.6),
    ]
    assert any("never stops" in t or "running (test_serve_until.py:" in t for t in logs[1]["tasks"])
    for hang in _hanging:
        hang.cancel()


async def test_a_stop_during_a_start_that_never_ends_cancels_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stopped, trace, events = await _serve(monkeypatch, "held", 0.1)
    assert stopped
    assert trace == ["starting", "stopped"]  # never up; what had started stopped
    assert events == ["start_up_interrupted"]


async def test_a_start_whose_stop_hangs_is_given_up_after_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stopped, trace, events = await _serve(monkeypatch, "stuck", 0.1)
    assert not stopped  # the caller exits without waiting for it
    assert trace == ["starting", "hangs"]
    assert events == ["start_up_interrupted", "start_up_not_stopped"]
    for hang in _hanging:  # what the process exit would end
        hang.cancel()


async def test_a_refused_start_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StartupRefused):
        await _serve(monkeypatch, "refused", 5.0)


async def test_a_refused_start_whose_cleanup_a_stop_cuts_short_is_still_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stop comes while a refused start cleans up: the cancel cuts the cleanup
    short but the refusal is what the caller gets (before, it returned True and the
    process exited 0 without its error line)."""
    with pytest.raises(StartupRefused):
        await _serve(monkeypatch, "refused while cleaning up", 0.1)
